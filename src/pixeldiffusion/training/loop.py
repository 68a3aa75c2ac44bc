"""The training loop: a run's state, clock and step put together, with logging, checkpoints and callbacks."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import RunConfig
from pixeldiffusion.data import ImageData
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import build_unet
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.process import Process, setup, teardown
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.training import rundir
from pixeldiffusion.training.autoencoder import encode, latent_autoencoder
from pixeldiffusion.training.clock import RunClock
from pixeldiffusion.training.state import TrainState
from pixeldiffusion.training.step import TrainStep


class NonFiniteLoss(PixelDiffusionError):
    """The loss became NaN or infinite."""


class Interrupted(PixelDiffusionError):
    """Training was stopped by a signal after saving a checkpoint."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def resolve_config(config: RunConfig, data: ImageData) -> RunConfig:
    """Fit the model's channels (a latent model: the latent's) and conditioning to the dataset ("auto" condition: its
    labels if it has any)."""
    condition = config.data.condition
    if condition == "auto":
        condition = "class" if data.labels is not None else "context" if data.context is not None else "none"
    data.condition(condition)  # raises if the dataset lacks it
    autoencoder = config.latent.autoencoder
    if autoencoder and autoencoder.in_channels != data.shape[0]:
        raise ConfigError(
            f"the autoencoder takes images of {autoencoder.in_channels} channels, {data.name} has {data.shape[0]}"
        )
    model = replace(
        config.model,
        in_channels=autoencoder.latent_channels if autoencoder else data.shape[0],
        num_classes=len(data.class_names) if condition == "class" else 0,
        context_dim=data.context.shape[1] if condition == "context" else 0,
    )
    return replace(config, data=replace(config.data, condition=condition), model=model)


def check_fits(model: nn.Module, config: RunConfig) -> None:
    """A given U-Net (`train --init`) must be the one the resolved config describes: checkpoints rebuild it from it."""
    differ = [k for k, v in vars(config.model).items() if getattr(model.config, k) != v]
    if differ:
        wanted = ", ".join(
            f"{k} {getattr(config.model, k)} (the model has {getattr(model.config, k)})" for k in differ
        )
        raise ConfigError(f"the given U-Net does not fit this data, which needs {wanted}")


