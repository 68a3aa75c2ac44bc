#!/usr/bin/env bash
# Latent against pixel diffusion at equal CPU minutes (issue 24): on one dataset, train the pixel model for
# MINUTES; train an autoencoder for AE_MINUTES and a latent model on its latents for MINUTES - AE_MINUTES; score
# 1,000 samples of each (DPM-Solver++ at 20 steps, classifier Frechet distance) and time sampling. One JSON line per
# model goes to benchmarks/results/latent-DATE.jsonl. Run one at a time on an idle machine:
#     bash benchmarks/latent.sh NAME MINUTES AE_MINUTES FLAGS...
#     bash benchmarks/latent.sh emoji-32 6 2 --dataset emoji --data-dir ../shared/data/emoji --image-size 32
#     bash benchmarks/latent.sh mnist-32 6 2 --dataset mnist --data-dir ../shared/data/mnist --image-size 32 --pad
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1; MINUTES=$2; AE_MINUTES=$3; shift 3
OUT=benchmarks/results/latent-$(date +%F).jsonl
RUNS=runs/latent/$NAME
rm -rf "$RUNS"
mkdir -p "$RUNS"
PD="python -m pixeldiffusion"
# every flag but --image-size/--pad is the dataset's; the autoencoder and the pixel model both take them all
$PD train-autoencoder --out "$RUNS/autoencoder" --minutes "$AE_MINUTES" "$@"
$PD train --out "$RUNS/pixel" --minutes "$MINUTES" "$@"
DATA_FLAGS=()
while (($#)); do  # train --autoencoder takes the data flags; the size and padding come from the autoencoder
  case $1 in
    --image-size) shift 2 ;;
    --pad) shift ;;
    *) DATA_FLAGS+=("$1"); shift ;;
  esac
done
LATENT_MINUTES=$(python -c "print($MINUTES - $AE_MINUTES)")
$PD train --out "$RUNS/latent" --autoencoder "$RUNS/autoencoder" --minutes "$LATENT_MINUTES" "${DATA_FLAGS[@]}"
for kind in pixel latent; do
  $PD eval --run "$RUNS/$kind" --n 1000 --sampler dpmpp_2m --steps 20 --quiet
  python - "$RUNS" "$kind" "$NAME" "$MINUTES" "$AE_MINUTES" >>"$OUT" <<'PY'
import json, sys, time
from pathlib import Path
import torch
from pixeldiffusion.pipeline import Pipeline
runs, kind, name, minutes, ae_minutes = sys.argv[1:]
run = Path(runs) / kind
lines = [json.loads(line) for line in open(run / "metrics.jsonl")]
train = [r for r in lines if "loss" in r][-1]
pipe = Pipeline.from_run(run)
pipe.sample(n=64, sampler="dpmpp_2m", steps=20)  # warm-up
start = time.perf_counter()
pipe.sample(n=256, sampler="dpmpp_2m", steps=20, batch_size=256)
sampling = 256 / (time.perf_counter() - start)
record = {"dataset": name, "space": kind, "minutes": float(minutes),
          "autoencoder_minutes": float(ae_minutes) if kind == "latent" else 0.0,
          "train_minutes": train["elapsed_s"] / 60, "steps": train["step"],
          "train_images_per_s": train["images_per_s"], "sample_images_per_s_dpmpp20": round(sampling, 1),
          "torch_threads": torch.get_num_threads(),
          **{k: v for k, v in [r for r in lines if r.get("kind") == "eval"][-1].items() if k != "kind"}}
if kind == "latent":
    from pixeldiffusion.checkpoint import load_checkpoint
    _, meta = load_checkpoint(Path(runs) / "autoencoder" / "autoencoder.safetensors")
    record["autoencoder"] = {k: meta[k] for k in ("scale_factor", "step", "elapsed", "held_out")}
print(json.dumps(record))
PY
done
tail -n 2 "$OUT"
