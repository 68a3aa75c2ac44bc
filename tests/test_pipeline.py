"""Pipeline.sample: an image's pixels are a function of (seed, image index) alone."""

from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from pixeldiffusion.data import to_uint8
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import UNet
from pixeldiffusion.models.classifier import NoisyClassifier
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.process import Process
from pixeldiffusion.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def pipe():
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=3), sample=replace(cfg.sample, steps=4))
    torch.manual_seed(0)
    model = UNet(cfg.model)
    for p in model.parameters():  # undo the zero initialisation of output layers
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return Pipeline(model, NoiseSchedule.from_config(cfg.diffusion.schedule), cfg)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_the_same_seed_gives_the_same_images_whatever_the_batch_size(pipe, sampler):
    runs = [pipe.sample(12, seed=3, sampler=sampler, eta=1.0, batch_size=b).images for b in (1, 4, 12)]
    # the noise is the same bit for bit; the network's kernels round differently by batch shape (GEMV for one image)
    assert all(torch.allclose(runs[0], r, rtol=0, atol=1e-4) for r in runs[1:])
    for r in runs[1:]:  # the same PNG, but for a pixel on a rounding boundary (docs/decisions.md)
        levels = (to_uint8(runs[0]).int() - to_uint8(r).int()).abs()
        assert levels.max() <= 1 and (levels > 0).double().mean() < 1e-3
    other = pipe.sample(12, seed=4, sampler=sampler, eta=1.0).images
    assert not torch.equal(runs[0], other)


def test_the_first_images_of_a_larger_request_are_the_smaller_request(pipe):
    few, many = pipe.sample(3, seed=1, sampler="ddpm").images, pipe.sample(8, seed=1, sampler="ddpm").images[:3]
    assert torch.equal(to_uint8(few), to_uint8(many))


def test_an_out_of_memory_split_gives_the_same_images(pipe, monkeypatch):
    expected = pipe.sample(8, seed=2, sampler="ddpm").images
    steps = Pipeline.steps

    def small_memory(self, network, noise, cond, cfg, *guidance):
        if len(noise) > 2:
            raise torch.OutOfMemoryError("simulated")
        yield from steps(self, network, noise, cond, cfg, *guidance)

    monkeypatch.setattr(Pipeline, "steps", small_memory)
    assert torch.equal(to_uint8(pipe.sample(8, seed=2, sampler="ddpm").images), to_uint8(expected))


def test_each_process_samples_its_share_of_the_images(pipe, monkeypatch):
    """Two processes simulated in one: each samples its share, and the gather joins them in index order."""
    expected = pipe.sample(7, seed=5, sampler="ddpm", batch_size=2).images
    shares = {}
    for rank in (0, 1):
        process = Process(rank=rank, world_size=2)
        monkeypatch.setattr(Process, "all_gather", lambda self, part, r=rank: [shares.setdefault(r, part)])
        pipe.sample(7, seed=5, sampler="ddpm", batch_size=2, processes=process)
    assert [len(shares[0]), len(shares[1])] == [4, 3]
    assert torch.equal(torch.cat([shares[0], shares[1]]), expected), "the same batches: bit for bit"


def test_frames_are_x_T_then_evenly_spaced_steps_ending_with_the_images(pipe):
    samples = pipe.sample(2, frames=3, steps=4)
    assert [t for t, _, _ in samples.frames] == [1000, 750, 0]  # x_T, after the first step, after the last
    assert torch.equal(samples.frames[-1][1], ((samples.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))


def test_generate_walks_the_same_loop_as_sample(pipe):
    *_, last = pipe.generate(4, seed=6, sampler="ddpm", steps=4)
    assert torch.equal(last.x, pipe.sample(4, seed=6, sampler="ddpm", steps=4).images)


def noisy_classifier(model, schedule, classes: int = 3) -> NoisyClassifier:
    torch.manual_seed(1)
    config = replace(model, num_classes=0, context_dim=0)
    return NoisyClassifier(config, class_names=tuple("abcdefg"[:classes]), schedule=schedule)


def test_classifier_guidance_combines_with_classifier_free_guidance(pipe, monkeypatch):
    classifier = noisy_classifier(pipe.config.model, pipe.config.diffusion.schedule)
    options = dict(labels=[2, 0], guidance=2.0, sampler="ddim", seed=1)
    plain = pipe.sample(4, **options)
    unguided = pipe.sample(4, classifier=classifier, classifier_scale=0.0, **options)
    assert torch.equal(unguided.images, plain.images) and unguided.cond.tolist() == [2, 0, 2, 0]
    guided = pipe.sample(4, classifier=classifier, classifier_scale=50.0, **options)
    assert not torch.equal(guided.images, plain.images)

    steps = Pipeline.steps

    def small_memory(self, network, noise, cond, cfg, guidance=None):
        if len(noise) > 1:
            raise torch.OutOfMemoryError("simulated")
        assert guidance.y.tolist() == cond.tolist(), "each half is steered towards its own classes"
        yield from steps(self, network, noise, cond, cfg, guidance)

    monkeypatch.setattr(Pipeline, "steps", small_memory)
    split = pipe.sample(4, classifier=classifier, classifier_scale=50.0, **options)
    assert torch.allclose(split.images, guided.images, atol=1e-4)


def test_classifier_guidance_steers_an_unconditional_model_towards_the_classifiers_classes(pipe):
    config = replace(pipe.config, model=replace(pipe.config.model, num_classes=0))
    torch.manual_seed(0)
    unconditional = Pipeline(UNet(config.model), pipe.schedule, config)
    classifier = noisy_classifier(config.model, config.diffusion.schedule, classes=2)
    samples = unconditional.sample(classifier=classifier, classifier_scale=2.0, per_class=2)
    assert samples.cond.tolist() == [0, 0, 1, 1] and samples.row_labels == ["a", "b"] and samples.nrow == 2
    assert unconditional.sample(3, classifier=classifier, labels=["B"]).cond.tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="this model is unconditional"):
        unconditional.sample(3, labels=[1])
    with pytest.raises(ConfigError, match="a classifier scale needs a classifier"):
        unconditional.sample(3, classifier_scale=2.0)
    with pytest.raises(PixelDiffusionError, match=r"it has 2 classes \(the model's: 3\)"):
        pipe.sample(3, classifier=classifier)
