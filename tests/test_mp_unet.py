"""EDM2's magnitude-preserving U-Net (models/mp_unet.py): its operations keep unit magnitudes, its weights stay at
unit norm through training, and it runs every path an ADM U-Net runs."""

import shutil
from dataclasses import replace

import pytest
import torch

from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint, split_prefix
from pixeldiffusion.config import LengthConfig
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.interop.pretrained import export_diffusers, read_model
from pixeldiffusion.models import MPUNet, build_unet, preset
from pixeldiffusion.models.classifier import load_noisy_classifier
from pixeldiffusion.models.mp_unet import (
    MPBlock,
    MPConv,
    force_weight_norm_,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    normalized_weights,
)
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.training import train
from pixeldiffusion.training.noisy_classifier import train_noisy_classifier


def rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item()


def white(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_silu_sums_and_concatenations_keep_unit_magnitude():
    a, b = white(2, 16, 256, 16, 16).unbind(0)
    assert rms(mp_silu(a)) == pytest.approx(1, abs=0.01)
    for t in (0.0, 0.3, 0.5, 0.9):
        assert rms(mp_sum(a, b, t)) == pytest.approx(1, abs=0.01)
    assert torch.allclose(mp_sum(a, b, 0.3), (0.7 * a + 0.3 * b) / (0.7**2 + 0.3**2) ** 0.5)
    joined = mp_cat(a[:, :32], b[:, :224], 0.3)  # unequal channel counts, each part weighted as asked
    assert joined.shape == (16, 256, 16, 16) and rms(joined) == pytest.approx(1, abs=0.01)
    part_a, part_b = joined[:, :32].square().sum(), joined[:, 32:].square().sum()
    assert (part_a / part_b).item() == pytest.approx(0.3**-2 * 0.7**2, rel=0.02)


def test_normalize_gives_unit_rms_rows():
    x = 5 * white(7, 3, 4, 4)
    assert torch.allclose(normalize(x).square().mean(dim=(1, 2, 3)), torch.ones(7, dtype=x.dtype), atol=1e-3)
    assert torch.allclose(normalize(x, dim=1).square().mean(dim=1), torch.ones(7, 4, 4, dtype=x.dtype), atol=1e-3)


@pytest.mark.parametrize("kernel", [0, 1, 3])
def test_mpconv_keeps_the_magnitude_and_ignores_the_stored_weights_scale(kernel):
    torch.manual_seed(0)
    conv = MPConv(64, 48, kernel).double()
    x = white(4096, 64) if kernel == 0 else white(16, 64, 24, 24)
    y = conv(x)
    assert rms(y) == pytest.approx(1, abs=0.03)
    with torch.no_grad():
        conv.weight.mul_(7.0)
    assert torch.allclose(conv(x), y, rtol=1e-3), "the weight is used at unit norm whatever its stored scale"
    assert torch.allclose(conv(x, gain=0.5), 0.5 * y, rtol=1e-3)


def test_an_mpconv_weights_gradient_is_orthogonal_to_each_row():
    conv = MPConv(8, 4, 3).double()
    conv(white(2, 8, 6, 6)).pow(3).sum().backward()
    w, g = conv.weight.flatten(1), conv.weight.grad.flatten(1)
    cosine = (w * g).sum(dim=1) / (w.norm(dim=1) * g.norm(dim=1))
    assert cosine.abs().max() < 1e-3, "a step tangent to the sphere of each row (up to normalize's epsilon)"


def test_forced_weight_normalisation_resets_each_row():
    model = MPUNet(preset("digits", block="mp"))
    weights = normalized_weights(model)
    assert len(weights) == sum(isinstance(m, MPConv) for m in model.modules()) > 10
    with torch.no_grad():
        for i, w in enumerate(weights):
            w.mul_(1 + i)
    force_weight_norm_(weights)
    for w in weights:
        assert torch.allclose(w.flatten(1).square().mean(dim=1), torch.ones(len(w)), atol=1e-3)


def mp_config(**overrides):
    return preset("digits", block="mp", base_channels=16, attention_heads=2, **overrides)


@pytest.mark.parametrize(
    "overrides, cond",
    [
        ({}, None),
        ({"num_classes": 3}, torch.tensor([0, 2, -1])),
        ({"context_dim": 2}, torch.tensor([[1.0, 0.0], [0.5, 0.5], [float("nan")] * 2])),
        ({"image_size": 28, "in_channels": 3, "num_res_blocks": 2, "attention_resolutions": (7, 14)}, None),
        ({"middle_attention": False, "attention_resolutions": (), "channel_mult": (1, 2, 2, 2)}, None),
    ],
)
def test_the_network_predicts_zeros_at_first_and_keeps_magnitudes_once_its_gains_are_on(overrides, cond):
    model = build_unet(mp_config(**overrides)).double().eval()
    assert isinstance(model, MPUNet)
    c = model.config
    x, t = white(3, c.in_channels, c.image_size, c.image_size), torch.tensor([1, 500, 1000])
    assert torch.equal(model(x, t, cond), torch.zeros_like(x)), "the output gain starts at zero"
    with torch.no_grad():
        model.out_gain.fill_(1.0)
        for block in model.modules():
            if isinstance(block, MPBlock):
                block.emb_gain.fill_(1.0)
    y = model(x, t, cond)
    assert y.shape == x.shape and 0.3 < rms(y) < 3, "no layer blows the magnitude up or lets it vanish"
    if cond is not None:
        assert not torch.allclose(model(x, t, cond.flip(0)), y), "the condition matters"


@pytest.mark.parametrize(
    "field, value", [("linear_attention_resolutions", (8,)), ("activation", "gelu"), ("stem_kernel", 7)]
)
def test_options_of_the_adm_network_alone_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"block mp\\) has no {field}"):
        mp_config(**{field: value})


