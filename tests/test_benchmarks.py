"""The benchmarks run on tiny models (speed.py, the diffusers baseline, the NFE curve, the A/B comparisons); no time
is asserted."""

import argparse
import importlib
import itertools
import json
import re
import types

import torch

from conftest import REPO
from pixeldiffusion.data import load_dataset, to_model_range
from pixeldiffusion.evaluation.classifier import train_classifier

# oneDNN's convolution where PyTorch picks it (AVX-512 CPUs), its own im2col kernel elsewhere (AVX2 only)
CONV_KERNEL = re.compile(r"aten::(mkldnn_convolution|_slow_conv2d_forward)")


def test_speed_benchmark_reports_every_row_for_matched_models(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    speed = importlib.import_module("speed")
    monkeypatch.setattr(speed, "MIN_WINDOW_S", 0.0)  # no need to measure the load of others precisely here
    out = tmp_path / "result.json"
    argv = ["--sizes", "tiny", "--repeats", "1", "--batch", "2", "--no-wait", "--no-memory", "--matmul-size", "256"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # quick even on a busy shared machine
    try:
        speed.main([*argv, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)

    report = json.loads(out.read_text())
    assert {"schema", "created", "host", "settings", "peak", "sizes"} <= set(report)
    assert report["peak"]["fp32"]["flop_per_s"] > 0 and report["peak"]["bf16"]["flop_per_s"] > 0
    tiny = report["sizes"]["tiny"]
    assert {"config", "batch", "repeats", "nfe", "params", "flops_per_image", "rows"} <= set(tiny)
    assert abs(tiny["params"]["ratio"] - 1) < 0.1
    assert tiny["flops_per_image"]["forward"]["pixeldiffusion"] > 0
    assert [(r["task"], r["precision"]) for r in tiny["rows"]] == [
        ("train", "fp32"),
        ("train", "bf16"),
        ("sample", "fp32"),
        ("sample", "bf16"),
    ]
    for row in tiny["rows"]:
        assert {"compile", "void", "ratio"} <= set(row) and {"images_per_s", "peak_memory"} <= set(row["ratio"])
        for library in ("pixeldiffusion", "diffusers"):
            measured = row[library]
            assert {"images_per_s", "flop_per_s", "peak_share", "median_s", "spread", "times_s", "memory"} <= set(
                measured
            )
            assert {"loadavg_before", "loadavg_after", "others_cpu", "idle_wait"} <= set(measured["load"])
            assert isinstance(measured["void"], bool)
            split = measured["breakdown"]
            assert set(split) == {"conv_gemm", "norm_act", "other"}
            assert abs(sum(part["share"] for part in split.values()) - 1) < 1e-6
            assert split["conv_gemm"]["share"] > 0 and split["norm_act"]["share"] > 0, split
            assert CONV_KERNEL.search(" ".join(split["conv_gemm"]["top"])), split

    kinds = {name: speed.operator_kind(name) for name in (
        "aten::convolution_backward", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
        "mkldnn::_convolution_pointwise", "aten::native_group_norm_backward", "aten::silu",
        "cpp_fused_native_group_norm_silu_7", "aten::add_", "aten::_fused_adamw_", "aten::copy_", "aten::sum",
        "aten::linalg_vector_norm",
    )}  # fmt: skip
    assert [name for name, kind in kinds.items() if kind == "conv_gemm"] == list(kinds)[:5]
    assert [name for name, kind in kinds.items() if kind == "norm_act"] == list(kinds)[5:8]

    probe = speed.memory_probe(speed.Case("tiny", "diffusers", "train", "fp32", False, 2, "cpu"))
    assert set(probe) == {"peak_mib", "above_setup_mib"}

    # the benchmark's real sizes are matched too
    for name in ("mnist-small", "mnist-small-16", "mnist-small-mp", "mnist", "cifar10"):
        with torch.device("meta"):
            ours, theirs = (speed.build(library, speed.SIZES[name], "meta") for library in speed.LIBRARIES)
        n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
        assert abs(n_ours / n_theirs - 1) < 0.1, name


BASELINE = dict(
    seed=0, channels=(8, 16), attention_at=0, layers=1, lr=1e-3, warmup=2, batch=4, bf16=False, minutes=0.02
)


def test_diffusers_baseline_trains_for_its_budget_and_samples(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    baseline = importlib.import_module("diffusers_baseline")
    monkeypatch.setattr(baseline, "ESTIMATE_AFTER", 2)
    clock = itertools.count(step=0.125)  # each step takes 0.125 s of a clock that no load on the machine moves
    monkeypatch.setattr(baseline, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    args = argparse.Namespace(**BASELINE, eval_every=0)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    model, trained = baseline.train(args, images)
    assert trained["steps"] == 10 and trained["train_s"] >= 1.2 and not model.training  # 1.2 s: 10 steps of 0.125
    ddim = baseline.DDIMScheduler(num_train_timesteps=1000)
    x = baseline.sample(model, ddim, n=5, steps=3, batch=2, seed=0)
    assert x.shape == (5, 1, 8, 8) and x.isfinite().all() and x.abs().max() <= 1


def test_diffusers_baseline_scores_its_curve_as_our_eval_every_does(monkeypatch, tmp_path):
    """--eval-every: the EMA weights scored every N steps, outside the training clock, one metrics.jsonl line each."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    train_classifier("digits", widths=(16, 32))  # reaches the accuracy needed to score
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    baseline = importlib.import_module("diffusers_baseline")
    monkeypatch.setattr(baseline, "ESTIMATE_AFTER", 2)
    args = argparse.Namespace(
        **BASELINE, eval_every=1, eval_samples=4, dataset="digits", data_dir=None, out=tmp_path / "out"
    )
    args.out.mkdir()
    (args.out / "metrics.jsonl").write_text("a line of an earlier run\n")
    model, trained = baseline.train(args, to_model_range(load_dataset("digits").images))
    points = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == list(range(1, trained["steps"] + 1)) and points
    assert all(p["kind"] == "eval" and p["fd"] > 0 and p["elapsed_s"] <= trained["train_s"] + 0.1 for p in points)
    assert not model.training


def test_nfe_curve_steps_spend_the_requested_evaluations(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    curve = importlib.import_module("nfe_curve")
    from pixeldiffusion.sampling import nfe

    for budget in (5, 10, 20, 50, 100):
        assert nfe("ddim", curve.steps_for("ddim", budget)) == budget
        spent = nfe("heun", curve.steps_for("heun", budget))
        assert budget <= spent <= budget + 1 and spent % 2 == 1


def test_channels_last_benchmark_times_both_layouts_of_the_real_trainer_and_pipeline(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    channels_last = importlib.import_module("channels_last")
    for task in ("train", "sample"):
        record = channels_last.compare(task, "tiny", batch=2, precision="fp32", rounds=2, steps=1)
        assert set(record["images_per_s"]) == {"nchw", "channels_last"}
        assert all(len(s) == 2 for s in record["seconds_per_step"].values())
        assert record["ratio_channels_last"] > 0 and record["others_cpu"] >= 0


def test_step_compile_benchmark_times_the_step_three_ways_and_its_update_two(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    step_compile = importlib.import_module("step_compile")
    compile_ = torch.compile

    def traced_only(fn=None, options=None, **kw):  # dynamo's tracing without inductor's code: seconds, not minutes
        return compile_(fn, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", traced_only)
    record = step_compile.compare("tiny", "fp32", batch=2, rounds=2, steps=1)
    assert set(record["step_images_per_s"]) == {"today", "compiled_autograd", "inductor_layout"}
    assert record["ratio_inductor_layout"] > 0
    assert set(record["update_ms"]) == {"eager", "compiled"} and record["update_share_of_step"] > 0
    assert all(len(s) == 2 for timings in record["seconds"].values() for s in timings.values())


def test_attention_benchmark_times_the_three_kernels(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    attention = importlib.import_module("attention")
    for backward, name in ((True, "forward+backward"), (False, "forward")):
        record = attention.compare((2, 2, 9, 8), rounds=2, repeats=1, backward=backward)
        assert set(record["ms"]) == {"bf16", "routed", "fp32"} and all(ms > 0 for ms in record["ms"].values())
        assert (record["tokens"], record["head_dim"], record["pass"]) == (9, 8, name)
        assert record["speedup_routed"] > 0


def test_profile_lists_the_operators_of_a_step_and_a_sampling_run(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    profile_ops = importlib.import_module("profile_ops")
    for task in ("train", "sample"):
        for library in ("pixeldiffusion", "diffusers"):
            step = profile_ops.make_work(profile_ops.Case("tiny", library, task, "fp32", False, 2, "cpu"))
            table = profile_ops.profile_table(step, repeats=1, rows=50)
            assert CONV_KERNEL.search(table) and "s of CPU time per call" in table
