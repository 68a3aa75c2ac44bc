"""Each dataset's recipe: the measured ones, hub names that are a known dataset, and folders and hub datasets
trained at their pictures' own resolution."""

from dataclasses import replace

import pytest
from PIL import Image

from pixeldiffusion import default_config as exported
from pixeldiffusion.data.registry import native_resolution
from pixeldiffusion.recipes import default_config


def pictures(folder, size: tuple[int, int], count: int = 4, mode: str = "RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new(mode, size, (40 * i, 20, 200) if mode == "RGB" else 40 * i).save(folder / f"{i}.png")
    return folder


def test_the_mnist_recipes_are_the_measured_ones():
    for dataset in ("mnist", "fashion-mnist"):
        config = default_config(dataset)
        assert (config.diffusion.prediction, config.diffusion.weighting, config.model.image_size) == (
            "v",
            "min_snr",
            28,
        )
        assert (config.sample.sampler, config.sample.steps) == ("ddpm", 50)
    assert default_config("fashion-mnist").data.hflip and not default_config("mnist").data.hflip
    digits = default_config("digits")  # the first run: v with min-SNR, 1,000 steps of 64
    assert (digits.diffusion.prediction, digits.diffusion.weighting) == ("v", "min_snr")
    assert (digits.optim.batch_size, digits.length.max_steps) == (64, 1000)
    assert exported is default_config


@pytest.mark.parametrize(
    "name,size,preset_channels",
    [
        ("hf:fashion_mnist", 28, 32),
        ("hf:zalando-datasets/fashion_mnist:test", 28, 32),
        ("hf:uoft-cs/cifar10", 32, 128),
        ("hf:cifar10@main", 32, 128),
        ("hf:eurecom-ds/celeba-hq-small", 64, 128),
        ("hf:pcuenq/lsun-bedrooms", 64, 128),
        ("hf:tglcourse/lsun_church_train", 64, 128),
    ],
)
def test_hub_names_of_known_datasets_get_their_recipe(name, size, preset_channels):
    config = default_config(name)  # no download: the name alone decides
    assert (config.model.image_size, config.model.base_channels) == (size, preset_channels)
    assert config.data.dataset == name


@pytest.mark.parametrize(
    "side,size,base_channels",
    [((20, 24), 20, 32), ((28, 28), 28, 32), ((40, 40), 40, 128), ((61, 70), 64, 128), ((500, 300), 64, 128)],
)
def test_a_folder_trains_at_its_pictures_own_size(tmp_path, side, size, base_channels):
    folder = pictures(tmp_path / "pets", side)
    assert native_resolution(f"folder:{folder}") == min(side)
    config = default_config(f"folder:{folder}")
    factor = 2 ** (len(config.model.channel_mult) - 1)
    assert config.model.image_size == size and size % factor == 0
    assert config.model.base_channels == base_channels, "the digits network up to 28 pixels, CIFAR-10's above"


def test_a_saved_hub_dataset_trains_at_its_pictures_own_size(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [Image.new("RGB", (48, 48), (9 * i, 0, 0)) for i in range(4)], "label": [0, 1, 0, 1]}
    copy = tmp_path / "copy"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(copy)
    assert native_resolution(f"hf:{copy}") == 48
    assert default_config(f"hf:{copy}").model.image_size == 48


def test_pad_pads_up_to_the_next_power_of_two():
    config = default_config("mnist", pad=True)
    assert config.data.pad and config.model.image_size == 32
    assert default_config("digits", pad=True).model.image_size == 16
    assert default_config("mnist", model_preset="mnist", pad=True).model.image_size == 32


def test_a_time_budget_picks_the_recipes_settings_for_it():
    from pixeldiffusion.config import with_fields
    from pixeldiffusion.recipes import BUDGETS, RECIPES

    for dataset, name in (("mnist", "mnist"), ("fashion-mnist", "fashion-mnist"), ("hf:ylecun/mnist", "mnist")):
        for bound, fields in BUDGETS[name]:
            quick = default_config(dataset, minutes=bound)
            assert with_fields(quick, fields) == quick != default_config(dataset), dataset
    (short, _), (bound, _) = BUDGETS["mnist"]
    assert default_config("mnist", minutes=short).model.base_channels == 16  # the first bound's narrower network
    assert default_config("mnist", minutes=short + 1).model.base_channels == 32
    long = default_config("mnist", minutes=bound + 1)
    assert long.optim.batch_size == 128 and "optim.batch_size" not in RECIPES["mnist"]
    assert (
        default_config("mnist", model_preset="mnist", minutes=short).model
        == default_config("mnist", model_preset="mnist").model
    )  # another network keeps its own sizes
    assert default_config("mnist") == default_config("mnist", minutes=None)
    assert default_config("digits", minutes=1) == default_config("digits")  # no budgets of its own


def test_train_minutes_uses_the_budget_unless_a_flag_says_otherwise(capsys, monkeypatch, tmp_path):
    import pixeldiffusion.training
    from pixeldiffusion.cli import main

    seen = []

    def train(config, run_dir, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(pixeldiffusion.training, "train", train)
    for flags in ([], ["--batch-size", "128"]):
        with pytest.raises(SystemExit):
            main(["train", "--dataset", "mnist", "--minutes", "10", "--out", str(tmp_path / "r"), *flags])
    (quick, kept), out = seen, capsys.readouterr().out
    assert (quick.optim.batch_size, quick.length.minutes, kept.optim.batch_size) == (64, 10, 128)
    assert (quick.diffusion.schedule.kind, kept.diffusion.schedule.kind) == ("flow", "flow")
    assert (quick.diffusion.prediction, quick.diffusion.weighting) == ("flow", "none")
    assert (quick.model.base_channels, kept.model.base_channels) == (16, 16)
    assert (
        "for 10 minutes the recipe trains with --batch-size 64, --schedule flow, --prediction flow, --weighting none, "
        "--base-channels 16" in out
    )
    import pixeldiffusion.interop.pretrained
    from pixeldiffusion.schedule import ScheduleConfig

    def linear_network(init, config):  # a network to fine-tune: v-prediction on the linear schedule, 32 wide
        diffusion = replace(config.diffusion, schedule=ScheduleConfig("linear"), prediction="v")
        return replace(config, diffusion=diffusion, model=replace(config.model, base_channels=32)), None

    monkeypatch.setattr(pixeldiffusion.interop.pretrained, "initial_weights", linear_network)
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "mnist", "--minutes", "10", "--init", "x", "--out", str(tmp_path / "i")])
    assert (seen[-1].diffusion.schedule.kind, seen[-1].diffusion.prediction) == ("linear", "v")
    assert "for 10 minutes the recipe trains with --batch-size 64, --weighting none\n" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # another torchrun process: the header is printed once per launch
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "mnist", "--minutes", "10", "--out", str(tmp_path / "r")])
    assert capsys.readouterr().out == ""
