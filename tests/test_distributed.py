"""Multi-process training with torchrun (gloo on CPU) equals single-process training with the same global batch."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import TINY_FLAGS
from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint
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


def test_sampling_is_shared_out_over_processes_and_equals_one_process(runs, tmp_path):
    for processes in (1, 2):
        out = tmp_path / str(processes)
        out.mkdir()
        launch(
            processes,
            "--run",
            str(runs / "single"),
            "--n",
            "7",
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--out",
            str(out / "grid.png"),
            "--npz",
            str(out / "images.npz"),
            command="sample",
        )
        assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images.npz"]
    assert (tmp_path / "1" / "grid.png").read_bytes() == (tmp_path / "2" / "grid.png").read_bytes()
    assert (tmp_path / "1" / "images.npz").read_bytes() == (tmp_path / "2" / "images.npz").read_bytes()


def test_eval_shares_sampling_out_and_logs_once(runs, tmp_path, monkeypatch):
    """`eval` under torchrun: the same scores as one process, and one line in metrics.jsonl, not one per rank."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    train_classifier("digits", epochs=1, widths=(8, 16))
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