class RunView:
    """What a callback sees of the run after a step; it changes nothing."""

    def __init__(self, trainer: Trainer):
        self._trainer = trainer

    @property
    def step(self) -> int:
        return self._trainer.state.step

    @property
    def elapsed(self) -> float:
        """Training seconds as this process counts them (the processes agree on them at every log line)."""
        return self._trainer.clock.local

    @property
    def run_dir(self) -> Path:
        return self._trainer.run_dir

    @property
    def config(self) -> RunConfig:
        return self._trainer.config

    @property
    def process(self) -> Process:
        return self._trainer.process

    def pipeline(self) -> Pipeline:
        """The EMA weights ready to sample (not shared over processes unless the caller passes `processes`)."""
        return self._trainer.pipeline()

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors and metadata a checkpoint of this step holds."""
        return self._trainer.checkpoint()


Callback = Callable[[RunView], None]


class Trainer:
    """A run: its data, state, step and clock. `run()` trains until a stop condition; every process of a torchrun
    launch runs one, and they agree on every step they take.

    Any `nn.Module` called as model(x_t, t, cond) can be trained: pass it as `model`. `callbacks` are called as
    callback(view) after every step, on every process.
    """

    command = "train"  # the command that resumes a run

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        model: nn.Module | None = None,
        resume: bool = False,
        callbacks: tuple[Callback, ...] = (),
    ):
        self.run_dir = Path(run_dir)
        self.process = process = setup(config.runtime.device)
        optim = config.optim
        if optim.batch_size % (process.world_size * optim.grad_accum):
            raise ConfigError(
                f"batch size {optim.batch_size} must split evenly over {process.world_size} processes x "
                f"{optim.grad_accum} micro-batches"
            )
        data = self._load_data(config)
        self.config = config = resolve_config(config, data)
        self.class_names, self.context_names = data.class_names, data.context_names
        cond = data.condition(config.data.condition)
        device = process.device
        self.schedule = NoiseSchedule.from_config(config.diffusion.schedule).to(device)
        torch.manual_seed(config.seed)  # the initial weights
        if model is not None:
            check_fits(model, config)
        model = (model or build_unet(config.model)).to(device)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim.lr,
            betas=(0.9, optim.adam_beta2),
            weight_decay=optim.weight_decay,
            fused=True,
        )
        self.state = TrainState(model, optimizer, device=device, posthoc=bool(optim.ema_snapshot_every))
        images, flipped, self.autoencoder = data.images.to(device), None, None
        # the dataset encoded once, as posterior means: a sample drawn once would only perturb each image for good
        if config.latent.autoencoder:
            self.autoencoder = latent_autoencoder(config, self.run_dir, resume=resume).to(device)
            scale = config.latent.scale_factor
            flipped = scale * encode(self.autoencoder, images.flip(-1)) if config.data.hflip else None
            images = scale * encode(self.autoencoder, images)
        self.train_step = self.make_step(images, cond.to(device) if cond is not None else None, flipped)
        # loaded after TrainStep has laid the weights out, so that restored optimizer moments take their layout
        if resume and ckpt.list_checkpoints(self.run_dir):  # a run killed before its first checkpoint starts over
            self.restore(ckpt.latest_checkpoint(self.run_dir))
        minutes = config.length.minutes
        self.clock = RunClock(
            process,
            elapsed=self.state.elapsed,
            budget_s=60 * minutes if minutes else None,
            agree_every=config.log.log_every,
            step=self.state.step,
        )
        self.callbacks = callbacks
        self.view = RunView(self)
        if len(images) < optim.batch_size and process.is_main:
            tqdm.write(
                f"the dataset has {len(images)} images, fewer than a batch of {optim.batch_size}: "
                "each batch holds every image more than once"
            )
        self._saved_step = self._snapshot_step = -1

    def make_step(self, images: torch.Tensor, cond: torch.Tensor | None, flipped: torch.Tensor | None) -> TrainStep:
        """The run's optimiser step (a distillation run has its own)."""
        return TrainStep(self.config, self.state, self.process, images, cond, self.schedule, flipped=flipped)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: everything `checkpoint` wrote that decides the run's future."""
        self.state.load(path)

    def _load_data(self, config: RunConfig) -> ImageData:
        """The training split; under torchrun the main process reads (and caches) it first, the others after."""
        if not self.process.is_main:
            self.process.barrier()
        data = config.data.load("train", config.pixel_size)
        if self.process.is_main:
            self.process.barrier()
        return data

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def step(self) -> int:
        return self.state.step

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The state's tensors and metadata, and a latent run's autoencoder (so that a checkpoint samples alone)."""
        tensors, meta = self.state.tensors_and_meta(
            self.config,
            world_size=self.process.world_size,
            class_names=list(self.class_names),
            context_names=list(self.context_names),
        )
        if self.autoencoder is not None:
            tensors.update({f"autoencoder/{k}": v for k, v in self.autoencoder.state_dict().items()})
        return tensors, meta

    def check_finite(self) -> None:
        """Stop (nonfinite="stop") once a step had a NaN or infinite loss or gradient: one host sync, called at
        log and checkpoint time only, so the last checkpoint written is always a good one."""
        if self.config.optim.nonfinite == "stop" and (bad := int(self.train_step.first_bad)) >= 0:
            raise NonFiniteLoss(
                f"the loss or its gradient became NaN or infinite at step {bad}; the last good checkpoint is in "
                f"{self.run_dir / 'checkpoints'} (try a lower --lr, or --nonfinite skip)"
            )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main process only) and prune old ones."""
        self.check_finite()
        self.state.elapsed = self.clock.elapsed
        if not self.process.is_main or self._saved_step == self.state.step:
            return None
        self._saved_step = self.state.step
        tensors, meta = self.checkpoint()
        path = ckpt.save_checkpoint(
            self.run_dir / "checkpoints" / ckpt.checkpoint_name(self.state.step), tensors, meta
        )
        ckpt.prune_checkpoints(self.run_dir, self.config.log.keep)
        return path

    def save_snapshot(self) -> None:
        """Write the post-hoc EMAs of the current step (main process only), once per step."""
        if self.process.is_main and self._snapshot_step != self.state.step:
            self._snapshot_step = self.state.step
            self.state.posthoc.save_snapshot(self.run_dir, self.state.step)

    def pipeline(self) -> Pipeline:
        """The EMA weights ready to sample, with the run's schedule, configuration and class names."""
        return Pipeline(
            self.state.ema,
            self.schedule,
            self.config,
            class_names=self.class_names,
            context_names=self.context_names,
            autoencoder=self.autoencoder,
        )

    # -- the loop ----------------------------------------------------------------------------------

    def finished(self) -> bool:
        total = self.train_step.total_steps
        return bool((total and self.state.step >= total) or self.clock.out_of_time or self.clock.stop_signal)

    def log(self, loss_sum: torch.Tensor, steps: int, skipped_before: int, since: float, bar: tqdm) -> None:
        """Check the loss is finite, append a line to metrics.jsonl and update the progress bar."""
        loss_sum = self.process.all_mean(loss_sum)
        self.check_finite()
        skipped = int(self.state.skipped)
        loss = loss_sum.item() / max(steps - (skipped - skipped_before), 1)  # mean of the steps taken
        rate = steps * self.config.optim.batch_size / max(time.perf_counter() - since, 1e-9)
        lr = self.train_step.learning_rate(self.state.step, self.clock.elapsed)
        record = {"step": self.state.step, "loss": loss, "lr": lr, "images_per_s": rate}
        record["elapsed_s"] = round(self.clock.elapsed, 2)
        if skipped:
            record["skipped_steps"] = skipped
        if self.process.is_main:
            rundir.append_metrics(self.run_dir / "metrics.jsonl", record)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)

    def run(self) -> Path | None:
        """Train until max_steps, epochs or minutes is reached or a signal asks to stop; returns the final checkpoint
        (on the main process; None on the others). A signal raises `Interrupted` after the checkpoint is written."""
        log = self.config.log
        if self.process.is_main:
            ckpt.write_atomic(self.run_dir / "config.json", self.config.to_json().encode())
            ckpt.remove_partial_writes(self.run_dir / "checkpoints")
            rundir.trim_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        total, main = self.train_step.total_steps, self.process.is_main
        bar = tqdm(
            total=total, initial=self.state.step, disable=not main, unit="step", dynamic_ncols=True, desc=self.command
        )
        loss_sum, steps, skipped, since = torch.zeros((), device=self.process.device), 0, int(self.state.skipped), 0.0
        self.state.model.train()
        with self.clock.catching_signals(), bar:
            while not self.finished():
                since = since or time.perf_counter()
                with self.clock.timing():
                    loss_sum += self.train_step(self.clock.elapsed)
                steps += 1
                step = self.state.step
                self.clock.tick(step)  # a stop request is seen here, by every process at the same step
                bar.update(1)
                if step % log.log_every == 0 or self.finished():
                    self.log(loss_sum, steps, skipped, since, bar)
                    loss_sum.zero_()
                    steps, skipped, since = 0, int(self.state.skipped), 0.0
                if step % log.checkpoint_every == 0:
                    self.save()
                if self.config.optim.ema_snapshot_every and step % self.config.optim.ema_snapshot_every == 0:
                    self.save_snapshot()
                if log.sample_every and step % log.sample_every == 0 and main:  # the main process alone samples
                    self.pipeline().save_preview(self.run_dir / "samples" / f"step-{step:08d}.png")
                for callback in self.callbacks:
                    callback(self.view)
            self.clock.agree()
            self.save()
            if self.state.posthoc and not self.clock.stop_signal:  # post-hoc EMA can end where the run ends
                self.save_snapshot()
        if self.clock.stop_signal:
            name = signal.Signals(self.clock.stop_signal).name
            raise Interrupted(
                f"stopped by {name} at step {self.state.step}; checkpoint saved, resume with "
                f"`pixeldiffusion {self.command} --resume {self.run_dir}`",
                self.clock.stop_signal,
            )
        return ckpt.latest_checkpoint(self.run_dir) if main else None


@dataclass(frozen=True)
class RunSummary:
    """Where a finished run put its files."""

    run_dir: Path
    checkpoint: Path
    steps: int
    minutes: float


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    callbacks: tuple[Callback, ...] = (),
    trainer_class: type[Trainer] = Trainer,
) -> RunSummary | None:
    """Train a run to its end (every process of a torchrun launch calls it) and leave the process group. Returns
    None on processes other than the main one. Evaluation during training is a callback:
    `callbacks=(evaluation.callback.evaluation_callback(config),)`, as `pixeldiffusion train --eval-every` does.
    A distillation run passes its own `trainer_class`."""
    run_dir = Path(run_dir)
    process = setup(config.runtime.device)
    with rundir.locked(run_dir) if process.is_main else contextlib.nullcontext():
        trainer = trainer_class(config, run_dir, model=model, resume=resume, callbacks=callbacks)
        try:
            final = trainer.run()
        except Interrupted:  # every process stops at the same step: they can leave together
            teardown(process)
            raise
        teardown(process)  # not after other errors, which may hit one process only: its exit ends the launch
    if not process.is_main:
        return None
    return RunSummary(run_dir, final, trainer.state.step, trainer.clock.elapsed / 60)
