"""Pictures: every `show` figure is a valid PNG of its documented size; grids, animations, TensorBoard events."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from pixeldiffusion.cli import main
from pixeldiffusion.data import load_dataset
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.schedule import SCHEDULES, ScheduleConfig
from pixeldiffusion.training import train
from pixeldiffusion.visualize import (
    LINE,
    denoising_pictures,
    denoising_strip,
    forward_figure,
    forward_pictures,
    image_grid,
    latest_samples,
    run_figure,
    runs_figure,
    save_animation,
    save_image,
    save_video,
    schedule_figure,
)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run of three steps of the tiny model, trained once for this file."""
    path = tmp_path_factory.mktemp("visualize") / "run"
    train(tiny_config(max_steps=3, checkpoint_every=3), path)
    Pipeline.from_run(path).save_preview(path / "samples.png", gif=path / "denoising.gif")  # as `train` the command
    return path


def saved(image, path):
    """The image written as PNG and read back."""
    save_image(image, path)
    with Image.open(path) as png:
        png.load()
        assert png.format == "PNG"
        return png


def test_grid_size_from_tiles_labels_and_caption():
    images = torch.zeros(5, 1, 16, 16, dtype=torch.uint8)
    assert image_grid(images, 4, scale=2).size == (2 + 4 * 34, 2 + 2 * 34)
    two_lines = image_grid(images, 4, scale=2, col_labels=["t=0\nx"] * 4, caption="c", label_width=30)
    assert two_lines.size == (30 + 2 + 4 * 34, (LINE + 1) + (2 * LINE + 2) + 2 + 2 * 34)
    assert image_grid(images, 4, row_labels=["a long label", "b"]).width > image_grid(images, 4).width


def test_forward_figure_has_a_block_per_schedule_and_the_clean_image_at_t0(tmp_path):
    images = load_dataset("digits").images[:2]  # 16 x 16, shown 4x
    ts = [0, 500, 1000]
    figure = forward_figure(images, [ScheduleConfig(kind="linear"), ScheduleConfig(kind="cosine")], ts)
    block = (2 * LINE + 2) + 2 + 2 * (64 + 2)  # column labels, pad, two rows of tiles
    png = saved(figure, tmp_path / "forward.png")
    assert png.height == 2 * block + 8
    left = png.width - 3 * (64 + 2)  # the row labels' margin and the first pad
    first = png.crop((left, 2 * LINE + 4, left + 64, 2 * LINE + 4 + 64))
    assert first.tobytes() == Image.fromarray(images[0, 0].numpy()).resize((64, 64), Image.NEAREST).tobytes()


def test_forward_figure_defaults_to_nine_times_and_rejects_times_past_T():
    images = load_dataset("digits").images[:1]
    assert forward_figure(images, [ScheduleConfig(timesteps=80)]).width > 9 * 66
    with pytest.raises(ConfigError, match="between 0 and T = 80"):
        forward_figure(images, [ScheduleConfig(timesteps=80)], [0, 81])


def test_forward_pictures_fade_one_noise_draw_from_the_images_to_noise(tmp_path):
    images = load_dataset("digits").images[:2]
    pictures = forward_pictures(images, [ScheduleConfig(kind="linear"), ScheduleConfig(kind="cosine")])
    assert len(pictures) == 31 and len({picture.size for picture in pictures}) == 1
    top, left = LINE + 1 + 2, pictures[0].width - 2 * (64 + 2)  # under the caption, right of the row labels
    clean = Image.fromarray(images[0, 0].numpy()).resize((64, 64), Image.NEAREST)
    assert pictures[0].crop((left, top, left + 64, top + 64)).tobytes() == clean.tobytes(), "t = 0 is x_0"
    with Image.open(save_animation(pictures, tmp_path / "forward.gif")) as gif:
        assert gif.n_frames == 31
    # near t = T, x_t is almost all eps: one draw makes neighbouring frames alike, fresh draws would not
    last = forward_pictures(images, [ScheduleConfig()], [999, 1000])
    tiles = [np.asarray(p.crop((p.width - 2 * (64 + 2), top, *p.size)), dtype=float) for p in last]
    assert np.abs(tiles[0] - tiles[1]).mean() < 1


def test_denoising_strip_is_a_row_per_image_from_x_T_to_x_0(frames):
    strip = denoising_strip(frames)  # 4 frames of 3 images: x_T, then 3 steps
    assert strip.size == (2 + 4 * (64 + 2), LINE + 2 + 2 + 3 * (64 + 2))
    last = Image.fromarray(frames[-1][1][2, 0].numpy()).resize((64, 64), Image.NEAREST)
    left, top = 2 + 3 * 66, LINE + 4 + 2 * 66  # the last column, the third row
    assert strip.crop((left, top, left + 64, top + 64)).tobytes() == last.tobytes()
    assert denoising_strip(frames, columns=2).width == 2 + 2 * 66  # x_T and x_0
    with pytest.raises(PixelDiffusionError, match="no frames were recorded"):
        denoising_strip([])


