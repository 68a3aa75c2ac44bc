"""One optimiser step (DDPM Algorithm 1): draw the step's batch, noise it, take the weighted loss's gradient,
clip it, step AdamW and the EMA. Every draw comes from a named stream of (seed, step), so the step is the same
whether it runs in one process or is shared over many, first or after a resume."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pixeldiffusion.config import RunConfig
from pixeldiffusion.data import to_model_range
from pixeldiffusion.models.embeddings import drop_condition
from pixeldiffusion.models.mp_unet import force_weight_norm_, normalized_weights
from pixeldiffusion.objectives import denoising_loss, draw_times
from pixeldiffusion.process import Process
from pixeldiffusion.runtime import training_compile_options, use_bf16, use_channels_last, use_compile
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import generator, stream_seed
from pixeldiffusion.training.ema import update_ema
from pixeldiffusion.training.plan import batch_indices, ema_decay, learning_rate, total_steps
from pixeldiffusion.training.state import TrainState


@dataclass(frozen=True)
class Batch:
    """This process's share of a step's global batch."""

    x0: torch.Tensor  # clean images in [-1, 1] (b, C, H, W)
    t: torch.Tensor  # times in 1..T (b,)
    eps: torch.Tensor  # the noise (b, C, H, W)
    cond: torch.Tensor | None  # labels or context rows, the dropped ones replaced by the null condition


class TrainStep:
    """The step of a run: its network (DDP-wrapped and compiled where asked), precision and memory layout."""

    def __init__(
        self,
        config: RunConfig,
        state: TrainState,
        process: Process,
        images: torch.Tensor,
        cond: torch.Tensor | None,
        schedule: NoiseSchedule,
        *,
        flipped: torch.Tensor | None = None,
    ):
        """`images`: uint8 pixels, or a latent run's float latents with `flipped`, those of the mirrored images (when
        hflip), since a mirrored latent is not the latent of the mirrored image."""
        self.config, self.state, self.process, self.schedule = config, state, process, schedule
        self.images, self.cond, self.flipped = images, cond, flipped
        optim, runtime, device = config.optim, config.runtime, process.device
        self.total_steps = total_steps(config.length.max_steps, config.length.epochs, len(images), optim.batch_size)
        bf16 = use_bf16(runtime.precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        channels_last = use_channels_last(runtime.channels_last, device, bf16)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        state.model.to(memory_format=self.memory_format)
        self.ddp = None
        if process.world_size > 1:
            self.ddp = DistributedDataParallel(state.model, device_ids=[device] if device.type == "cuda" else None)
        self.net: nn.Module = self.ddp or state.model
        self.normalized_weights = normalized_weights(state.model)  # EDM2's network: kept at unit norm
        # the forward half of a step as one graph when compiled: forward process, network and weighted loss
        compiled = use_compile(runtime.compile, device, config.length.minutes)
        options = training_compile_options(device, channels_last)
        self.loss = torch.compile(self.forward_loss, options=options) if compiled else self.forward_loss
        self.first_bad = torch.tensor(-1, device=device)  # the first step with a NaN/inf loss or gradient

    def draw(self, step: int) -> Batch:
        """This process's share of the global batch of `step`: its images, and t, eps, flips and condition dropout
        from the streams (seed, purpose, step), drawn for the whole global batch so that any split agrees."""
        seed, device, B = self.config.seed, self.process.device, self.config.optim.batch_size
        idx = batch_indices(seed, step, len(self.images), B, device)
        diffusion = self.config.diffusion
        t_stream = generator(seed, "t", step, device=device)
        t = draw_times(
            self.schedule, B, t_stream, sampling=diffusion.t_sampling, p_mean=diffusion.p_mean, p_std=diffusion.p_std
        )
        eps_stream = generator(seed, "noise", step, device=device)
        eps = torch.randn((B, *self.images.shape[1:]), generator=eps_stream, device=device)
        share = self.process.share(B)
        mine = slice(share.start, share.stop)
        x0 = self.images[idx[mine]]
        x0 = to_model_range(x0) if x0.dtype == torch.uint8 else x0  # latents are the model's inputs already
        if self.config.data.hflip:
            flip = torch.rand(B, generator=generator(seed, "flip", step, device=device), device=device) < 0.5
            mirrored = x0.flip(-1) if self.flipped is None else self.flipped[idx[mine]]
            x0 = torch.where(flip[mine, None, None, None], mirrored, x0)
        cond = None
        if self.cond is not None:
            cond = self.cond[idx[mine]]
            if self.config.optim.cond_dropout:
                drop_stream = generator(seed, "cond-dropout", step, device=device)
                drop = torch.rand(B, generator=drop_stream, device=device) < self.config.optim.cond_dropout
                cond = drop_condition(cond, drop[mine])
        return Batch(
            x0.contiguous(memory_format=self.memory_format),
            t[mine],
            eps[mine].contiguous(memory_format=self.memory_format),
            cond,
        )

    def forward_loss(
        self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """The weighted per-image loss (b,) of a micro-batch, with the run's prediction target, loss and weighting."""
        diffusion = self.config.diffusion
        return denoising_loss(
            self.net,
            self.schedule,
            x0,
            t,
            eps,
            cond,
            prediction=diffusion.prediction,
            loss=diffusion.loss,
            weighting=diffusion.weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
        )

    def learning_rate(self, step: int, elapsed: float) -> float:
        optim, minutes = self.config.optim, self.config.length.minutes
        return learning_rate(
            step,
            lr=optim.lr,
            warmup_steps=optim.warmup_steps,
            decay=optim.lr_decay,
            total_steps=self.total_steps,
            elapsed=elapsed,
            budget_s=60 * minutes if minutes else None,
        )

    def __call__(self, elapsed: float = 0.0) -> torch.Tensor:
        """Take the state's next step (`elapsed`: the agreed training seconds, for a time budget's learning rate);
        returns this process's mean loss, detached, 0 where the step was not finite."""
        state, optim = self.state, self.config.optim
        torch.manual_seed(stream_seed(self.config.seed, "dropout", state.step, self.process.rank))  # network dropout
        batch = self.draw(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = self.learning_rate(state.step, elapsed)
        micro = len(batch.x0) // optim.grad_accum
        total = torch.zeros((), device=self.process.device)
        for i in range(optim.grad_accum):
            part = slice(i * micro, (i + 1) * micro)
            last = i == optim.grad_accum - 1
            cond = batch.cond[part] if batch.cond is not None else None
            with self.autocast, self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext():
                loss = self.loss(batch.x0[part], batch.t[part], batch.eps[part], cond).mean() / optim.grad_accum
                loss.backward()
            total += loss.detach()
        grad_norm = nn.utils.clip_grad_norm_(state.model.parameters(), optim.grad_clip or float("inf"))
        bad = ~(torch.isfinite(total) & torch.isfinite(grad_norm))  # recorded on the device, read at log time
        self.first_bad = torch.where(bad & (self.first_bad < 0), state.step + 1, self.first_bad)
        keep = None
        if optim.nonfinite == "skip":  # fused AdamW leaves the weights and its state untouched where found_inf is 1
            state.optimizer.found_inf, keep = bad.float(), (~bad).float()
            state.skipped += bad
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        force_weight_norm_(self.normalized_weights)
        state.step += 1
        update_ema(state.ema, state.model, ema_decay(state.step, optim.ema_halflife, optim.ema_rampup), keep)
        if state.posthoc:
            state.posthoc.update(state.model, state.step, keep)
        return torch.where(bad, 0.0, total)
