"""One generation for the page: the images `pixeldiffusion sample` makes for the same settings, with evenly
spaced intermediates handed to a callback while they are computed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from pixeldiffusion.data import to_uint8
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import sample, timestep_grid
from pixeldiffusion.seeding import derive_seed
from pixeldiffusion.serve.request import GenerateRequest

FRAMES = 40  # intermediates shown per generation, at most


@dataclass(frozen=True)
class Frame:
    """The state of the denoising after `step` of `steps` steps."""

    step: int
    steps: int
    t: int  # the time x_t has reached (0 after the last step)
    x_t: torch.Tensor  # uint8 (N, C, H, W)
    x0: torch.Tensor  # uint8 (N, C, H, W): the prediction of x_0 that x_t was computed from


def generate(
    pipe: Pipeline, request: GenerateRequest, *, on_frame: Callable[[Frame], None], frames: int = FRAMES
) -> torch.Tensor:
    """The request's images, uint8 (N, C, H, W), equal to `pipe.sample(...)`'s for the same settings (one batch:
    requests hold at most 16 images); `on_frame` sees `frames` evenly spaced intermediates, the last included."""
    cfg = replace(
        pipe.config.sample,
        sampler=request.sampler,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
        n=request.n,
    )
    cond = pipe.conditions(cfg.n, None if request.label is None else [request.label], request.context)
    grid = timestep_grid(pipe.schedule, cfg.steps, cfg.spacing)
    shown = {round(k * (cfg.steps - 1) / max(frames - 1, 1)) for k in range(frames)}

    def on_step(i: int, t: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if i in shown:
            on_frame(Frame(i + 1, cfg.steps, grid[i + 1], to_uint8(x_t).cpu(), to_uint8(x0).cpu()))

    channels, size = pipe.config.model.in_channels, pipe.config.model.image_size
    g = torch.Generator(pipe.device).manual_seed(derive_seed(cfg.seed, 0))  # the seed of Pipeline.sample's batch 0
    x_T = torch.randn((cfg.n, channels, size, size), generator=g, device=pipe.device)
    x_0 = sample(
        pipe.model,
        pipe.schedule,
        x_T,
        prediction=pipe.config.prediction,
        cond=cond,
        sampler=cfg.sampler,
        steps=cfg.steps,
        spacing=cfg.spacing,
        guidance=cfg.guidance,
        clip_x0=cfg.clip_x0,
        eta=cfg.eta,
        variance=cfg.variance,
        generator=g,
        callback=on_step,
    )
    return to_uint8(x_0).cpu()
