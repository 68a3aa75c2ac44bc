"""Distillation: the objectives against closed forms, the student's training (stages, resumption, torchrun's
sharing of its batches) and `pixeldiffusion distill` as a user runs it."""

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from conftest import TINY_FLAGS, run_cli, tiny_config
from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint
from pixeldiffusion.config import DistillConfig
from pixeldiffusion.distillation import (
    consistency_loss,
    ddim_step,
    dpm_solver_2_step,
    progressive_loss,
    progressive_target,
)
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import heun, make_denoiser, sample, timestep_grid
from pixeldiffusion.schedule import NoiseSchedule, ScheduleConfig
from pixeldiffusion.serve.server import model_info
from pixeldiffusion.training import Interrupted, train
from pixeldiffusion.training.distill import Distiller, student_config

SCHEDULE = NoiseSchedule.from_config(ScheduleConfig(timesteps=1000))
MU, S = 0.3, 0.5  # Gaussian data x0 ~ N(MU, S^2 I)


def gaussian_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for Gaussian data: MU + sqrt(a) S^2 / (a S^2 + 1 - a) (x_t - sqrt(a) MU), in closed form."""
    a = SCHEDULE.alpha_bar[t].reshape(-1, 1, 1, 1)
    return MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)


def gaussian_teacher():
    """The exact denoiser of Gaussian data as an x0-predicting network, through `make_denoiser` (no clipping)."""
    return make_denoiser(lambda x, t: gaussian_x0(x, t), SCHEDULE, "x0", clip_x0=False)


def multistep(denoise, x: torch.Tensor, t: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """The teacher's own DDIM map from x_t down the grid to 0 (t one time for the whole batch, on the grid; off it,
    as the loss's t = 0 clamped to 1 is, x itself: the boundary f(x, 0) = x)."""
    if int(t[0]) not in grid:
        return x
    times = grid[grid.index(int(t[0])) :]
    for a, b in zip(times[:-1], times[1:], strict=True):
        x = ddim_step(denoise, SCHEDULE, x, torch.full_like(t, a), torch.full_like(t, b))
    return x


def test_a_ddim_step_with_the_progressive_target_lands_where_two_teacher_steps_do():
    teacher = gaussian_teacher()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([1000, 800, 500, 300, 40, 20])
    m = torch.tensor([900, 500, 250, 150, 20, 10])
    s = torch.tensor([800, 300, 0, 2, 0, 1])
    target = progressive_target(teacher, SCHEDULE, x_t, t, m, s)
    two = ddim_step(teacher, SCHEDULE, ddim_step(teacher, SCHEDULE, x_t, t, m), m, s)
    one = ddim_step(make_denoiser(lambda x, _: target, SCHEDULE, "x0", clip_x0=False), SCHEDULE, x_t, t, s)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(target, teacher(x_t, t)[0], atol=1e-3), "two steps are not one"


def test_the_second_order_teacher_step_is_nearer_the_ode_than_ddim():
    teacher = gaussian_teacher()
    x_t = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    t, s = torch.tensor([1000, 600, 200, 30, 7]), torch.tensor([600, 200, 30, 0, 6])
    # the probability-flow ODE of Gaussian data in closed form: y = x / sqrt(a_bar) stays Gaussian, N(MU, S^2 +
    # sigma^2), and flows as y_s = MU + sqrt((S^2 + sigma_s^2) / (S^2 + sigma_t^2)) (y_t - MU)
    a_t, a_s = (SCHEDULE.alpha_bar[v].reshape(-1, 1, 1, 1) for v in (t, s))
    var_t, var_s = (S**2 + (1 - a) / a for a in (a_t, a_s))
    exact = a_s.sqrt() * (MU + (var_s / var_t).sqrt() * (x_t / a_t.sqrt() - MU))
    second = dpm_solver_2_step(teacher, SCHEDULE, x_t, t, s)
    first = ddim_step(teacher, SCHEDULE, x_t, t, s)
    errors = [((second[i] - exact[i]).abs().max(), (first[i] - exact[i]).abs().max()) for i in range(3)]
    assert all(ours < 0.7 * ddim for ours, ddim in errors), errors

    def error(step, n: int) -> float:  # over 600 -> 200 in n equal steps, against the closed form
        x, times = x_t[1:2], torch.linspace(600, 200, n + 1).round().long()
        for a, b in zip(times[:-1], times[1:], strict=True):
            x = step(teacher, SCHEDULE, x, a.reshape(1), b.reshape(1))
        return float((x - exact[1]).abs().max())

    # halving the steps divides the error by about 2^order: 4 for the second-order step, 2 for DDIM
    assert error(dpm_solver_2_step, 4) / error(dpm_solver_2_step, 8) > 3.2
    assert error(ddim_step, 4) / error(ddim_step, 8) < 2.5
    torch.testing.assert_close(second[3:], first[3:])  # to t = 0 and between neighbours: DDIM alone
    # Heun's trapezoid in sigma (the `heun` sampler) is no teacher from t = T: far off where DDIM is all but exact
    *_, last = heun(teacher, SCHEDULE, x_t[:1], [1000, 600])
    assert (last.x - exact[:1]).abs().max() > 10 * errors[0][1]