def test_wrong_shapes_and_missing_conditions_are_one_line_errors():
    model = MPUNet(mp_config(num_classes=3))
    with pytest.raises(PixelDiffusionError, match=r"takes images of shape \(1, 16, 16\)"):
        model(torch.zeros(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(PixelDiffusionError, match="class-conditional: pass a condition"):
        model(torch.zeros(1, 1, 16, 16), torch.tensor([1]))


def test_an_mp_run_trains_with_unit_weights_resumes_exactly_and_samples(tmp_path, tiny):
    cfg = tiny(max_steps=4, checkpoint_every=2)
    cfg = replace(cfg, model=replace(cfg.model, block="mp"))
    run = train(cfg, tmp_path / "run")
    tensors, _ = load_checkpoint(latest_checkpoint(run.run_dir))
    model = MPUNet(read_model(run.run_dir).config.model)  # with the data's classes
    model.load_state_dict(split_prefix(tensors, "model"))
    for w in normalized_weights(model):
        assert torch.allclose(w.flatten(1).square().mean(dim=1), torch.ones(len(w)), atol=1e-3)
    assert model.out_gain.item() != 0, "the output gain learns"

    shutil.copytree(run.run_dir, tmp_path / "resumed")
    latest_checkpoint(tmp_path / "resumed").unlink()  # back to step 2
    train(cfg, tmp_path / "resumed", resume=True)
    again, _ = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert all(torch.equal(tensors[k], again[k]) for k in tensors), "resume continues exactly"

    images = Pipeline.from_run(run.run_dir).sample(4, seed=0).images
    assert images.shape == (4, 1, 16, 16) and torch.isfinite(images).all()
    with pytest.raises(PixelDiffusionError, match="mp blocks"):
        export_diffusers(run.run_dir, tmp_path / "exported")

    trained = train_noisy_classifier(run.run_dir, length=LengthConfig(max_steps=2), batch_size=8)
    assert load_noisy_classifier(trained.path).config.block == "resnet", "classifier guidance: an ADM encoder"
