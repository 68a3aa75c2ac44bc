"""The state of a run: everything that decides its future, saved and restored as one unit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import RunConfig
from pixeldiffusion.training.ema import PowerEMAs


class TrainState:
    """Model, EMA (and post-hoc EMA's power-function EMAs, with `posthoc`), optimizer, step, training seconds and
    skipped steps; `tensors_and_meta` and `load` save and restore all of it (checkpoint.py writes it)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device, posthoc: bool = False
    ):
        self.model = model
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.posthoc = PowerEMAs(model) if posthoc else None
        self.optimizer = optimizer
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of the run
        self.skipped = torch.zeros((), dtype=torch.long, device=device)  # steps skipped for a NaN/inf

    def tensors_and_meta(self, config: RunConfig, **meta) -> tuple[dict[str, torch.Tensor], dict]:
        """The checkpoint of this state: tensors, and JSON metadata (the config and `meta` included)."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        if self.posthoc:
            tensors.update(self.posthoc.tensors())
        optim_tensors, groups = ckpt.optimizer_tensors(self.optimizer)
        tensors.update(optim_tensors)
        return tensors, {
            "config": json.loads(config.to_json()),
            "step": self.step,
            "elapsed": self.elapsed,
            "skipped_steps": int(self.skipped),
            "optimizer_groups": groups,
            **meta,
        }

    def load(self, path: Path) -> None:
        """Restore every part from a checkpoint file."""
        tensors, meta = ckpt.load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt.split_prefix(tensors, "model"))
            self.ema.load_state_dict(ckpt.split_prefix(tensors, "ema"))
            if self.posthoc:
                self.posthoc.load(tensors, path)
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from e
        device = self.skipped.device
        ckpt.restore_optimizer(self.optimizer, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer_groups"])
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        self.skipped.fill_(int(meta.get("skipped_steps", 0)))
