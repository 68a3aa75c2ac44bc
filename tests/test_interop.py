"""Models in and out: diffusers folders converted to our U-Net and back (checked against diffusers itself), and Hub
repositories read from a prepared offline cache."""

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli
from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import DiffusionConfig, RunConfig, SampleConfig
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.interop import hub, push
from pixeldiffusion.interop.diffusers import WEIGHTS, ConversionError, read_folder
from pixeldiffusion.interop.pretrained import export_diffusers
from pixeldiffusion.models import UNet, UNetConfig
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.sampling import sample
from pixeldiffusion.schedule import ScheduleConfig

diffusers = pytest.importorskip("diffusers")
logging.getLogger("diffusers").setLevel(logging.ERROR)  # "install accelerate" on every from_pretrained

TINY = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1)
UNETS = {
    "unconditional": dict(
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attn_norm_num_groups=4,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
    ),
    "class-conditional": dict(
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=None,  # one head per attention layer, as the DDPM models
        block_out_channels=(8, 8),
        num_class_embeds=5,
    ),
    # google/ddpm-cifar10-32's config.json, shrunk: the layout of the DDPM models converted from TensorFlow
    "ddpm-cifar10-32": dict(
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=None,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
        dropout=0.1,
    ),
    "no attention": dict(
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
    ),
}
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=True)


