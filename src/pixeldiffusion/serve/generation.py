"""One generation for the page: the images `pixeldiffusion sample` makes for the same settings, with evenly
spaced intermediates handed to a callback while they are computed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pixeldiffusion.data import to_uint8
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import shown_steps
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
    """The request's images, uint8 (N, C, H, W), those of `pipe.sample(...)` for the same settings; `on_frame` sees
    `frames` evenly spaced intermediates, the last included."""
    shown = shown_steps(request.steps, frames)
    for step in pipe.generate(
        request.n,
        labels=None if request.label is None else [request.label],
        context=request.context,
        sampler=request.sampler,
        steps=request.steps,
        guidance=request.guidance,
        seed=request.seed,
    ):
        if step.i in shown:
            on_frame(Frame(step.i + 1, request.steps, step.s, to_uint8(step.x).cpu(), to_uint8(step.x0).cpu()))
    return to_uint8(step.x).cpu()