def test_schedule_figure_is_three_panels_of_1200_by_380(tmp_path):
    figure = schedule_figure([ScheduleConfig(kind=kind, timesteps=200) for kind in SCHEDULES])
    assert saved(figure, tmp_path / "schedule.png").size == (1200, 380)


def test_run_figure_plots_metrics_evaluations_and_samples(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        for step in (1, 3):
            f.write(json.dumps({"kind": "eval", "step": step, "fd": 40.0 / step, "elapsed_s": step / 2}) + "\n")
        f.write('{"step": 4, "lo')  # a line cut short by a crash
    assert saved(run_figure(run), tmp_path / "run.png").size == (1300, 700)
    (run / "samples.png").unlink()
    assert saved(run_figure(run), tmp_path / "bare.png").size == (1300, 700)  # no samples, still a figure


def evaluated(folder, points, *, n=500, extractor="classifier digits-16"):
    """A folder whose metrics.jsonl holds evaluation lines at (minutes, fd) points, as train --eval-every logs them."""
    folder.mkdir()
    lines = [{"kind": "eval", "step": i, "elapsed_s": 60 * m, "fd": fd, "n": n, "extractor": extractor}
             for i, (m, fd) in enumerate(points)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_runs_figure_compares_runs_in_one_feature_space(tmp_path):
    ours = evaluated(tmp_path / "ours", [(1, 9.0), (2, 3.0), (3, 1.0)])
    with open(ours / "metrics.jsonl", "a") as f:  # the final evaluation at another count is left out
        f.write(json.dumps({"kind": "eval", "step": 9, "elapsed_s": 200, "fd": 0.5, "n": 5000}) + "\n")
    theirs = evaluated(tmp_path / "theirs", [(1.5, 12.0), (3, 6.0)])
    assert saved(runs_figure([ours, theirs], ["ours", "diffusers"]), tmp_path / "runs.png").size == (800, 500)
    out = tmp_path / "cli.png"
    assert main(["show", "runs", str(ours), str(theirs), "--labels", "ours,diffusers", "--out", str(out)]) == 0
    assert Image.open(out).size == (800, 500)
    with pytest.raises(PixelDiffusionError, match="1 labels for 2 runs"):
        runs_figure([ours, theirs], ["ours"])
    other = evaluated(tmp_path / "inception", [(1, 30.0)], extractor="inception")
    with pytest.raises(PixelDiffusionError, match="different feature spaces: classifier digits-16, inception"):
        runs_figure([ours, other])
    (tmp_path / "unevaluated").mkdir()
    (tmp_path / "unevaluated" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1}) + "\n")
    with pytest.raises(PixelDiffusionError, match="not evaluated during training: train it with --eval-every N"):
        runs_figure([ours, tmp_path / "unevaluated"])


def test_run_figure_needs_a_run_directory(tmp_path):
    with pytest.raises(PixelDiffusionError, match="no metrics.jsonl"):
        run_figure(tmp_path)


def test_latest_samples_is_the_newest_grid(tmp_path):
    assert latest_samples(tmp_path) is None
    (tmp_path / "samples").mkdir()
    for name, mtime in (("samples.png", 300), ("samples/step-00000100.png", 100), ("samples/step-00000200.png", 200)):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (mtime, mtime))
    assert latest_samples(tmp_path) == tmp_path / "samples.png"
    os.utime(tmp_path / "samples/step-00000100.png", (400, 400))
    assert latest_samples(tmp_path) == tmp_path / "samples/step-00000100.png"


@pytest.fixture(scope="module")
def frames(run_dir):
    return Pipeline.from_run(run_dir).sample(3, frames=4).frames


def test_denoising_pictures_put_x0_beside_x_t_and_write_a_gif(frames, tmp_path):
    plain = denoising_pictures(frames)
    beside = denoising_pictures(frames, show_x0=True)
    assert len(plain) == len(beside) == len(frames) == 4  # x_T, then the three recorded steps
    assert beside[0].width == 2 * plain[0].width + 8 and beside[0].height == plain[0].height
    with Image.open(save_animation(beside, tmp_path / "denoising.gif")) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == beside[0].size


def test_save_video_writes_an_mp4_padded_to_16_pixels(frames, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra (imageio-ffmpeg) is not installed")
    pictures = denoising_pictures(frames)
    path = save_video(pictures, tmp_path / "denoising.mp4", frame_ms=100, hold_ms=300)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = pictures[0].size
    assert meta["size"] == (-(-width // 16) * 16, -(-height // 16) * 16)
    assert sum(1 for _ in reader) == len(pictures) + 3  # the frames, then the last one held for 300 ms
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_tensorboard_logger_writes_metrics_and_sample_grids(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pixeldiffusion.tensorboard import tensorboard_logger

    run = tmp_path / "run"
    train(tiny_config(max_steps=2, checkpoint_every=2), run, callbacks=(tensorboard_logger(run / "tb", every=2),))
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert {"train/lr", "train/images_per_s"} <= set(events.Tags()["scalars"])
    (grid,) = events.Images("samples")
    assert grid.step == 2 and grid.width > 0