def diffusers_unet(kind: str, seed: int = 0):
    """A randomly initialised UNet2DModel, its zero-initialised layers included, in eval mode."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**(TINY | UNETS[kind])).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return unet


def save_pipeline(folder, unet, **scheduler):
    diffusers.DDPMPipeline(unet, diffusers.DDPMScheduler(**(SCHEDULER | scheduler))).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", list(UNETS))
def test_imported_network_output_equals_diffusers(tmp_path, kind):
    unet = diffusers_unet(kind)
    pipe = Pipeline.from_pretrained(save_pipeline(tmp_path / kind, unet), device="cpu")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 417, 999])  # diffusers' time; ours is one more
    labels = torch.tensor([0, 4, 2]) if unet.config.num_class_embeds else None
    with torch.no_grad():
        theirs = unet(x, t, class_labels=labels).sample
        ours = pipe.model(x, t + 1, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_ddim_10_steps_equals_ddim_pipeline(tmp_path):
    unet = diffusers_unet("unconditional")
    folder = save_pipeline(tmp_path / "model", unet, timestep_spacing="trailing")
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    theirs = diffusers.DDIMPipeline(unet, scheduler)(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=10,
        eta=0.0,
        use_clipped_model_output=True,  # eps recomputed from the clipped x0, as ours (DDPM's sampler) does
        output_type="np",
    ).images  # (B, H, W, C) in [0, 1]
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = sample(pipe.model, pipe.schedule, x_T, prediction="eps", sampler="ddim", steps=10, spacing="trailing")
    ours = (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", list(UNETS))
def test_import_then_export_round_trips_the_weights_exactly(tmp_path, kind):
    folder = save_pipeline(tmp_path / "theirs", diffusers_unet(kind), beta_schedule="squaredcos_cap_v2")
    export_diffusers(folder, tmp_path / "ours")
    before, after = (load_file(f / "unet" / WEIGHTS) for f in (folder, tmp_path / "ours"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the configurations may spell a default differently (attn_norm_num_groups None or equal to norm_num_groups)
    original, reloaded = (
        diffusers.UNet2DModel.from_pretrained(f / "unet").eval() for f in (folder, tmp_path / "ours")
    )
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 998])
    labels = torch.tensor([1, 4]) if original.config.num_class_embeds else None
    with torch.no_grad():
        assert torch.equal(reloaded(x, t, class_labels=labels).sample, original(x, t, class_labels=labels).sample)
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "ours" / "scheduler")
    assert torch.equal(
        scheduler.alphas_cumprod, diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    )


def fake_run(run_dir, model: UNetConfig, *, prediction="eps", schedule="linear", seed=0, **fields) -> Pipeline:
    """A run directory with one checkpoint of a randomly initialised network (no layer left at zero); `fields`
    replace parts of its RunConfig (sample=...)."""
    torch.manual_seed(seed)
    net = UNet(model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config = RunConfig(
        model=model, diffusion=DiffusionConfig(schedule=ScheduleConfig(kind=schedule), prediction=prediction), **fields
    )
    weights = {f"{prefix}/{k}": v.clone() for prefix in ("model", "ema") for k, v in net.state_dict().items()}
    meta = {"config": json.loads(config.to_json()), "step": 7, "elapsed": 90.0, "class_names": []}
    ckpt.save_checkpoint(run_dir / "checkpoints" / ckpt.checkpoint_name(7), weights, meta)
    (run_dir / "config.json").write_text(config.to_json())
    return Pipeline.from_run(run_dir, device="cpu")


SMALL = dict(image_size=8, base_channels=8, norm_groups=4)
OURS = {
    "class-conditional, scale-shift": UNetConfig(
        **SMALL, in_channels=1, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), attention_heads=2,
        num_classes=3,
    ),
    "unconditional, additive, v-prediction": UNetConfig(
        **SMALL, in_channels=3, channel_mult=(1, 1), num_res_blocks=2, attention_resolutions=(8, 4), attention_heads=1,
        injection="additive",
    ),
    "no attention": UNetConfig(
        **SMALL, in_channels=1, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
        middle_attention=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OURS))
def test_our_run_exported_gives_diffusers_the_same_output(tmp_path, name):
    prediction = "v" if "v-prediction" in name else "eps"
    ours = fake_run(tmp_path / "run", OURS[name], prediction=prediction)
    export_diffusers(tmp_path / "run", tmp_path / "out")
    pipeline = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert isinstance(pipeline, diffusers.DDIMPipeline)  # the run samples with DDIM (RunConfig's default)
    assert pipeline.scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[prediction]
    unet = pipeline.unet.eval()
    c = ours.config.model.in_channels
    x = torch.randn(3, c, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 500, 1000])
    labels = torch.tensor([0, 2, -1]) if ours.config.model.num_classes else None
    with torch.no_grad():
        expected = ours.model(x, t, labels)
        got = unet(x, t - 1, class_labels=None if labels is None else torch.where(labels < 0, 3, labels)).sample
    # diffusers embeds t - 1, rotated back to t in the first layer of the time MLP: float32 angles near 1000 differ
    # by a few 1e-5 rad
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    if not ours.config.model.num_classes:  # DDIMPipeline passes no labels
        assert pipeline(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, c)
    again = Pipeline.from_pretrained(tmp_path / "out", device="cpu")  # the exported folder comes back in as well
    assert again.class_names == ours.class_names and again.config.diffusion.prediction == prediction


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "consistency"])
def test_export_carries_the_runs_sampler(tmp_path, sampler):
    """A DDIM-sampled run (a progressive student among them) exports as a DDIMPipeline, a consistency student as a
    DDPMPipeline with LCM's scheduler, both giving our images at the run's steps from the same random numbers; a
    DDPM-sampled run as a DDPMPipeline with the run's posterior variance. Read back, each samples as its run did."""
    sampling = SampleConfig(sampler=sampler, steps=4)
    ours = fake_run(tmp_path / "run", OURS["unconditional, additive, v-prediction"], prediction="v", sample=sampling)
    export_diffusers(tmp_path / "run", tmp_path / "out")
    pipeline = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    again = Pipeline.from_pretrained(tmp_path / "out", device="cpu").config.sample
    assert (again.sampler, again.steps) == (sampler, 4), "the folder comes back in sampling as its run did"
    if sampler == "ddpm":
        assert isinstance(pipeline, diffusers.DDPMPipeline)
        assert pipeline.scheduler.config.variance_type == "fixed_small"
        return
    if sampler == "ddim":
        assert isinstance(pipeline, diffusers.DDIMPipeline) and isinstance(pipeline.scheduler, diffusers.DDIMScheduler)
        options = {"use_clipped_model_output": True}
    else:
        assert isinstance(pipeline, diffusers.DDPMPipeline) and isinstance(pipeline.scheduler, diffusers.LCMScheduler)
        options = {}
    theirs = pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np", **options
    ).images
    numbers = torch.Generator().manual_seed(0)  # x_T, then the consistency sampler's fresh noise, in diffusers' order
    x_T = torch.randn(2, 3, 8, 8, generator=numbers)
    with torch.no_grad():
        x0 = sample(
            ours.model,
            ours.schedule,
            x_T,
            prediction="v",
            sampler=sampler,
            steps=4,
            spacing="trailing",
            noise=lambda x: torch.randn(x.shape, generator=numbers),
        )
    mine = (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(mine, torch.from_numpy(theirs), rtol=0, atol=1e-3)


def test_a_bare_unet_folder_with_its_scheduler_config_beside_it(tmp_path):
    unet = diffusers_unet("class-conditional")
    unet.save_pretrained(tmp_path / "flat")
    diffusers.DDIMScheduler(**(SCHEDULER | {"beta_schedule": "scaled_linear"})).save_pretrained(tmp_path / "flat")
    pipe = Pipeline.from_pretrained(tmp_path / "flat", device="cpu")
    assert pipe.config.diffusion.schedule.kind == "quadratic" and pipe.config.model.num_classes == 5
    unet.save_pretrained(tmp_path / "alone")
    with pytest.raises(ckpt.CheckpointError, match="no scheduler_config.json"):
        Pipeline.from_pretrained(tmp_path / "alone")


def test_sharded_weights_read_as_one_file(tmp_path):
    unet = diffusers_unet("unconditional")
    whole = read_folder(save_pipeline(tmp_path / "whole", unet))
    unet.save_pretrained(tmp_path / "sharded" / "unet", max_shard_size="20KB")
    (tmp_path / "sharded" / "scheduler").mkdir()
    for name in ("model_index.json", "scheduler/scheduler_config.json"):
        (tmp_path / "sharded" / name).write_bytes((tmp_path / "whole" / name).read_bytes())
    assert not (tmp_path / "sharded" / "unet" / WEIGHTS).exists()
    sharded = read_folder(tmp_path / "sharded")
    assert sharded.state_dict.keys() == whole.state_dict.keys()
    assert all(torch.equal(sharded.state_dict[k], v) for k, v in whole.state_dict.items())


def test_what_does_not_map_is_named_in_one_line(tmp_path):
    with pytest.raises(ConversionError, match="convnext blocks"):
        fake_run(tmp_path / "run", replace(OURS["class-conditional, scale-shift"], block="convnext"))
        export_diffusers(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="the gelu activation"):
        fake_run(tmp_path / "gelu", replace(OURS["no attention"], activation="gelu"))
        export_diffusers(tmp_path / "gelu", tmp_path / "out")
    with pytest.raises(ConversionError, match="no flow prediction type"):
        fake_run(tmp_path / "flow", OURS["no attention"], prediction="flow")
        export_diffusers(tmp_path / "flow", tmp_path / "out")
    with pytest.raises(ConversionError, match="no counterpart of the flow schedule"):
        fake_run(tmp_path / "path", OURS["no attention"], schedule="flow")
        export_diffusers(tmp_path / "path", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    folder = save_pipeline(tmp_path / "sde", diffusers_unet("unconditional"), trained_betas=[0.1] * 1000)
    with pytest.raises(ConversionError, match="trained_betas"):
        read_folder(folder)
    unet = diffusers.UNet2DModel(**(TINY | UNETS["unconditional"] | {"downsample_type": "resnet"}))
    with pytest.raises(ConversionError, match="downsample_type = 'resnet'"):
        read_folder(save_pipeline(tmp_path / "resnet-down", unet))
    folder = save_pipeline(tmp_path / "pickle", diffusers_unet("unconditional"))
    (folder / "unet" / WEIGHTS).rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ckpt.CheckpointError, match="only safetensors weights are read, never pickles"):
        read_folder(folder)


def cache_repo(cache, repo: str, files) -> None:
    """Lay a repository's files out as huggingface_hub's cache does: snapshots/COMMIT/... and refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for source in sorted(files.rglob("*")):
        target = root / "snapshots" / commit / source.relative_to(files)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache, with huggingface_hub in offline mode (as HF_HUB_OFFLINE=1 sets it)."""
    constants = pytest.importorskip("huggingface_hub").constants
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pushed_run_and_diffusers_repo_load_from_the_offline_cache(tmp_path, offline_hub):
    ours = fake_run(tmp_path / "run", OURS["class-conditional, scale-shift"])
    ours.sample(4, steps=2).save(tmp_path / "run" / "samples.png")
    record = {"kind": "eval", "step": 7, "fd": 12.345, "sampling": {"sampler": "ddim", "steps": 50}}
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 0.5}) + "\n" + json.dumps(record))
    push.repository_folder(tmp_path / "run", tmp_path / "upload", repo="me/tiny")
    card = (tmp_path / "upload" / "README.md").read_text()
    assert "`digits`: 7 steps in 1.5 minutes" in card and "| fd | 12.35 |" in card and "sampler ddim, steps 50" in card
    assert "![samples](samples.png)" in card and (tmp_path / "upload" / "samples.png").is_file()
    assert 'DDIMPipeline.from_pretrained("me/tiny")(batch_size=8, num_inference_steps=50)' in card
    assert "last label is guidance's null class" in card
    cache_repo(offline_hub, "me/tiny", tmp_path / "upload")
    theirs = save_pipeline(tmp_path / "theirs", diffusers_unet("ddpm-cifar10-32"), variance_type="fixed_large")
    cache_repo(offline_hub, "google/tiny-ddpm", theirs)

    pulled = Pipeline.from_pretrained("me/tiny", device="cpu")  # our own checkpoint in the repository wins
    assert pulled.config == ours.config
    settings = dict(steps=3, seed=1, precision="fp32")
    assert torch.equal(pulled.sample(4, **settings).images, ours.sample(4, **settings).images)
    theirs = Pipeline.from_pretrained("hf://google/tiny-ddpm", device="cpu")
    assert theirs.config.model.time_embedding == "ddpm" and theirs.config.model.norm_eps == 1e-6
    assert theirs.config.sample.variance == "beta"  # the scheduler's fixed_large
    assert theirs.sample(2, sampler="dpmpp_2m", steps=10, precision="fp32").images.shape == (2, 3, 8, 8)
    with pytest.raises(PixelDiffusionError, match="not in the local cache"):
        Pipeline.from_pretrained("me/absent")


