#!/usr/bin/env bash
# The MNIST recipe sweep of issue 8: train each variant for MINUTES on real MNIST, score 1,000 samples
# (DPM-Solver++ at 20 steps, bf16 where the CPU has it, classifier Frechet distance) and append one line per variant to
# benchmarks/results/recipe-sweep-mnist.jsonl. Run one at a time on an idle machine:
#     bash benchmarks/recipe_sweep.sh [MINUTES] [VARIANT ...]
# With STEPS=N in the environment each variant trains N steps instead (MINUTES is then ignored), which compares
# variants that differ in speed at equal work:
#     STEPS=600 bash benchmarks/recipe_sweep.sh 0 default fp32
# With DATASET=NAME (and DATA=DIR, or DATA= for a built-in dataset) it sweeps that dataset's recipe instead:
#     DATASET=emoji DATA= bash benchmarks/recipe_sweep.sh 5 default v-minsnr
# EVAL replaces the scoring flags, as for issue 26's 10-minute search (2,000 samples of the recipe's DDPM 50):
#     EVAL="--n 2000 --sampler ddpm --steps 50 --compile" bash benchmarks/recipe_sweep.sh 10 batch128 batch64
# FLAGS go before every variant's own (which win where both set a value), e.g. a budget's settings at equal steps:
#     FLAGS="--batch-size 64 --schedule cosine --compile" STEPS=640 bash benchmarks/recipe_sweep.sh 0 edm flow
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-5}; shift || true
STEPS=${STEPS:-}
BUDGET="--minutes $MINUTES"; TAG=${MINUTES}min
if [[ -n $STEPS ]]; then BUDGET="--max-steps $STEPS"; TAG=${STEPS}steps; fi
EVAL=${EVAL:---n 1000 --sampler dpmpp_2m --steps 20}
FLAGS=${FLAGS:-}
DATASET=${DATASET:-mnist}
DATA=${DATA-../shared/data/mnist}
OUT=benchmarks/results/recipe-sweep-$DATASET.jsonl
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
  [batch128]="--batch-size 128"  # the recipe's own batch, which a budget of 30 minutes or less changes
  [batch64-lr2e-3]="--batch-size 64 --lr 2e-3"
  [batch32]="--batch-size 32"
  [wide]="--base-channels 64"
  [ema250]="--ema-halflife 250"
  [fp32]="--precision fp32"
  [lognormal]="--t-sampling lognormal"
  [beta2-0.99]="--adam-beta2 0.99"
  [seed1]="--seed 1"
  [cosine-seed1]="--schedule cosine --seed 1"
  [cosine-beta2-0.99]="--schedule cosine --adam-beta2 0.99"
  [v-none]="--weighting none"  # the recipe's v-prediction, unweighted
  [edm]="--prediction edm --weighting none"  # EDM's preconditioning and its loss weight lambda(sigma)
  [edm-minsnr]="--prediction edm"
  [flow]="--prediction flow --schedule flow --weighting none"  # rectified flow, t uniform
  [flow-seed1]="--prediction flow --schedule flow --weighting none --seed 1"
  [flow-logitnormal]="--prediction flow --schedule flow --weighting none --t-sampling lognormal --p-mean 0 --p-std 1"
  [logitnormal]="--t-sampling lognormal --p-mean 0 --p-std 1"  # SD3's times on a budget's flow schedule
  [base24]="--base-channels 24"  # narrower networks: more steps in a budget
  [base16]="--base-channels 16"
  [base16-lr2e-3]="--base-channels 16 --lr 2e-3"
  [base16-mult124]="--base-channels 16 --channel-mult 1,2,4"  # capacity where pixels are few
)
for name in "${@:-default v-minsnr lr2e-3 cosine}"; do
  for variant in $name; do
    run=runs/sweep/$DATASET-$variant-$TAG
    rm -rf "$run"
    python -m pixeldiffusion train --dataset "$DATASET" ${DATA:+--data-dir "$DATA"} $BUDGET --out "$run" $FLAGS ${VARIANTS[$variant]}
    python -m pixeldiffusion eval --run "$run" $EVAL --precision auto
    python - "$run" "$variant" "$BUDGET" "${FLAGS:+$FLAGS }${VARIANTS[$variant]}" >> "$OUT" <<'PY'
import json, sys
run, variant, budget, flags = sys.argv[1:]
lines = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
train = [r for r in lines if "loss" in r][-1]
kind, amount = budget.split()
limit = {"minutes": float(amount)} if kind == "--minutes" else {"max_steps": int(amount)}
dataset = json.load(open(f"{run}/config.json"))["data"]["dataset"]
print(json.dumps({"dataset": dataset, "variant": variant, "flags": flags, **limit, "steps": train["step"],
                  "training_minutes": train["elapsed_s"] / 60, "images_per_s": train["images_per_s"],
                  **[r for r in lines if r.get("kind") == "eval"][-1]}))
PY
  done
done
