"""What the page may ask for: one generation request, checked field by field against the model and against
bounds that keep a single request from occupying the machine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import SAMPLERS

MAX_STEPS = 1000  # sampling steps (and at most the model's T)
MAX_IMAGES = 16  # images per request
MAX_GUIDANCE = 20.0  # classifier-free guidance scale
MAX_SEED = 2**32 - 1
MAX_CONTEXT = 10.0  # magnitude of each context value


@dataclass(frozen=True)
class GenerateRequest:
    sampler: str  # one of SAMPLERS
    steps: int  # network evaluations, 1..min(MAX_STEPS, T)
    guidance: float  # 0..MAX_GUIDANCE
    seed: int  # 0..MAX_SEED
    n: int  # images, 1..MAX_IMAGES
    label: int | None = None  # a class index (class-conditional models); None: every class in turn
    context: tuple[float, ...] | None = None  # a context vector (context-conditional models); None: one-hot in turn


FIELDS = ("label", "context", "sampler", "steps", "guidance", "seed", "n")


def limits(pipe: Pipeline) -> dict[str, Any]:
    """The bounds of each field for this model, [low, high] (or the list of names), as the page shows them."""
    return {
        "steps": [1, min(MAX_STEPS, pipe.schedule.T)],
        "guidance": [0.0, MAX_GUIDANCE],
        "seed": [0, MAX_SEED],
        "n": [1, MAX_IMAGES],
        "context": [-MAX_CONTEXT, MAX_CONTEXT],
        "samplers": list(SAMPLERS),
    }


def defaults(pipe: Pipeline) -> dict[str, Any]:
    """The value of each absent field: the run's sampling settings (within bounds), four images, and no
    condition (every class, or one-hot context vectors, in turn)."""
    sample = pipe.config.sample
    return {
        "label": None,
        "context": None,
        "sampler": sample.sampler,
        "steps": min(sample.steps, limits(pipe)["steps"][1]),
        "guidance": min(sample.guidance, MAX_GUIDANCE),
        "seed": sample.seed % (MAX_SEED + 1),
        "n": 4,
    }


def parse_request(body: Any, pipe: Pipeline) -> GenerateRequest:
    """A request from a decoded JSON body, absent fields taking their `defaults`; raises ConfigError naming
    the first field out of bounds."""
    if not isinstance(body, dict):
        raise ConfigError("the request must be a JSON object")
    if unknown := sorted(set(body) - set(FIELDS)):
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    values = {**defaults(pipe), **body}
    if values["sampler"] not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {_show(values['sampler'])}")
    return GenerateRequest(
        sampler=values["sampler"],
        steps=_integer(values["steps"], "steps", *limits(pipe)["steps"]),
        guidance=_number(values["guidance"], "guidance", 0.0, MAX_GUIDANCE),
        seed=_integer(values["seed"], "seed", 0, MAX_SEED),
        n=_integer(values["n"], "n", 1, MAX_IMAGES),
        label=_label(values["label"], pipe),
        context=_context(values["context"], pipe),
    )


def _label(value: Any, pipe: Pipeline) -> int | None:
    """A class index from an index or a class name."""
    if value is None:
        return None
    if pipe.conditioning != "class":
        raise ConfigError(f"this model is {_kind(pipe)}: it takes no class")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"label must be a class index or name, got {_show(value)}")
    return pipe.class_index(value)


def _context(value: Any, pipe: Pipeline) -> tuple[float, ...] | None:
    """A context vector of the model's length, each value bounded."""
    if value is None:
        return None
    if pipe.conditioning != "context":
        raise ConfigError(f"this model is {_kind(pipe)}: it takes no context vector")
    dim = pipe.config.model.context_dim
    if not isinstance(value, list) or len(value) != dim:
        raise ConfigError(f"context must be a list of {dim} numbers, got {_show(value)}")
    return tuple(_number(v, "each context value", -MAX_CONTEXT, MAX_CONTEXT) for v in value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if not (_is_number(value) and isinstance(value, int) and low <= value <= high):
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {_show(value)}")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if not (_is_number(value) and math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}, got {_show(value)}")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as the request wrote it (JSON), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(pipe: Pipeline) -> str:
    return {"none": "unconditional", "class": "class-conditional", "context": "context-conditional"}[pipe.conditioning]
