"""The `pixeldiffusion` command: parses flags into configurations and calls one library function each.

Every configuration flag is derived from a config dataclass field (its type, default and metadata["help"]); its
argparse dest is "config." + the field's dotted path in RunConfig ("config.optim.lr"), so the flags given are
applied with one `with_fields`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pixeldiffusion.config import (
    AutoencoderRunConfig,
    DataConfig,
    DistillConfig,
    LengthConfig,
    OptimConfig,
    RunConfig,
    RuntimeConfig,
    SampleConfig,
    field_type,
    with_fields,
)
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models.autoencoder import AutoencoderConfig
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.process import launch_rank, setup, teardown
from pixeldiffusion.recipes import RECIPES, budget_fields, default_config
from pixeldiffusion.visualize import IMAGE_SUFFIXES, STRIP_COLUMNS

DERIVED = {"in_channels", "num_classes", "context_dim"}  # model fields the dataset decides, not the user
# model fields that only describe networks trained elsewhere (set by an import: `train --init`)
IMPORTED = {"time_offset", "time_embedding", "downsample_padding", "norm_eps"}
CONFIG = "config."  # the dest prefix of every flag derived from a config field
# train's flag groups: the RunConfig group, its title and description in --help
TRAIN_GROUPS = {
    "data": ("data", None),
    "model": ("model", "the U-Net; defaults: the model preset's (--preset)"),
    "diffusion": ("diffusion", "the noise schedule, what the network predicts, and the loss"),
    "optim": ("optimisation", None),
    "length": ("run length", "the first stop condition reached ends the run; those given replace the recipe's"),
    "log": ("logging", None),
    "runtime": ("runtime", "device, precision and speed"),
    "eval": ("evaluation", "sample quality during training"),
    "sample": ("sampling", "the run's defaults for `pixeldiffusion sample` and its final grid"),
}
RUN_HELP = "run directory (its latest checkpoint), checkpoint, diffusers folder or hf://user/repo"
PREFIXES = {"eval": "eval-", "sample": "sample-"}  # train's flags of these groups: --eval-every, --sample-steps
RENAMES = {"diffusion.schedule.kind": "schedule"}  # --schedule, not --kind
RESUMABLE = ("length", "log", "eval", "runtime")  # what a resumed run may change: its future, not its maths
RECIPE_FIELDS = {path for recipe in RECIPES.values() for path in recipe}
DISTILL_STEPS = 4000  # distill's length when no stop condition is given


def student_default(path: str, value: Any) -> str:
    """The default of a `distill` optimisation flag, as `training.distill.student_config` sets it."""
    from pixeldiffusion.training.distill import EMA_HALFLIFE, LR_FACTOR

    own = {"optim.lr": f"{LR_FACTOR} x the teacher's", "optim.ema_halflife": str(EMA_HALFLIFE)}
    return own.get(path, "the teacher's")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (a user error is one line everywhere in pixeldiffusion)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.HelpFormatter):
    """Each flag's default shown once: the derived flags state theirs in their help, the others get it here."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = all(action.default is not hidden for hidden in (None, False, argparse.SUPPRESS))  # 0 is shown
        if action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


# -- value types: a malformed value is an argparse error (one line, status 2) -----------------------------------


