"""Distillation runs (`pixeldiffusion distill`): a student initialised from a teacher run's EMA weights learns, by
the objectives of `pixeldiffusion.distillation`, to sample in config.distill.steps network evaluations.

A student is an ordinary run (its config records the teacher and the method, and sets its own sampler and step
count as its defaults), trained by the ordinary `Trainer` with its own step: the same batches, precision, torchrun
sharing, time budget, checkpoints and exact resumption. Its checkpoints also carry the current teacher and, for
progressive distillation, the stage, since both decide the run's future.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import DistillConfig, EvalConfig, RunConfig
from pixeldiffusion.distillation import TEACHER_SOLVERS, consistency_loss, progressive_loss
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.interop.pretrained import read_model
from pixeldiffusion.sampling import guided, make_denoiser, timestep_grid
from pixeldiffusion.seeding import generator
from pixeldiffusion.training.loop import Trainer
from pixeldiffusion.training.plan import decayed_rate, progress
from pixeldiffusion.training.step import Batch, TrainStep

# the student's defaults: a tenth of a teacher recipe's learning rate, decayed linearly within each progressive
# stage as Salimans & Ho do, and a shorter EMA (a stage is short); measured in docs/decisions.md, "Distillation"
LR_FACTOR = 0.1
EMA_HALFLIFE = 100.0


def student_config(teacher: RunConfig, distill: DistillConfig, source: str | Path) -> RunConfig:
    """The configuration of a student of `teacher` (a run at `source`): the teacher's model, data and diffusion, its
    own sampler (DDIM for progressive, multistep consistency sampling) at distill.steps, no guidance pass (it has
    learned the guided teacher), and a distillation's optimisation; evaluation and length as the flags say."""
    if teacher.distill.teacher:
        raise ConfigError(f"{source} is a distilled run already; distil its teacher, {teacher.distill.teacher}")
    if distill.guidance != 1.0 and teacher.model.conditioning == "none":
        raise ConfigError("an unconditional teacher has no classifier-free guidance to distil: leave --guidance at 1")
    sampler = "ddim" if distill.method == "progressive" else "consistency"
    if teacher.diffusion.prediction == "eps":  # eps's x0 at t = T would amplify every error by 1 / sqrt(a_bar_T)
        distill = replace(distill, teacher_prediction="eps")
        teacher = replace(teacher, diffusion=replace(teacher.diffusion, prediction="v"))
    return replace(
        teacher,
        distill=replace(distill, teacher=str(source)),
        optim=replace(
            teacher.optim, lr=teacher.optim.lr * LR_FACTOR, warmup_steps=0, ema_halflife=EMA_HALFLIFE, cond_dropout=0.0
        ),
        sample=replace(teacher.sample, sampler=sampler, steps=distill.steps, eta=0.0, guidance=1.0),
        eval=EvalConfig(),
    )


