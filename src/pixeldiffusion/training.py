"""The training loop (DDPM Algorithm 1 with AdamW, warm-up and decay, gradient clipping and an EMA).

Everything that decides the future of a run is a function of (seed, step) or is saved in the checkpoint:

- the data order: one permutation per epoch, drawn from a generator seeded with (seed, epoch);
- the per-step randomness (t, eps, flips, condition dropout): a generator reseeded with (seed, step)
  that draws for the whole global batch, of which each process keeps its own slice;
- the model, the EMA, the optimizer and the step count: saved in every checkpoint.

So a resumed run continues exactly as if it had never stopped, and a run on N processes takes the same
steps as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion import distributed
from pixeldiffusion.config import RunConfig
from pixeldiffusion.data import ImageData, to_model_range
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import UNet
from pixeldiffusion.models.embeddings import drop_condition
from pixeldiffusion.objectives import denoising_loss
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import derive_seed


class NonFiniteLoss(PixelDiffusionError):
    """The loss became NaN or infinite."""


class Interrupted(PixelDiffusionError):
    """Training was stopped by a signal after saving a checkpoint."""


def resolve_config(config: RunConfig, data: ImageData) -> RunConfig:
    """Fit the model's channels and conditioning to the dataset ("auto" condition: its labels if it has any)."""
    condition = config.data.condition
    if condition == "auto":
        condition = "class" if data.labels is not None else "context" if data.context is not None else "none"
    data.condition(condition)  # raises if the dataset lacks it
    model = replace(
        config.model,
        in_channels=data.shape[0],
        num_classes=len(data.class_names) if condition == "class" else 0,
        context_dim=data.context.shape[1] if condition == "context" else 0,
    )
    return replace(config, data=replace(config.data, condition=condition), model=model)