def test_the_losses_vanish_for_a_student_that_is_the_teachers_multistep_map():
    teacher = gaussian_teacher()
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(8, 1, 4, 4, generator=g)
    eps = torch.randn(8, 1, 4, 4, generator=g)
    grid = timestep_grid(SCHEDULE, 16)
    for i in (0, 5, 14, 15):  # 15: the last pair, to t = 0
        t, s = torch.full((8,), grid[i]), torch.full((8,), grid[i + 1])

        def student(x, times):
            return multistep(teacher, x, times, grid)

        assert consistency_loss(student, teacher, SCHEDULE, x0, eps, t, s).abs().max() < 1e-5
        wrong = consistency_loss(lambda x, times: teacher(x, times)[0], teacher, SCHEDULE, x0, eps, t, s)
        assert i == 15 or wrong.min() > 1e-5, "the one-step teacher is no consistency function"
    coarse = grid[::2]  # the progressive student's grid: every other time of the teacher's
    for i in (0, 3, 7):
        t, m, s = (torch.full((8,), grid[2 * i + k]) for k in range(3))
        loss = progressive_loss(
            lambda x, times: multistep_x0(teacher, x, times, grid, coarse), teacher, SCHEDULE, x0, eps, t, m, s
        )
        assert loss.abs().max() < 1e-8


def multistep_x0(teacher, x, t, grid, coarse):
    """The x0 whose one DDIM step from x_t over the coarse grid lands where the teacher's two steps do."""
    s = torch.full_like(t, coarse[coarse.index(int(t[0])) + 1])
    return progressive_target(teacher, SCHEDULE, x, t, torch.full_like(t, grid[grid.index(int(t[0])) + 1]), s)


def test_consistency_sampling_renoises_the_prediction():
    x_T = torch.randn(3, 1, 4, 4)
    seen = []

    def model(x, t, cond):  # an x0 predictor that records its inputs and predicts 0.5
        seen.append((int(t[0]), x.clone()))
        return torch.full_like(x, 0.5)

    out = sample(model, SCHEDULE, x_T, prediction="x0", sampler="consistency", steps=2, noise=torch.ones_like)
    assert [t for t, _ in seen] == [1000, 500]
    torch.testing.assert_close(seen[0][1], x_T)
    a = SCHEDULE.alpha_bar[500].float()
    torch.testing.assert_close(seen[1][1], a.sqrt() * 0.5 + (1 - a).sqrt() * torch.ones_like(x_T))  # q(x_500 | x0)
    torch.testing.assert_close(out, torch.full_like(x_T, 0.5))  # the last step returns f's prediction


