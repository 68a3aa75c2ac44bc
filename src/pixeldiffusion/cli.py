"""The `pixeldiffusion` command: parses flags into configurations and calls one library function each."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from pixeldiffusion import distributed
from pixeldiffusion.config import DataConfig, RunConfig, SampleConfig, TrainConfig, default_config, field_type
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.schedule import ScheduleConfig

# Config fields the dataset decides (channels, classes), not the user.
DERIVED = {"in_channels", "num_classes", "context_dim"}


def field_help(cls: type) -> dict[str, str]:
    """The trailing comment of each field in a config dataclass's source: the fields' documentation."""
    pattern = re.compile(r"^\s+(\w+): [^#]*#\s*(.*)$")
    return {m[1]: m[2] for line in inspect.getsource(cls).splitlines() if (m := pattern.match(line))}


def add_fields(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    rename: dict | None = None,
    skip: set[str] = frozenset(),
) -> None:
    """One flag per field of a config dataclass: --field-name, typed, with the field's comment as help."""
    group = parser.add_argument_group(cls.__name__)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + (rename or {}).get(f.name, f.name).replace("_", "-")
        kind = field_type(cls, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{helps.get(f.name, '')} (default: {default})"
        dest = f"{cls.__name__}.{f.name}"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=dest, help=text)
        elif kind is tuple:
            group.add_argument(
                flag,
                default=None,
                dest=dest,
                metavar="N,N,...",
                help=text,
                type=lambda s: tuple(int(v) for v in s.split(",") if v.strip()),
            )
        else:
            group.add_argument(flag, type=kind, default=None, dest=dest, help=text)


