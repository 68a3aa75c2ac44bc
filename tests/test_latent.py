"""Latent diffusion end to end: `train --autoencoder`, and sampling, evaluating and resuming its runs, which carry
their autoencoder (training/loop.py, pipeline.py, cli.py)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_FLAGS
from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint
from pixeldiffusion.cli import main
from pixeldiffusion.config import AutoencoderRunConfig, LengthConfig, RunConfig, with_fields
from pixeldiffusion.data import load_dataset
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.evaluation import classifier
from pixeldiffusion.evaluation.classifier import train_classifier
from pixeldiffusion.interop.diffusers import ConversionError
from pixeldiffusion.interop.pretrained import export_diffusers
from pixeldiffusion.interop.push import repository_folder
from pixeldiffusion.models.autoencoder import AutoencoderConfig
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.training import Trainer, batch_indices
from pixeldiffusion.training.autoencoder import encode, latent_config, read_autoencoder, train_autoencoder


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    """A tiny autoencoder of the digits, 10 steps."""
    out = tmp_path_factory.mktemp("latent") / "ae"
    config = AutoencoderRunConfig(
        model=AutoencoderConfig(base_channels=8, norm_groups=4), batch_size=16, device="cpu",
        length=LengthConfig(max_steps=10),
    )  # fmt: skip
    train_autoencoder(config, out)
    return out


@pytest.fixture(scope="module")
def latent_run(autoencoder_run, tmp_path_factory):
    """A class-conditional latent run of three steps (with flips), its autoencoder run deleted after training."""
    root = tmp_path_factory.mktemp("latent-run")
    ae, out = shutil.copytree(autoencoder_run, root / "ae"), root / "run"
    flags = ["--autoencoder", str(ae), "--hflip", "--out", str(out), "--max-steps", "3", "--checkpoint-every", "2"]
    assert main(["train", *flags, *TINY_FLAGS]) == 0
    shutil.rmtree(ae)  # the run carries its autoencoder
    return out


def test_the_run_records_its_latent_space_and_carries_the_autoencoder(latent_run):
    config = RunConfig.load(latent_run / "config.json")
    assert (config.model.image_size, config.model.in_channels, config.pixel_size) == (4, 4, 16)
    assert config.latent.source.endswith("ae") and config.latent.scale_factor > 0 and not config.sample.clip_x0
    tensors, meta = load_checkpoint(latest_checkpoint(latent_run))
    assert any(name.startswith("autoencoder/") for name in tensors) and meta["config"]["latent"]["autoencoder"]
    assert (latent_run / "samples.png").is_file() and Image.open(latent_run / "denoising.gif").n_frames == 3


def test_flips_draw_the_latents_of_mirrored_images(autoencoder_run, tmp_path, tiny):
    config = with_fields(latent_config(tiny(batch_size=64), autoencoder_run), {"data.hflip": True})
    step = Trainer(config, tmp_path / "run").train_step
    images = load_dataset("digits").images
    torch.testing.assert_close(
        step.images, config.latent.scale_factor * encode(read_autoencoder(autoencoder_run).network(), images)
    )
    assert not torch.allclose(step.flipped, step.images.flip(-1)), "a mirrored latent is not the mirrored image's"
    x0, idx = step.draw(0).x0, batch_indices(config.seed, 0, len(images), 64)
    kept = (x0 == step.images[idx]).flatten(1).all(1)
    mirrored = (x0 == step.flipped[idx]).flatten(1).all(1)
    assert torch.all(kept | mirrored) and kept.any() and mirrored.any()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_sample_decodes_with_every_sampler_and_writes_the_gif(latent_run, tmp_path, sampler):
    png, gif, npz = tmp_path / "s.png", tmp_path / "s.gif", tmp_path / "s.npz"
    args = ["sample", "--run", str(latent_run), "--n", "3", "--steps", "3", "--sampler", sampler, "--guidance", "2"]
    assert main([*args, "--class", "7", "--out", str(png), "--gif", str(gif), "--npz", str(npz)]) == 0
    with np.load(npz) as arrays:
        assert arrays["images"].shape == (3, 16, 16, 1) and arrays["labels"].tolist() == [7] * 3
    animation = Image.open(gif)
    assert animation.n_frames == 4 and animation.size[0] == Image.open(png).size[0], "frames of 16x16 pixels"


def test_the_pipeline_returns_pixels_and_decoded_frames(latent_run):
    pipe = Pipeline.from_run(latent_run)
    samples = pipe.sample(3, frames=3, steps=4, guidance=3.0)
    assert samples.images.shape == (3, 1, 16, 16)
    assert samples.images.min() >= -1 and samples.images.max() <= 1
    assert [x_t.shape for _, x_t, _ in samples.frames] == [(3, 1, 16, 16)] * 3
    last = list(pipe.generate(3, steps=4, guidance=3.0))[-1]
    torch.testing.assert_close(last.x, samples.images)  # the page's last step shows the sampled images
    latents = torch.randn(2, 4, 4, 4)
    decoded = pipe.autoencoder.decode(latents / pipe.config.latent.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(pipe.decode(latents), decoded)
    with pytest.raises(ConfigError, match="clip_x0 must be off for a latent model"):
        pipe.sample(2, clip_x0=True)


def test_a_latent_run_resumes_without_its_autoencoder_run(latent_run, capsys):
    assert main(["train", "--resume", str(latent_run), "--max-steps", "4"]) == 0
    assert json.loads((latent_run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    assert main(["train", "--resume", str(latent_run), "--autoencoder", "x"]) == 2
    assert "--autoencoder cannot change on a resumed run" in capsys.readouterr().err


def test_eval_scores_the_decoded_samples(latent_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(classifier, "min_accuracy", lambda dataset: 0.0)  # a weak classifier is enough here
    weak = tmp_path / "digits-16.safetensors"
    train_classifier("digits", epochs=1, widths=(8, 16), out=weak, device="cpu")
    assert main(["eval", "--run", str(latent_run), "--n", "8", "--steps", "2", "--classifier", str(weak)]) == 0
    assert "reference: digits:all (one split, no held-out images) at 16x16" in capsys.readouterr().out
    record = json.loads((latent_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "eval" and record["n"] == 8 and np.isfinite(record["fd"])


def test_a_pushed_latent_run_keeps_its_autoencoder_and_has_no_diffusers_twin(latent_run, tmp_path):
    folder = repository_folder(latent_run, tmp_path / "repo", repo="user/latent")
    card = (folder / "README.md").read_text()
    assert "16x16 latent diffusion model" in card and "no diffusers pipeline counterpart" in card
    assert Pipeline.from_pretrained(folder).sample(2, steps=2).images.shape == (2, 1, 16, 16)
    with pytest.raises(ConversionError, match="a latent diffusion model has no diffusers pipeline counterpart"):
        export_diffusers(latent_run, tmp_path / "diffusers")
