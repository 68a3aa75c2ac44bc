"""The recipe of each dataset: which U-Net preset, resolution, objective and training length suit it.

A recipe is a model preset and the config fields it changes, by dotted path ("optim.lr"); `default_config`
applies it to the dataclasses' defaults.
"""

from __future__ import annotations

from typing import Any

from pixeldiffusion.config import DataConfig, RunConfig, with_fields
from pixeldiffusion.data.hub import parse_spec
from pixeldiffusion.data.registry import native_resolution
from pixeldiffusion.models.presets import preset

# MNIST and Fashion-MNIST: the digits network at 28 pixels (8x faster on a CPU than the "mnist" preset), v-prediction
# with min-SNR weighting and DDPM at 50 steps, each chosen by measurement (docs/decisions.md, "Recipes")
_SMALL_IMAGES: dict[str, Any] = {
    "preset": "digits",
    "model.image_size": 28,
    "diffusion.prediction": "v",
    "diffusion.weighting": "min_snr",
    "optim.lr": 1e-3,
    "length.max_steps": 20000,
    "sample.sampler": "ddpm",
    "sample.steps": 50,
}
RECIPES: dict[str, dict[str, Any]] = {
    # the first run: v-prediction with min-SNR weighting, at twice the learning rate, reaches in 1,000 steps what
    # eps-prediction reached in 2,000 (docs/decisions.md, "The first run")
    "digits": {
        "preset": "digits",
        "diffusion.prediction": "v",
        "diffusion.weighting": "min_snr",
        "optim.batch_size": 64,
        "optim.lr": 2e-3,
        "length.max_steps": 1000,
    },
    "mnist": _SMALL_IMAGES,
    "fashion-mnist": {**_SMALL_IMAGES, "data.hflip": True},
    "cifar10": {"preset": "cifar10", "data.hflip": True, "optim.lr": 2e-4, "length.max_steps": 800_000},
    "sprites": {"preset": "sprites", "optim.lr": 1e-3},
    # the digits network in colour at the digits' batch and learning rate, with MNIST's v-prediction and min-SNR
    # weighting (tied with eps on the emoji at 5 minutes) and DDIM at 50 steps (beat DDPM's 50 after 30 minutes);
    # docs/decisions.md, "Emoji"
    "emoji": {
        "preset": "digits",
        "model.in_channels": 3,
        "diffusion.prediction": "v",
        "diffusion.weighting": "min_snr",
        "optim.batch_size": 64,
        "optim.lr": 1e-3,
    },
    # faces, bedrooms, churches: the CIFAR-10 network one level deeper in pixels, as DDPM trained CelebA-HQ and LSUN
    "photos-64": {"preset": "cifar10", "model.image_size": 64, "data.hflip": True, "optim.lr": 2e-4},
}
# what a time budget (`--minutes M`) changes in a recipe: the settings of the first bound at or above M, a flag
# given still winning. On MNIST batch 64 (twice the steps) beats 128 at 5 and 10 CPU minutes (and 32 at 10),
# unweighted flow matching beats v with min-SNR weighting at 10 and 30 (and at 60 halves 30's score), and up to 10
# minutes the digits network at half its width beats it at full width: more steps outweigh less capacity
# (docs/decisions.md, "Budgets", "EDM's preconditioning and flow matching", "Flow matching at 30 minutes", "A
# narrower network for short budgets" and "An hour")
_FLOW_AT_BATCH_64 = {
    "optim.batch_size": 64,
    "diffusion.schedule.kind": "flow",
    "diffusion.prediction": "flow",
    "diffusion.weighting": "none",
}
BUDGETS: dict[str, tuple[tuple[float, dict[str, Any]], ...]] = {
    "mnist": ((10.0, {**_FLOW_AT_BATCH_64, "model.base_channels": 16}), (60.0, _FLOW_AT_BATCH_64)),
    "fashion-mnist": ((30.0, _FLOW_AT_BATCH_64),),  # unmeasured there: the narrower network is not risked
}
# hub datasets that are one of the above (the README's examples among them)
HUB_RECIPES = {
    "mnist": "mnist",
    "ylecun/mnist": "mnist",
    "fashion_mnist": "fashion-mnist",
    "zalando-datasets/fashion_mnist": "fashion-mnist",
    "cifar10": "cifar10",
    "uoft-cs/cifar10": "cifar10",
    "eurecom-ds/celeba-hq-small": "photos-64",
    "pcuenq/lsun-bedrooms": "photos-64",
    "tglcourse/lsun_church_train": "photos-64",
}
LARGEST_FITTED = 64  # pictures larger than this train at it (the old fixed size of folders): --image-size for more


def fitted_recipe(side: int) -> dict[str, Any]:
    """The recipe for pictures `side` pixels across: the digits network up to 28 pixels (as MNIST's recipe), the
    CIFAR-10 one above, at the nearest size the network's levels divide (2^(levels - 1)), at most LARGEST_FITTED."""
    name = "digits" if side <= 28 else "cifar10"
    factor = 2 ** (len(preset(name).channel_mult) - 1)
    size = max(factor, min(round(side / factor) * factor, LARGEST_FITTED))
    return {"preset": name, "model.image_size": size, **({"optim.lr": 2e-4} if name == "cifar10" else {})}


def recipe_name(dataset: str) -> str | None:
    """The name of a dataset's own recipe, or of the dataset a hub name is; None for folders and other hub
    datasets, which get a fitted one."""
    if dataset in RECIPES:
        return dataset
    if dataset.startswith("hf:"):
        return HUB_RECIPES.get(parse_spec(dataset.removeprefix("hf:"))[0])
    return None


def recipe(dataset: str, minutes: float | None = None) -> dict[str, Any]:
    """A dataset's recipe: its own, that of the dataset a hub name is, or one fitted to a folder's or a hub
    dataset's pictures (which this reads the size of); with a time budget, as BUDGETS adapts it to `minutes`."""
    name = recipe_name(dataset)
    if name is None:
        return fitted_recipe(native_resolution(dataset))
    return {**RECIPES[name], **budget_fields(dataset, minutes)}


def budget_fields(dataset: str, minutes: float | None) -> dict[str, Any]:
    """What a time budget of `minutes` changes in the dataset's recipe (BUDGETS; {} without a budget)."""
    bounds = BUDGETS.get(recipe_name(dataset) or "", ()) if minutes else ()
    return next((fields for bound, fields in bounds if minutes <= bound), {})


def default_config(
    dataset: str = "digits", *, model_preset: str | None = None, pad: bool = False, minutes: float | None = None
) -> RunConfig:
    """The recommended configuration for a dataset (its recipe, for a time budget of `minutes` if given), with the
    named model preset if given; `pad` pads the pictures with black up to the next power of two (28 -> 32) instead
    of resizing them."""
    fields = recipe(dataset, minutes)
    name = fields.pop("preset")
    if model_preset:  # another network: the recipe's model fields were chosen for its own
        name, fields = model_preset, {k: v for k, v in fields.items() if not k.startswith("model.")}
    config = with_fields(RunConfig(data=DataConfig(dataset=dataset), model=preset(name)), fields)
    if pad:
        size = config.model.image_size
        config = with_fields(config, {"data.pad": True, "model.image_size": 1 << (size - 1).bit_length()})
    return config
