#!/usr/bin/env bash
# The MNIST recipe sweep of issue 8: train each variant for MINUTES on real MNIST, score 1,000 samples
# (DPM-Solver++ at 20 steps, bf16, classifier Frechet distance) and append one line per variant to
# benchmarks/results/recipe-sweep-mnist.jsonl. Run one at a time on an idle machine:
#     bash benchmarks/recipe_sweep.sh [MINUTES] [VARIANT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-5}; shift || true
DATA=${DATA:-../shared/data/mnist}
OUT=benchmarks/results/recipe-sweep-mnist.jsonl
# Flags on top of the recipe (v-prediction with min-SNR weighting since stop 14; the lines named "default" in the
# results file ran before that, when the recipe was eps-prediction, like [eps] here).
declare -A VARIANTS=(
  [default]=""
  [eps]="--prediction eps --weighting none"
  [v-minsnr]="--prediction v --weighting min_snr"
  [lr2e-3]="--lr 2e-3"
  [cosine]="--schedule cosine"
  [attention7]="--attention-resolutions 7"
  [batch64]="--batch-size 64"
  [wide]="--base-channels 64"
  [ema250]="--ema-halflife 250"
)
for name in "${@:-default v-minsnr lr2e-3 cosine}"; do
  for variant in $name; do
    run=runs/sweep/ours-$variant-${MINUTES}min
    rm -rf "$run"
    python -m pixeldiffusion train --dataset mnist --data-dir "$DATA" --minutes "$MINUTES" --out "$run" ${VARIANTS[$variant]}
    python -m pixeldiffusion eval --run "$run" --data-dir "$DATA" --n 1000 --sampler dpmpp_2m --steps 20 --precision bf16
    python - "$run" "$variant" "$MINUTES" "${VARIANTS[$variant]}" >> "$OUT" <<'PY'
import json, sys
run, variant, minutes, flags = sys.argv[1:]
lines = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
train = [r for r in lines if "loss" in r][-1]
print(json.dumps({"variant": variant, "flags": flags, "minutes": float(minutes), "steps": train["step"],
                  "images_per_s": train["images_per_s"], **[r for r in lines if r.get("kind") == "eval"][-1]}))
PY
  done
done
