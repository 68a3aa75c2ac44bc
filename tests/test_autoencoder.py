"""The autoencoder of latent diffusion: the network and its loss (models/autoencoder.py), and `train-autoencoder`
(training/autoencoder.py)."""

import json
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pixeldiffusion.checkpoint import load_checkpoint
from pixeldiffusion.cli import main
from pixeldiffusion.config import AutoencoderRunConfig, LengthConfig, RunConfig
from pixeldiffusion.data import load_dataset, to_model_range
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models import autoencoder as model
from pixeldiffusion.models.autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss
from pixeldiffusion.seeding import generator
from pixeldiffusion.training import autoencoder as run
from pixeldiffusion.training.autoencoder import encode, latent_config, read_autoencoder, train_autoencoder
from pixeldiffusion.training.rundir import read_metrics

TINY = AutoencoderConfig(base_channels=8, norm_groups=4)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_encode_and_decode_shapes(factor):
    ae = Autoencoder(AutoencoderConfig(factor=factor, latent_channels=3, base_channels=8, norm_groups=4))
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 3, 16 // factor, 16 // factor)
    assert ae.decode(mean).shape == x.shape
    reconstruction, *_ = ae(x, torch.randn_like(mean))
    assert reconstruction.shape == x.shape and torch.isfinite(reconstruction).all()


def test_kl_term_is_the_closed_form_of_two_gaussians():
    mean, logvar = torch.randn(5, 4, 2, 2), torch.randn(5, 4, 2, 2)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(model.kl_divergence(mean, logvar), expected)
    assert model.kl_divergence(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)).abs().max() == 0, "q = prior: KL 0"


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_loss_is_the_reconstruction_error_plus_beta_kl_per_image(loss):
    x, x_hat = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    mean, logvar = torch.randn(2, 4, 1, 1), torch.randn(2, 4, 1, 1)
    total, kl = autoencoder_loss(x, x_hat, mean, logvar, loss=loss, beta=0.1)
    error = (x - x_hat).abs() if loss == "l1" else (x - x_hat).square()
    torch.testing.assert_close(total, error.sum((1, 2, 3)) + 0.1 * model.kl_divergence(mean, logvar))
    torch.testing.assert_close(kl, model.kl_divergence(mean, logvar))
    with pytest.raises(ConfigError, match="unknown reconstruction loss 'huber'"):
        autoencoder_loss(x, x_hat, mean, logvar, loss="huber", beta=0.1)


def test_configuration_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown factor 3; choose one of 2, 4, 8"):
        AutoencoderConfig(factor=3)
    with pytest.raises(ConfigError, match="image size 18 is not divisible by the factor 4"):
        AutoencoderRunConfig(image_size=18)
    with pytest.raises(ConfigError, match="unknown reconstruction loss 'l3'"):
        AutoencoderRunConfig(loss="l3")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder of the digits, 40 steps, a metrics line every 10."""
    out = tmp_path_factory.mktemp("autoencoder") / "ae"
    config = AutoencoderRunConfig(
        model=TINY, batch_size=16, warmup_steps=5, device="cpu", length=LengthConfig(max_steps=40)
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "LOG_EVERY", 10)
        return out, train_autoencoder(config, out)


def test_a_tiny_autoencoder_learns(trained):
    out, result = trained
    errors = [r["reconstruction"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(errors) == 4 and errors[-1] < 0.7 * errors[0], errors
    assert result.steps == 40 and 0 < result.mse < 0.25 and result.psnr == pytest.approx(-10 * math.log10(result.mse))
    assert (out / "reconstructions.png").is_file()


def test_the_checkpoint_round_trips(trained):
    """The weights and configuration read back reconstruct the held-out images with the recorded error."""
    out, result = trained
    found = read_autoencoder(out)
    assert found.config.image_size == 16 and found.config.model == TINY
    assert found.config.to_json() == (out / "config.json").read_text()
    images = load_dataset("digits").images
    held = len(images) // 10
    held_out = images[torch.randperm(len(images), generator=generator(0, "held-out"))[:held]]
    ae = found.network()
    reconstructions = ae.decode(encode(ae, held_out)).clamp(-1, 1)
    mse = ((reconstructions - to_model_range(held_out)) / 2).square().mean()
    assert result.held_out == held and float(mse) == pytest.approx(result.mse, rel=1e-5)
    assert load_checkpoint(out / run.FILE)[1]["held_out"] == {"images": held, "mse": result.mse, "psnr": result.psnr}


def test_the_scale_factor_gives_latents_of_unit_variance(trained):
    out, result = trained
    found = read_autoencoder(out)
    latents = encode(found.network(), load_dataset("digits").images)
    assert found.scale_factor == result.scale_factor
    assert float((found.scale_factor * latents).std()) == pytest.approx(1.0, abs=0.02)


def test_a_diffusion_config_in_its_latent_space(trained):
    out, result = trained
    config = latent_config(RunConfig(), out)
    assert (config.model.image_size, config.model.in_channels, config.pixel_size) == (4, 4, 16)
    assert config.latent.scale_factor == result.scale_factor and config.latent.autoencoder == TINY
    assert not config.sample.clip_x0, "latents are unbounded"
    assert RunConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="clip_x0 must be off in latent space"):
        RunConfig(latent=config.latent)
    with pytest.raises(ConfigError, match="image size 18 is not divisible by the autoencoder's factor 4"):
        latent_config(RunConfig(), out, image_size=18)


def test_train_autoencoder_command(tmp_path, capsys):
    out = tmp_path / "ae"
    flags = ["--base-channels", "8", "--norm-groups", "4", "--batch-size", "8", "--device", "cpu"]
    assert main(["train-autoencoder", "--out", str(out), "--max-steps", "2", "--beta", "1e-5", *flags]) == 0
    printed = capsys.readouterr().out
    assert "images: MSE " in printed and "PSNR" in printed and f"train --autoencoder {out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert (config["beta"], config["length"]["max_steps"], config["image_size"]) == (1e-5, 2, 16)
    assert main(["train-autoencoder", "--out", str(out), "--max-steps", "1", *flags]) == 2
    assert f"{out} already holds an autoencoder" in capsys.readouterr().err
    assert main(["train", "--autoencoder", str(tmp_path), "--max-steps", "1"]) == 2
    assert f"{tmp_path} holds no autoencoder: train one with" in capsys.readouterr().err