def overrides(args: argparse.Namespace, cls: type) -> dict:
    """The fields of `cls` given on the command line."""
    prefix = cls.__name__ + "."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def apply(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The configuration with every flag given on the command line applied."""
    return replace(
        config,
        data=replace(config.data, **overrides(args, DataConfig)),
        model=replace(config.model, **overrides(args, UNetConfig)),
        schedule=replace(config.schedule, **overrides(args, ScheduleConfig)),
        train=replace(config.train, **overrides(args, TrainConfig)),
        sample=replace(config.sample, **overrides(args, SampleConfig)),
        **({"prediction": args.prediction} if getattr(args, "prediction", None) else {}),
    )


def cmd_train(args: argparse.Namespace) -> None:
    from pixeldiffusion.training import train

    if args.resume:
        run_dir = Path(args.resume)
        config = RunConfig.load(run_dir / "config.json")
    else:
        dataset = getattr(args, "DataConfig.dataset") or "digits"
        config = RunConfig.load(args.config) if args.config else default_config(dataset, model_preset=args.preset)
        run_dir = Path(args.out or f"runs/{dataset.replace(':', '-').replace('/', '-')}")
    config = apply(config, args)  # bad flags are reported before anything else
    if not args.resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise PixelDiffusionError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out"
        )
    callbacks = ()
    if args.log == "tensorboard":
        from pixeldiffusion.tensorboard import tensorboard_logger

        callbacks = (tensorboard_logger(run_dir / "tensorboard"),)
    summary = train(config, run_dir, resume=bool(args.resume), callbacks=callbacks)
    if summary is None:
        return
    print(f"\ntrained {summary.steps} steps in {summary.minutes:.1f} min; everything is in {summary.run_dir}/")
    print(f"  configuration  {summary.run_dir / 'config.json'}")
    print(f"  checkpoint     {summary.checkpoint}")
    print(f"  metrics        {summary.run_dir / 'metrics.jsonl'}")
    print(f"  samples        {summary.samples}")
    print(f"  denoising      {summary.animation}")
    if args.log == "tensorboard":
        print(f"  tensorboard    tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"sample more with:\n  pixeldiffusion sample --run {summary.run_dir} --n 64 --seed 1 --out samples-1.png")


def cmd_sample(args: argparse.Namespace) -> None:
    from pixeldiffusion.pipeline import Pipeline

    if bool(args.run) == bool(args.checkpoint):
        raise PixelDiffusionError("give exactly one of --run DIR and --checkpoint FILE")
    process = distributed.setup(args.device)  # under torchrun, the processes share the batches out
    load = dict(weights=args.weights, device=process.device)
    pipe = Pipeline.from_run(args.run, **load) if args.run else Pipeline.from_checkpoint(args.checkpoint, **load)
    labels = [c.strip() for c in args.classes.split(",")] if args.classes else None
    context = [float(v) for v in args.context.split(",")] if args.context else None
    samples = pipe.sample(
        labels=labels,
        context=context,
        per_class=args.per_class,
        record=40 if args.gif or args.mp4 else 0,
        **overrides(args, SampleConfig),
    )
    if process.world_size > 1:
        torch.distributed.destroy_process_group()
    if not process.is_main:
        return
    samples.save(args.out, gif=args.gif, mp4=args.mp4, npz=args.npz, show_x0=args.show_x0)
    for what, path in (("grid", args.out), ("animation", args.gif), ("video", args.mp4), ("arrays", args.npz)):
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


def schedule_configs(names: str, timesteps: int) -> list[ScheduleConfig]:
    return [ScheduleConfig(kind=name.strip(), timesteps=timesteps) for name in names.split(",") if name.strip()]


def cmd_show(args: argparse.Namespace) -> None:
    from pixeldiffusion import visualize

    if args.what == "forward":
        times = [int(t) for t in args.times.split(",")] if args.times else None
        schedules = schedule_configs(args.schedule, args.timesteps)
        figure = visualize.dataset_forward_figure(
            args.dataset, schedules, times, n=args.n, seed=args.seed, data_dir=args.data_dir
        )
    elif args.what == "schedule":
        figure = visualize.schedule_figure(schedule_configs(args.schedule, args.timesteps))
    else:
        if not args.run:
            raise PixelDiffusionError("show run needs the run directory: pixeldiffusion show run DIR")
        figure = visualize.run_figure(args.run)
    out = args.out or f"{args.what}.png"
    visualize.save_image(figure, out)
    print(f"wrote {out} ({figure.width}x{figure.height})")


def cmd_serve(args: argparse.Namespace) -> None:
    from pixeldiffusion.serve import serve

    serve(args.run, host=args.host, port=args.port, device=args.device)


def cmd_eval(args: argparse.Namespace) -> None:
    from pixeldiffusion.evaluation.evaluate import evaluate_images, evaluate_run

    if bool(args.run) == bool(args.images):
        raise PixelDiffusionError("give exactly one of --run DIR and --images FILE.npz|DIR")
    process = distributed.setup(args.device) if args.run else None  # under torchrun, the sampling is shared out
    common = dict(
        features=args.features,
        inception_weights=args.inception_weights,
        classifier=args.classifier,
        data_dir=args.data_dir,
        device=process.device if process else args.device,
    )
    if args.run:
        evaluation, record = evaluate_run(args.run, n=args.n, **common, **overrides(args, SampleConfig))
        if process.world_size > 1:
            torch.distributed.destroy_process_group()
        if not process.is_main:
            return
        settings = ", ".join(f"{k} {v}" for k, v in record["sampling"].items())
        print(f"{args.run} at step {record['step']} ({record['elapsed_s'] / 60:.1f} training minutes); {settings}")
    else:
        if not args.dataset:
            raise PixelDiffusionError("--images needs --dataset NAME, the dataset the images are compared with")
        evaluation = evaluate_images(args.images, dataset=args.dataset, pad=args.pad, **common)
    print(evaluation.table())
    if args.run:
        print(f"appended to {Path(args.run) / 'metrics.jsonl'}")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from pixeldiffusion.evaluation.classifier import train_classifier

    trained = train_classifier(
        args.dataset,
        data_dir=args.data_dir,
        out=args.out,
        image_size=args.image_size,
        pad=args.pad,
        epochs=args.epochs,
        device=args.device,
    )
    info = trained.info
    print(f"wrote {trained.path}: test accuracy {info.test_accuracy:.4f} on {info.test_set}")


def cmd_download_inception(args: argparse.Namespace) -> None:
    from pixeldiffusion.data.download import fetch_weights
    from pixeldiffusion.evaluation.inception import WEIGHTS_FILE

    print(f"Inception weights (SHA-256 checked): {fetch_weights(WEIGHTS_FILE)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixeldiffusion", description="Train and sample denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a model (default: the built-in digits, about 4 minutes on 2 CPU cores)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--preset", help="U-Net preset (digits, sprites, mnist, cifar10); default: the dataset's recipe")
    t.add_argument("--config", help="a config.json to start from (e.g. from an earlier run)")
    t.add_argument("--out", help="run directory (default: runs/DATASET)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint and stored config")
    t.add_argument(
        "--prediction",
        choices=("eps", "x0", "v"),
        help="what the network predicts (default: the recipe's: v for mnist and fashion-mnist, eps otherwise)",
    )
    add_fields(t, DataConfig)
    add_fields(t, TrainConfig)
    add_fields(t, ScheduleConfig, rename={"kind": "schedule"})
    add_fields(t, UNetConfig, skip=DERIVED)
    add_fields(t, SampleConfig, prefix="sample-")
    t.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        default="jsonl",
        help="metrics.jsonl always; tensorboard also writes events to RUN/tensorboard (extra: tensorboard)",
    )
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images from a trained run or checkpoint")
    s.add_argument("--run", help="run directory (its latest checkpoint is used)")
    s.add_argument("--checkpoint", help="a checkpoint file")
    s.add_argument("--weights", default="ema", choices=("ema", "model"), help="EMA weights or the raw ones")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--class", dest="classes", help="class names or indices, comma-separated (e.g. 7 or 'Ankle boot')")
    s.add_argument("--context", help="a context vector, comma-separated (e.g. 1,0,0,0,1)")
    s.add_argument("--per-class", type=int, help="one row of K samples per class, labelled")
    s.add_argument("--out", default="samples.png", help="PNG grid to write")
    s.add_argument("--gif", help="also write the denoising as an animated GIF")
    s.add_argument("--mp4", help="also write the denoising as an MP4 video (extra: video)")
    s.add_argument("--show-x0", action="store_true", help="in the animation, show the predicted x0 beside x_t")
    s.add_argument("--npz", help="also write the images (uint8, N x H x W x C) and conditions as .npz")
    add_fields(s, SampleConfig)
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("datasets", help="list the dataset names, their sizes and whether they are cached")
    d.set_defaults(func=cmd_datasets)

    v = sub.add_parser("show", help="pictures: the forward process, the schedules, or a training run")
    v.add_argument("what", choices=("forward", "schedule", "run"))
    v.add_argument("run", nargs="?", help="show run: the run directory")
    v.add_argument("--dataset", default="digits", help="show forward: the dataset whose images are noised")
    v.add_argument("--data-dir", help="show forward: a directory holding the dataset's files")
    v.add_argument("--schedule", default="linear,cosine", help="schedule kinds, comma-separated")
    v.add_argument("--timesteps", type=int, default=1000, help="T of the schedules")
    v.add_argument("--times", help="show forward: the times t shown, comma-separated (default 0, T/8, ..., T)")
    v.add_argument("--n", type=int, default=3, help="show forward: how many images")
    v.add_argument("--seed", type=int, default=0, help="show forward: which images and which noise")
    v.add_argument("--out", help="PNG to write (default: WHAT.png)")
    v.set_defaults(func=cmd_show)

    w = sub.add_parser("serve", help="a local web page to generate with a trained run and watch the denoising")
    w.add_argument("--run", required=True, help="run directory (its latest checkpoint is used)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    w.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    w.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    w.set_defaults(func=cmd_serve)

    e = sub.add_parser("eval", help="sample quality: Frechet distance, KID, precision/recall, classes, memorisation")
    e.add_argument("--run", help="run directory: sample its latest checkpoint and log the scores to its metrics.jsonl")
    e.add_argument("--images", help="or score these images: an .npz (as sample --npz writes) or a folder of PNGs")
    e.add_argument("--dataset", help="--images: the dataset they are compared with")
    e.add_argument("--pad", action="store_true", help="--images: the dataset padded with black up to their size")
    e.add_argument("--data-dir", help="a directory holding the dataset's files")
    e.add_argument("--n", type=int, default=1000, help="--run: images to sample")
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
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_fields(e, SampleConfig, skip={"n"})
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("train-classifier", help="train the classifier of a dataset for eval (a few CPU minutes)")
    c.add_argument("--dataset", required=True, help="dataset name (see `pixeldiffusion datasets`)")
    c.add_argument("--data-dir", help="a directory holding the dataset's files")
    c.add_argument("--image-size", type=int, help="the size of the models' images (default: the dataset's own)")
    c.add_argument("--pad", action="store_true", help="pad with black up to --image-size instead of resizing")
    c.add_argument("--epochs", type=int, default=3, help="passes over the training images")
    c.add_argument("--out", help="classifier file (default: in the cache, where eval and train look for it)")
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    c.set_defaults(func=cmd_train_classifier)

    i = sub.add_parser("download-inception", help="download pytorch-fid's Inception weights into the cache")
    i.set_defaults(func=cmd_download_inception)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PixelDiffusionError as e:
        print(f"pixeldiffusion: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixeldiffusion: interrupted", file=sys.stderr)
        return 130
    return 0
