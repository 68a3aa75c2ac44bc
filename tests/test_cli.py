"""The command line, end to end, as a user types it."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_FLAGS, run_cli
from pixeldiffusion.cli import main


def test_train_resume_and_sample(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "3", "--checkpoint-every", "2", *TINY_FLAGS]) == 0
    assert main(["train", "--resume", str(out), "--max-steps", "5"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 5
    png, gif, npz = tmp_path / "s.png", tmp_path / "s.gif", tmp_path / "s.npz"
    args = ["sample", "--run", str(out), "--n", "5", "--steps", "4", "--seed", "3", "--class", "7"]
    assert main([*args, "--out", str(png), "--gif", str(gif), "--npz", str(npz)]) == 0
    assert Image.open(png).format == "PNG" and Image.open(gif).n_frames > 2
    with np.load(npz) as arrays:
        assert arrays["images"].shape == (5, 16, 16, 1) and arrays["images"].dtype == np.uint8
        assert arrays["labels"].tolist() == [7] * 5
    again = tmp_path / "again.png"
    assert main([*args, "--out", str(again)]) == 0
    assert again.read_bytes() == png.read_bytes(), "same checkpoint, sampler and seed: byte-identical PNG"
    assert (
        main(
            [
                "sample",
                "--run",
                str(out),
                "--per-class",
                "2",
                "--sampler",
                "ddpm",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "per-class.png"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--schedule", "exp"], "unknown schedule 'exp'; choose one of linear, cosine"),
        (["sample", "--run", "/nonexistent"], "no checkpoint in /nonexistent/checkpoints"),
        (["train", "--preset", "huge"], "unknown model preset 'huge'"),
    ],
)
def test_user_errors_print_one_line_and_exit_non_zero(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sampling_errors_on_a_trained_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "1", *TINY_FLAGS]) == 0
    for args, message in [
        (["--steps", "5000"], "between 1 and T = 1000"),
        (["--guidance", "nan"], "guidance must be a finite number"),
        (["--class", "eleven"], "unknown class 'eleven'; the classes are: 0, 1, 2"),
        (["--context", "1,0"], "class-conditional"),
    ]:
        result = run_cli("sample", "--run", str(out), "--out", str(tmp_path / "x.png"), *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    result = run_cli("train", "--out", str(out), *TINY_FLAGS)
    assert result.returncode == 2 and "already holds a run" in result.stderr


def test_python_dash_m_and_help():
    result = run_cli("train", "--help")
    assert result.returncode == 0 and "--max-steps" in result.stdout and "peak learning rate" in result.stdout


def test_the_mnist_recipes_are_the_measured_ones_and_flags_override_them():
    from pixeldiffusion.cli import apply, parser
    from pixeldiffusion.config import default_config

    for dataset in ("mnist", "fashion-mnist"):
        config = default_config(dataset)
        assert (config.prediction, config.train.weighting, config.model.image_size) == ("v", "min_snr", 28)
        assert (config.sample.sampler, config.sample.steps) == ("ddpm", 50)
    assert default_config("fashion-mnist").data.hflip and not default_config("mnist").data.hflip
    assert default_config("digits").prediction == "eps"
    args = parser().parse_args(["train", "--dataset", "mnist", "--prediction", "eps", "--weighting", "none"])
    config = apply(default_config("mnist"), args)
    assert (config.prediction, config.train.weighting, config.sample.sampler) == ("eps", "none", "ddpm")