class DistillStep(TrainStep):
    """A training step whose loss is a distillation objective, whose times are the student's grid, and, for
    progressive distillation, whose teacher and grid change at each stage (the student becoming the teacher)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill = self.config.distill
        # the teacher of stage 0 is the student's starting point; a resumed run then loads its own
        self.teacher = copy.deepcopy(self.state.ema).eval().requires_grad_(False)
        T, device = self.schedule.T, self.process.device
        self.next_time = torch.zeros(T + 1, dtype=torch.long, device=device)  # the teacher grid's next time
        self.set_stage(0)

    def stage_at(self, step: int, elapsed: float) -> int:
        """The progressive stage of a step: each takes an equal share of the run's steps or time budget."""
        stages = self.distill.stages
        return min(int(self.progress(step, elapsed) * stages), stages - 1)

    def progress(self, step: int, elapsed: float) -> float:
        minutes = self.config.length.minutes
        return progress(step, self.total_steps, elapsed, 60 * minutes if minutes else None)

    def set_stage(self, stage: int) -> None:
        """The teacher's grid of a stage, grid_steps / 2^stage DDIM steps (trailing spacing, whose grids nest): a
        progressive student jumps two of its steps at once, a consistency student joins neighbours. Also what the
        teacher predicts: the first may differ from the student, later ones are earlier students. Plain attributes,
        which the compiled loss reads (a change recompiles it)."""
        self.stage = stage
        n = self.distill.grid_steps
        if self.distill.method == "progressive":
            n >>= stage
        grid = torch.tensor(timestep_grid(self.schedule, n), device=self.next_time.device)
        self.next_time.zero_()
        self.next_time[grid[:-1]] = grid[1:]
        self.starts = grid[:-1:2] if self.distill.method == "progressive" else grid[:-1]
        first = stage == 0 and self.distill.teacher_prediction
        self.teacher_prediction = first or self.config.diffusion.prediction

    def enter_stage(self, stage: int) -> None:
        """Progressive distillation's next stage: the student (its EMA weights) becomes the teacher and the student
        starts from them, for half as many steps."""
        self.teacher.load_state_dict(self.state.ema.state_dict())
        self.state.model.load_state_dict(self.state.ema.state_dict())
        self.set_stage(stage)

    def draw(self, step: int) -> Batch:
        """The batch of `TrainStep.draw`, its times the starts of the student's steps, uniformly (stream (seed,
        "distill-t", step), drawn for the global batch so that any split agrees)."""
        batch = super().draw(step)
        B, device = self.config.optim.batch_size, self.process.device
        pick = torch.randint(
            0,
            len(self.starts),
            (B,),
            generator=generator(self.config.seed, "distill-t", step, device=device),
            device=device,
        )
        share = self.process.share(B)
        return replace(batch, t=self.starts[pick[share.start : share.stop]])

    def forward_loss(
        self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """The per-image distillation loss (b,) of a micro-batch starting at times t."""
        prediction = self.config.diffusion.prediction
        teacher = make_denoiser(
            guided(self.teacher, cond, self.distill.guidance),
            self.schedule,
            self.teacher_prediction,
            clip_x0=self.config.sample.clip_x0,
        )

        def student(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            return self.schedule.x0_eps(x, times, self.net(x, times, cond).float(), prediction)[0]

        s, step = self.next_time[t], TEACHER_SOLVERS[self.distill.teacher_solver]
        if self.distill.method == "progressive":
            return progressive_loss(student, teacher, self.schedule, x0, eps, t, s, self.next_time[s], step)
        return consistency_loss(student, teacher, self.schedule, x0, eps, t, s, step)

    def learning_rate(self, step: int, elapsed: float) -> float:
        """Progressive: linear decay to zero within each stage (Salimans & Ho 2022); consistency: the run's."""
        if self.distill.method != "progressive":
            return super().learning_rate(step, elapsed)
        optim, stages = self.config.optim, self.distill.stages
        within = self.progress(step, elapsed) * stages - self.stage_at(step, elapsed)
        return decayed_rate(optim.lr, step, optim.warmup_steps, "linear", min(within, 1.0))

    def __call__(self, elapsed: float = 0.0) -> torch.Tensor:
        if self.distill.method == "progressive" and (stage := self.stage_at(self.state.step, elapsed)) > self.stage:
            self.enter_stage(stage)
        return super().__call__(elapsed)


class Distiller(Trainer):
    """The Trainer of a distillation run: its step is a `DistillStep`, its checkpoints carry the teacher and stage."""

    train_step: DistillStep
    command = "distill"

    def __init__(self, config: RunConfig, run_dir: str | Path, **kwargs):
        if config.distill.teacher is None:
            raise ConfigError("a distillation run needs a teacher (config.distill.teacher)")
        super().__init__(config, run_dir, **kwargs)

    def make_step(self, images: torch.Tensor, cond: torch.Tensor | None, flipped: torch.Tensor | None) -> TrainStep:
        return DistillStep(self.config, self.state, self.process, images, cond, self.schedule, flipped=flipped)

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().checkpoint()
        tensors.update({f"teacher/{k}": v for k, v in self.train_step.teacher.state_dict().items()})
        return tensors, {**meta, "distill_stage": self.train_step.stage}

    def restore(self, path: Path) -> None:
        super().restore(path)
        tensors, meta = ckpt.load_checkpoint(path)
        step = self.train_step
        try:
            step.teacher.load_state_dict(ckpt.split_prefix(tensors, "teacher"))
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{path} holds no teacher that fits this student: {e}") from e
        step.set_stage(int(meta.get("distill_stage", 0)))


def teacher_network(source: str | Path) -> tuple[RunConfig, nn.Module]:
    """A teacher's configuration and EMA network (the student's starting weights), from anything `read_model` opens."""
    found = read_model(source)
    return found.config, found.network().train()
