"""The noisy classifier of classifier guidance: its network (the U-Net's way down), its file, and its training."""

import json

import pytest
import torch

from pixeldiffusion.checkpoint import CheckpointError, save_checkpoint
from pixeldiffusion.config import LengthConfig
from pixeldiffusion.data import ImageData
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import UNet
from pixeldiffusion.models.classifier import NoisyClassifier, load_noisy_classifier
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.schedule import ScheduleConfig
from pixeldiffusion.training.noisy_classifier import fit_noisy_classifier, held_out_accuracy

TINY = UNetConfig(
    image_size=8,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    attention_heads=1,
    norm_groups=4,
)
SCHEDULE = ScheduleConfig(timesteps=100)


def halves(n: int, seed: int) -> ImageData:
    """Easy data: class 0 is bright on the left half, class 1 on the right half, with a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 1, 8, 8)
    images[labels == 0, :, :, :4] = 1
    images[labels == 1, :, :, 4:] = 1
    images = (images * 200 + torch.rand(images.shape, generator=g) * 55).to(torch.uint8)
    return ImageData("halves", images, labels, class_names=("left", "right"))


def test_the_classifier_is_the_unets_way_down():
    classifier = NoisyClassifier(TINY, class_names=("a", "b", "c"), schedule=SCHEDULE)
    unet = UNet(TINY).state_dict()
    shared = {k: v.shape for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    assert shared and all(unet[k].shape == shape for k, shape in shared.items()), "the U-Net's names and shapes"
    assert not any(k.startswith("up.") for k in shared)
    logits = classifier(torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 50, 99, 100]))
    assert logits.shape == (5, 3)
    with pytest.raises(ConfigError, match="sees x_t and t alone"):
        NoisyClassifier(UNetConfig(image_size=8, num_classes=3), class_names=("a", "b", "c"), schedule=SCHEDULE)


def test_a_noisy_classifier_learns_easy_data_and_its_file_round_trips(tmp_path):
    torch.manual_seed(0)
    network = NoisyClassifier(TINY, class_names=("left", "right"), schedule=SCHEDULE)
    test = halves(64, seed=1)
    chance = held_out_accuracy(network, test, 0, seed=0)
    steps, _ = fit_noisy_classifier(
        network, halves(128, seed=0), length=LengthConfig(max_steps=40), batch_size=32, lr=3e-3, warmup_steps=5
    )
    assert steps == 40
    clean, noisy = held_out_accuracy(network, test, 0, seed=0), held_out_accuracy(network, test, 25, seed=0)
    assert clean >= 0.95 and noisy >= 0.8, (chance, clean, noisy)

    path = network.save(tmp_path / "clf" / "classifier.safetensors", steps=steps)
    loaded = load_noisy_classifier(tmp_path / "clf")  # the folder names its file
    assert (loaded.config, loaded.class_names, loaded.schedule) == (TINY, ("left", "right"), SCHEDULE)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 30, 90])
    assert torch.equal(loaded(x, t), network.eval()(x, t))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert json.loads(path.with_suffix(".json").read_text())["class_names"] == ["left", "right"]


def test_a_classifier_refuses_a_model_it_does_not_fit():
    classifier = NoisyClassifier(TINY, class_names=("a", "b", "c"), schedule=SCHEDULE)
    classifier.check_fits(UNetConfig(image_size=8, num_classes=3), SCHEDULE)
    classifier.check_fits(UNetConfig(image_size=8), SCHEDULE)  # unconditional: any number of classes
    for model, schedule, message in [
        (UNetConfig(image_size=16), SCHEDULE, r"1x8x8 images \(the model's: 1x16x16\)"),
        (UNetConfig(image_size=8, in_channels=3), SCHEDULE, r"1x8x8 images \(the model's: 3x8x8\)"),
        (UNetConfig(image_size=8, num_classes=10), SCHEDULE, r"3 classes \(the model's: 10\)"),
        (UNetConfig(image_size=8), ScheduleConfig(kind="cosine", timesteps=100), "the schedule linear, T = 100"),
        (UNetConfig(image_size=8), ScheduleConfig(), r"the schedule linear, T = 100, .*'s: linear, T = 1000,"),
    ]:
        with pytest.raises(PixelDiffusionError, match="the classifier does not fit this model: it has " + message):
            classifier.check_fits(model, schedule)


def test_loading_refuses_what_is_not_a_noisy_classifier(tmp_path):
    with pytest.raises(PixelDiffusionError, match="no noisy classifier at"):
        load_noisy_classifier(tmp_path)
    save_checkpoint(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {"kind": "something else"})
    with pytest.raises(CheckpointError, match="is not a noisy classifier"):
        load_noisy_classifier(tmp_path / "other.safetensors")
