"""The command line, end to end, as a user types it."""

import json
import signal
import subprocess
import sys
import time
from subprocess import PIPE

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_FLAGS, run_cli
from pixeldiffusion.cli import apply, main, parser
from pixeldiffusion.config import RunConfig
from pixeldiffusion.recipes import default_config


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
        (["sample", "--run", "/nonexistent"], "/nonexistent does not exist"),
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


def test_flags_override_the_recipe():
    args = parser().parse_args(["train", "--dataset", "mnist", "--prediction", "eps", "--weighting", "none"])
    config = apply(default_config("mnist"), args)
    assert (config.diffusion.prediction, config.diffusion.weighting, config.sample.sampler) == ("eps", "none", "ddpm")
    args = parser().parse_args(["train", "--min-snr-gamma", "2.5", "--sample-steps", "7", "--eval-every", "9"])
    config = apply(default_config("digits"), args)
    assert (config.diffusion.min_snr_gamma, config.sample.steps, config.eval.every) == (2.5, 7, 9)


@pytest.mark.parametrize(
    "flags,length",
    [
        (["--minutes", "5"], (None, None, 5.0)),
        (["--minutes", "5", "--max-steps", "10"], (10, None, 5.0)),
        (["--epochs", "2"], (None, 2.0, None)),
        ([], (1000, None, None)),
    ],
)
def test_stop_conditions_given_replace_the_recipes(flags, length):
    config = apply(default_config("digits"), parser().parse_args(["train", *flags]))
    assert (config.length.max_steps, config.length.epochs, config.length.minutes) == length


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`pixeldiffusion ARGS` in this process: its exit status and what it wrote on stderr."""
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's errors and --help
        status = e.code
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A class-conditional run of one step."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), "--max-steps", "1", *TINY_FLAGS]) == 0
    return out


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--max-steps", "0"], "max_steps must be positive, got 0"),
        (["train", "--minutes", "-5"], "minutes must be positive"),
        (["train", "--batch-size", "0"], "batch size 0 must be a positive multiple"),
        (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["train", "--channel-mult", "1,x"], "argument --channel-mult: expected whole numbers separated by commas"),
        (["train", "--attention-heads", "0"], "attention_heads must be at least 1"),
        (["train", "--image-size", "-16"], "image_size must be at least 1"),
        (["train", "--eval-every", "-1"], "eval every must be >= 0"),
        (["train", "--sample-every", "-1"], "sample_every must be at least 0"),
        (["train", "--min-snr-gamma", "0"], "min_snr_gamma must be positive"),
        (["train", "--prediction", "score"], "unknown prediction 'score'"),
        (["train", "--device", "tpu"], "unknown device 'tpu'"),
        (["train", "--sample-steps", "0"], "n, steps and batch_size must be at least 1"),
        (["train", "--config", "/nonexistent.json"], "cannot read configuration /nonexistent.json"),
        (["show", "forward", "--times", "1,x"], "argument --times: expected whole numbers separated by commas"),
        (["show", "forward", "--n", "0"], "argument --n: expected a whole number >= 1, got '0'"),
        (["show", "schedule", "--timesteps", "1"], "argument --timesteps: expected a whole number >= 2"),
        (["show", "schedule", "--schedule", "linear,exp"], "unknown schedule 'exp'"),
        (["show", "schedule", "--out", "s.bmp"], "argument --out: 's.bmp': name the file .png or .jpg"),
        (["show", "run"], "show run needs the run directory"),
        (["show", "runs", "a"], "show runs compares runs: pixeldiffusion show runs DIR DIR"),
        (["serve", "--run", "x", "--port", "70000"], "a port is at most 65535"),
        (["train-classifier", "--dataset", "digits", "--epochs", "0"], "expected a whole number >= 1"),
        (["sample", "--run", "x", "--out", "grid.bmp"], "'grid.bmp': name the file .png or .jpg or .jpeg"),
        (["sample", "--run", "x", "--gif", "x.png"], "argument --gif: 'x.png': name the file .gif"),
        (["sample", "--run", "x", "--strip", "x.bmp"], "argument --strip: 'x.bmp': name the file .png or .jpg"),
        (["show", "schedule", "--gif", "s.gif"], "--gif animates the forward process"),
        (["train", "--activation", "tanh"], "unknown activation 'tanh'; choose one of silu, gelu, relu, mish"),
        (["sample", "--run", "x", "--context", "1,a"], "argument --context: expected numbers separated by commas"),
        (["sample", "--run", "x", "--per-class", "0"], "argument --per-class: expected a whole number >= 1"),
        (["sample", "--run", "x", "--n", "two"], "argument --n: invalid int value: 'two'"),
        (["eval", "--run", "x", "--n", "1"], "argument --n: expected a whole number >= 2"),
        (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_malformed_values_give_one_line_and_status_2(capsys, args, message):
    status, err = run_main(capsys, *args)
    assert status == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "0"], "n, steps and batch_size must be at least 1"),
        (["--steps", "0"], "n, steps and batch_size must be at least 1"),
        (["--batch-size", "0"], "n, steps and batch_size must be at least 1"),
        (["--sampler", "euler"], "unknown sampler 'euler'"),
        (["--class", "seven"], "unknown class 'seven'"),
        (["--class", "12"], "class 12 out of range"),
        (["--context", "1,0"], "class-conditional: give classes, not a context vector"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_malformed_sampling_values_on_a_run_give_one_line(capsys, tmp_path, trained, args, message):
    status, err = run_main(capsys, "sample", "--run", str(trained), "--out", str(tmp_path / "x.png"), *args)
    assert status == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("suffix,kind", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_sample_writes_jpeg_and_webp_grids(capsys, tmp_path, trained, suffix, kind):
    out = tmp_path / f"grid{suffix}"
    status, err = run_main(capsys, "sample", "--run", str(trained), "--n", "2", "--steps", "2", "--out", str(out))
    assert status == 0, err
    with Image.open(out) as grid:
        assert grid.format == kind


def test_show_run_takes_run_like_every_command(capsys, tmp_path, trained):
    for args in (["--run", str(trained)], [str(trained)]):
        out = tmp_path / "run.png"
        assert run_main(capsys, "show", "run", *args, "--out", str(out))[0] == 0
        assert Image.open(out).format == "PNG"
        out.unlink()
    status, err = run_main(capsys, "show", "run", str(trained), "--run", str(tmp_path))
    assert status == 2 and "show run shows one run, given" in err and "(show runs compares them)" in err


@pytest.mark.parametrize(
    "flag",
    [
        ["--lr", "0.1"],
        ["--dataset", "mnist"],
        ["--schedule", "cosine"],
        ["--sample-steps", "3"],
        ["--seed", "2"],
        ["--base-channels", "16"],
        ["--preset", "mnist"],
        ["--pad"],
    ],  # fmt: skip
)
def test_a_resumed_run_refuses_what_cannot_change(capsys, trained, flag):
    status, err = run_main(capsys, "train", "--resume", str(trained), "--max-steps", "2", *flag)
    assert status == 2 and f"{flag[0]} cannot change on a resumed run" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_resumed_run_takes_new_stop_conditions_logging_evaluation_and_runtime(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "1", *TINY_FLAGS]) == 0
    flags = ["--max-steps", "2", "--log-every", "2", "--checkpoint-every", "5", "--eval-every", "0", "--device", "cpu"]
    assert main(["train", "--resume", str(out), *flags, "--no-compile", "--keep", "1"]) == 0
    config = RunConfig.load(out / "config.json")
    assert (config.length.max_steps, config.log.log_every, config.log.keep, config.runtime.compile) == (2, 2, 1, False)


def test_help_states_each_default_once(capsys):
    for command in ("train", "sample", "eval", "show", "serve", "train-classifier", "train-autoencoder"):
        with pytest.raises(SystemExit) as exit:
            parser().parse_args([command, "--help"])
        out = capsys.readouterr().out
        assert exit.value.code == 0
        entries = []  # each option's lines: its first starts "  -", the others are indented further
        for line in out.splitlines():
            if line.startswith("  -"):
                entries.append(line)
            elif line.startswith("    ") and entries:
                entries[-1] += line
        for entry in entries:
            assert entry.count("default") <= 1 and "default: None" not in entry, entry
            assert entry.strip().startswith("-h") or len(entry.split()) > 2, f"no help: {entry}"
        derived = [e for e in entries if e.strip().startswith(("--lr ", "--max-steps", "--steps", "--sampler"))]
        assert all("(default: " in e for e in derived) and (derived or command not in ("train", "sample", "eval"))


def test_sigterm_stops_a_run_with_status_143_after_saving(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pixeldiffusion", "train", "--out", str(out), *TINY_FLAGS]
    process = subprocess.Popen(
        [*command, "--max-steps", "100000", "--checkpoint-every", "100000"], stderr=PIPE, text=True
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert list((out / "checkpoints").glob("step-*.safetensors")), "the run saved before it stopped"


def test_an_interrupted_run_exits_with_128_plus_the_signal(capsys, monkeypatch, tmp_path):
    import pixeldiffusion.training as training

    def interrupted(*args, **kwargs):
        raise training.Interrupted("stopped by SIGINT at step 3; checkpoint saved", signal.SIGINT)

    monkeypatch.setattr(training, "train", interrupted)
    status, err = run_main(capsys, "train", "--out", str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 130 and err.strip() == "pixeldiffusion: stopped by SIGINT at step 3; checkpoint saved"


def test_training_on_a_folder_states_the_size_it_chose(capsys, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(16):
        Image.new("L", (28, 28), 15 * i).save(folder / f"{i}.png")
    out = tmp_path / "run"
    status = main(
        ["train", "--dataset", f"folder:{folder}", "--pad", "--out", str(out), "--max-steps", "1", *TINY_FLAGS]
    )
    assert status == 0
    assert "at 32x32 pixels (padded)" in capsys.readouterr().out
    config = RunConfig.load(out / "config.json")
    assert config.data.pad and config.model.image_size == 32


@pytest.mark.parametrize(("condition", "width"), [("class", 9), ("context", 8)])
def test_training_on_the_built_in_emoji_by_category_or_attributes(tmp_path, condition, width):
    out = tmp_path / "run"
    flags = ["--dataset", "emoji", "--condition", condition, "--out", str(out), "--max-steps", "3", *TINY_FLAGS]
    assert main(["train", *flags]) == 0
    model = RunConfig.load(out / "config.json").model
    assert (model.in_channels, model.num_classes or model.context_dim) == (3, width)


def test_show_forward_uses_the_resolution_train_would(capsys, monkeypatch, tmp_path):
    from pixeldiffusion import visualize

    seen = {}

    def images(dataset, **options):
        seen.update(options)
        return torch.zeros(options["n"], 3, 8, 8, dtype=torch.uint8)

    monkeypatch.setattr(visualize, "dataset_images", images)
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (40, 44)).save(folder / "a.png")
    assert (
        run_main(capsys, "show", "forward", "--dataset", f"folder:{folder}", "--out", str(tmp_path / "f.png"))[0] == 0
    )
    assert seen["image_size"] == default_config(f"folder:{folder}").model.image_size == 40
    for flags, size in ((["--pad"], 64), (["--pad", "--image-size", "48"], 48)):  # as train --pad: 40 -> 64
        out = str(tmp_path / "p.png")
        assert run_main(capsys, "show", "forward", "--dataset", f"folder:{folder}", *flags, "--out", out)[0] == 0
        assert seen["image_size"] == size and seen["pad"]


def test_show_forward_animates_the_forward_process(capsys, tmp_path):
    gif, png = tmp_path / "forward.gif", tmp_path / "forward.png"
    status, err = run_main(capsys, "show", "forward", "--n", "2", "--gif", str(gif), "--out", str(png))
    assert status == 0 and png.is_file(), err
    with Image.open(gif) as animation:
        assert animation.n_frames == 31
    status, err = run_main(capsys, "show", "forward", "--times", "0,500,1000", "--gif", str(gif), "--out", str(png))
    with Image.open(gif) as animation:
        assert status == 0 and animation.n_frames == 3, err


def test_a_unet_without_attention_trains_and_samples_a_strip(capsys, tmp_path):
    out, strip = tmp_path / "run", tmp_path / "strip.png"
    flags = ["--attention-resolutions", "", "--no-middle-attention", "--activation", "gelu"]
    assert run_main(capsys, "train", "--out", str(out), "--max-steps", "1", *TINY_FLAGS, *flags)[0] == 0
    model = RunConfig.load(out / "config.json").model
    assert (model.attention_resolutions, model.middle_attention, model.activation) == ((), False, "gelu")
    args = ["sample", "--run", str(out), "--n", "3", "--steps", "4", "--out", str(tmp_path / "s.png")]
    status, err = run_main(capsys, *args, "--strip", str(strip))
    with Image.open(strip) as picture:  # three rows of x_T and the four steps, 16 pixels shown at 64
        assert status == 0 and picture.size == (2 + 5 * 66, 15 + 2 + 3 * 66), err


@pytest.mark.parametrize("quiet,terminal,shown", [(False, True, True), (True, True, False), (False, False, False)])
def test_sampling_shows_progress_on_a_terminal_unless_quiet(
    capsys, monkeypatch, tmp_path, trained, quiet, terminal, shown
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    args = ["sample", "--run", str(trained), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]
    status, err = run_main(capsys, *args, *(["--quiet"] if quiet else []))
    assert status == 0 and ("3/3" in err) == shown, err


def test_classifier_guidance_of_an_unconditional_run(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--max-steps", "1", "--condition", "none", *TINY_FLAGS]) == 0
    assert main(["train-classifier", "--noisy", "--run", str(run), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'classifier' / 'classifier.safetensors'}" in out
    assert "held-out accuracy on digits: 1/6 held out: t = 0: " in out and "t = 750: " in out
    png, npz = tmp_path / "guided.png", tmp_path / "guided.npz"
    args = ["sample", "--run", str(run), "--classifier", str(run / "classifier"), "--classifier-scale", "3"]
    assert main([*args, "--class", "7", "--n", "2", "--steps", "2", "--out", str(png), "--npz", str(npz)]) == 0
    with np.load(npz) as arrays:
        assert arrays["labels"].tolist() == [7, 7], "the classes the classifier steered towards"


def test_classifier_guidance_with_classifier_free_guidance_and_its_errors(capsys, tmp_path, trained):
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--noisy", "--run", str(trained), "--max-steps", "1", "--out", str(clf)]) == 0
    png = tmp_path / "g.png"
    args = ["sample", "--run", str(trained), "--classifier", str(clf), "--guidance", "2", "--steps", "2"]
    assert main([*args, "--per-class", "1", "--sampler", "heun", "--out", str(png)]) == 0
    assert Image.open(png).format == "PNG"
    for command, message in [
        (["sample", "--run", str(trained), "--classifier-scale", "2"], "a classifier scale needs a classifier"),
        (["sample", "--run", str(trained), "--classifier", str(tmp_path)], "no noisy classifier at"),
        (["sample", "--run", str(trained), "--classifier", str(clf), "--classifier-scale", "inf"], "finite"),
        (["train-classifier", "--noisy"], "--noisy needs --run RUN"),
        (["train-classifier", "--noisy", "--run", str(trained), "--dataset", "mnist"], "--dataset: a noisy"),
        (["train-classifier", "--run", str(trained)], "train a noisy classifier: add --noisy"),
        (["train-classifier"], "give --dataset NAME, or --noisy --run RUN"),
    ]:
        status, err = run_main(capsys, *command, "--out", str(tmp_path / "x.png"))
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
