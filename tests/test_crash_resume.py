"""Killing a training process at any moment, even inside a checkpoint write, then resuming, ends in the
same state bit for bit as a run that was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY_FLAGS
from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint

# Runs the CLI with os.fsync replaced: on its k-th call the process SIGKILLs itself, i.e. in the middle of an
# atomic write (after the temporary file is written, before it is renamed into place).
KILL_IN_FSYNC = """
import os, signal, sys
calls, kill_at, real = 0, int(sys.argv[1]), os.fsync
def fsync(fd):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
os.fsync = fsync
from pixeldiffusion.cli import main
sys.exit(main(sys.argv[2:]))
"""


def wait_for_progress(metrics, proc, timeout=300.0):
    """Block until the run logs two more steps (beyond what it resumed from)."""
    lines = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0  # noqa: E731
    start, deadline = lines(), time.monotonic() + timeout
    while lines() < start + 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def command(run_dir, fresh: bool):
    where = ["--out", str(run_dir)] if fresh else ["--resume", str(run_dir)]
    return ["train", *where, *TINY_FLAGS, "--checkpoint-every", "1", "--max-steps", "60"]


def final_tensors(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))[0]


@pytest.mark.slow
def test_sigkill_at_random_moments_and_during_checkpoint_writes(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(
        [sys.executable, "-m", "pixeldiffusion", *command(straight, True)],
        check=True,
        capture_output=True,
        timeout=600,
    )

    run_dir, rng, attempts = tmp_path / "killed", random.Random(0), 0
    kills = {"in_write": 0, "timer": 0, "sigterm": 0}
    started = False
    while attempts < 12:
        attempts += 1
        args = command(run_dir, not started)
        started = True
        if attempts <= 3:  # killed inside a checkpoint write: the 5th, 13th, ... fsync
            proc = subprocess.run(
                [sys.executable, "-c", KILL_IN_FSYNC, str(4 * attempts + 1), *args], capture_output=True, timeout=600
            )
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
            kills["in_write"] += 1
            continue
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixeldiffusion", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if attempts <= 6:  # a random moment after training has visibly progressed: a step, a checkpoint, a log
            wait_for_progress(run_dir / "metrics.jsonl", proc)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGTERM if attempts == 6 else signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            break
        if proc.returncode == 128 + signal.SIGTERM:  # saved a checkpoint and said how to resume
            assert b"resume with" in err
            kills["sigterm"] += 1
        else:
            assert proc.returncode == -signal.SIGKILL, err[-2000:]
            kills["timer"] += 1
    assert proc.returncode == 0
    assert kills == {"in_write": 3, "timer": 2, "sigterm": 1}, kills
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    a, b = final_tensors(straight), final_tensors(run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "identical to the uninterrupted run, bit for bit"
    assert os.path.getsize(run_dir / "samples.png") > 0
