"""Training: a run's state (`state`), the plan of its steps as pure functions (`plan`), the averages of its weights
(`ema`, post-hoc EMA included), the clock that all processes agree on (`clock`), one optimiser step (`step`) and the
loop that puts them together (`loop`)."""

from pixeldiffusion.training.ema import update_ema
from pixeldiffusion.training.loop import (
    Callback,
    Interrupted,
    NonFiniteLoss,
    RunSummary,
    RunView,
    Trainer,
    resolve_config,
    train,
)
from pixeldiffusion.training.plan import batch_indices, ema_decay, learning_rate, total_steps
from pixeldiffusion.training.state import TrainState

__all__ = [
    "Callback",
    "Interrupted",
    "NonFiniteLoss",
    "RunSummary",
    "RunView",
    "TrainState",
    "Trainer",
    "batch_indices",
    "ema_decay",
    "learning_rate",
    "resolve_config",
    "total_steps",
    "train",
    "update_ema",
]