def ema_decay(step: int, halflife: float, rampup: float) -> float:
    """Per-step EMA decay for a half-life in steps, capped early at rampup * step (EDM's ramp-up):
    decay = 0.5 ** (1 / min(halflife, rampup * step))."""
    h = min(halflife, rampup * step)
    return 0.5 ** (1 / h) if h > 0 else 0.0


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, keep: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied. `keep`, a 0-dim tensor
    on the device, scales the update (0 leaves the EMA as it is) without a host synchronisation."""
    ema_params = [p for p in ema.parameters()]
    model_params = [p.detach() for p in model.parameters()]
    weight = 1.0 - decay if keep is None else keep * (1.0 - decay)
    torch._foreach_lerp_(ema_params, model_params, weight)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


@dataclass
class Progress:
    """Running totals between two log lines (kept on the device: no host sync per step)."""

    loss_sum: torch.Tensor  # sum of the finite step losses
    count: int = 0  # steps taken
    skipped: int = 0  # the run's count of skipped steps at the last log line
    since: float = 0.0


class Trainer:
    """Owns a run: its data, model, EMA, optimizer and step. `run()` trains until a stop condition.

    Any `nn.Module` called as model(x_t, t, cond) can be trained: pass it as `model`.
    `callbacks` are called as callback(trainer) after every step, on every process.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        model: nn.Module | None = None,
        resume: bool = False,
        callbacks: tuple[Callable[[Trainer], None], ...] = (),
    ):
        self.run_dir = Path(run_dir)
        self.process = distributed.setup(config.train.device)
        self.device = self.process.device
        data = config.data.load("train", config.model.image_size)
        self.config = config = resolve_config(config, data)
        tc = config.train
        world = self.process.world_size
        if tc.batch_size % (world * tc.grad_accum):
            raise ConfigError(
                f"batch size {tc.batch_size} must split evenly over {world} processes x {tc.grad_accum} micro-batches"
            )
        self.images = data.images.to(self.device)
        cond = data.condition(config.data.condition)
        self.cond = cond.to(self.device) if cond is not None else None
        self.class_names, self.context_names = data.class_names, data.context_names
        if len(self.images) < tc.batch_size:
            raise ConfigError(f"the batch size {tc.batch_size} is larger than the dataset ({len(self.images)} images)")
        self.steps_per_epoch = len(self.images) // tc.batch_size
        self.total_steps = (
            min(s for s in (tc.max_steps, tc.epochs and math.ceil(tc.epochs * self.steps_per_epoch)) if s)
            if (tc.max_steps or tc.epochs)
            else None
        )

        self.schedule = NoiseSchedule.from_config(config.schedule).to(self.device)
        torch.manual_seed(tc.seed)
        self.model = (model or UNet(config.model)).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        bf16 = distributed.use_bf16(tc.precision, self.device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        # the trained weights and each batch in NHWC where that is faster (the EMA takes the layout it samples in)
        channels_last = distributed.use_channels_last(tc.channels_last, self.device, bf16)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        self.step = 0
        self.first_bad = torch.tensor(-1, device=self.device)  # the first step with a NaN/inf loss or gradient
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)  # steps skipped for that reason
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self.callbacks = callbacks
        if resume and ckpt.list_checkpoints(self.run_dir):  # a run killed before its first checkpoint starts over
            self.load(ckpt.latest_checkpoint(self.run_dir))

        self.ddp = None
        if world > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.net: nn.Module = self.ddp or self.model
        # the forward half of a step as one graph when compiled: forward process, network and weighted loss
        compiled = distributed.use_compile(tc.compile, self.device, tc.minutes or 0.0)
        self.loss = torch.compile(self.forward_loss) if compiled else self.forward_loss
        self.generator = torch.Generator(self.device)
        self._epoch, self._order = -1, None
        self._stop_signal: str | None = None
        self._saved_step = -1

    # -- one step ----------------------------------------------------------------------------------

    def batch_indices(self, step: int) -> torch.Tensor:
        """Indices of the global batch of a step: consecutive slices of the epoch's permutation."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.config.train.seed, -1 - epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.images), generator=g).to(self.device)
        B = self.config.train.batch_size
        return self._order[k * B : (k + 1) * B]

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x0, t, eps, cond) of this process's share of a step's global batch."""
        tc, T = self.config.train, self.schedule.T
        idx = self.batch_indices(step)
        B = len(idx)
        g = self.generator.manual_seed(derive_seed(tc.seed, step))
        t = torch.randint(1, T + 1, (B,), generator=g, device=self.device)
        eps = torch.randn((B, *self.images.shape[1:]), generator=g, device=self.device)
        flip = torch.rand(B, generator=g, device=self.device) < 0.5
        drop = torch.rand(B, generator=g, device=self.device) < tc.cond_dropout
        share = B // self.process.world_size
        mine = slice(self.process.rank * share, (self.process.rank + 1) * share)
        x0 = to_model_range(self.images[idx[mine]])
        if self.config.data.hflip:
            x0 = torch.where(flip[mine, None, None, None], x0.flip(-1), x0)
        cond = None
        if self.cond is not None:
            cond = drop_condition(self.cond[idx[mine]], drop[mine]) if tc.cond_dropout else self.cond[idx[mine]]
        return (
            x0.contiguous(memory_format=self.memory_format),
            t[mine],
            eps[mine].contiguous(memory_format=self.memory_format),
            cond,
        )

    def forward_loss(
        self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """The weighted per-image loss (B,) of a micro-batch, with the run's prediction target, loss and weighting."""
        tc = self.config.train
        return denoising_loss(
            self.net,
            self.schedule,
            x0,
            t,
            eps,
            cond,
            prediction=self.config.prediction,
            loss=tc.loss,
            weighting=tc.weighting,
        )

    def learning_rate(self) -> float:
        """Linear warm-up, then cosine or linear decay to zero over the run (by steps, or by time for --minutes)."""
        tc = self.config.train
        warm = min(1.0, (self.step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
        progress = 0.0
        if self.total_steps:
            progress = self.step / self.total_steps
        if tc.minutes:
            progress = max(progress, self.elapsed / (60 * tc.minutes))
        progress = min(progress, 1.0)
        decay = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}
        return tc.lr * warm * decay[tc.lr_decay]

    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns the (detached) mean loss on this process."""
        tc = self.config.train
        torch.manual_seed(derive_seed(tc.seed, self.step) + self.process.rank)  # dropout inside the network
        x0, t, eps, cond = self.draw(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        micro = len(x0) // tc.grad_accum
        total = torch.zeros((), device=self.device)
        for i in range(tc.grad_accum):
            part = slice(i * micro, (i + 1) * micro)
            last = i == tc.grad_accum - 1
            with self.autocast, self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext():
                loss = self.loss(x0[part], t[part], eps[part], cond[part] if cond is not None else None).mean()
                loss = loss / tc.grad_accum
                loss.backward()
            total += loss.detach()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf"))
        bad = ~(torch.isfinite(total) & torch.isfinite(grad_norm))  # recorded on the device, read at log time
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step + 1, self.first_bad)
        keep = None
        if tc.nonfinite == "skip":  # fused AdamW leaves the weights and its state untouched where found_inf is 1
            self.optimizer.found_inf, keep = bad.float(), (~bad).float()
            self.skipped += bad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        update_ema(self.ema, self.model, ema_decay(self.step, tc.ema_halflife, tc.ema_rampup), keep)
        return torch.where(bad, 0.0, total)

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything that determines the future of the run, as tensors plus JSON."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        optim_tensors, groups = ckpt.optimizer_tensors(self.optimizer)
        tensors.update(optim_tensors)
        meta = {
            "config": json.loads(self.config.to_json()),
            "step": self.step,
            "elapsed": self.elapsed,
            "skipped_steps": int(self.skipped),
            "world_size": self.process.world_size,
            "optimizer_groups": groups,
            "class_names": list(self.class_names),
            "context_names": list(self.context_names),
        }
        return tensors, meta

    def check_finite(self) -> None:
        """Stop (nonfinite="stop") once a step had a NaN or infinite loss or gradient: one host sync, called at
        log and checkpoint time only, so the last checkpoint written is always a good one."""
        if self.config.train.nonfinite == "stop" and (bad := int(self.first_bad)) >= 0:
            raise NonFiniteLoss(
                f"the loss or its gradient became NaN or infinite at step {bad}; the last good checkpoint is in "
                f"{self.run_dir / 'checkpoints'} (try a lower --lr, or --nonfinite skip)"
            )

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main process only) and prune old ones."""
        self.check_finite()
        if not self.process.is_main or self._saved_step == self.step:
            return None
        self._saved_step = self.step
        tensors, meta = self.state()
        path = ckpt.save_checkpoint(self.run_dir / "checkpoints" / ckpt.checkpoint_name(self.step), tensors, meta)
        ckpt.prune_checkpoints(self.run_dir, self.config.train.keep)
        return path

    def load(self, path: Path) -> None:
        """Restore model, EMA, optimizer, step and clock from a checkpoint."""
        tensors, meta = ckpt.load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt.split_prefix(tensors, "model"))
            self.ema.load_state_dict(ckpt.split_prefix(tensors, "ema"))
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from e
        ckpt.restore_optimizer(
            self.optimizer, {k: v.to(self.device) for k, v in tensors.items()}, meta["optimizer_groups"]
        )
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        self.skipped.fill_(int(meta.get("skipped_steps", 0)))

    def pipeline(self) -> Pipeline:
        """The EMA weights ready to sample, with the run's schedule, configuration and class names."""
        return Pipeline(
            self.ema, self.schedule, self.config, class_names=self.class_names, context_names=self.context_names
        )

    # -- the loop ----------------------------------------------------------------------------------

    def done(self) -> bool:
        tc = self.config.train
        return bool(
            (self.total_steps and self.step >= self.total_steps) or (tc.minutes and self.elapsed >= 60 * tc.minutes)
        )

    def log(self, progress: Progress, bar: tqdm) -> None:
        """Check the loss is finite, append a line to metrics.jsonl and update the progress bar."""
        tc = self.config.train
        loss_sum = progress.loss_sum
        if self.process.world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= self.process.world_size
        self.check_finite()
        skipped = int(self.skipped)
        loss = loss_sum.item() / max(progress.count - (skipped - progress.skipped), 1)  # mean of the steps taken
        now = time.perf_counter()
        rate = progress.count * tc.batch_size / max(now - progress.since, 1e-9)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": self.learning_rate(),
            "images_per_s": rate,
            "elapsed_s": round(self.elapsed, 2),
        }
        if skipped:
            record["skipped_steps"] = skipped
        if self.process.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}", refresh=False)
        progress.loss_sum.zero_()
        progress.count, progress.skipped, progress.since = 0, skipped, now

    def run(self) -> Path:
        """Train until max_steps, epochs or minutes is reached; returns the path of the final checkpoint."""
        tc = self.config.train
        if self.process.is_main:
            ckpt.write_atomic(self.run_dir / "config.json", self.config.to_json().encode())
            ckpt.remove_partial_writes(self.run_dir / "checkpoints")
            self._trim_metrics()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.process.is_main,
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )
        progress = Progress(torch.zeros((), device=self.device), skipped=int(self.skipped), since=time.perf_counter())
        try:
            self.model.train()
            while not self.done() and self._stop_signal is None:
                start = time.perf_counter()
                progress.loss_sum += self.train_step()
                progress.count += 1
                self.elapsed += time.perf_counter() - start
                bar.update(1)
                if self.step % tc.log_every == 0:
                    self.log(progress, bar)
                if self.step % tc.checkpoint_every == 0:
                    self.save()
                for callback in self.callbacks:
                    callback(self)
            if progress.count:
                self.log(progress, bar)
            self.save()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self._stop_signal is not None:
            raise Interrupted(
                f"stopped by {self._stop_signal} at step {self.step}; checkpoint saved, resume with "
                f"`pixeldiffusion train --resume {self.run_dir}`"
            )
        return ckpt.latest_checkpoint(self.run_dir) if self.process.is_main else None

    def _trim_metrics(self) -> None:
        """Drop metrics lines beyond the step the run (re)starts from, so a resumed run's log reads as one."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= self.step]
            ckpt.write_atomic(path, "".join(line + "\n" for line in lines).encode())

    def _on_signal(self, signum: int, frame) -> None:
        self._stop_signal = signal.Signals(signum).name


@dataclass(frozen=True)
class RunSummary:
    """Where a finished run put its files."""

    run_dir: Path
    checkpoint: Path
    samples: Path
    animation: Path
    steps: int
    minutes: float


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    callbacks: tuple[Callable[[Trainer], None], ...] = (),
) -> RunSummary | None:
    """Train a run to its end, then write a grid of samples (one row per class for class-conditional
    models) and an animation of their denoising with the EMA weights. With config.train.eval_every, sample
    quality is evaluated during training (`evaluation.callback`). Returns None on processes other than the
    main one."""
    if config.train.eval_every:  # fails here, before any training, when the dataset's classifier is missing
        from pixeldiffusion.evaluation.callback import evaluation_callback

        callbacks = (*callbacks, evaluation_callback(config))
    trainer = Trainer(config, run_dir, model=model, resume=resume, callbacks=callbacks)
    final = trainer.run()
    if dist.is_initialized():
        # together: a process that tore its group down and exited while the main one still wrote the last
        # checkpoint died in gloo's teardown now and then (SIGABRT), failing the whole launch
        dist.barrier()
        dist.destroy_process_group()
    if not trainer.process.is_main:
        return None
    pipe = trainer.pipeline()
    classes = trainer.config.model.num_classes
    png, gif = trainer.run_dir / "samples.png", trainer.run_dir / "denoising.gif"
    pipe.sample(per_class=8 if classes else None).save(png)
    animation = pipe.sample(2 * classes if classes else 16, record=40)  # a light GIF: two images of each class
    replace(animation, nrow=classes or 8).save(gif=gif)
    return RunSummary(trainer.run_dir, final, png, gif, trainer.step, trainer.elapsed / 60)