def numbers(kind: type, what: str, *, empty: bool = False):
    """A comma-separated list of numbers, e.g. 1,2,2, as a tuple (`empty`: "" gives ())."""

    def parse(text: str) -> tuple:
        if empty and not text.strip():
            return ()
        try:
            return tuple(kind(value) for value in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {text!r}") from None

    return parse


def at_least(low: int):
    """A whole number >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def file_name(*suffixes: str):
    """A file name ending in one of the suffixes (checked before any work is done)."""

    def parse(text: str) -> str:
        if Path(text).suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r}: name the file {' or '.join(suffixes)}")
        return text

    return parse


def port(text: str) -> int:
    """A TCP port number (0: any free one)."""
    value = at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {text!r}")
    return value


# -- flags derived from the config dataclasses -----------------------------------------------------------------


def flag_name(path: str, *, prefixed: bool = True) -> str:
    """The flag of a config field: --lr for optim.lr, --schedule for diffusion.schedule.kind, and with `prefixed`,
    --eval-every for eval.every and --sample-steps for sample.steps."""
    group, name = path.split(".")[0], path.split(".")[-1]
    prefix = PREFIXES.get(group, "") if prefixed else ""
    return "--" + RENAMES.get(path, prefix + name.replace("_", "-"))


def recipe_default(path: str, value: Any) -> str:
    return f"{value}, or the dataset's recipe" if path in RECIPE_FIELDS else str(value)


def add_fields(
    group: argparse._ArgumentGroup,
    cls: type,
    path: str,
    *,
    prefixed: bool = True,
    skip: set[str] = frozenset(),
    only: set[str] | None = None,
    default: Callable[[str, Any], str] = lambda path, value: str(value),
) -> None:
    """One flag per field of a config dataclass at `path` in RunConfig (nested dataclasses flattened), typed, with
    its help and its default, as default(field's path, its value) says it."""
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        field_path = f"{path}.{f.name}" if path else f.name
        kind = field_type(cls, f.name)
        if dataclasses.is_dataclass(kind):
            add_fields(group, kind, field_path, prefixed=prefixed, default=default)
            continue
        text = f.metadata["help"]
        if f.default is not None:
            value = {True: "on", False: "off"}.get(f.default, f.default) if kind is bool else f.default
            text += f" (default: {default(field_path, value)})"
        elif "default" not in text:
            text += " (default: none)"
        options: dict[str, Any] = {"dest": CONFIG + field_path, "default": None, "help": text.replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            options.update(type=numbers(int, "whole numbers", empty=True), metavar="N,N,...")
        else:
            options.update(type=kind, metavar=f.name.upper())
        group.add_argument(flag_name(field_path, prefixed=prefixed), **options)


def given(args: argparse.Namespace, group: str = "") -> dict[str, Any]:
    """The config fields given on the command line, by dotted path (relative to `group` when given)."""
    prefix = CONFIG + (f"{group}." if group else "")
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def apply(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The configuration with every flag given applied; stop conditions given replace all of the config's own, so
    that --minutes alone is not cut short by a recipe's step count."""
    fields = given(args)
    if any(path.startswith("length.") for path in fields):
        fields = {"length.max_steps": None, "length.epochs": None, "length.minutes": None, **fields}
    return with_fields(config, fields)


def refuse_on_resume(args: argparse.Namespace, config: RunConfig) -> None:
    """A resumed run continues the same model, data and objective: only what decides its future may change (a flag
    repeating the run's own value is accepted)."""
    fixed = [
        flag_name(path)
        for path, value in given(args).items()
        if path.split(".")[0] not in RESUMABLE and with_fields(config, {path: value}) != config
    ]
    fixed += [f"--{name}" for name in ("config", "preset", "out", "init", "autoencoder") if getattr(args, name, None)]
    if fixed:
        raise ConfigError(
            f"{fixed[0]} cannot change on a resumed run (it keeps its model, data, objective and sampling); "
            "only stop conditions, logging, evaluation and runtime flags can"
        )


# -- commands --------------------------------------------------------------------------------------------------


def show_progress(args: argparse.Namespace, is_main: bool) -> bool:
    """A progress bar on a terminal only, on the main process, unless --quiet."""
    return is_main and not args.quiet and sys.stderr.isatty()


def cmd_train(args: argparse.Namespace) -> None:
    from pixeldiffusion.training import train

    fields = given(args)
    if args.resume:
        run_dir = Path(args.resume)
        config = RunConfig.load(run_dir / "config.json")
        refuse_on_resume(args, config)
    else:
        dataset = fields.get("data.dataset", "digits")
        if args.config and args.preset:
            raise ConfigError("--preset chooses the network of a new configuration, not of --config's")
        if args.config:
            config = RunConfig.load(args.config)
        else:
            pad, minutes = fields.get("data.pad", False), fields.get("length.minutes")
            config = default_config(dataset, model_preset=args.preset, pad=pad, minutes=minutes)
    config = apply(config, args)  # bad flags are reported before anything else
    if args.autoencoder and not args.resume:
        from pixeldiffusion.training.autoencoder import latent_config

        config = latent_config(config, args.autoencoder, image_size=fields.get("model.image_size"))
    model = None
    if args.init and not args.resume:
        from pixeldiffusion.interop.pretrained import initial_weights

        kept = ("model.", "diffusion.schedule.", "diffusion.prediction")  # what the network to fine-tune decides
        fixed = [flag_name(path) for path in given(args) if path.startswith(kept)] + ["--preset"] * bool(args.preset)
        if fixed:
            raise ConfigError(f"{fixed[0]} cannot change the network, schedule or prediction that --init starts from")
        config, model = initial_weights(args.init, config)
    if not args.resume:
        dataset = config.data.dataset
        run_dir = Path(args.out or f"runs/{dataset.replace(':', '-').replace('/', '-')}")
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise PixelDiffusionError(
                f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out"
            )
        if launch_rank() == 0:  # once per launch, not once per torchrun process
            print_training_header(config, args, fields)
    summary = train(
        config, run_dir, model=model, resume=bool(args.resume), callbacks=run_callbacks(args, config, run_dir)
    )
    report(summary, args, config)


def print_training_header(config: RunConfig, args: argparse.Namespace, fields: dict[str, Any]) -> None:
    """What a new run trains on, and what its time budget changed in the recipe (the flags given aside)."""
    dataset, side, padded = config.data.dataset, config.model.image_size, " (padded)" * config.data.pad
    latents = f", diffused as {config.model.in_channels}x{side}x{side} latents" * bool(config.latent.autoencoder)
    print(f"{dataset} at {config.pixel_size}x{config.pixel_size} pixels{padded}{latents}; --image-size to change")
    budgeted = {} if args.config else budget_fields(dataset, config.length.minutes)
    # what the run trains with: not what a flag overrode, nor what --init's network decided (schedule, prediction)
    budgeted = {
        path: v for path, v in budgeted.items() if path not in fields and with_fields(config, {path: v}) == config
    }
    if budgeted:
        settings = ", ".join(f"{flag_name(path)} {v}" for path, v in budgeted.items())
        print(f"for {config.length.minutes:g} minutes the recipe trains with {settings}")


def run_callbacks(args: argparse.Namespace, config: RunConfig, run_dir: Path) -> tuple:
    """The callbacks a training run's flags ask for: evaluation, TensorBoard."""
    callbacks = []
    if config.eval.every:  # fails here, before any training, when the dataset has no classifier to score with
        from pixeldiffusion.evaluation.callback import evaluation_callback

        callbacks.append(evaluation_callback(config))
    if args.log == "tensorboard":
        from pixeldiffusion.tensorboard import tensorboard_logger

        callbacks.append(tensorboard_logger(run_dir / "tensorboard"))
    return tuple(callbacks)


def report(summary, args: argparse.Namespace, config: RunConfig) -> None:
    """After a run (on the main process): its preview grid and animation, and where everything is."""
    from pixeldiffusion.pipeline import Pipeline

    if summary is None:
        return
    samples, animation = summary.run_dir / "samples.png", summary.run_dir / "denoising.gif"
    Pipeline.from_checkpoint(summary.checkpoint, device=config.runtime.device).save_preview(samples, gif=animation)
    print(f"\ntrained {summary.steps} steps in {summary.minutes:.1f} min; everything is in {summary.run_dir}/")
    print(f"  configuration  {summary.run_dir / 'config.json'}")
    print(f"  checkpoint     {summary.checkpoint}")
    print(f"  metrics        {summary.run_dir / 'metrics.jsonl'}")
    print(f"  samples        {samples}")
    print(f"  denoising      {animation}")
    if args.log == "tensorboard":
        print(f"  tensorboard    tensorboard --logdir {summary.run_dir / 'tensorboard'}")
    print(f"sample more with:\n  pixeldiffusion sample --run {summary.run_dir} --n 64 --seed 1 --out samples-1.png")


def cmd_distill(args: argparse.Namespace) -> None:
    from pixeldiffusion.training import train
    from pixeldiffusion.training.distill import Distiller, student_config, teacher_network

    model = None
    if args.resume:
        if args.run or args.out:
            raise ConfigError(
                "--resume continues a distillation: its teacher and folder are its own (no --run, --out)"
            )
        run_dir = Path(args.resume)
        config = RunConfig.load(run_dir / "config.json")
        refuse_on_resume(args, config)
    else:
        if not args.run:
            raise ConfigError("give the teacher to distil, --run RUN (or --resume a distillation)")
        distill = with_fields(DistillConfig(), given(args, "distill"))  # a bad flag fails before a large teacher loads
        teacher, model = teacher_network(args.run)
        config = replace(student_config(teacher, distill, args.run), length=LengthConfig(max_steps=DISTILL_STEPS))
        run_dir = Path(args.out or f"{str(args.run).rstrip('/')}-{distill.method}-{distill.steps}")
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise PixelDiffusionError(
                f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out"
            )
        what = f"{distill.method} distillation of {args.run} into {distill.steps} step(s)"
        print(f"{what}, sampled by {config.sample.sampler}; {config.distill.stages} stage(s)")
    config = apply(config, args)
    summary = train(
        config,
        run_dir,
        model=model,
        resume=bool(args.resume),
        callbacks=run_callbacks(args, config, run_dir),
        trainer_class=Distiller,
    )
    report(summary, args, config)


def device(args: argparse.Namespace) -> str:
    return given(args, "runtime").get("device", RuntimeConfig.device)


def cmd_sample(args: argparse.Namespace) -> None:
    from pixeldiffusion.pipeline import Pipeline

    if bool(args.run) == bool(args.checkpoint):
        raise PixelDiffusionError("give exactly one of --run DIR and --checkpoint FILE")
    process = setup(device(args))  # under torchrun, the processes share the batches out
    load = dict(weights=args.weights, device=process.device)
    pipe = Pipeline.from_pretrained(args.run or args.checkpoint, **load)
    sampling = with_fields(pipe.config.sample, given(args, "sample"))  # the run's settings and the flags given
    samples = pipe.sample(
        labels=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        context=args.context,
        per_class=args.per_class,
        classifier=args.classifier,
        classifier_scale=args.classifier_scale,
        frames=41 if args.gif or args.mp4 else STRIP_COLUMNS if args.strip else 0,
        processes=process,
        progress=show_progress(args, process.is_main),
        **dataclasses.asdict(sampling),
    )
    teardown(process)
    if not process.is_main:
        return
    samples.save(args.out, gif=args.gif, mp4=args.mp4, npz=args.npz, show_x0=args.show_x0, strip=args.strip)
    written = {"grid": args.out, "animation": args.gif, "video": args.mp4, "strip": args.strip, "arrays": args.npz}
    for what, path in written.items():
        if path:
            print(f"wrote {what}: {path}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from pixeldiffusion.data import describe_datasets

    rows = describe_datasets()
    columns = ("name", "size", "test_size", "resolution", "channels", "classes", "cached", "description")
    table = [
        [
            ("-" if row[c] is None else "yes" if row[c] is True else "no" if row[c] is False else str(row[c]))
            for c in columns
        ]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    for line in [list(columns), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def cmd_show(args: argparse.Namespace) -> None:
    from pixeldiffusion import visualize
    from pixeldiffusion.schedule import ScheduleConfig

    schedules = [ScheduleConfig(kind=kind, timesteps=args.timesteps) for kind in args.schedule if kind]
    if args.gif and args.what != "forward":
        raise PixelDiffusionError("--gif animates the forward process: pixeldiffusion show forward --gif FILE.gif")
    if args.what == "forward":
        # the resolution `train --dataset` (with the same --pad and --image-size) trains at
        size = args.image_size or default_config(args.dataset, pad=args.pad).model.image_size
        images = visualize.dataset_images(
            args.dataset, n=args.n, seed=args.seed, data_dir=args.data_dir, image_size=size, pad=args.pad
        )
        figure = visualize.forward_figure(images, schedules, args.times, seed=args.seed)
        if args.gif:
            frames = visualize.forward_pictures(images, schedules, args.times, seed=args.seed)
            visualize.save_animation(frames, args.gif)
            print(f"wrote {args.gif} ({len(frames)} frames)")
    elif args.what == "schedule":
        figure = visualize.schedule_figure(schedules)
    elif args.what == "runs":
        if len(args.run) < 2:
            raise PixelDiffusionError("show runs compares runs: pixeldiffusion show runs DIR DIR [...]")
        figure = visualize.runs_figure(args.run, args.labels)
    else:
        given = list(dict.fromkeys([*args.run, *([args.run_dir] if args.run_dir else [])]))
        if len(given) > 1:
            raise PixelDiffusionError(f"show run shows one run, given {', '.join(given)} (show runs compares them)")
        if not given:
            raise PixelDiffusionError("show run needs the run directory: pixeldiffusion show run --run DIR")
        figure = visualize.run_figure(given[0])
    out = args.out or f"{args.what}.png"
    visualize.save_image(figure, out)
    print(f"wrote {out} ({figure.width}x{figure.height})")


def cmd_serve(args: argparse.Namespace) -> None:
    from pixeldiffusion.serve import serve

    serve(args.run, host=args.host, port=args.port, device=device(args))


def cmd_eval(args: argparse.Namespace) -> None:
    from pixeldiffusion.evaluation.evaluate import evaluate_images, evaluate_run

    if bool(args.run) == bool(args.images):
        raise PixelDiffusionError("give exactly one of --run DIR and --images FILE.npz|DIR")
    process = setup(device(args)) if args.run else None  # under torchrun, the sampling is shared out
    common = dict(
        features=args.features,
        inception_weights=args.inception_weights,
        classifier=args.classifier,
        data_dir=args.data_dir,
        device=process.device if process else device(args),
    )
    if args.run:
        evaluation, record = evaluate_run(
            args.run,
            n=args.n,
            dataset=args.dataset,
            processes=process,
            progress=show_progress(args, process.is_main),
            **common,
            **given(args, "sample"),
        )
        teardown(process)
        if not process.is_main:
            return
        settings = ", ".join(f"{k} {v}" for k, v in record["sampling"].items())
        if record["step"] is None:  # a pretrained model, not a run
            print(f"{args.run}; {settings}")
        else:
            print(f"{args.run} at step {record['step']} ({record['elapsed_s'] / 60:.1f} training minutes); {settings}")
    else:
        if not args.dataset:
            raise PixelDiffusionError("--images needs --dataset NAME, the dataset the images are compared with")
        evaluation = evaluate_images(args.images, dataset=args.dataset, pad=args.pad, **common)
    print(evaluation.table())
    if args.run and record["step"] is not None:
        print(f"appended to {Path(args.run) / 'metrics.jsonl'}")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    if args.noisy:
        cmd_train_noisy_classifier(args)
        return
    if args.run or args.max_steps or args.minutes:
        raise PixelDiffusionError("--run, --max-steps and --minutes train a noisy classifier: add --noisy")
    if not args.dataset:
        raise PixelDiffusionError("give --dataset NAME, or --noisy --run RUN for a noisy classifier to guide with")
    from pixeldiffusion.evaluation.classifier import min_accuracy, train_classifier

    trained = train_classifier(
        args.dataset,
        data_dir=args.data_dir,
        out=args.out,
        image_size=args.image_size,
        pad=args.pad,
        epochs=args.epochs,
        device=device(args),
    )
    info = trained.info
    print(f"wrote {trained.path}: test accuracy {info.test_accuracy:.4f} on {info.test_set}")
    if info.test_accuracy < (floor := min_accuracy(args.dataset)):
        print(f"below the {floor:.0%} that eval needs to score with it: train longer (--epochs {2 * info.epochs})")


def cmd_train_noisy_classifier(args: argparse.Namespace) -> None:
    from pixeldiffusion.training.noisy_classifier import DEFAULT_LENGTH, train_noisy_classifier

    if not args.run:
        raise PixelDiffusionError("--noisy needs --run RUN: the diffusion run the classifier is to guide")
    given_data = [flag for flag in ("dataset", "image_size", "pad") if getattr(args, flag)]
    if given_data:
        flag = "--" + given_data[0].replace("_", "-")
        raise PixelDiffusionError(f"{flag}: a noisy classifier learns the run's own dataset, size and padding")
    stops = {"max_steps": args.max_steps, "epochs": args.epochs, "minutes": args.minutes}
    length = LengthConfig(**stops) if any(v is not None for v in stops.values()) else DEFAULT_LENGTH
    trained = train_noisy_classifier(
        args.run,
        out=args.out,
        data_dir=args.data_dir,
        device=device(args),
        length=length,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {trained.path} ({trained.steps} steps, {trained.minutes:.1f} min)")
    accuracy = ", ".join(f"t = {t}: {a:.3f}" for t, a in trained.accuracy.items())
    print(f"held-out accuracy on {trained.test_set}: {accuracy}")
    print(f"guide with it:\n  pixeldiffusion sample --run {args.run} --classifier {trained.path.parent} --per-class 8")


def cmd_train_autoencoder(args: argparse.Namespace) -> None:
    from pixeldiffusion.training.autoencoder import train_autoencoder

    trained = train_autoencoder(apply(AutoencoderRunConfig(), args), args.out)
    print(f"\ntrained {trained.steps} steps in {trained.minutes:.1f} min; everything is in {args.out}/")
    print(f"  held out       {trained.held_out} images: MSE {trained.mse:.4g}, PSNR {trained.psnr:.2f} dB")
    print(f"  scale factor   {trained.scale_factor:.4g} (1 / std of the latents)")
    print(f"  autoencoder    {trained.path}")
    print(f"  comparison     {Path(args.out) / 'reconstructions.png'} (held-out images above their reconstructions)")
    print(f"diffuse in its latent space with:\n  pixeldiffusion train --autoencoder {args.out} --dataset DATASET")


def cmd_ema(args: argparse.Namespace) -> None:
    from pixeldiffusion.evaluation.evaluate import evaluate_run
    from pixeldiffusion.training import ema
    from pixeldiffusion.training.plan import ema_halflife

    optim = RunConfig.load(Path(args.run) / "config.json").optim
    out = Path(args.out or Path(args.run) / "ema")
    for sigma_rel in args.sigma_rel:
        path, info = ema.write_posthoc(args.run, sigma_rel, out / f"sigma_rel-{sigma_rel:.3f}.safetensors", args.step)
        halflife = ema.halflife_of_sigma_rel(sigma_rel, info["step"])
        line = f"sigma_rel {sigma_rel:.3f} (an EMA of half-life {halflife:,.1f} steps at step {info['step']}): {path}"
        if args.eval:
            evaluation, _ = evaluate_run(path, n=args.eval, device=device(args))
            line += f"  Frechet distance {evaluation.fd:.4g} (n = {args.eval})"
        print(line)
    halflife = ema_halflife(info["step"], optim.ema_halflife, optim.ema_rampup)
    own = ema.sigma_rel_of_halflife(halflife, info["step"])
    print(f"the run's own EMA (half-life {halflife:,.1f} steps at step {info['step']}) has sigma_rel {own:.3f}")


def cmd_export(args: argparse.Namespace) -> None:
    from pixeldiffusion.interop.pretrained import export_diffusers

    folder = export_diffusers(args.run, args.out)
    print(f"wrote a diffusers pipeline folder (DiffusionPipeline.from_pretrained loads it): {folder}")


def cmd_push(args: argparse.Namespace) -> None:
    from pixeldiffusion.interop.push import push

    print(f"pushed {args.run} to {push(args.run, args.repo, private=args.private)}")


def cmd_download_inception(args: argparse.Namespace) -> None:
    from pixeldiffusion.data.download import fetch_weights
    from pixeldiffusion.evaluation.inception import WEIGHTS_FILE

    print(f"Inception weights (SHA-256 checked): {fetch_weights(WEIGHTS_FILE)}")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, runtime's one flag that sampling and evaluation take."""
    add_fields(parser.add_argument_group("runtime"), RuntimeConfig, "runtime", only={"device"})


def add_sampling(parser: argparse.ArgumentParser, *, skip: set[str] = frozenset()) -> None:
    group = parser.add_argument_group(
        "sampling", "defaults: the run's own, set when it was trained (train --sample-*); shown are the built-in ones"
    )
    add_fields(group, SampleConfig, "sample", prefixed=False, skip=skip)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none off a terminal either)")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="pixeldiffusion", description="Train and sample denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=Formatter)

    t = command("train", "train a model (default: the built-in digits, under 2 minutes on 2 CPU cores)")
    run = t.add_argument_group("run")
    run.add_argument("--preset", help="U-Net preset: digits, sprites, mnist, cifar10 (default: the dataset's recipe)")
    run.add_argument("--config", help="a config.json to start from (e.g. from an earlier run)")
    run.add_argument("--out", help="run directory (default: runs/DATASET)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its latest checkpoint and stored config; only the flags of run length, logging, "
        "evaluation and runtime may change",
    )
    run.add_argument(
        "--init",
        metavar="SOURCE",
        help="fine-tune: start from the weights, architecture and noise schedule of a run, checkpoint, diffusers "
        "folder or hf://user/repo, with a fresh optimizer",
    )
    run.add_argument(
        "--autoencoder",
        metavar="AE_RUN",
        help="latent diffusion: train on the latents of this train-autoencoder run (copied into the run); "
        "--image-size is then the pixels' (default: the autoencoder's)",
    )
    run.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        default="jsonl",
        help="metrics.jsonl always; tensorboard also writes events to RUN/tensorboard (extra: tensorboard)",
    )
    add_fields(run, RunConfig, "", only={"seed"})
    for name, (title, description) in TRAIN_GROUPS.items():
        group = t.add_argument_group(title, description)
        if name == "model":
            add_fields(group, UNetConfig, name, skip=DERIVED | IMPORTED, default=lambda path, value: "the preset's")
        else:
            add_fields(group, field_type(RunConfig, name), name, default=recipe_default)
    t.set_defaults(func=cmd_train)

    dd = command(
        "distill",
        "distil a trained run into a student that samples in 1, 2, 4 or 8 steps (progressive or consistency)",
    )
    run = dd.add_argument_group("run")
    run.add_argument("--run", help="the teacher: a trained run (its EMA weights), checkpoint or pushed repository")
    run.add_argument("--out", help="the student's run directory (default: RUN-METHOD-STEPS beside the teacher)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a distillation from its latest checkpoint")
    run.add_argument("--log", choices=("jsonl", "tensorboard"), default="jsonl", help="as train's --log")
    add_fields(run, RunConfig, "", only={"seed"})
    distilled = dd.add_argument_group("distillation")
    add_fields(distilled, DistillConfig, "distill", prefixed=False, skip={"teacher", "teacher_prediction"})
    optimised = {"batch_size", "grad_accum", "lr", "ema_halflife", "grad_clip", "nonfinite"}
    add_fields(dd.add_argument_group("optimisation"), OptimConfig, "optim", only=optimised, default=student_default)
    length_help = f"the first stop condition reached ends the run (default: --max-steps {DISTILL_STEPS})"
    add_fields(dd.add_argument_group("run length", length_help), LengthConfig, "length", default=lambda p, v: "none")
    for name in ("log", "runtime", "eval"):
        title, description = TRAIN_GROUPS[name]
        add_fields(dd.add_argument_group(title, description), field_type(RunConfig, name), name)
    dd.set_defaults(func=cmd_distill)

    s = command("sample", "generate images from a trained run or checkpoint")
    s.add_argument("--run", help=RUN_HELP)
    s.add_argument("--checkpoint", help="a checkpoint file")
    s.add_argument("--weights", default="ema", choices=("ema", "model"), help="EMA weights or the raw ones")
    s.add_argument("--class", dest="classes", help="class names or indices, comma-separated (e.g. 7 or 'Ankle boot')")
    s.add_argument("--context", type=numbers(float, "numbers"), help="a context vector, comma-separated (e.g. 1,0,0)")
    s.add_argument("--per-class", type=at_least(1), metavar="K", help="one row of K samples per class, labelled")
    s.add_argument(
        "--classifier",
        help="classifier guidance with this noisy classifier (train-classifier --noisy; its folder or file), towards "
        "--class or --per-class, which on an unconditional model go to the classifier alone",
    )
    s.add_argument("--classifier-scale", type=float, metavar="S", help="classifier guidance's scale (default: 1)")
    s.add_argument("--out", default="samples.png", type=file_name(*IMAGE_SUFFIXES), help="grid: PNG, JPEG or WebP")
    s.add_argument("--gif", type=file_name(".gif"), help="also write the denoising as an animated GIF")
    s.add_argument("--mp4", type=file_name(".mp4"), help="also write the denoising as an MP4 video (extra: video)")
    s.add_argument("--show-x0", action="store_true", help="in the animation, show the predicted x0 beside x_t")
    s.add_argument(
        "--strip",
        type=file_name(*IMAGE_SUFFIXES),
        help=f"also write the denoising as one picture: a row per image of the first batch, {STRIP_COLUMNS} columns "
        "x_T ... x_0",
    )
    s.add_argument("--npz", type=file_name(".npz"), help="also write the images (uint8, N x H x W x C) as .npz")
    add_device(s)
    add_sampling(s)
    s.set_defaults(func=cmd_sample)

    d = command("datasets", "list the dataset names, their sizes and whether they are cached")
    d.set_defaults(func=cmd_datasets)

    v = command("show", "pictures: the forward process, the schedules, a training run, or runs compared")
    v.add_argument(
        "what",
        choices=("forward", "schedule", "run", "runs"),
        help="the forward process, schedules, a run, or runs' Frechet distance against training minutes",
    )
    v.add_argument("run", nargs="*", help="show run: the run directory (or --run DIR); show runs: two or more")
    v.add_argument("--run", dest="run_dir", help="show run: the run directory")
    v.add_argument(
        "--labels",
        type=lambda text: tuple(label.strip() for label in text.split(",")),
        default=(),
        help="show runs: the runs' names in the legend, comma-separated (default: the directories' names)",
    )
    v.add_argument("--dataset", default="digits", help="show forward: the dataset whose images are noised")
    v.add_argument("--data-dir", help="show forward: a directory holding the dataset's files")
    v.add_argument("--image-size", type=at_least(1), help="show forward: the size (default: the one train uses)")
    v.add_argument("--pad", action="store_true", help="show forward: pad with black up to the size, as train --pad")
    v.add_argument(
        "--schedule",
        default=("linear", "cosine"),
        type=lambda text: tuple(kind.strip() for kind in text.split(",")),
        help="schedule kinds, comma-separated (default: linear,cosine)",
    )
    v.add_argument("--timesteps", type=at_least(2), default=1000, help="T of the schedules")
    v.add_argument(
        "--times",
        type=numbers(int, "whole numbers"),
        help="show forward: the times t shown, comma-separated (default: 0, T/8, ..., T; for --gif 0, T/30, ..., T)",
    )
    v.add_argument("--n", type=at_least(1), default=3, help="show forward: how many images")
    v.add_argument("--seed", type=int, default=0, help="show forward: which images and which noise")
    v.add_argument("--out", type=file_name(*IMAGE_SUFFIXES), help="picture to write (default: WHAT.png)")
    v.add_argument(
        "--gif", type=file_name(".gif"), help="show forward: also write q(x_t | x_0) as an animation, t from 0 to T"
    )
    v.set_defaults(func=cmd_show)

    w = command("serve", "a local web page to generate with a trained run and watch the denoising")
    w.add_argument("--run", required=True, help=RUN_HELP)
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    w.add_argument("--port", type=port, default=8000, help="port (0: any free port)")
    add_device(w)
    w.set_defaults(func=cmd_serve)

    e = command("eval", "sample quality: Frechet distance, KID, precision/recall, classes, memorisation")
    e.add_argument("--run", help=f"{RUN_HELP}: sample it (and log the scores to a run's metrics.jsonl)")
    e.add_argument("--images", help="or score these images: an .npz (as sample --npz writes) or a folder of PNGs")
    e.add_argument("--dataset", help="the dataset compared with (--run: default the one the model records)")
    e.add_argument("--pad", action="store_true", help="--images: the dataset padded with black up to their size")
    e.add_argument("--data-dir", help="a directory holding the dataset's files")
    e.add_argument("--n", type=at_least(2), default=1000, help="--run: images to sample")
    e.add_argument(
        "--features",
        default="classifier",
        choices=("classifier", "inception"),
        help="feature space: the dataset's classifier (train-classifier) or the FID Inception-v3",
    )
    e.add_argument(
        "--inception-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: where download-inception puts it)",
    )
    e.add_argument("--classifier", help="a classifier file (default: the one train-classifier writes to the cache)")
    add_device(e)
    add_sampling(e, skip={"n"})
    e.set_defaults(func=cmd_eval)

    c = command(
        "train-classifier",
        "train the classifier of a dataset for eval (a few CPU minutes), or with --noisy the noisy classifier of a "
        "diffusion run, for classifier guidance",
    )
    c.add_argument("--dataset", help="dataset name (see `pixeldiffusion datasets`); required without --noisy")
    c.add_argument("--data-dir", help="a directory holding the dataset's files")
    c.add_argument("--image-size", type=at_least(1), help="the size of the models' images (default: the dataset's)")
    c.add_argument("--pad", action="store_true", help="pad with black up to --image-size instead of resizing")
    c.add_argument(
        "--epochs",
        type=at_least(1),
        help="passes over the training images (default: enough to see 30,000 images, at least 3: 21 for the digits)",
    )
    c.add_argument(
        "--out",
        help="classifier file (default: in the cache, where eval and train look for it); with --noisy a folder, "
        "RUN/classifier unless given, beside the run it guides",
    )
    noisy = c.add_argument_group(
        "noisy classifier",
        "p(y | x_t, t) on images noised with the run's schedule, for sample --classifier; the run's dataset, image "
        "size and classes. It stops at the first of --max-steps, --epochs and --minutes given",
    )
    noisy.add_argument("--noisy", action="store_true", help="train the noisy classifier of --run")
    noisy.add_argument("--run", help="the diffusion run (directory) to guide")
    noisy.add_argument(
        "--max-steps",
        type=at_least(1),
        help="stop after this many optimiser steps (default: 3000 when no stop is given)",
    )
    noisy.add_argument("--minutes", type=float, help="or after this much training time")
    add_device(c)
    c.set_defaults(func=cmd_train_classifier)

    a = command("train-autoencoder", "train the autoencoder of latent diffusion (for train --autoencoder)")
    a.add_argument("--out", required=True, help="the autoencoder's run directory")
    add_fields(a.add_argument_group("run"), AutoencoderRunConfig, "", only={"seed", "device"})
    data = a.add_argument_group("data")
    add_fields(data, DataConfig, "data", only={"dataset", "data_dir", "pad", "hflip", "channels", "image_column"})
    add_fields(data, AutoencoderRunConfig, "", only={"image_size"})
    add_fields(a.add_argument_group("autoencoder"), AutoencoderConfig, "model", skip={"in_channels"})
    optimisation = a.add_argument_group("optimisation")
    optimised = {"loss", "beta", "batch_size", "lr", "warmup_steps", "lr_decay"}
    add_fields(optimisation, AutoencoderRunConfig, "", only=optimised)
    add_fields(a.add_argument_group("run length", TRAIN_GROUPS["length"][1]), LengthConfig, "length")
    a.set_defaults(func=cmd_train_autoencoder)

    i = command("download-inception", "download pytorch-fid's Inception weights into the cache")
    i.set_defaults(func=cmd_download_inception)

    e = command(
        "ema",
        "post-hoc EMA: the EMA of other lengths, made after training from the snapshots of a run trained with "
        "--ema-snapshot-every",
    )
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument(
        "--sigma-rel",
        required=True,
        type=numbers(float, "numbers"),
        help="the lengths, comma-separated: the profile's standard deviation relative to the step (e.g. 0.05,0.1)",
    )
    e.add_argument("--step", type=at_least(1), help="the EMA at this step (default: the last snapshot's)")
    e.add_argument("--out", help="folder of the checkpoints written (default: RUN/ema)")
    e.add_argument("--eval", type=at_least(2), metavar="N", help="score each on N samples of the run's sampler")
    add_device(e)
    e.set_defaults(func=cmd_ema)

    x = command("export", "write a model in another library's format: a diffusers pipeline folder")
    x.add_argument("--run", required=True, help=RUN_HELP)
    x.add_argument("--format", choices=("diffusers",), default="diffusers", help="the format written")
    x.add_argument("--out", required=True, help="the folder to write")
    x.set_defaults(func=cmd_export)

    h = command("push", "upload a run to the Hugging Face Hub with a model card (extra: hub)")
    h.add_argument("--run", required=True, help="run directory")
    h.add_argument("--repo", required=True, help="the Hub repository, user/repo (created if needed)")
    h.add_argument("--private", action="store_true", help="create the repository private")
    h.set_defaults(func=cmd_push)
    return p


def exit_status(error: PixelDiffusionError) -> int:
    """128 + the signal's number for a run stopped by SIGINT or SIGTERM (as a shell reports it), else 2."""
    from pixeldiffusion.training import Interrupted

    return 128 + error.signal_number if isinstance(error, Interrupted) else 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PixelDiffusionError as e:
        status = exit_status(e)
        print(f"pixeldiffusion: {'error: ' if status == 2 else ''}{e}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("pixeldiffusion: interrupted", file=sys.stderr)
        return 130
    return 0