def test_push_uploads_checkpoint_diffusers_folder_and_card(tmp_path, monkeypatch):
    hf = pytest.importorskip("huggingface_hub")
    fake_run(tmp_path / "run", OURS["unconditional, additive, v-prediction"])
    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            uploaded[repo_id] = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file())

    monkeypatch.setattr(hf, "HfApi", FakeApi)
    assert push.push(tmp_path / "run", "me/tiny") == "https://huggingface.co/me/tiny"
    assert uploaded["me/tiny"] == [
        "README.md",
        "model_index.json",
        hub.CHECKPOINT,
        "scheduler/scheduler_config.json",
        "unet/config.json",
        f"unet/{WEIGHTS}",
    ]


def test_cli_fine_tunes_exports_and_samples_a_diffusers_model(tmp_path):
    unet = diffusers.UNet2DModel(
        **(TINY | UNETS["ddpm-cifar10-32"] | {"sample_size": 16, "in_channels": 1, "out_channels": 1})
    )
    folder = save_pipeline(tmp_path / "theirs", unet, prediction_type="v_prediction")
    run = tmp_path / "run"
    flags = ["--max-steps", "2", "--batch-size", "8", "--precision", "fp32", "--sample-steps", "2", "--sample-n", "4"]
    done = run_cli("train", "--init", str(folder), "--dataset", "digits", "--out", str(run), *flags)
    assert done.returncode == 0, done.stderr
    config = RunConfig.load(run / "config.json")
    assert config.model == read_folder(folder).model and config.data.condition == "none"
    assert config.diffusion.prediction == "v"

    done = run_cli("export", "--run", str(run), "--format", "diffusers", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    png = tmp_path / "grid.png"
    done = run_cli(
        "sample",
        "--run",
        str(tmp_path / "out"),
        "--n",
        "2",
        "--sampler",
        "dpmpp_2m",
        "--steps",
        "3",
        "--out",
        str(png),
    )
    assert done.returncode == 0 and png.is_file(), done.stderr

    done = run_cli("train", "--init", str(folder), "--base-channels", "16", "--out", str(tmp_path / "no"))
    assert done.returncode == 2 and "--base-channels cannot change the network" in done.stderr

    fake_run(tmp_path / "convnext", replace(OURS["class-conditional, scale-shift"], block="convnext"))
    done = run_cli("export", "--run", str(tmp_path / "convnext"), "--out", str(tmp_path / "no"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "convnext blocks" in done.stderr


def test_cli_reads_a_hub_repository_offline_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    cache_repo(cache, "google/tiny-ddpm", save_pipeline(tmp_path / "theirs", diffusers_unet("ddpm-cifar10-32")))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pixeldiffusion", *args], env=env, capture_output=True, text=True)

    png = tmp_path / "grid.png"
    done = cli("sample", "--run", "hf://google/tiny-ddpm", "--n", "2", "--steps", "2", "--out", str(png))
    assert done.returncode == 0 and png.is_file(), done.stderr
    done = cli("eval", "--run", "hf://google/tiny-ddpm", "--n", "2")
    assert (
        done.returncode == 2 and "does not record its dataset: give the one to compare with, --dataset" in done.stderr
    )
    done = cli("sample", "--run", "hf://google/absent")
    assert done.returncode == 2 and "not in the local cache" in done.stderr and done.stderr.count("\n") == 1


def test_pretrained_speed_benchmark_runs(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    benchmark = __import__("pretrained")
    report = benchmark.main(["--size", "tiny", "--steps", "2", "--batch", "2", "--rounds", "1", "--no-compile"])
    assert set(report["rows"]) == {
        "diffusers DDIMPipeline, fp32",
        "pixeldiffusion, fp32",
        "pixeldiffusion, default precision",
    }
    assert all(row["images_per_s"] > 0 for row in report["rows"].values())
