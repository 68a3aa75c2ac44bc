"""The run configuration: its groups, its JSON round trip, and old runs' configurations still loading."""

import dataclasses
import json
import typing

import pytest
import torch

from conftest import tiny_config
from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import DistillConfig, RunConfig, from_dict, migrate, with_fields
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models import UNet
from pixeldiffusion.pipeline import Pipeline

# A config.json as runs wrote it before the regrouping: prediction and schedule at the top, one "train" group.
OLD_LAYOUT = {
    "data": {"dataset": "digits", "data_dir": None, "pad": False, "hflip": False, "condition": "class"},
    "model": {
        "image_size": 16,
        "in_channels": 1,
        "base_channels": 8,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "linear_attention_resolutions": [],
        "attention_heads": 1,
        "norm_groups": 4,
        "block": "resnet",
        "injection": "scale_shift",
        "stem_kernel": 3,
        "dropout": 0.0,
        "num_classes": 10,
        "context_dim": 0,
    },
    "prediction": "v",
    "schedule": {"kind": "cosine", "timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "cosine_s": 0.008},
    "train": {
        "seed": 7,
        "batch_size": 64,
        "grad_accum": 2,
        "lr": 0.0005,
        "warmup_steps": 100,
        "lr_decay": "linear",
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "nonfinite": "skip",
        "max_steps": 3000,
        "epochs": None,
        "minutes": 30.0,
        "loss": "huber",
        "weighting": "min_snr",
        "cond_dropout": 0.2,
        "ema_halflife": 250.0,
        "ema_rampup": 0.1,
        "log_every": 10,
        "checkpoint_every": 500,
        "sample_every": 0,
        "eval_every": 1000,
        "eval_samples": 200,
        "keep": 2,
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "channels_last": None,
    },
    "sample": {"sampler": "ddpm", "steps": 20, "n": 16},
}


def test_an_old_configuration_is_migrated_field_by_field():
    config = RunConfig.from_json(json.dumps(OLD_LAYOUT))
    assert config.seed == 7
    d = config.diffusion
    assert (d.prediction, d.schedule.kind, d.loss, d.weighting, d.min_snr_gamma) == (
        "v",
        "cosine",
        "huber",
        "min_snr",
        5,
    )
    o = config.optim
    assert (o.batch_size, o.grad_accum, o.lr, o.warmup_steps, o.lr_decay, o.nonfinite) == (
        64,
        2,
        5e-4,
        100,
        "linear",
        "skip",
    )
    assert (o.cond_dropout, o.ema_halflife) == (0.2, 250.0)
    assert (config.length.max_steps, config.length.epochs, config.length.minutes) == (3000, None, 30.0)
    assert (config.log.log_every, config.log.checkpoint_every, config.log.keep) == (10, 500, 2)
    assert (config.runtime.device, config.runtime.precision, config.runtime.compile) == ("cpu", "fp32", False)
    assert (config.eval.every, config.eval.samples) == (1000, 200)
    assert (config.sample.sampler, config.sample.steps, config.model.channel_mult) == ("ddpm", 20, (1, 2, 2))
    assert RunConfig.from_json(config.to_json()) == config, "saved again in the new layout, it reads back the same"
    assert migrate(json.loads(config.to_json())) == json.loads(config.to_json()), "the new layout is left alone"


def test_migration_refuses_what_it_does_not_know():
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        migrate({**OLD_LAYOUT, "train": {"lr": 1e-3, "momentum": 0.9}})
    with pytest.raises(ConfigError, match="unknown RunConfig field"):
        from_dict(RunConfig, {"trian": {}})


def test_a_checkpoint_of_an_old_run_still_samples(tmp_path):
    model = UNet(from_dict(RunConfig, OLD_LAYOUT).model)
    tensors = {f"ema/{k}": v for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(tmp_path / "old.safetensors", tensors, {"config": OLD_LAYOUT, "step": 3000})
    pipe = Pipeline.from_checkpoint(path, device="cpu")
    assert pipe.config.diffusion.prediction == "v" and pipe.schedule.T == 1000
    images = pipe.sample(2, steps=2, precision="fp32").images
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


def test_every_field_declares_its_help():
    def leaves(cls):
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(kind):
                yield from leaves(kind)
            else:
                yield cls, f

    missing = [f"{cls.__name__}.{f.name}" for cls, f in leaves(RunConfig) if not f.metadata.get("help")]
    assert not missing


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"length.max_steps": 0}, "max_steps must be positive"),
        ({"length.max_steps": None}, "set at least one of max_steps, epochs and minutes"),
        ({"log.sample_every": -1}, "sample_every must be at least 0"),
        ({"diffusion.min_snr_gamma": 0.0}, "min_snr_gamma must be positive"),
        ({"diffusion.prediction": "score"}, "unknown prediction 'score'"),
        ({"diffusion.t_sampling": "log-normal"}, "unknown t sampling 'log-normal'"),
        ({"diffusion.p_std": 0.0}, "p_std must be positive"),
        ({"optim.adam_beta2": 1.0}, "adam_beta2 must be in"),
        ({"optim.lr": -1.0}, "lr must be positive"),
        ({"eval.samples": 1}, "eval samples >= 2"),
        ({"runtime.device": "tpu"}, "unknown device 'tpu'"),
        ({"model.attention_heads": 0}, "attention_heads must be at least 1"),
    ],
)
def test_validation_moves_with_the_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        with_fields(tiny_config(), fields)


def test_with_fields_replaces_by_dotted_path():
    config = with_fields(tiny_config(), {"seed": 3, "optim.lr": 0.5, "diffusion.schedule.kind": "cosine"})
    assert (config.seed, config.optim.lr, config.diffusion.schedule.kind) == (3, 0.5, "cosine")
    assert config.optim.batch_size == tiny_config().optim.batch_size


def test_a_student_of_stop_29_keeps_its_teacher_steps_and_grid():
    """Before `teacher_solver` existed, teachers stepped with DDIM on grids of 32 (progressive) and 16."""
    old = dataclasses.asdict(RunConfig(distill=DistillConfig(teacher="runs/t", steps=1)))
    del old["distill"]["teacher_solver"]
    student = RunConfig.from_json(json.dumps(old)).distill
    assert (student.teacher_solver, student.grid_steps, student.stages) == ("ddim", 32, 5)
    old["distill"].update(method="consistency", teacher_steps=8)
    assert RunConfig.from_json(json.dumps(old)).distill.grid_steps == 8, "a grid given is kept"
    new = RunConfig(distill=DistillConfig(teacher="runs/t", steps=1))
    assert RunConfig.from_json(new.to_json()).distill == new.distill  # today's students are left alone
