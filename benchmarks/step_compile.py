"""Compiling more of the training step (issue 25, item 2), measured interleaved in one process on the MNIST
recipe's network (size mnist-small), compiled as training compiles it: the forward half of the step (forward
process, network, weighted loss) is one torch.compile graph, and AOTAutograd compiles its backward.

- whole steps: that step as it runs (`TrainStep`), against the same step with its backward traced by compiled
  autograd (one graph for the whole backward, gradient accumulation included), and against the same step compiled
  with inductor's own layout choice (`layout_optimization`, which the step turns off in NCHW on the CPU:
  runtime.training_compile_options);
- the update alone, on the network's parameters with gradients: gradient clipping, AdamW and the EMA as the step
  runs them (fused AdamW, a foreach lerp), against one torch.compile'd function doing the three (unfused AdamW,
  so that inductor generates the loop; learning rate and EMA weight as tensors, so that a new value does not
  recompile). Its share of the whole step bounds what compiling it can gain.

Prints one JSON record per precision:

    .venv/bin/python benchmarks/step_compile.py --out benchmarks/results/step-compile-DATE.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch._dynamo.compiled_autograd
from torch import nn

from speed import SIZES, benchmark_trainer, host_info, interleaved, report, wait_for_idle


def compiled_autograd(step):
    """`step` with every backward inside it traced and compiled by compiled autograd."""

    def run():
        with torch._dynamo.compiled_autograd._enable(torch.compile(backend="inductor")):
            return step()

    return run


def updates(model: nn.Module, ema: nn.Module) -> dict:
    """The step's update as training runs it (eager) and as one compiled function, on `model`'s parameters with
    fixed gradients; each variant has its own AdamW state."""
    params = list(model.parameters())
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    averages = list(ema.parameters())
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    unfused = torch.optim.AdamW(params, lr=torch.tensor(1e-4), foreach=False)
    weight = torch.tensor(1e-3)

    def set_grads():
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()

    def eager():
        set_grads()
        nn.utils.clip_grad_norm_(params, 1.0)
        fused.step()
        torch._foreach_lerp_(averages, [p.detach() for p in params], 1e-3)

    @torch.compile
    def update(weight: torch.Tensor):
        nn.utils.clip_grad_norm_(params, 1.0)
        unfused.step()
        torch._foreach_lerp_(averages, [p.detach() for p in params], weight)

    def compiled():
        set_grads()
        update(weight)

    def gradients_only():  # the cost of setting the gradients, taken off both
        set_grads()

    return {"eager": eager, "compiled": compiled, "set_gradients": gradients_only}


def compare(size: str, precision: str, batch: int, rounds: int, steps: int) -> dict:
    config = SIZES[size].config
    trainer = benchmark_trainer(config, batch, precision=precision, compile=True)
    step = trainer.train_step
    trainer_ca = benchmark_trainer(config, batch, precision=precision, compile=True)
    trainer_layout = benchmark_trainer(config, batch, precision=precision, compile=True)
    trainer_layout.train_step.loss = torch.compile(trainer_layout.train_step.forward_loss)  # inductor's defaults
    steps_timing = interleaved(
        {
            "today": step,
            "compiled_autograd": compiled_autograd(trainer_ca.train_step),
            "inductor_layout": trainer_layout.train_step,
        },
        rounds=rounds,
        repeats=steps,
        warmup=3,
    )
    update_timing = interleaved(
        updates(trainer.state.model, trainer.state.ema), rounds=rounds, repeats=steps * 4, warmup=3
    )
    step_s = {k: statistics.median(v) for k, v in steps_timing["seconds"].items()}
    update_s = {k: statistics.median(v) for k, v in update_timing["seconds"].items()}
    base = update_s.pop("set_gradients")
    update_s = {k: v - base for k, v in update_s.items()}
    return {
        "size": size,
        "batch": batch,
        "precision": precision,
        "step_images_per_s": {k: batch / v for k, v in step_s.items()},
        "ratio_compiled_autograd": step_s["today"] / step_s["compiled_autograd"],
        "ratio_inductor_layout": step_s["today"] / step_s["inductor_layout"],
        "update_ms": {k: 1e3 * v for k, v in update_s.items()},
        "update_share_of_step": update_s["eager"] / step_s["today"],
        "gain_bound_compiled_update": (update_s["eager"] - update_s["compiled"]) / step_s["today"],
        "others_cpu": max(steps_timing["others_cpu"], update_timing["others_cpu"]),
        "seconds": {"steps": steps_timing["seconds"], "update": update_timing["seconds"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="mnist-small", choices=sorted(SIZES))
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    p.add_argument("--out", type=Path, help="JSON-lines file the records are appended to")
    p.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    args = p.parse_args()
    if not args.no_wait and not wait_for_idle(0.2, 900, loadavg=False):
        print("warning: the machine stayed busy; the records say how busy")
    host = host_info(torch.device("cpu"))
    for precision in args.precisions.split(","):
        record = {"host": host, **compare(args.size, precision, args.batch, args.rounds, args.steps)}
        report(record, args.out, bulky=("host", "seconds"))


if __name__ == "__main__":
    main()
