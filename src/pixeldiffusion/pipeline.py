"""A trained model ready to generate: `Pipeline.from_run(dir).sample(...)`, the API behind `pixeldiffusion sample`."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.checkpoint import write_atomic
from pixeldiffusion.config import RunConfig, SampleConfig, from_dict
from pixeldiffusion.data import to_uint8
from pixeldiffusion.distributed import resolve_device, use_bf16, use_channels_last
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import UNet
from pixeldiffusion.sampling import Callback, sample, timestep_grid
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import derive_seed
from pixeldiffusion.visualize import (
    as_uint8_numpy,
    auto_scale,
    denoising_pictures,
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
    ) -> None:
        """Write the grid as PNG, the denoising as an animated GIF and/or MP4 (x_t, optionally beside the
        predicted x0), and the images as .npz (uint8 (N, H, W, C) under "images", plus "labels" or "context")."""
        if png:
            save_image(self.grid(), png)
        if gif or mp4:
            if not self.frames:
                raise PixelDiffusionError("no frames were recorded: sample with record > 0 to write an animation")
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
    """A network, its noise schedule and its run configuration, ready to sample."""

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        config: RunConfig,
        *,
        class_names: tuple[str, ...] = (),
        context_names: tuple[str, ...] = (),
    ):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.schedule = schedule.to(self.device)
        self.config = config
        self.class_names, self.context_names = tuple(class_names), tuple(context_names)
        self._compiled: nn.Module | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, weights: str = "ema", device: str | torch.device = "auto"
    ) -> Pipeline:
        """Load a checkpoint file; weights="ema" (default) or "model" (the raw training weights)."""
        if weights not in ("ema", "model"):
            raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
        tensors, meta = ckpt.load_checkpoint(path)
        try:
            config = from_dict(RunConfig, meta["config"])
        except KeyError as e:
            raise ckpt.CheckpointError(f"{path} has no configuration") from e
        model = UNet(config.model)
        try:
            model.load_state_dict(ckpt.split_prefix(tensors, weights))
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{path}: weights do not match the configuration it records") from e
        model.to(resolve_device(device))
        return cls(
            model,
            NoiseSchedule.from_config(config.schedule),
            config,
            class_names=tuple(meta.get("class_names", ())),
            context_names=tuple(meta.get("context_names", ())),
        )

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> Pipeline:
        """Load the latest checkpoint of a training run directory."""
        return cls.from_checkpoint(ckpt.latest_checkpoint(run_dir), **kwargs)

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

    def class_index(self, label: int | str) -> int:
        """A class index from an index or a class name (case-insensitive)."""
        names = self.class_names or tuple(str(i) for i in range(self.config.model.num_classes))
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
            indices = [self.class_index(x) for x in labels] if labels is not None else []
            if not indices:
                indices = [i % self.config.model.num_classes for i in range(n)]
            return torch.tensor((indices * n)[:n] if len(indices) < n else indices[:n], device=self.device)
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

    def sample(
        self,
        n: int | None = None,
        *,
        labels=None,
        context=None,
        per_class: int | None = None,
        record: int = 0,
        callback: Callback | None = None,
        **overrides,
    ) -> Samples:
        """Generate images. Overrides are SampleConfig fields (sampler, steps, eta, guidance, seed, ...);
        per_class=K makes one row of K images per class; record=F keeps F evenly spaced denoising frames;
        callback(i, t, x_t, x0) sees every step of the first batch as it is computed (see `sampling`).
        Under torchrun the batches are shared out over the processes and gathered: every process returns all the
        images, the same as one process would make."""
        cfg: SampleConfig = replace(self.config.sample, **({"n": n} if n else {}), **overrides)
        row_labels, nrow = None, min(cfg.n, 8)
        if per_class:
            if self.conditioning != "class":
                raise ConfigError("per-class sampling needs a class-conditional model")
            classes = self.config.model.num_classes
            labels = [c for c in range(classes) for _ in range(per_class)]
            cfg = replace(cfg, n=classes * per_class)
            nrow = per_class
            row_labels = list(self.class_names) or [str(c) for c in range(classes)]
        cond = self.conditions(cfg.n, labels, context)
        grid = timestep_grid(self.schedule, cfg.steps, cfg.spacing)
        keep = {round(i * (len(grid) - 2) / max(record - 1, 1)) for i in range(record)} if record else set()
        frames: list = []

        def on_step(i, t, x_t, x0):
            if i in keep:
                frames.append((grid[i + 1], to_uint8(x_t).cpu(), to_uint8(x0).cpu()))
            if callback is not None:
                callback(i, t, x_t, x0)

        c, s = self.config.model.in_channels, self.config.model.image_size
        network = self.network(cfg)
        starts = range(0, cfg.n, cfg.batch_size)
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        chunks = {}
        for j in range(rank, len(starts), world):  # under torchrun each process takes every world-th chunk
            start, size = starts[j], min(cfg.batch_size, cfg.n - starts[j])
            g = torch.Generator(self.device).manual_seed(derive_seed(cfg.seed, j))
            x_T = torch.randn((size, c, s, s), generator=g, device=self.device)
            if j == 0 and keep:  # the first frame is the pure noise x_T; nothing is predicted yet
                frames.append((grid[0], to_uint8(x_T).cpu(), torch.full_like(x_T, 128, dtype=torch.uint8).cpu()))
            chunks[j] = self._fitting(
                network,
                x_T,
                cond[start : start + size] if cond is not None else None,
                cfg,
                generator=g,
                callback=on_step if j == 0 and (keep or callback) else None,
            )
        if world > 1:  # every process ends with all the images, in chunk order (as one process would make them)
            gathered: list = [None] * world
            dist.all_gather_object(gathered, {j: x.cpu() for j, x in chunks.items()})
            chunks = {j: x.to(self.device) for part in gathered for j, x in part.items()}
        return Samples(torch.cat([chunks[j] for j in range(len(starts))]), cond, row_labels, nrow, frames)

    def _fitting(
        self, network: Callable, x_T: torch.Tensor, cond: torch.Tensor | None, cfg: SampleConfig, **kwargs
    ) -> torch.Tensor:
        """Sample x_T in one batch, or, when that runs out of memory, in two halves (recursively). The deterministic
        samplers give the same images either way; the stochastic ones draw their noise in another order."""
        try:
            return sample(
                network,
                self.schedule,
                x_T,
                prediction=self.config.prediction,
                cond=cond,
                sampler=cfg.sampler,
                steps=cfg.steps,
                spacing=cfg.spacing,
                guidance=cfg.guidance,
                clip_x0=cfg.clip_x0,
                eta=cfg.eta,
                variance=cfg.variance,
                **kwargs,
            )
        except torch.OutOfMemoryError:
            if len(x_T) == 1:
                raise
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half, callback = len(x_T) // 2, kwargs.pop("callback", None)
        first = self._fitting(
            network, x_T[:half], None if cond is None else cond[:half], cfg, callback=callback, **kwargs
        )
        return torch.cat(
            [first, self._fitting(network, x_T[half:], None if cond is None else cond[half:], cfg, **kwargs)]
        )
