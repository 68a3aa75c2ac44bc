"""A run on the Hub: the repository folder `pixeldiffusion push` uploads, and its model card.

The repository holds our own checkpoint (pixeldiffusion.safetensors: the configuration and the EMA weights, which
load losslessly), a diffusers pipeline folder beside it when the network maps onto UNet2DModel (so that
diffusers users load it too, as a DDIMPipeline or DDPMPipeline after the run's sampler), the run's sample grid,
and README.md written from the run: dataset, steps, minutes, the latest evaluation's scores.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.interop import diffusers, hub
from pixeldiffusion.interop.pretrained import LATENT_NOTE, Pretrained, read_model


def repository_folder(run_dir: str | Path, folder: str | Path, *, repo: str) -> Path:
    """Fill `folder` with what `push` uploads for a run (see the module docstring)."""
    run_dir, folder = Path(run_dir), Path(folder)
    if not (run_dir / "checkpoints").is_dir():
        raise ckpt.CheckpointError(f"{run_dir} is not a training run (no checkpoints/); push takes a run directory")
    found = read_model(run_dir)
    config = found.config
    state = found.network().state_dict()
    meta = {"config": json.loads(config.to_json()), **found.meta}
    meta |= {"class_names": list(found.class_names), "context_names": list(found.context_names)}
    tensors = {f"ema/{k}": v for k, v in state.items()} | {
        f"autoencoder/{k}": v for k, v in found.autoencoder_state.items()
    }
    ckpt.save_checkpoint(folder / hub.CHECKPOINT, tensors, meta)
    try:
        if config.latent.autoencoder:
            raise diffusers.ConversionError(LATENT_NOTE)
        diffusers.write_folder(
            folder,
            state,
            config.model,
            config.diffusion.schedule,
            config.diffusion.prediction,
            clip_x0=config.sample.clip_x0,
            variance=config.sample.variance,
            sampler=config.sample.sampler,
            class_names=found.class_names,
        )
        diffusers_note = None
    except diffusers.ConversionError as e:
        diffusers_note = str(e)
    if (run_dir / "samples.png").is_file():
        shutil.copyfile(run_dir / "samples.png", folder / "samples.png")
    card = model_card(
        found,
        last_evaluation(run_dir),
        repo=repo,
        samples=(folder / "samples.png").is_file(),
        diffusers_note=diffusers_note,
    )
    (folder / "README.md").write_text(card)
    return folder


def last_evaluation(run_dir: Path) -> dict | None:
    """The run's latest "kind": "eval" line of metrics.jsonl, if any."""
    found = None
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == "eval":
            found = record
    return found


def model_card(
    found: Pretrained, evaluation: dict | None, *, repo: str, samples: bool, diffusers_note: str | None
) -> str:
    """README.md of a pushed run: what it was trained on and for how long, its scores and samples, how to load it."""
    config, model = found.config, found.config.model
    schedule = config.diffusion.schedule
    tags = ["pixeldiffusion", "diffusion", "unconditional-image-generation"] + (
        [] if diffusers_note else ["diffusers"]
    )
    conditioning = {"class": "class-conditional", "context": "context-conditional"}.get(
        model.conditioning, "unconditional"
    )
    minutes = found.meta.get("elapsed", 0.0) / 60
    lines = [
        "---",
        "library_name: pixeldiffusion",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"A {conditioning} {config.pixel_size}x{config.pixel_size} {'latent ' * bool(config.latent.autoencoder)}"
        "diffusion model trained with pixeldiffusion on "
        f"`{config.data.dataset}`: {found.meta.get('step', '?')} steps in {minutes:.1f} minutes, "
        f"{config.diffusion.prediction}-prediction, {schedule.kind} schedule of {schedule.timesteps} steps.",
        "",
    ]
    if evaluation:
        scores = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and k != "step"}
        lines += ["| metric | value |", "| --- | --- |", *(f"| {k} | {v:.4g} |" for k, v in scores.items()), ""]
        sampling = ", ".join(f"{k} {v}" for k, v in evaluation.get("sampling", {}).items())
        lines += [f"Scores at step {evaluation.get('step')}, sampled with {sampling}.", ""]
    if samples:
        lines += ["![samples](samples.png)", ""]
    lines += ["## Use", "", "```sh", f"pixeldiffusion sample --run hf://{repo} --n 64 --out samples.png", "```", ""]
    if diffusers_note:
        lines += [f"No diffusers folder: {diffusers_note}.", ""]
    else:
        pipeline, steps = diffusers.pipeline_class(config.sample.sampler), config.sample.steps
        load = f'images = {pipeline}.from_pretrained("{repo}")(batch_size=8, num_inference_steps={steps}).images'
        lines += ["```python", f"from diffusers import {pipeline}", "", load, "```", ""]
        if model.num_classes:
            null = f"If its num_class_embeds is {model.num_classes + 1}, the last label is guidance's null class."
            lines += [null, ""]
    return "\n".join(lines)


def push(run_dir: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload a run to the Hub repository `repo` (created if needed); returns the repository's URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = repository_folder(run_dir, tmp, repo=repo)
        return hub.upload(folder, repo, private=private, message=f"pixeldiffusion run {Path(run_dir).name}")
