"""The diffusers folder format, read and written without diffusers: a `UNet2DModel` (config.json and
diffusion_pytorch_model.safetensors) and a DDPM-family scheduler (scheduler_config.json), under a model_index.json.

diffusers' `UNet2DModel` with ResNet blocks is the U-Net of DDPM (Ho et al. 2020, appendix B), as ours is, so its
weights map one to one onto `UNet` (the parameter counts agree exactly): the same convolutions, GroupNorms and time
MLP, and q, k, v as three Linear layers where ours are one. What differs is written in `UNetConfig`: diffusers' time
is ours minus one (`time_offset=-1`), the DDPM models converted from TensorFlow embed t as [sin, cos] with other
frequencies (`time_embedding="ddpm"`), pad their stride-2 convolutions on the right and bottom only
(`downsample_padding="same"`) and use GroupNorm's epsilon 1e-6. Exporting one of our networks (whose time starts
at 1) folds the offset into the time MLP's first layer, a rotation of each sinusoid pair.

Our class embedding has one more row than diffusers', the "no class" of classifier-free guidance: an export keeps
it as the last class (recorded in config.json under "_pixeldiffusion"), an import of a model without one adds a row
of zeros, which an export drops again. The scheduler's config records the run's sampler and steps under the same
key, so that a folder we wrote samples as its run did when it comes back in. Weights are only read from
safetensors, never from pickles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixeldiffusion.checkpoint import CheckpointError
from pixeldiffusion.config import SampleConfig
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.schedule import ScheduleConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.30.0"  # the oldest diffusers that the test suite supports, written as the files' version
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "quadratic",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid",
}
COSINE_S = 0.008  # the offset of diffusers' squaredcos_cap_v2
VARIANCES = {
    "fixed_small": "posterior",
    "fixed_small_log": "posterior",
    "fixed_large": "beta",
    "fixed_large_log": "beta",
}
TIME_EMBEDDINGS = {(True, 0): "adm", (False, 1): "ddpm"}  # (flip_sin_to_cos, freq_shift) -> UNetConfig.time_embedding

# UNet2DModel's defaults, for keys that older config.json files leave out
UNET_DEFAULTS: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "in_channels": 3,
    "out_channels": 3,
}
# DDPMScheduler's defaults
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "rescale_betas_zero_snr": False,
    "variance_type": "fixed_small",
}


class ConversionError(PixelDiffusionError):
    """A model or schedule with a part that has no counterpart on the other side."""


@dataclass(frozen=True)
class Imported:
    """What a diffusers folder holds, in pixeldiffusion's terms."""

    model: UNetConfig
    state_dict: dict[str, torch.Tensor]  # weights for UNet(model)
    schedule: ScheduleConfig
    prediction: str  # eps, x0 or v (what diffusers' schedulers express)
    clip_x0: bool  # the scheduler's clip_sample
    variance: str  # DDPM's variance, SampleConfig.variance: posterior (fixed_small) or beta (fixed_large)
    class_names: tuple[str, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)  # SampleConfig's sampler and steps, when we wrote it


# -- configurations ----------------------------------------------------------------------------------


