"""Class labels, context vectors and classifier-free guidance, through the pipeline and the CLI."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from pixeldiffusion.cli import main
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models import UNet, null_like
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import ddim, ddpm, make_denoiser, timestep_grid
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import ImageNoise


@pytest.fixture(scope="module")
def pipe():
    """An untrained class-conditional model whose output depends on the condition."""
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=3), sample=replace(cfg.sample, steps=5, n=6))
    model = UNet(cfg.model)
    for p in model.parameters():  # undo the zero initialisation of output layers
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return Pipeline(
        model, NoiseSchedule.from_config(cfg.diffusion.schedule), cfg, class_names=("cat", "Ankle boot", "dog")
    )


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guidance_one_is_conditional_and_zero_is_unconditional_bit_for_bit(pipe, sampler):
    labels = [0, 1, 2, 1, 0, 2]

    def without_guidance(cond):
        """The sampler called on the bare network with a fixed condition: no guidance code involved."""
        noise = ImageNoise(0, range(6))  # the pipeline's streams for seed 0
        x_T = noise.randn((1, 16, 16))
        prediction = pipe.config.diffusion.prediction
        denoise = make_denoiser(lambda x, t: pipe.model(x, t, cond), pipe.schedule, prediction)
        fn, params = (ddim, {"eta": 0.5}) if sampler == "ddim" else (ddpm, {})
        with torch.inference_mode():
            *_, last = fn(denoise, pipe.schedule, x_T, timestep_grid(pipe.schedule, 5), noise=noise, **params)
            return last.x

    def with_guidance(w):
        return pipe.sample(labels=labels, sampler=sampler, eta=0.5, guidance=w, seed=0).images

    assert torch.equal(with_guidance(1.0), without_guidance(torch.tensor(labels)))
    assert torch.equal(with_guidance(0.0), without_guidance(null_like(torch.tensor(labels))))
    assert not torch.equal(with_guidance(3.0), with_guidance(1.0))


def test_classes_by_name_or_index(pipe):
    assert pipe.class_index("ankle BOOT") == 1 and pipe.class_index("2") == 2 and pipe.class_index(0) == 0
    with pytest.raises(ConfigError, match="unknown class 'cow'; the classes are: cat, Ankle boot, dog"):
        pipe.class_index("cow")
    samples = pipe.sample(per_class=2)
    assert samples.cond.tolist() == [0, 0, 1, 1, 2, 2] and samples.row_labels == ["cat", "Ankle boot", "dog"]
    assert samples.grid().size[0] > samples.grid().size[1] / 3 * 2  # 3 rows of 2, labelled on the left


def write_sprites(folder, n=40):
    rng = np.random.default_rng(0)
    folder.mkdir()
    np.save(folder / "sprites_1788_16x16.npy", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    np.save(folder / "sprite_labels_nc_1788_16x16.npy", np.eye(5)[rng.integers(0, 5, n)].astype(np.float64))


@pytest.mark.parametrize("condition", ["context", "none"])
def test_sprites_train_and_sample_with_context_through_the_cli(tmp_path, condition):
    write_sprites(tmp_path / "sprites")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "sprites",
                "--data-dir",
                str(tmp_path / "sprites"),
                "--out",
                str(run),
                "--condition",
                condition,
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--base-channels",
                "8",
                "--norm-groups",
                "4",
                "--attention-heads",
                "1",
                "--precision",
                "fp32",
                "--sample-steps",
                "2",
                "--cond-dropout",
                "0.2",
            ]
        )
        == 0
    )
    pipe = Pipeline.from_run(run)
    assert pipe.conditioning == condition and pipe.config.model.in_channels == 3
    out = tmp_path / "s.png"
    args = ["sample", "--run", str(run), "--n", "3", "--steps", "2", "--out", str(out)]
    if condition == "context":
        assert pipe.context_names == ("human", "non-human", "food", "spell", "side-facing")
        args += ["--context", "1,0,0,0,1", "--guidance", "2"]
    assert main(args) == 0
    assert Image.open(out).mode == "RGB"
