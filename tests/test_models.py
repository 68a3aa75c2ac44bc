import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import RunConfig
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models import PRESETS, UNet, UNetConfig, preset
from pixeldiffusion.models.blocks import Attention, LinearAttention, Upsample
from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.models.unet import ACTIVATIONS
from pixeldiffusion.pipeline import Pipeline


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_every_preset_runs_at_batch_one_and_an_odd_batch(name, batch):
    if name == "cifar10" and batch == 3:
        pytest.skip("one batch size is enough for the 36M-parameter preset")
    c = preset(name)
    model = UNet(c)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size)
    cond = torch.rand(batch, c.context_dim) if c.context_dim else None
    out = model(x, torch.randint(1, 1001, (batch,)), cond)
    assert out.shape == x.shape


def test_ddpm_cifar10_preset_has_the_papers_size():
    n = sum(p.numel() for p in UNet(preset("cifar10")).parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.01


@pytest.mark.parametrize("block", ["resnet", "convnext"])
@pytest.mark.parametrize("injection", ["additive", "scale_shift"])
def test_block_and_injection_variants(block, injection):
    c = preset(
        "digits",
        base_channels=8,
        norm_groups=4,
        attention_heads=2,
        block=block,
        injection=injection,
        linear_attention_resolutions=(8,),
        dropout=0.1,
    )
    out = UNet(c)(torch.randn(2, 1, 16, 16), torch.tensor([1, 999]))
    assert out.shape == (2, 1, 16, 16)


def test_output_is_zero_at_initialisation():
    """Zero-initialised output convolution: an untrained network predicts 0."""
    model = UNet(preset("digits", base_channels=8, norm_groups=4, attention_heads=1))
    assert torch.count_nonzero(model(torch.randn(2, 1, 16, 16), torch.tensor([3, 4]))) == 0


def test_image_size_must_divide_by_the_downsampling():
    with pytest.raises(ConfigError, match="not divisible by 4"):
        preset("digits", image_size=18)
    model = UNet(preset("digits", base_channels=8, norm_groups=4, attention_heads=1))
    with pytest.raises(PixelDiffusionError, match=r"shape \(1, 16, 16\)"):
        model(torch.randn(1, 1, 32, 32), torch.tensor([1]))


def test_class_and_context_conditioning_use_a_learned_null():
    torch.manual_seed(0)
    for kw, cond in (({"num_classes": 10}, torch.tensor([3, 3])), ({"context_dim": 5}, torch.rand(2, 5))):
        model = UNet(preset("digits", base_channels=8, norm_groups=4, attention_heads=1, **kw))
        t = torch.tensor([10, 10])
        emb, emb_null = model.embed(t, cond), model.embed(t, null_like(cond))
        assert torch.isfinite(emb_null).all() and not torch.allclose(emb, emb_null)
        with pytest.raises(PixelDiffusionError, match="pass a condition"):
            model(torch.randn(2, 1, 16, 16), t)


def test_unconditional_model_ignores_no_condition():
    model = UNet(preset("digits", base_channels=8, norm_groups=4, attention_heads=1))
    assert model.class_embedding is None and model.context_embedding is None


def test_upsample_is_nearest_neighbour_doubling_then_a_convolution():
    up = Upsample(4)
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(up(x), up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), rtol=0, atol=0)


TINY = dict(base_channels=8, norm_groups=4, attention_heads=1)


def perturbed(config: UNetConfig) -> UNet:
    """A U-Net with every weight moved off its initialisation (no zero layer), so its output depends on them all."""
    torch.manual_seed(0)
    model = UNet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def through_a_checkpoint(model: UNet, path) -> UNet:
    """The network read back from a checkpoint of it, as `sample` reads one: rebuilt from the stored configuration."""
    config = RunConfig(model=model.config)
    weights = {f"{prefix}/{k}": v.clone() for prefix in ("model", "ema") for k, v in model.state_dict().items()}
    meta = {"config": json.loads(config.to_json()), "step": 1, "elapsed": 0.0, "class_names": []}
    return Pipeline.from_checkpoint(ckpt.save_checkpoint(path, weights, meta), device="cpu").model


def test_a_7x7_stem_keeps_the_shape_and_round_trips_through_a_checkpoint(tmp_path):
    model = perturbed(preset("digits", **TINY, stem_kernel=7))
    assert model.stem.kernel_size == (7, 7)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 500, 1000])
    with torch.no_grad():
        out = model(x, t)
        again = through_a_checkpoint(model, tmp_path / "stem.safetensors")
        assert out.shape == x.shape and again.config.stem_kernel == 7 and torch.equal(again(x, t), out)


@pytest.mark.parametrize("activation", ["gelu", "relu", "mish"])
def test_the_activation_takes_the_place_of_every_silu(activation):
    config = preset("digits", **TINY, context_dim=3, activation=activation)
    model, silu = perturbed(config), perturbed(replace(config, activation="silu"))  # the same weights
    kind = ACTIVATIONS[activation]
    assert sum(isinstance(m, kind) for m in model.modules()) == sum(isinstance(m, nn.SiLU) for m in silu.modules())
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.rand(2, 3)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, cond), silu(x, t, cond))
    with pytest.raises(ConfigError, match="unknown activation 'tanh'; choose one of silu, gelu, relu, mish"):
        preset("digits", activation="tanh")


def test_a_unet_without_attention_round_trips_through_a_checkpoint(tmp_path):
    config = preset("digits", **TINY, attention_resolutions=(), middle_attention=False)
    model = perturbed(config)
    assert not any(isinstance(m, (Attention, LinearAttention)) for m in model.modules())
    with_attention = UNet(replace(config, middle_attention=True)).state_dict()
    assert set(model.state_dict()) == {k for k in with_attention if not k.startswith("middle.1.")}
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 1000])
    with torch.no_grad():
        again = through_a_checkpoint(model, tmp_path / "plain.safetensors")
        assert not again.config.middle_attention and torch.equal(again(x, t), model(x, t))
