"""A trained model ready to generate: `Pipeline.from_run(dir).sample(...)`, the API behind `pixeldiffusion sample`."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pixeldiffusion.checkpoint import write_atomic
from pixeldiffusion.config import RunConfig, SampleConfig
from pixeldiffusion.data import to_uint8
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models.classifier import NoisyClassifier, load_noisy_classifier
from pixeldiffusion.process import Process, resolve_device
from pixeldiffusion.runtime import use_bf16, use_channels_last
from pixeldiffusion.sampling import ClassifierGuidance, Step, sample_steps, shown_steps
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import ImageNoise
from pixeldiffusion.visualize import (
    as_uint8_numpy,
    auto_scale,
    denoising_pictures,
    denoising_strip,
    image_grid,
    save_animation,
    save_image,
    save_video,
)


@dataclass
class Samples:
    """Generated images in [-1, 1] (N, C, H, W), their conditions, and recorded denoising frames."""

    images: torch.Tensor
    cond: torch.Tensor | None = None
    row_labels: list[str] | None = None  # one label per grid row (per-class sampling)
    nrow: int = 8  # images per grid row
    frames: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (t, x_t, x0) as uint8

    def grid(self, **kwargs):
        size = self.images.shape[-1]
        return image_grid(
            to_uint8(self.images), self.nrow, scale=auto_scale(size), row_labels=self.row_labels, **kwargs
        )

    def save(
        self,
        png: str | Path | None = None,
        *,
        gif: str | Path | None = None,
        mp4: str | Path | None = None,
        npz: str | Path | None = None,
        show_x0: bool = False,
        strip: str | Path | None = None,
    ) -> None:
        """Write the grid as PNG, the denoising as an animated GIF and/or MP4 (x_t, optionally beside the
        predicted x0) and/or as a strip x_T ... x_0 (a picture), and the images as .npz (uint8 (N, H, W, C) under
        "images", plus "labels" or "context")."""
        if png:
            save_image(self.grid(), png)
        if strip:
            save_image(denoising_strip(self.frames), strip)
        if gif or mp4:
            if not self.frames:
                raise PixelDiffusionError("no frames were recorded: sample with frames > 0 to write an animation")
            pictures = denoising_pictures(self.frames, nrow=self.nrow, show_x0=show_x0)
            if gif:
                save_animation(pictures, gif)
            if mp4:
                save_video(pictures, mp4)
        if npz:
            arrays = {"images": as_uint8_numpy(to_uint8(self.images))}
            if self.cond is not None:
                arrays["labels" if not self.cond.is_floating_point() else "context"] = self.cond.cpu().numpy()
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            write_atomic(Path(npz), buffer.getvalue())


class Pipeline:
    """A network, its noise schedule and its run configuration, ready to sample; for a latent model (Rombach et al.
    2022) also its autoencoder, whose decoder turns every sample and frame into pixels."""

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        config: RunConfig,
        *,
        class_names: tuple[str, ...] = (),
        context_names: tuple[str, ...] = (),
        autoencoder: nn.Module | None = None,
    ):
        if (autoencoder is None) != (config.latent.autoencoder is None):
            raise PixelDiffusionError("a latent model needs its autoencoder, and only a latent model takes one")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.autoencoder = autoencoder.eval().to(self.device) if autoencoder is not None else None
        self.schedule = schedule.to(self.device)
        self.config = config
        self.class_names, self.context_names = tuple(class_names), tuple(context_names)
        self._compiled: nn.Module | None = None

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, weights: str = "ema", device: str | torch.device = "auto"
    ) -> Pipeline:
        """Load a run directory (its latest checkpoint), a checkpoint file, a diffusers folder (UNet2DModel and
        scheduler, converted to our U-Net) or a Hub repository of either ("user/repo" or "hf://user/repo");
        weights="ema" (default) or "model" (a run's raw training weights). See interop/pretrained.py."""
        from pixeldiffusion.interop.pretrained import read_model

        found = read_model(source, weights=weights)
        return cls(
            found.network().to(resolve_device(device)),
            NoiseSchedule.from_config(found.config.diffusion.schedule),
            found.config,
            class_names=found.class_names,
            context_names=found.context_names,
            autoencoder=found.autoencoder(),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Pipeline:
        """Load a checkpoint file (`from_pretrained`)."""
        return cls.from_pretrained(path, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> Pipeline:
        """Load the latest checkpoint of a training run directory (`from_pretrained`)."""
        return cls.from_pretrained(run_dir, **kwargs)

    def network(self, config: SampleConfig) -> Callable[..., torch.Tensor]:
        """The network as the sampler calls it: compiled once on first use if config.compile (with CUDA graphs on a
        GPU), under bf16 autocast if config.precision asks for it, its output always fp32 and the caller's own.
        Its weights are put in the memory format config.channels_last asks for (in place)."""
        bf16 = use_bf16(config.precision, self.device)
        channels_last = use_channels_last(config.channels_last, self.device, bf16)
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model, graphs = self.model, False
        if config.compile:
            graphs = self.device.type == "cuda"
            if self._compiled is None:
                self._compiled = torch.compile(self.model, mode="reduce-overhead" if graphs else None, dynamic=False)
            model = self._compiled
        if not (bf16 or graphs):
            return model

        def network(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
            if graphs:  # a CUDA graph's output buffer is reused by its next replay: copy it out (.float() or clone)
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, t, cond)
            return out.float() if out.dtype != torch.float32 else out.clone()

        return network

    @property
    def conditioning(self) -> str:
        return self.config.model.conditioning

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels of what the sampler walks: x = D(z / scale_factor) in [-1, 1] for a latent model (clamped: the
        decoder may overshoot), z itself for a pixel model."""
        if self.autoencoder is None:
            return z
        return self.autoencoder.decode(z / self.config.latent.scale_factor).clamp(-1, 1)

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the model's classes (their indices where it has none); () for a model without classes."""
        return self.class_names or tuple(str(i) for i in range(self.config.model.num_classes))

    def class_index(self, label: int | str, names: tuple[str, ...] | None = None) -> int:
        """A class index from an index or a class name (case-insensitive), of the model's classes or of `names`."""
        names = self.classes if names is None else names
        if isinstance(label, str) and not label.isdigit():
            folded = [n.casefold() for n in names]
            if label.casefold() not in folded:
                raise ConfigError(f"unknown class {label!r}; the classes are: {', '.join(names)}")
            return folded.index(label.casefold())
        index = int(label)
        if not 0 <= index < len(names):
            raise ConfigError(f"class {index} out of range; the classes are 0..{len(names) - 1}: {', '.join(names)}")
        return index

    def conditions(self, n: int, labels=None, context=None) -> torch.Tensor | None:
        """The condition batch: given labels (indices or names) or context vectors, else every class in turn."""
        kind = self.conditioning
        if kind == "none":
            if labels is not None or context is not None:
                raise ConfigError("this model is unconditional: it takes no class or context")
            return None
        if kind == "class":
            if context is not None:
                raise ConfigError("this model is class-conditional: give classes, not a context vector")
            return self.class_labels(n, labels, self.classes)
        if labels is not None:
            raise ConfigError("this model is context-conditional: give --context values, not classes")
        dim = self.config.model.context_dim
        if context is None:
            return torch.eye(dim, device=self.device)[torch.arange(n) % dim]
        values = torch.as_tensor(context, dtype=torch.float32).reshape(-1)
        if values.numel() == 0 or values.numel() % dim:
            raise ConfigError(f"a context vector of this model has {dim} values, got {values.numel()}")
        rows = values.reshape(-1, dim).to(self.device)
        return rows.repeat((n + len(rows) - 1) // len(rows), 1)[:n]

    def class_labels(self, n: int, labels, names: tuple[str, ...]) -> torch.Tensor:
        """n class indices (n,) of `names`: the given labels (indices or names) repeated, else every class in turn."""
        indices = [self.class_index(x, names) for x in labels] if labels is not None else []
        if not indices:
            indices = [i % len(names) for i in range(n)]
        return torch.tensor((indices * n)[:n] if len(indices) < n else indices[:n], device=self.device)

    def guiding_classifier(self, classifier, scale: float | None) -> NoisyClassifier | None:
        """The noisy classifier to guide with (loaded when given as a path), checked to fit this model."""
        if classifier is None:
            if scale is not None:
                raise ConfigError("a classifier scale needs a classifier to guide with (--classifier)")
            return None
        if self.conditioning == "context":
            raise ConfigError("classifier guidance steers towards classes: not for a context-conditional model")
        if not isinstance(classifier, NoisyClassifier):
            classifier = load_noisy_classifier(classifier)
        classifier.check_fits(self.config.model, self.config.diffusion.schedule)
        return classifier.to(self.device).eval()

    def sample(
        self,
        n: int | None = None,
        *,
        labels=None,
        context=None,
        per_class: int | None = None,
        classifier: NoisyClassifier | str | Path | None = None,
        classifier_scale: float | None = None,
        frames: int = 0,
        processes: Process | None = None,
        progress: bool = False,
        **overrides,
    ) -> Samples:
        """Generate images. Overrides are SampleConfig fields (sampler, steps, eta, guidance, seed, ...);
        per_class=K makes one row of K images per class; frames=F keeps F evenly spaced denoising frames of the
        first batch; progress shows a progress bar.

        A noisy classifier (or its file, `train-classifier --noisy`) adds classifier guidance at classifier_scale
        (default 1) towards each image's class: its condition on a class-conditional model (combined with `guidance`),
        and on an unconditional one `labels` or per_class rows of the classifier's classes, which go to it alone.

        Image i starts from, and is denoised with, noise of the stream (seed, i) alone, so its pixels do not depend
        on the batch size, on an out-of-memory split or on the number of processes. With `processes` (a torchrun
        launch; every process must call), each process samples its share of the images and every process returns
        all of them; without it this process samples everything and no collective is entered."""
        cfg: SampleConfig = replace(self.config.sample, **({"n": n} if n else {}), **overrides)
        classifier = self.guiding_classifier(classifier, classifier_scale)
        unconditional = classifier is not None and self.conditioning == "none"  # the classes are the classifier's
        names = classifier.class_names if unconditional else self.classes
        row_labels, nrow = None, min(cfg.n, 8)
        if per_class:
            if not names:
                raise ConfigError("per-class sampling needs a class-conditional model or a classifier to guide with")
            labels = [c for c in range(len(names)) for _ in range(per_class)]
            cfg = replace(cfg, n=len(names) * per_class)
            nrow = per_class
            row_labels = list(names)
        cond = self.conditions(cfg.n, None if unconditional else labels, context)
        y = self.class_labels(cfg.n, labels, names) if unconditional else cond
        mine = processes.share(cfg.n) if processes else range(cfg.n)
        noise = ImageNoise(cfg.seed, mine, self.device)
        network = self.network(cfg)
        batches = range(0, len(mine), cfg.batch_size)
        shown = shown_steps(cfg.steps, frames - 1) if frames and mine.start == 0 else []  # frame 0 is x_T
        recorded: list = []
        parts = []
        my_cond = cond[mine.start : mine.stop] if cond is not None else None
        scale = 1.0 if classifier_scale is None else classifier_scale
        guide = ClassifierGuidance(classifier, y[mine.start : mine.stop], scale) if classifier is not None else None
        with tqdm(total=len(batches) * cfg.steps, disable=not progress, unit="step", desc="sample") as bar:
            for start in batches:
                part = slice(start, start + cfg.batch_size)
                batch_cond = my_cond[part] if my_cond is not None else None
                batch_guide = guide[part] if guide is not None else None
                parts.append(
                    self._fitting(
                        network, noise[part], batch_cond, cfg, shown if start == 0 else [], recorded, bar, batch_guide
                    )
                )
        images = torch.cat(parts) if parts else torch.empty(0, device=self.device)
        if processes and processes.world_size > 1:  # every process ends with all the images, in index order
            images = torch.cat([x.to(self.device) for x in processes.all_gather(images.cpu())])
        return Samples(images, cond if classifier is None else y, row_labels, nrow, recorded)

    def save_preview(self, png: str | Path, *, gif: str | Path | None = None) -> None:
        """The picture of a run: a row of 8 samples per class for a class-conditional model, else the configured n;
        with `gif`, the denoising of two images per class (16 images for other models), 41 frames."""
        classes = self.config.model.num_classes
        self.sample(per_class=8 if classes else None).save(png)
        if gif:
            animation = self.sample(2 * classes if classes else 16, frames=41)
            replace(animation, nrow=classes or 8).save(gif=gif)

    def generate(self, n: int, *, labels=None, context=None, **overrides) -> Iterator[Step]:
        """The steps of one batch of n images, to watch the denoising as it happens (the web page), x and x0 in
        pixels; the last step's x holds the same images that `sample` returns for the same settings."""
        cfg: SampleConfig = replace(self.config.sample, n=n, **overrides)
        cond = self.conditions(n, labels, context)
        for step in self.steps(self.network(cfg), ImageNoise(cfg.seed, range(n), self.device), cond, cfg):
            yield replace(step, x=self.decode(step.x), x0=self.decode(step.x0)) if self.autoencoder else step

    def steps(
        self,
        network: Callable,
        noise: ImageNoise,
        cond: torch.Tensor | None,
        cfg: SampleConfig,
        classifier_guidance: ClassifierGuidance | None = None,
    ) -> Iterator[Step]:
        """The one sampling loop of a batch: x_T drawn from the images' own streams, then every step of cfg's sampler
        (the last step's x is the batch's images). The web page and `sample` both walk it."""
        if cfg.clip_x0 and self.autoencoder:
            raise ConfigError("clip_x0 must be off for a latent model: its latents are not bounded to [-1, 1]")
        c, s = self.config.model.in_channels, self.config.model.image_size
        x_T = noise.randn((c, s, s))
        yield Step(-1, self.schedule.T, self.schedule.T, x_T, torch.zeros_like(x_T))  # before the first step
        yield from sample_steps(
            network,
            self.schedule,
            x_T,
            prediction=self.config.diffusion.prediction,
            cond=cond,
            sampler=cfg.sampler,
            steps=cfg.steps,
            spacing=cfg.spacing,
            guidance=cfg.guidance,
            classifier_guidance=classifier_guidance,
            clip_x0=cfg.clip_x0,
            noise=noise,
            eta=cfg.eta,
            variance=cfg.variance,
        )

    def _fitting(
        self,
        network: Callable,
        noise: ImageNoise,
        cond: torch.Tensor | None,
        cfg: SampleConfig,
        shown: list[int],
        recorded: list,
        bar: tqdm,
        classifier_guidance: ClassifierGuidance | None = None,
    ) -> torch.Tensor:
        """Sample one batch, or, when that runs out of memory, its two halves (recursively): each image keeps its own
        noise streams, so the images are the same either way. Frames of the `shown` steps go to `recorded`."""
        done = 0
        try:
            for step in self.steps(network, noise, cond, cfg, classifier_guidance):
                if step.i < 0 and shown:  # x_T, where nothing is predicted yet (shown mid-grey)
                    x_T = self.decode(step.x)
                    recorded.append((step.t, to_uint8(x_T).cpu(), torch.full_like(x_T, 128, dtype=torch.uint8).cpu()))
                elif step.i in shown:
                    recorded.append(
                        (step.s, to_uint8(self.decode(step.x)).cpu(), to_uint8(self.decode(step.x0)).cpu())
                    )
                done += step.i >= 0
                bar.update(step.i >= 0)
            return self.decode(step.x)
        except torch.OutOfMemoryError:
            if len(noise) == 1:
                raise
        bar.update(-done)
        recorded.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(noise) // 2  # each half restarts its images' streams from their beginning
        halves = []
        for part, frames in ((slice(None, half), shown), (slice(half, None), [])):
            part_cond = None if cond is None else cond[part]
            guide = None if classifier_guidance is None else classifier_guidance[part]
            halves.append(self._fitting(network, noise[part], part_cond, cfg, frames, recorded, bar, guide))
        return torch.cat(halves)
