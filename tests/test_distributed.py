"""Multi-process training with torchrun (gloo on CPU) equals single-process training with the same global batch."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import TINY_FLAGS
from pixeldiffusion.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pixeldiffusion.evaluation.classifier import train_classifier


def launch(processes: int, *args: str, command: str = "train") -> None:
    flags = [*TINY_FLAGS, "--checkpoint-every", "2"] if command == "train" else []
    if processes == 1:
        command = [sys.executable, "-m", "pixeldiffusion", command, *args, *flags]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "pixeldiffusion",
            "--",
            command,
            *args,
            *flags,
        ]  # "--": torchrun would claim --n, --run
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def final_state(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))


def assert_same_training(a, b):
    (ta, ma), (tb, mb) = final_state(a), final_state(b)
    assert ma["step"] == mb["step"]
    for name in ta:
        assert torch.allclose(ta[name].float(), tb[name].float(), atol=1e-5, rtol=1e-4), name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    launch(1, "--out", str(root / "single"), "--max-steps", "4")
    launch(2, "--out", str(root / "two"), "--max-steps", "4")
    return root


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    assert_same_training(runs / "single", runs / "two")


@pytest.mark.slow
def test_compiled_two_processes_equal_one_eager(runs, tmp_path):
    """torch.compile of the step's forward half around the DDP module keeps DDP's gradient averaging exact, with
    two micro-batches (DDP's no_sync on the first)."""
    launch(2, "--out", str(tmp_path / "compiled"), "--max-steps", "4", "--compile", "--grad-accum", "2")
    assert_same_training(runs / "single", tmp_path / "compiled")


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_a_distillation_on_two_processes_equals_one(runs, tmp_path, method):
    """The student's steps (teacher passes, stage change at step 2, the consistency target's second pass through
    the DDP module) are shared out exactly as training's are."""
    for processes in (1, 2):
        args = ["--run", str(runs / "single"), "--method", method, "--steps", "2", "--teacher-steps", "8"]
        args += ["--max-steps", "4", "--out", str(tmp_path / str(processes)), "--precision", "fp32"]
        launch(processes, *args, command="distill")
    assert_same_training(tmp_path / "1", tmp_path / "2")
    assert final_state(tmp_path / "2")[1]["distill_stage"] == (1 if method == "progressive" else 0)


def test_only_the_main_process_writes(runs):
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))  # noqa: E731
    assert files(runs / "two") == files(runs / "single")
    lines = (runs / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4, "one metrics line per logged step, not one per process"


def test_a_two_process_run_resumes_on_two_or_one_processes(runs, tmp_path):
    for processes in (2, 1):
        copy = tmp_path / f"resume{processes}"
        shutil.copytree(runs / "two", copy)
        launch(processes, "--resume", str(copy), "--max-steps", "6")
        # the same extension of the single-process run (extending max_steps changes the lr schedule from step 4)
        single = tmp_path / f"single{processes}"
        shutil.copytree(runs / "single", single)
        launch(1, "--resume", str(single), "--max-steps", "6")
        assert_same_training(copy, single)


def test_the_same_seed_gives_the_same_png_whatever_the_batch_size_and_processes(runs, tmp_path):
    outputs = {}
    for processes, batch in ((1, 1), (1, 4), (1, 12), (2, 1), (2, 12)):
        out = tmp_path / f"{processes}-{batch}"
        out.mkdir()
        args = ["--run", str(runs / "single"), "--n", "12", "--seed", "3", "--batch-size", str(batch), "--steps", "3"]
        launch(processes, *args, "--out", str(out / "grid.png"), "--npz", str(out / "images.npz"), command="sample")
        assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images.npz"], "the main process alone writes"
        outputs[processes, batch] = (out / "grid.png").read_bytes(), (out / "images.npz").read_bytes()
    assert len(set(outputs.values())) == 1, "byte-identical PNGs and arrays"


RANK_WEIGHTS = """
import sys
from pathlib import Path
from safetensors.torch import save_file
from conftest import tiny_config
from pixeldiffusion.process import setup, teardown
from pixeldiffusion.training import Trainer
out, minutes = Path(sys.argv[1]), float(sys.argv[2])
process = setup("cpu")
trainer = Trainer(tiny_config(max_steps=None, minutes=minutes, log_every=3), out / "run")
trainer.run()
state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
save_file(state, str(out / f"rank{process.rank}.safetensors"), metadata={"step": str(trainer.step)})
teardown(process)
"""


@pytest.mark.slow
def test_a_time_budget_under_torchrun_ends_every_rank_at_the_same_step_with_the_same_weights(tmp_path):
    """Each process measures its own time; the clock they agree on decides the learning rate and the last step."""
    script = tmp_path / "rank_weights.py"
    script.write_text(RANK_WEIGHTS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run([*command, str(tmp_path), "0.1"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with safe_open(tmp_path / "rank0.safetensors", "pt") as a, safe_open(tmp_path / "rank1.safetensors", "pt") as b:
        assert a.metadata()["step"] == b.metadata()["step"] and int(a.metadata()["step"]) > 3
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()), "identical replicas"  # noqa: SIM118


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_at_the_same_step_with_one_checkpoint(tmp_path):
    run = tmp_path / "run"
    flags = [*TINY_FLAGS, "--checkpoint-every", "100000", "--max-steps", "100000", "--out", str(run)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launcher = subprocess.Popen(
        [*command, "-m", "pixeldiffusion", "--", "train", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 5:
        assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    stops = re.findall(r"stopped by SIGTERM at step (\d+)", err.decode())
    assert len(stops) == 2 and stops[0] == stops[1], err.decode()[-3000:]
    checkpoints = list_checkpoints(run)
    assert len(checkpoints) == 1 and load_checkpoint(checkpoints[0])[1]["step"] == int(stops[0])


def test_eval_and_tensorboard_during_training_under_torchrun(tmp_path, monkeypatch):
    """The main process samples alone for the evaluation and TensorBoard, entering no collective the others miss."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    train_classifier("digits", widths=(16, 32))  # reaches the accuracy needed to score
    run = tmp_path / "run"
    launch(
        2, "--out", str(run), "--max-steps", "6", "--eval-every", "3", "--eval-samples", "8", "--log", "tensorboard"
    )
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]
    assert [r["step"] for r in evals][:1] == [3], "the first evaluation always runs (later ones keep to a budget)"
    assert any((run / "tensorboard").iterdir())


def test_eval_shares_sampling_out_and_logs_once(runs, tmp_path, monkeypatch):
    """`eval` under torchrun: the same scores as one process, and one line in metrics.jsonl, not one per rank."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    train_classifier("digits", widths=(16, 32))  # reaches the accuracy needed to score
    lines = {}
    for processes in (1, 2):
        copy = tmp_path / f"run{processes}"
        shutil.copytree(runs / "single", copy)
        launch(processes, "--run", str(copy), "--n", "12", "--batch-size", "4", "--steps", "2", command="eval")
        evals = [r for r in map(json.loads, (copy / "metrics.jsonl").read_text().splitlines()) if r.get("kind")]
        assert len(evals) == 1, evals
        lines[processes] = evals[0]
    assert lines[1]["fd"] == pytest.approx(lines[2]["fd"], rel=1e-6)
    assert lines[1]["accuracy"] == lines[2]["accuracy"]
