"""Bad input everywhere: one clear line, a non-zero exit, and nothing already saved is damaged."""

import shutil
import subprocess

import pytest

from conftest import TINY_FLAGS, run_cli
from pixeldiffusion.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pixeldiffusion.cli import main


def one_line_error(result, message):
    """Exit code 2 and one error line (after the progress bar's lines, if training had started), no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pixeldiffusion: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["train", "--out", str(out), "--max-steps", "2", "--checkpoint-every", "2", *TINY_FLAGS]) == 0
    return out


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--guidance", "-1"], "guidance must be a finite number >= 0"),
        (["--guidance", "nan"], "guidance must be a finite number >= 0"),
        (["--steps", "0"], "at least 1"),
        (["--steps", "1001"], "between 1 and T = 1000"),
        (["--sampler", "euler"], "unknown sampler 'euler'; choose one of ddpm, ddim, dpmpp_2m, heun"),
        (["--spacing", "random"], "unknown spacing 'random'"),
        (["--out", "/dev/null/grid.png"], "could not write /dev/null/grid.png"),
    ],
)
def test_bad_sampling_requests_leave_the_run_untouched(trained, args, message):
    before = snapshot(trained)
    one_line_error(run_cli("sample", "--run", str(trained), "--n", "2", "--steps", "2", *args), message)
    assert snapshot(trained) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "mnst"], "unknown dataset 'mnst'; choose one of digits, emoji, mnist"),
        (["--preset", "giant"], "unknown model preset 'giant'; choose one of digits"),
        (["--image-size", "18"], "image size 18 is not divisible by 4"),
        (["--out", "/dev/null/run"], "could not write /dev/null/run/config.json"),
        (["--lr-decay", "exp"], "unknown lr decay 'exp'"),
        (["--nonfinite", "ignore"], "unknown nonfinite action 'ignore'; choose one of stop, skip"),
    ],
)
def test_bad_training_requests(args, message, tmp_path):
    one_line_error(run_cli("train", "--max-steps", "1", *TINY_FLAGS, *args, cwd=tmp_path), message)
    assert not (tmp_path / "runs").exists() or "--out" in args


def test_a_truncated_checkpoint_is_refused_and_the_run_resumes_from_none_older(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    latest = latest_checkpoint(copy)
    latest.write_bytes(latest.read_bytes()[:1000])
    one_line_error(run_cli("sample", "--run", str(copy), "--out", str(tmp_path / "x.png")), "not a valid safetensors")
    one_line_error(run_cli("train", "--resume", str(copy), "--max-steps", "3"), "not a valid safetensors")


def test_a_full_disk_while_saving_keeps_the_last_checkpoint(trained, tmp_path):
    """Resume a run on a tmpfs just big enough for what it holds: the next checkpoint cannot be written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sum(p.stat().st_size for p in trained.rglob("*") if p.is_file()) + 64 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shutil.copytree(trained, disk / "run")
        before = snapshot(disk / "run" / "checkpoints")
        result = run_cli("train", "--resume", str(disk / "run"), "--max-steps", "4", "--checkpoint-every", "1")
        one_line_error(result, "No space left on device; earlier files are untouched")
        assert snapshot(disk / "run" / "checkpoints") == before
        assert [p.name for p in list_checkpoints(disk / "run")] == [latest_checkpoint(trained).name]
        assert load_checkpoint(latest_checkpoint(disk / "run"))[1]["step"] == 2
    finally:
        subprocess.run(["umount", str(disk)], check=True)