def unet_config_from_diffusers(values: dict[str, Any]) -> UNetConfig:
    """The UNetConfig of a UNet2DModel config.json; ConversionError naming the first part that does not map."""
    cfg = UNET_DEFAULTS | values

    def refuse(part: str) -> ConversionError:
        return ConversionError(f"this UNet2DModel does not map onto pixeldiffusion's U-Net: {part}")

    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise refuse(f"it is a {cfg['_class_name']} (only UNet2DModel maps)")
    unsupported = {
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "act_fn": "silu",
        "mid_block_type": "UNetMidBlock2D",
        "mid_block_scale_factor": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "class_embed_type": None,
    }
    for key, supported in unsupported.items():
        if cfg[key] != supported:
            raise refuse(f"{key} = {cfg[key]!r} (only {supported!r})")
    size = cfg["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise refuse(f"non-square sample_size {size}")
        size = size[0]
    channels = list(cfg["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise refuse(f"block_out_channels {channels} are not multiples of the first")
    if cfg["out_channels"] != cfg["in_channels"]:
        raise refuse(f"{cfg['out_channels']} output channels for {cfg['in_channels']} input channels")
    if cfg["time_embedding_dim"] not in (None, 4 * base):
        raise refuse(f"time_embedding_dim {cfg['time_embedding_dim']} (only 4 x block_out_channels[0])")
    time_embedding = TIME_EMBEDDINGS.get((cfg["flip_sin_to_cos"], cfg["freq_shift"]))
    if time_embedding is None:
        raise refuse(f"flip_sin_to_cos = {cfg['flip_sin_to_cos']} with freq_shift = {cfg['freq_shift']}")
    if cfg["downsample_padding"] not in (0, 1):
        raise refuse(f"downsample_padding {cfg['downsample_padding']}")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or set(up) - {"UpBlock2D", "AttnUpBlock2D"}:
        raise refuse(f"block types {sorted(set(down + up))} (only [Attn]DownBlock2D and [Attn]UpBlock2D)")
    attention = [kind == "AttnDownBlock2D" for kind in down]
    if [kind == "AttnUpBlock2D" for kind in reversed(up)] != attention:
        raise refuse(f"attention in up blocks {up} differs from the down blocks {down}")
    head_dim = cfg["attention_head_dim"]
    heads = {c // (head_dim or c) for c, a in zip(channels, attention, strict=True) if a}
    if cfg["add_attention"] or not heads:  # the middle block's, or the nominal count of a U-Net without attention
        heads.add(channels[-1] // (head_dim or channels[-1]))
    if len(heads) > 1:
        raise refuse(f"attention head counts {sorted(heads)} differ between levels (ours has one)")
    scale_shift = cfg["resnet_time_scale_shift"] == "scale_shift"
    if cfg["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise refuse(f"resnet_time_scale_shift {cfg['resnet_time_scale_shift']!r}")
    if cfg["attn_norm_num_groups"] is None and scale_shift and cfg["add_attention"]:
        raise refuse("its middle attention has no GroupNorm (set attn_norm_num_groups)")
    if cfg["attn_norm_num_groups"] not in (None, cfg["norm_num_groups"]):
        raise refuse(f"attn_norm_num_groups {cfg['attn_norm_num_groups']} differs from norm_num_groups")
    num_classes = cfg["num_class_embeds"] or 0
    if num_classes and cfg.get("_pixeldiffusion", {}).get("null_class"):
        num_classes -= 1
    try:
        return UNetConfig(
            image_size=size,
            in_channels=cfg["in_channels"],
            base_channels=base,
            channel_mult=tuple(c // base for c in channels),
            num_res_blocks=cfg["layers_per_block"],
            attention_resolutions=tuple(size // 2**i for i, a in enumerate(attention) if a),
            middle_attention=cfg["add_attention"],
            attention_heads=heads.pop(),
            norm_groups=cfg["norm_num_groups"],
            injection="scale_shift" if scale_shift else "additive",
            dropout=cfg["dropout"],
            num_classes=num_classes,
            time_offset=-1,
            time_embedding=time_embedding,
            downsample_padding="symmetric" if cfg["downsample_padding"] == 1 else "same",
            norm_eps=cfg["norm_eps"],
        )
    except ConfigError as e:
        raise refuse(str(e)) from e


def no_counterpart(part: str) -> ConversionError:
    """The one-line refusal of an export whose network has `part`, which UNet2DModel cannot hold."""
    return ConversionError(f"this model has no diffusers UNet2DModel counterpart: {part}")


def check_convertible(config: UNetConfig) -> None:
    """ConversionError naming the first part of the network that UNet2DModel lacks (head sizes aside)."""
    if config.block != "resnet":
        raise no_counterpart(f"{config.block} blocks (UNet2DModel has ResNet blocks)")
    if config.linear_attention_resolutions:
        raise no_counterpart("linear attention")
    if config.context_dim:
        raise no_counterpart("context-vector conditioning (UNet2DModel takes class labels only)")
    if config.stem_kernel != 3:
        raise no_counterpart(f"a {config.stem_kernel}x{config.stem_kernel} stem (UNet2DModel's is 3x3)")
    if config.activation != "silu":
        raise no_counterpart(f"the {config.activation} activation (UNet2DModel's time MLP and output are SiLU)")


def unet_config_to_diffusers(config: UNetConfig, *, null_class: bool, class_names: tuple[str, ...] = ()) -> dict:
    """The UNet2DModel config.json of a UNetConfig; ConversionError naming the first part that does not map."""
    check_convertible(config)
    channels = [config.base_channels * m for m in config.channel_mult]
    attention = [config.image_size // 2**i in config.attention_resolutions for i in range(len(channels))]
    head_dims = {c // config.attention_heads for c, a in zip(channels, attention, strict=True) if a}
    if config.middle_attention or not head_dims:  # the middle block's, or the nominal size without attention
        head_dims.add(channels[-1] // config.attention_heads)
    if len(head_dims) > 1:
        raise no_counterpart(f"attention head sizes {sorted(head_dims)} differ between levels (UNet2DModel has one)")
    flip_sin_to_cos, freq_shift = next(k for k, v in TIME_EMBEDDINGS.items() if v == config.time_embedding)
    values = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.in_channels,
        "block_out_channels": channels,
        "layers_per_block": config.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "attention_head_dim": head_dims.pop(),
        "add_attention": config.middle_attention,
        "norm_num_groups": config.norm_groups,
        "attn_norm_num_groups": config.norm_groups,
        "norm_eps": config.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if config.injection == "scale_shift" else "default",
        "dropout": config.dropout,
        "flip_sin_to_cos": flip_sin_to_cos,
        "freq_shift": freq_shift,
        "downsample_padding": 1 if config.downsample_padding == "symmetric" else 0,
        "num_class_embeds": config.num_classes + null_class if config.num_classes else None,
    }
    return UNET_DEFAULTS | values | {"_pixeldiffusion": {"null_class": null_class, "class_names": list(class_names)}}


def schedule_from_diffusers(values: dict[str, Any]) -> tuple[ScheduleConfig, str, bool, str]:
    """(schedule, prediction, clip_x0, variance) of a scheduler_config.json of the DDPM family (DDPM, DDIM, PNDM,
    DPM-Solver...: any scheduler built from beta_schedule); ConversionError for what does not map."""
    cfg = SCHEDULER_DEFAULTS | values

    def refuse(part: str) -> ConversionError:
        return ConversionError(f"the {cfg.get('_class_name', 'scheduler')} does not map onto a noise schedule: {part}")

    if "sigma_max" in cfg or "shift" in cfg:
        raise refuse("it is not a discrete-time beta schedule")
    if cfg["trained_betas"] is not None:
        raise refuse("trained_betas")
    if cfg["rescale_betas_zero_snr"]:
        raise refuse("rescale_betas_zero_snr")
    if cfg["beta_schedule"] not in BETA_SCHEDULES:
        raise refuse(f"beta_schedule {cfg['beta_schedule']!r} (choose one of {', '.join(BETA_SCHEDULES)})")
    if cfg["prediction_type"] not in PREDICTIONS:
        raise refuse(f"prediction_type {cfg['prediction_type']!r} (choose one of {', '.join(PREDICTIONS)})")
    if cfg["clip_sample"] and cfg["clip_sample_range"] != 1:
        raise refuse(f"clip_sample_range {cfg['clip_sample_range']} (only 1)")
    kind = BETA_SCHEDULES[cfg["beta_schedule"]]
    betas = {"beta_start": cfg["beta_start"], "beta_end": cfg["beta_end"]}
    if kind == "cosine" and not 0 < betas["beta_start"] < betas["beta_end"] < 1:
        betas = {}  # unused by the cosine schedule
    try:
        schedule = ScheduleConfig(kind=kind, timesteps=cfg["num_train_timesteps"], cosine_s=COSINE_S, **betas)
    except ConfigError as e:
        raise refuse(str(e)) from e
    variance = VARIANCES.get(cfg["variance_type"], "posterior")  # DDPM's; the other samplers have none
    return schedule, PREDICTIONS[cfg["prediction_type"]], bool(cfg["clip_sample"]), variance


def pipeline_class(sampler: str) -> str:
    """The diffusers pipeline that samples like `sampler`: DDIMPipeline for DDIM (a progressive student samples
    with nothing else), DDPMPipeline for the rest, with DDPMScheduler or, for a consistency model,
    LCMScheduler (`scheduler_config_to_diffusers`)."""
    return "DDIMPipeline" if sampler == "ddim" else "DDPMPipeline"


def scheduler_config_to_diffusers(
    schedule: ScheduleConfig,
    prediction: str,
    *,
    clip_x0: bool,
    variance: str = "posterior",
    sampler: str = "ddpm",
    steps: int = SampleConfig.steps,
) -> dict:
    """The scheduler_config.json of a schedule, for `pipeline_class(sampler)`'s scheduler (DDIM's ends its last step
    at x0, as ours does), recording the sampler and steps for `sampling_from_diffusers`; ConversionError for what
    diffusers cannot express."""
    kind = next((name for name, ours in BETA_SCHEDULES.items() if ours == schedule.kind), None)
    theirs = next((name for name, ours in PREDICTIONS.items() if ours == prediction), None)
    if kind is None:
        raise ConversionError(f"diffusers' beta schedules have no counterpart of the {schedule.kind} schedule")
    if theirs is None:
        raise ConversionError(f"diffusers' DDPM and DDIM schedulers have no {prediction} prediction type")
    if schedule.kind == "cosine" and schedule.cosine_s != COSINE_S:
        raise ConversionError(f"diffusers' cosine schedule has s = {COSINE_S}, this one {schedule.cosine_s}")
    if pipeline_class(sampler) == "DDIMPipeline":
        name, step = "DDIMScheduler", {"set_alpha_to_one": True, "steps_offset": 0}
    elif sampler == "consistency":
        # LCM's step is multistep consistency sampling: x0, then q(x_s | x0) afresh; drawing its K steps from all
        # T times makes its grid our trailing one wherever K divides T (1, 2, 4, 8 of 1,000)
        name, step = "LCMScheduler", {"original_inference_steps": schedule.timesteps, "steps_offset": 0}
    else:
        name, step = "DDPMScheduler", {"variance_type": "fixed_small" if variance == "posterior" else "fixed_large"}
    return {
        "_class_name": name,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule.timesteps,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "beta_schedule": kind,
        "prediction_type": theirs,
        "clip_sample": clip_x0,
        "clip_sample_range": 1.0,
        **step,
        "timestep_spacing": "trailing",
        "_pixeldiffusion": {"sampler": sampler, "steps": steps},
    }


def sampling_from_diffusers(values: dict[str, Any]) -> dict[str, Any]:
    """The sampler and steps an exported run recorded in its scheduler_config.json; {} for anybody else's, which
    sample with pixeldiffusion's defaults."""
    recorded = values.get("_pixeldiffusion", {})
    return {name: recorded[name] for name in ("sampler", "steps") if name in recorded}


# -- weights -----------------------------------------------------------------------------------------

RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "inject.proj.1": "time_emb_proj",
    "inject.norm": "norm2",
    "out_layers.2": "conv2",
    "skip": "conv_shortcut",
}
ATTENTION = {"norm": "group_norm", "out": "to_out.0"}  # and qkv, which is to_q, to_k and to_v stacked


def module_pairs(config: UNetConfig) -> list[tuple[str, str, str]]:
    """(our module, diffusers' module, kind) for every module with weights, kind "plain", "resnet" or "attention",
    walking the levels as `UNet.__init__` and UNet2DModel build them."""
    pairs = [
        ("stem", "conv_in", "plain"),
        ("time_embedding.mlp.0", "time_embedding.linear_1", "plain"),
        ("time_embedding.mlp.2", "time_embedding.linear_2", "plain"),
        ("middle.0", "mid_block.resnets.0", "resnet"),
        ("middle.2", "mid_block.resnets.1", "resnet"),
        ("head.0", "conv_norm_out", "plain"),
        ("head.2", "conv_out", "plain"),
    ]
    if config.middle_attention:
        pairs.append(("middle.1", "mid_block.attentions.0", "attention"))
    levels = len(config.channel_mult)
    i = 0
    for level in range(levels):
        attention = config.image_size // 2**level in config.attention_resolutions
        for k in range(config.num_res_blocks):
            pairs.append((f"down.{i}.block", f"down_blocks.{level}.resnets.{k}", "resnet"))
            if attention:
                pairs.append((f"down.{i}.attention", f"down_blocks.{level}.attentions.{k}", "attention"))
            i += 1
        if level < levels - 1:
            pairs.append((f"down.{i}.block.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
            i += 1
    i = 0
    for j, level in enumerate(reversed(range(levels))):
        attention = config.image_size // 2**level in config.attention_resolutions
        for k in range(config.num_res_blocks + 1):
            pairs.append((f"up.{i}.block", f"up_blocks.{j}.resnets.{k}", "resnet"))
            if attention:
                pairs.append((f"up.{i}.attention", f"up_blocks.{j}.attentions.{k}", "attention"))
            i += 1
        if level > 0:
            pairs.append((f"up.{i}.block.conv", f"up_blocks.{j}.upsamplers.0.conv", "plain"))
            i += 1
    return pairs


def _parameter_pairs(config: UNetConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(our parameter, diffusers' parameters) for every parameter; more than one of theirs are stacked in ours."""
    out = []
    for ours, theirs, kind in module_pairs(config):
        subs = {"plain": {"": ""}, "resnet": RESNET, "attention": ATTENTION}[kind]
        for suffix in ("weight", "bias"):
            for our_sub, their_sub in subs.items():
                out.append((_join(ours, our_sub, suffix), (_join(theirs, their_sub, suffix),)))
            if kind == "attention":
                out.append((f"{ours}.qkv.{suffix}", tuple(f"{theirs}.to_{x}.{suffix}" for x in "qkv")))
    return out


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def time_shift(config: UNetConfig, shift: int) -> torch.Tensor:
    """The matrix M with sinusoids(t + shift) = M sinusoids(t), float64 (base_channels, base_channels): a
    rotation by shift * w_i of each (cos, sin) pair, cos(a + b) = cos a cos b - sin a sin b and
    sin(a + b) = sin a cos b + cos a sin b."""
    half = config.base_channels // 2
    steps = half - 1 if config.time_embedding == "ddpm" else half
    angle = shift * torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float64) / steps)
    c, s = torch.diag(angle.cos()), torch.diag(angle.sin())
    if config.time_embedding == "ddpm":  # [sin, cos]
        return torch.cat([torch.cat([c, s], 1), torch.cat([-s, c], 1)])
    return torch.cat([torch.cat([c, -s], 1), torch.cat([s, c], 1)])  # [cos, sin]


def state_dict_from_diffusers(tensors: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our state dict from UNet2DModel's tensors, in float32; CheckpointError for a tensor left over (a missing
    one is reported when the state dict is loaded)."""
    state, used = {}, set()
    for ours, theirs in _parameter_pairs(config):
        if all(name in tensors for name in theirs):  # a missing one is reported by load_state_dict
            state[ours] = torch.cat([tensors[name].float() for name in theirs])
            used.update(theirs)
    if config.num_classes:
        table = tensors.get("class_embedding.weight")
        if table is not None:
            used.add("class_embedding.weight")
            table = table.float()
            state["class_embedding.table.weight"] = (
                table if len(table) > config.num_classes else torch.cat([table, table.new_zeros(1, table.shape[1])])
            )
    if left := sorted(set(tensors) - used):
        raise CheckpointError(f"the UNet2DModel weights hold {len(left)} tensors with no place, e.g. {left[0]}")
    return state


def state_dict_to_diffusers(
    state: dict[str, torch.Tensor], config: UNetConfig
) -> tuple[dict[str, torch.Tensor], bool]:
    """UNet2DModel's tensors from our state dict, and whether the null class row was kept (it is dropped when
    all zero: an imported model's, never trained)."""
    check_convertible(config)
    tensors = {}
    for ours, theirs in _parameter_pairs(config):
        if ours in state:
            value = state[ours].detach().float().cpu()
            for name, part in zip(theirs, value.chunk(len(theirs)), strict=True):
                tensors[name] = part.contiguous()
    if config.time_offset != -1:  # diffusers calls the network with t - 1: embed (t - 1) + time_offset + 1
        first = "time_embedding.linear_1.weight"
        tensors[first] = (tensors[first].double() @ time_shift(config, config.time_offset + 1)).float()
    null_class = False
    if config.num_classes:
        table = state["class_embedding.table.weight"].detach().float().cpu()
        null_class = bool(table[-1].any())
        tensors["class_embedding.weight"] = (table if null_class else table[:-1]).contiguous()
    return tensors, null_class


# -- folders -----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return values


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file() and (path / WEIGHTS).exists()


def _component_folders(folder: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler config file): the `unet` and `scheduler` folders under a model_index.json, or a bare
    UNet2DModel folder with scheduler_config.json beside its config.json or in ../scheduler/."""
    if (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file():
        unet = folder / "unet"
    elif (folder / "config.json").is_file():
        unet = folder
    else:
        raise CheckpointError(f"{folder} holds no diffusers model: no model_index.json with unet/, no config.json")
    for scheduler in (
        unet / "scheduler_config.json",
        folder / "scheduler" / "scheduler_config.json",
        unet.parent / "scheduler" / "scheduler_config.json",
    ):
        if scheduler.is_file():
            return unet, scheduler
    raise CheckpointError(f"{folder} has a UNet but no scheduler_config.json, which says its noise schedule")


def _read_weights(unet: Path) -> dict[str, torch.Tensor]:
    """The tensors of diffusion_pytorch_model.safetensors, or of its shards listed in the .index.json."""
    files = [unet / WEIGHTS]
    index = unet / f"{WEIGHTS}.index.json"
    if not files[0].is_file() and index.is_file():
        files = sorted({unet / name for name in _read_json(index).get("weight_map", {}).values()})
    if not all(f.is_file() for f in files):
        pickles = sorted(p.name for p in unet.glob("*.bin"))
        found = f" (found {', '.join(pickles)}, which is a pickle)" if pickles else ""
        raise CheckpointError(f"{unet} has no {WEIGHTS}: only safetensors weights are read, never pickles{found}")
    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f} is not a valid safetensors file: {e}") from e
    return tensors


def read_folder(folder: str | Path) -> Imported:
    """A diffusers folder (as `save_pretrained` writes it) in pixeldiffusion's terms."""
    folder = Path(folder)
    unet, scheduler = _component_folders(folder)
    unet_values = _read_json(unet / "config.json")
    config = unet_config_from_diffusers(unet_values)
    scheduler_values = _read_json(scheduler)
    schedule, prediction, clip_x0, variance = schedule_from_diffusers(scheduler_values)
    state = state_dict_from_diffusers(_read_weights(unet), config)
    names = unet_values.get("_pixeldiffusion", {}).get("class_names", [])
    sampling = sampling_from_diffusers(scheduler_values)
    return Imported(config, state, schedule, prediction, clip_x0, variance, tuple(names), sampling)


def write_folder(
    folder: str | Path,
    state: dict[str, torch.Tensor],
    config: UNetConfig,
    schedule: ScheduleConfig,
    prediction: str,
    *,
    clip_x0: bool = True,
    variance: str = "posterior",
    sampler: str = "ddpm",
    steps: int = SampleConfig.steps,
    class_names: tuple[str, ...] = (),
) -> Path:
    """Write the folder of `pipeline_class(sampler)` (model_index.json, unet/, scheduler/) that diffusers'
    `from_pretrained` loads; ConversionError, before anything is written, for a model without a UNet2DModel
    counterpart."""
    folder = Path(folder)
    tensors, null_class = state_dict_to_diffusers(state, config)
    unet_values = unet_config_to_diffusers(config, null_class=null_class, class_names=class_names)
    scheduler_values = scheduler_config_to_diffusers(
        schedule, prediction, clip_x0=clip_x0, variance=variance, sampler=sampler, steps=steps
    )
    index = {
        "_class_name": pipeline_class(sampler),
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", scheduler_values["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    }
    try:
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (folder / "unet" / "config.json").write_text(json.dumps(unet_values, indent=2) + "\n")
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_values, indent=2) + "\n")
        save_file(tensors, folder / "unet" / WEIGHTS, metadata={"format": "pt"})
    except OSError as e:
        raise PixelDiffusionError(f"cannot write {folder}: {e.strerror or e}") from e
    return folder
