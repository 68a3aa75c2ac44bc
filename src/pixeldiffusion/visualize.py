"""Pictures: sample grids, the forward process (a figure or animation frames), schedule and training plots, and the
denoising (animations and strips).

Grids are drawn with Pillow and plots with matplotlib's object API (no pyplot state, no display); plots are
rendered to Pillow images, so every picture is saved the same way, by `save_image`. Text is set in DejaVu
Sans, the face matplotlib ships and plots with, which has the Greek letters of the captions.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pixeldiffusion.checkpoint import write_atomic
from pixeldiffusion.data import load_dataset, to_model_range, to_uint8
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.sampling import shown_steps
from pixeldiffusion.schedule import NoiseSchedule, ScheduleConfig

LINE = 13  # height of a line of text, in pixels
FORWARD_COLUMNS = 9  # times shown by `forward_figure` unless told: 0, T/8, ..., T
FORWARD_FRAMES = 31  # frames of `forward_pictures` unless told: t = 0, T/30, ..., T
STRIP_COLUMNS = 10  # x_t shown by `denoising_strip`: x_T, then nine steps down to x_0
VIDEO_BLOCK = 16  # MP4 frames are padded to a multiple of this (the macroblock size players expect)
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF"}
IMAGE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}  # grids of small images: keep their pixels

# -- grids -------------------------------------------------------------------------------------------


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), 10)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 (N, C, H, W) -> PIL images (grey or RGB)."""
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def image_grid(
    images: torch.Tensor,
    nrow: int,
    *,
    scale: int = 1,
    pad: int = 2,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    caption: str | None = None,
    label_width: int | None = None,
) -> Image.Image:
    """Tile uint8 images (N, C, H, W) into rows of `nrow`, enlarged `scale` times (nearest neighbour),
    with optional labels left of each row (in a margin `label_width` pixels wide, by default the widest
    label's), labels of one or more lines above each column, and a caption above everything."""
    tiles = _to_pil(images)
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    rows = (len(tiles) + nrow - 1) // nrow
    font = _font()
    if label_width is None:
        label_width = (max(int(font.getlength(label)) for label in row_labels) + 6) if row_labels else 0
    caption_height = LINE + 1 if caption else 0
    header = (max(label.count("\n") + 1 for label in col_labels) * LINE + 2) if col_labels else 0
    left, top = label_width + pad, caption_height + header + pad
    mode = "L" if images.shape[1] == 1 else "RGB"
    canvas = Image.new(mode, (left + nrow * (w + pad), top + rows * (h + pad)), color="white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        canvas.paste(tile.resize((w, h), Image.NEAREST), (left + c * (w + pad), top + r * (h + pad)))
    for r, label in enumerate(row_labels or []):
        draw.text((3, top + r * (h + pad) + h // 2), label, fill="black", font=font, anchor="lm")
    for c, label in enumerate(col_labels or []):
        centre = left + c * (w + pad) + w // 2
        for k, line in enumerate(label.split("\n")):
            draw.text((centre, caption_height + k * LINE), line, fill="black", font=font, anchor="ma")
    if caption:
        draw.text((left, 1), caption, fill="black", font=font)
    return canvas


def _join(images: Sequence[Image.Image], *, vertical: bool, gap: int = 8) -> Image.Image:
    """Images one below the other (or side by side) on white, `gap` pixels apart."""
    mode = "RGB" if any(image.mode == "RGB" for image in images) else "L"
    lengths = [image.height if vertical else image.width for image in images]
    across = max(image.width if vertical else image.height for image in images)
    along = sum(lengths) + gap * (len(images) - 1)
    canvas = Image.new(mode, (across, along) if vertical else (along, across), color="white")
    offset = 0
    for image, length in zip(images, lengths, strict=True):
        canvas.paste(image.convert(mode), (0, offset) if vertical else (offset, 0))
        offset += length + gap
    return canvas


def auto_scale(size: int, target: int = 64) -> int:
    """An integer enlargement that shows a size-pixel image at about `target` pixels."""
    return max(1, target // size)


def as_uint8_numpy(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) tensor -> (N, H, W, C) numpy, the layout of .npz sample files."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


# -- the forward process and the schedules -------------------------------------------------------------


def _short(value: float) -> str:
    """A number in five characters or so: 0.531, or 4e-05 when tiny."""
    return f"{value:.3f}" if value >= 5e-4 else f"{value:.0e}"


def _forward_process(
    images: torch.Tensor, schedules: Sequence[ScheduleConfig], ts: Sequence[int] | None, *, count: int, seed: int
) -> tuple[list[NoiseSchedule], list[int], torch.Tensor]:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4) of uint8 images (N, C, H, W) under each
    schedule at each t of ts (default: `count` times from 0 to T), as uint8 (S, len(ts), N, C, H, W), with the
    schedules' tables and the times. One noise draw eps (from `seed`) serves every schedule and every t."""
    if not schedules:
        raise ConfigError("give at least one schedule")
    tables = [NoiseSchedule.from_config(config) for config in schedules]
    if ts is None:
        ts = [round(i * tables[0].T / (count - 1)) for i in range(count)]
    for config, table in zip(schedules, tables, strict=True):
        if outside := [t for t in ts if not 0 <= t <= table.T]:
            raise ConfigError(f"times must be between 0 and T = {table.T} ({config.kind}), got {outside}")
    x0 = to_model_range(images)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = torch.stack([torch.stack([table.q_sample(x0, t, eps) for t in ts]) for table in tables])
    return tables, list(ts), to_uint8(x_t)  # (S, len(ts), N, C, H, W)


def forward_figure(
    images: torch.Tensor,
    schedules: Sequence[ScheduleConfig],
    ts: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> Image.Image:
    """The forward process q(x_t | x_0) of uint8 images (N, C, H, W) as one picture (`_forward_process`).

    One block of rows per schedule, labelled with its kind; in a block, one row per image and one column per
    t (default: 0, T/8, ..., T), captioned with t and alpha_bar_t. Every block draws the same noise eps
    (from `seed`), so blocks differ only by their schedule.
    """
    tables, ts, x_t = _forward_process(images, schedules, ts, count=FORWARD_COLUMNS, seed=seed)
    n, scale = len(images), auto_scale(images.shape[-1])
    width = max(int(_font().getlength(config.kind)) for config in schedules) + 8
    blocks = []
    for config, table, x in zip(schedules, tables, x_t, strict=True):
        blocks.append(
            image_grid(
                x.transpose(0, 1).flatten(0, 1),  # a row per image
                len(ts),
                scale=scale,
                row_labels=[config.kind] + [""] * (n - 1),
                col_labels=[f"t={t}\nᾱ={_short(float(table.alpha_bar[t]))}" for t in ts],
                label_width=width,
            )
        )
    return _join(blocks, vertical=True)


def forward_pictures(
    images: torch.Tensor,
    schedules: Sequence[ScheduleConfig],
    ts: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> list[Image.Image]:
    """The forward process q(x_t | x_0) of uint8 images (N, C, H, W) as animation frames (`_forward_process`): one
    picture per t (default: 31 times from 0 to T), a row of the images per schedule labelled with its kind and
    alpha_bar_t. Every frame noises with the same eps, so the frames play as one continuous fade."""
    tables, ts, x_t = _forward_process(images, schedules, ts, count=FORWARD_FRAMES, seed=seed)
    pairs = list(zip(schedules, tables, strict=True))
    labels = [[f"{config.kind} ᾱ={_short(float(table.alpha_bar[t]))}" for config, table in pairs] for t in ts]
    width = max(int(_font().getlength(label)) for row in labels for label in row) + 8  # one size for every frame
    scale, n = auto_scale(images.shape[-1]), len(images)
    return [
        image_grid(x_t[:, k].flatten(0, 1), n, scale=scale, row_labels=row, caption=f"t = {t}", label_width=width)
        for k, (t, row) in enumerate(zip(ts, labels, strict=True))
    ]


def dataset_images(
    dataset: str,
    *,
    n: int = 3,
    seed: int = 0,
    data_dir: str | None = None,
    image_size: int | None = None,
    pad: bool = False,
) -> torch.Tensor:
    """n uint8 images (N, C, H, W) of a dataset's test split at image_size (default: its own; `pad`: padded with
    black up to it rather than resized), picked at random by `seed`: what `show forward` noises."""
    padded = image_size if pad else None
    data = load_dataset(dataset, split="test", data_dir=data_dir, image_size=image_size, pad=padded)
    picked = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.images[picked]


def _render(figure: Figure) -> Image.Image:
    """A matplotlib figure as an RGB image of figsize x dpi pixels."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def schedule_figure(schedules: Sequence[ScheduleConfig]) -> Image.Image:
    """beta_t, alpha_bar_t and log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)) against t for each schedule,
    in three panels side by side (1200 x 380 pixels)."""
    if not schedules:
        raise ConfigError("give at least one schedule")
    figure = Figure(figsize=(12, 3.8), dpi=100, layout="constrained")
    beta_ax, alpha_bar_ax, snr_ax = figure.subplots(1, 3)
    for config in schedules:
        table = NoiseSchedule.from_config(config)
        t = torch.arange(1, table.T + 1)
        label = f"{config.kind} (T={table.T})"
        beta_ax.plot(t, table.beta[t], label=label)
        alpha_bar_ax.plot(t, table.alpha_bar[t], label=label)
        snr_ax.plot(t, table.snr(t).log(), label=label)
    beta_ax.set(title="β_t: noise variance added at step t", xlabel="t", yscale="log")
    alpha_bar_ax.set(title="ᾱ_t: signal variance kept in x_t", xlabel="t")
    snr_ax.set(title="log SNR(t) = log ᾱ_t / (1 − ᾱ_t)", xlabel="t")
    beta_ax.legend()
    return _render(figure)


# -- training runs -------------------------------------------------------------------------------------


def _read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """The training lines and the evaluation lines ("kind": "eval") of a metrics.jsonl; a line cut short by
    a crash is skipped."""
    training, evaluations = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evaluations if record.get("kind") == "eval" else training).append(record)
    return training, evaluations


def _smooth(values: list[float]) -> list[float]:
    """Exponential moving average over about a twentieth of the points, debiased at the start (TensorBoard's
    smoothing)."""
    weight = max(0.0, 1 - 20 / max(len(values), 1))
    smoothed, average = [], 0.0
    for i, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**i))
    return smoothed


SHARES = ("precision", "recall", "accuracy")  # evaluation metrics in [0, 1], drawn on the right-hand axis


def _plot_evaluations(ax: Axes, evaluations: list[dict], key: str, xlabel: str, *, unit: float = 1.0) -> None:
    """The Frechet distance of the evaluation lines that record `key` (log scale, left) and their precision, recall
    and accuracy (right), against key / unit; only the lines of the most frequent sample count, since scores at
    different counts do not compare."""
    ax.set(title=f"evaluation against {xlabel}", xlabel=xlabel)
    points = _comparable(evaluations, key)
    if not points:
        ax.text(0.5, 0.5, f"no evaluation with {xlabel} recorded", ha="center", va="center", transform=ax.transAxes)
        return
    x = [r[key] / unit for r in points]
    ax.plot(x, [r["fd"] for r in points], marker="o", color="C3", label="Frechet distance")
    last = points[-1]
    ax.set(yscale="log", ylabel=f"Frechet distance ({last.get('extractor', 'features')}, n = {last.get('n')})")
    shares = ax.twinx()
    for i, name in enumerate(n for n in SHARES if any(n in r for r in points)):
        shares.plot(
            [r[key] / unit for r in points if name in r],
            [r[name] for r in points if name in r],
            marker=".",
            linestyle="--",
            color=f"C{i}",
            label=name,
        )
    shares.set(ylim=(0, 1.02))
    lines = ax.get_legend_handles_labels()[0] + shares.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize="small")


def _comparable(evaluations: list[dict], key: str) -> list[dict]:
    """The evaluation lines that record `key` and a Frechet distance, of the most frequent sample count only."""
    points = [record for record in evaluations if key in record and _is_number(record.get("fd"))]
    counts = [record.get("n") for record in points]
    return [record for record in points if record.get("n") == max(counts, key=counts.count)] if points else []


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def latest_samples(run_dir: str | Path) -> Path | None:
    """The newest sample grid of a run: samples.png or samples/step-XXXXXXXX.png, whichever was written last."""
    run_dir = Path(run_dir)
    grids = [p for p in (run_dir / "samples.png", *(run_dir / "samples").glob("step-*.png")) if p.is_file()]
    return max(grids, key=lambda p: p.stat().st_mtime, default=None)


def run_figure(run_dir: str | Path) -> Image.Image:
    """A training run at a glance (1300 x 700 pixels): loss (raw and smoothed) and learning rate against steps,
    the evaluation metrics against steps and training minutes, and the latest sample grid."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PixelDiffusionError(f"{run_dir} has no metrics.jsonl: give the directory of a training run")
    training, evaluations = _read_metrics(path)
    figure = Figure(figsize=(13, 7), dpi=100, layout="constrained")
    panels = figure.add_gridspec(2, 3)
    loss_ax, lr_ax = figure.add_subplot(panels[0, 0]), figure.add_subplot(panels[0, 1])
    steps_ax, minutes_ax = figure.add_subplot(panels[1, 0]), figure.add_subplot(panels[1, 1])
    samples_ax = figure.add_subplot(panels[:, 2])

    steps, loss = [r["step"] for r in training], [r["loss"] for r in training]
    loss_ax.plot(steps, loss, color="C0", alpha=0.3, label="logged")
    loss_ax.plot(steps, _smooth(loss), color="C0", label="smoothed")
    loss_ax.set(title="training loss", xlabel="step", yscale="log")
    loss_ax.legend()
    lr_ax.plot(steps, [r["lr"] for r in training], color="C1")
    lr_ax.set(title="learning rate", xlabel="step")
    _plot_evaluations(steps_ax, evaluations, "step", "step")
    _plot_evaluations(minutes_ax, evaluations, "elapsed_s", "training minutes", unit=60)

    samples_ax.set_axis_off()
    grid = latest_samples(run_dir)
    if grid is None:
        samples_ax.text(0.5, 0.5, "no sample grid yet", ha="center", va="center")
    else:
        with Image.open(grid) as image:
            samples_ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
        samples_ax.set_title(f"latest samples: {grid.relative_to(run_dir)}")
    if training:
        last = training[-1]
        figure.suptitle(f"{run_dir.name}: step {last['step']}, {last.get('elapsed_s', 0) / 60:.1f} training minutes")
    return _render(figure)


def runs_figure(run_dirs: Sequence[str | Path], labels: Sequence[str] = ()) -> Image.Image:
    """Runs side by side (800 x 500 pixels): the Frechet distance of each run's evaluations during training (its
    most frequent sample count) against training minutes, on a log scale. Any folder whose metrics.jsonl has
    "kind": "eval" lines with "elapsed_s" and "fd" takes part (the diffusers baseline's among them)."""
    if labels and len(labels) != len(run_dirs):
        raise PixelDiffusionError(f"{len(labels)} labels for {len(run_dirs)} runs")
    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    spaces = set()
    for i, run_dir in enumerate(map(Path, run_dirs)):
        path = run_dir / "metrics.jsonl"
        if not path.is_file():
            raise PixelDiffusionError(f"{run_dir} has no metrics.jsonl: give the directories of training runs")
        points = _comparable(_read_metrics(path)[1], "elapsed_s")
        if not points:
            raise PixelDiffusionError(f"{run_dir} was not evaluated during training: train it with --eval-every N")
        spaces.add(points[-1].get("extractor", "features"))
        label = f"{labels[i] if labels else run_dir.name} (n = {points[-1].get('n')})"
        ax.plot([r["elapsed_s"] / 60 for r in points], [r["fd"] for r in points], marker="o", label=label)
    if len(spaces) > 1:  # distances in different feature spaces do not compare
        raise PixelDiffusionError(f"the runs were scored in different feature spaces: {', '.join(sorted(spaces))}")
    ax.set(title="sample quality against training time", xlabel="training minutes", yscale="log")
    ax.set(ylabel=f"Frechet distance ({spaces.pop()})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _render(figure)


# -- animations and files ------------------------------------------------------------------------------


def denoising_pictures(
    frames: Sequence[tuple[int, torch.Tensor, torch.Tensor]], *, nrow: int = 8, show_x0: bool = False
) -> list[Image.Image]:
    """One picture per recorded frame (t, x_t, x0) of uint8 images: the grid of x_t captioned with t and,
    with show_x0, the predicted x0 beside it."""
    pictures = []
    for t, x_t, x0 in frames:
        columns, scale = min(nrow, len(x_t)), auto_scale(x_t.shape[-1])
        picture = image_grid(x_t, columns, scale=scale, caption=f"x_t at t = {t}")
        if show_x0:
            picture = _join([picture, image_grid(x0, columns, scale=scale, caption="predicted x₀")], vertical=False)
        pictures.append(picture)
    return pictures


def denoising_strip(
    frames: Sequence[tuple[int, torch.Tensor, torch.Tensor]], columns: int = STRIP_COLUMNS
) -> Image.Image:
    """The reverse process x_T ... x_0 in one picture: a row per image and `columns` of the recorded frames
    (t, x_t, x0) of uint8 images, evenly spaced (`shown_steps`) from x_T to x_0, each column captioned with t."""
    if not frames:
        raise PixelDiffusionError("no frames were recorded: sample with frames > 0 to draw the reverse process")
    picked = [frames[i] for i in shown_steps(len(frames), columns)]
    x_t = torch.stack([x for _, x, _ in picked], dim=1)  # (N, columns, C, H, W)
    scale = auto_scale(x_t.shape[-1])
    return image_grid(x_t.flatten(0, 1), len(picked), scale=scale, col_labels=[f"t={t}" for t, _, _ in picked])


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write a picture atomically, in the format its suffix names (IMAGE_SUFFIXES; PNG without one)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in IMAGE_SUFFIXES:
        raise ConfigError(f"cannot write {path}: name it {', '.join(IMAGE_SUFFIXES)}")
    image_format = IMAGE_SUFFIXES.get(suffix, "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **IMAGE_OPTIONS.get(image_format, {}))
    write_atomic(path, buffer.getvalue())
    return path


def save_animation(frames: list[Image.Image], path: str | Path, *, frame_ms: int = 80, hold_ms: int = 1500) -> Path:
    """An animated GIF looping over frames, holding the last one; palette shared so colours do not flicker."""
    path = Path(path)
    frames = [f.convert("RGB") for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False
    )
    write_atomic(path, buffer.getvalue())
    return path


def save_video(frames: Sequence[Image.Image], path: str | Path, *, frame_ms: int = 80, hold_ms: int = 1500) -> Path:
    """An H.264 MP4 of the frames, holding the last one, written atomically. Needs the `video` extra
    (imageio-ffmpeg, whose wheel ships an ffmpeg binary). Frames are padded with white to a multiple of
    16 pixels."""
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise PixelDiffusionError("writing MP4 needs imageio-ffmpeg: pip install 'pixeldiffusion[video]'") from e
    if not frames:
        raise PixelDiffusionError("no frames to write")
    path = Path(path)
    size = [-(-max(getattr(f, side) for f in frames) // VIDEO_BLOCK) * VIDEO_BLOCK for side in ("width", "height")]
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(partial), size, fps=1000 / frame_ms, macro_block_size=VIDEO_BLOCK, ffmpeg_log_level="error"
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in [*frames, *[frames[-1]] * round(hold_ms / frame_ms)]:
            canvas = Image.new("RGB", size, color="white")
            canvas.paste(frame.convert("RGB"))
            writer.send(canvas.tobytes())
        writer.close()  # ffmpeg finishes the file
        os.replace(partial, path)
    finally:
        writer.close()  # no-ops unless a frame failed
        partial.unlink(missing_ok=True)
    return path
