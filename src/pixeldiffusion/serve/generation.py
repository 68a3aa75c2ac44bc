"""One generation for the page: the images `pixeldiffusion sample` makes for the same settings, with evenly
spaced intermediates handed to a callback while they are computed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pixeldiffusion.data import to_uint8
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import timestep_grid
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
    """The request's images, uint8 (N, C, H, W), those of `pipe.sample(...)` for the same settings (one batch:
    requests hold at most 16 images); `on_frame` sees `frames` evenly spaced intermediates, the last included."""
    steps = request.steps
    grid = timestep_grid(pipe.schedule, steps, pipe.config.sample.spacing)
    shown = {round(k * (steps - 1) / max(frames - 1, 1)) for k in range(frames)}

    def on_step(i: int, t: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if i in shown:
            on_frame(Frame(i + 1, steps, grid[i + 1], to_uint8(x_t).cpu(), to_uint8(x0).cpu()))

    samples = pipe.sample(
        request.n,
        labels=None if request.label is None else [request.label],
        context=request.context,
        callback=on_step,
        sampler=request.sampler,
        steps=steps,
        guidance=request.guidance,
        seed=request.seed,
        batch_size=request.n,
    )
    return to_uint8(samples.images).cpu()
