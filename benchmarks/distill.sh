#!/usr/bin/env bash
# Distillation against its teacher (issue 23): distil one trained run with each method for MINUTES, then score every
# student at its step counts and the teacher with its recipe's samplers on N samples (the dataset's classifier), and
# time sampling of each; one JSON line per (model, sampler, steps) goes to benchmarks/results/distill-DATE.jsonl.
# Run one at a time on an idle machine:
#     bash benchmarks/distill.sh TEACHER_RUN MINUTES N [DATA_DIR]
#     bash benchmarks/distill.sh runs/mnist 15 10000 ../shared/data/mnist
# Progressive students are trained per step count (STEPS, default "4 1", "" for none; TEACHER_STEPS=N sets their
# teacher grid); the one consistency student samples at every step count of CONSISTENCY_STEPS (default "1 2 4 8",
# "" for no consistency student); TEACHER_SCORE=0 skips scoring the teacher, TEACHER_SAMPLERS picks its samplers
# (default "ddpm:50 dpmpp_2m:10"). The 30-minute rows of the README:
#     STEPS=4 TEACHER_STEPS=8 CONSISTENCY_STEPS= TEACHER_SCORE=0 bash benchmarks/distill.sh RUN 30 10000 DATA
#     STEPS=4 CONSISTENCY_STEPS= TEACHER_SAMPLERS=dpmpp_2m:10 bash benchmarks/distill.sh RUN 30 10000 DATA
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=$1; MINUTES=$2; N=$3; DATA=${4:+--data-dir $4}
STEPS=${STEPS-4 1}
CONSISTENCY_STEPS=${CONSISTENCY_STEPS-1 2 4 8}
GRID=${TEACHER_STEPS:+--teacher-steps $TEACHER_STEPS}
OUT=benchmarks/results/distill-$(date +%F).jsonl
RUNS=runs/distill/$(basename "$TEACHER")
mkdir -p "$RUNS"
PD="python -m pixeldiffusion"

score() {  # score RUN LABEL SAMPLER STEPS: eval on N samples, then time 1,000 samples; one JSON line
  local run=$1 label=$2 sampler=$3 steps=$4
  # shellcheck disable=SC2086
  $PD eval --run "$run" --n "$N" --sampler "$sampler" --steps "$steps" --precision bf16 --quiet $DATA >/dev/null
  python - "$run" "$label" "$sampler" "$steps" "$MINUTES" >>"$OUT" <<'PY'
import json, sys, time
from pathlib import Path
import torch
from pixeldiffusion.pipeline import Pipeline
run, label, sampler, steps, minutes = sys.argv[1:]
lines = [json.loads(line) for line in open(Path(run) / "metrics.jsonl")]
evaluation = [r for r in lines if r.get("kind") == "eval"][-1]
pipe = Pipeline.from_run(run)
settings = dict(sampler=sampler, steps=int(steps), precision="bf16", batch_size=500)
pipe.sample(n=100, **settings)  # warm-up
start = time.perf_counter()
pipe.sample(n=1000, **settings)
rate = 1000 / (time.perf_counter() - start)
distill = pipe.config.distill
print(json.dumps({
    "model": label, "teacher": distill.teacher, "method": distill.method if distill.teacher else None,
    "teacher_steps": distill.grid_steps if distill.teacher else None,
    "teacher_solver": distill.teacher_solver if distill.teacher else None,
    "distill_minutes": float(minutes) if distill.teacher else 0.0, "sampler": sampler, "steps": int(steps),
    "sample_images_per_s": round(rate, 1), "torch_threads": torch.get_num_threads(),
    **{k: v for k, v in evaluation.items() if k not in ("kind", "sampling")},
}))
PY
}

for steps in $STEPS; do
  run=$RUNS/progressive-$steps-${MINUTES}min${TEACHER_STEPS:+-from$TEACHER_STEPS}
  rm -rf "$run"
  # shellcheck disable=SC2086
  $PD distill --run "$TEACHER" --method progressive --steps "$steps" --minutes "$MINUTES" --out "$run" $GRID \
    --eval-every 250 --eval-samples 500
  score "$run" "progressive-$steps" ddim "$steps"
done
if [[ -n $CONSISTENCY_STEPS ]]; then
  run=$RUNS/consistency-${MINUTES}min
  rm -rf "$run"
  $PD distill --run "$TEACHER" --method consistency --steps 1 --minutes "$MINUTES" --out "$run" \
    --eval-every 250 --eval-samples 500
  for steps in $CONSISTENCY_STEPS; do
    score "$run" "consistency" consistency "$steps"
  done
fi
if [[ ${TEACHER_SCORE:-1} == 1 ]]; then
  for sampler in ${TEACHER_SAMPLERS:-ddpm:50 dpmpp_2m:10}; do
    score "$TEACHER" teacher "${sampler%:*}" "${sampler#*:}"
  done
fi
tail -n 20 "$OUT"