def test_the_distill_config_refuses_what_cannot_be_distilled():
    with pytest.raises(ConfigError, match="1, 2, 4 or 8"):
        DistillConfig(steps=3)
    with pytest.raises(ConfigError, match="power of 2"):
        DistillConfig(steps=4, teacher_steps=24)
    assert DistillConfig(steps=1, teacher_steps=64).stages == 6
    assert DistillConfig(steps=4, teacher_steps=64).stages == 4
    assert DistillConfig(method="consistency", steps=4, teacher_steps=30).stages == 1
    defaults = {steps: DistillConfig(steps=steps) for steps in (1, 2, 4, 8)}  # twice the steps, at least 8
    assert {k: (c.grid_steps, c.stages) for k, c in defaults.items()} == {1: (8, 3), 2: (8, 2), 4: (8, 1), 8: (16, 1)}
    assert DistillConfig(method="consistency").grid_steps == 16
    with pytest.raises(ConfigError, match="at least 2"):
        DistillConfig(method="consistency", teacher_steps=1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny v-prediction run of 60 steps: far enough along that its one-step and eight-step samples differ."""
    config = tiny_config(max_steps=60, batch_size=32, lr=3e-3, prediction="v")
    return train(config, tmp_path_factory.mktemp("teacher")).run_dir


def one_step_error(pipe: Pipeline, reference: torch.Tensor, sampler: str) -> float:
    """Mean squared distance of a model's one-step samples to the teacher's many-step ones (same noise)."""
    return (pipe.sample(16, seed=3, sampler=sampler, steps=1).images - reference).square().mean().item()


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_a_tiny_distillation_improves_the_one_step_samples(tmp_path, teacher_dir, method):
    teacher = Pipeline.from_run(teacher_dir)
    reference = teacher.sample(16, seed=3, sampler="ddim", steps=8).images
    before = one_step_error(teacher, reference, "ddim")  # one step of any sampler is x0(x_T, T)
    config = student_config(teacher.config, DistillConfig(method=method, steps=1, teacher_steps=8), teacher_dir)
    config = replace(config, length=replace(config.length, max_steps=60), optim=replace(config.optim, lr=3e-3))
    student_dir = train(config, tmp_path / "student", model=teacher.model.train(), trainer_class=Distiller).run_dir
    student = Pipeline.from_run(student_dir)
    sampler = "ddim" if method == "progressive" else "consistency"
    assert (student.config.sample.sampler, student.config.sample.steps) == (sampler, 1)
    after = one_step_error(student, reference, sampler)
    assert after < 0.6 * before, f"{method}: one step from {before:.4f} to {after:.4f}"  # measured: 0.40, 0.28


def test_a_progressive_run_resumed_across_its_stages_continues_exactly(tmp_path, teacher_dir):
    teacher = Pipeline.from_run(teacher_dir)
    config = student_config(teacher.config, DistillConfig(steps=1, teacher_steps=4), teacher_dir)
    config = replace(config, length=replace(config.length, max_steps=6), log=replace(config.log, checkpoint_every=2))
    straight = train(config, tmp_path / "straight", model=Pipeline.from_run(teacher_dir).model.train(),
                     trainer_class=Distiller)  # fmt: skip

    def terminate_after_2(run):
        if run.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        train(config, tmp_path / "resumed", model=Pipeline.from_run(teacher_dir).model.train(),
              trainer_class=Distiller, callbacks=(terminate_after_2,))  # fmt: skip
    assert load_checkpoint(latest_checkpoint(tmp_path / "resumed"))[1]["distill_stage"] == 0
    train(config, tmp_path / "resumed", resume=True, trainer_class=Distiller)
    a, meta_a = load_checkpoint(latest_checkpoint(straight.run_dir))
    b, meta_b = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert meta_a["step"] == meta_b["step"] == 6 and meta_a["distill_stage"] == meta_b["distill_stage"] == 1
    assert a.keys() == b.keys() and any(k.startswith("teacher/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "student, EMA, teacher and optimizer identical bit for bit"
    first = {k: v for k, v in a.items() if k.startswith("teacher/")}
    initial = Pipeline.from_run(teacher_dir).model.state_dict()
    assert not all(torch.equal(first[f"teacher/{k}"], v) for k, v in initial.items()), "stage 1's teacher is new"


def test_distill_as_a_user_runs_it(tmp_path):
    teacher = tmp_path / "teacher"
    # an eps teacher, whose student predicts v
    done = run_cli("train", *TINY_FLAGS, "--max-steps", "6", "--prediction", "eps", "--out", str(teacher))
    assert done.returncode == 0, done.stderr
    student = tmp_path / "student"
    done = run_cli("distill", "--run", str(teacher), "--steps", "2", "--teacher-steps", "8", "--max-steps", "4",
                   "--guidance", "2", "--out", str(student), "--log-every", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "progressive distillation" in done.stdout and (student / "samples.png").stat().st_size > 0
    config = json.loads((student / "config.json").read_text())
    assert config["distill"] == {
        "teacher": str(teacher),
        "method": "progressive",
        "steps": 2,
        "teacher_steps": 8,
        "teacher_solver": "dpm_solver_2",
        "guidance": 2.0,
        "teacher_prediction": "eps",
    }
    assert (config["sample"]["sampler"], config["sample"]["steps"], config["sample"]["guidance"]) == ("ddim", 2, 1.0)
    assert config["diffusion"]["prediction"] == "v", "an eps teacher has a v student"
    done = run_cli("sample", "--run", str(student), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert done.returncode == 0, done.stderr
    info = model_info(Pipeline.from_run(student), name="student")
    assert info["live"] and info["distilled_from"] == str(teacher) and info["defaults"]["steps"] == 2
    assert not model_info(Pipeline.from_run(teacher), name="teacher")["live"]
    done = run_cli("export", "--run", str(student), "--out", str(tmp_path / "diffusers"))
    assert done.returncode == 0 and (tmp_path / "diffusers" / "unet" / "config.json").is_file(), done.stderr
    done = run_cli("distill", "--resume", str(student), "--max-steps", "6")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(latest_checkpoint(student))[1]["step"] == 6
    for bad, message in (
        (["--run", str(teacher), "--steps", "3"], "1, 2, 4 or 8"),
        (["--run", str(student)], "distilled run already"),
        (["--resume", str(student), "--steps", "4"], "cannot change on a resumed run"),
        ([], "give the teacher"),
    ):
        done = (
            run_cli("distill", *bad, "--out", str(tmp_path / "x"))
            if "--resume" not in bad
            else run_cli("distill", *bad)
        )
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
