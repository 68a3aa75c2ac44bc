#!/usr/bin/env bash
# The progressive student's settings (issue 23): distil one teacher into a 4-step student with each variant for the
# same number of distillation steps, score it on N samples (the dataset's classifier, DDIM at 4 steps, bf16) and
# append one JSON line per variant to benchmarks/results/distill-sweep.jsonl. Run one at a time on an idle machine:
#     bash benchmarks/distill_sweep.sh TEACHER_RUN MAX_STEPS N DATA_DIR [VARIANT ...]
#     bash benchmarks/distill_sweep.sh /work/runs/mnist-30 450 2000 ../shared/data/mnist lr1e-4 lr3e-4
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=$1; MAX_STEPS=$2; N=$3; DATA=$4; shift 4
OUT=benchmarks/results/distill-sweep.jsonl
declare -A VARIANTS=(
  [lr3e-5]="--lr 3e-5"
  [lr1e-4]="--lr 1e-4"
  [lr3e-4]="--lr 3e-4"
  [lr1e-3]="--lr 1e-3"
  [lr1e-4-from16]="--lr 1e-4 --teacher-steps 16"
  [lr1e-4-from8]="--lr 1e-4 --teacher-steps 8"
  [lr1e-4-from8-dpm2]="--lr 1e-4 --teacher-steps 8 --teacher-solver dpm_solver_2"
)
for variant in "${@:-lr1e-4 lr3e-4 lr1e-3}"; do
  run=runs/distill-sweep/$(basename "$TEACHER")-$variant-$MAX_STEPS
  rm -rf "$run"
  # shellcheck disable=SC2086
  python -m pixeldiffusion distill --run "$TEACHER" --steps 4 --max-steps "$MAX_STEPS" --out "$run" ${VARIANTS[$variant]}
  python -m pixeldiffusion eval --run "$run" --n "$N" --precision bf16 --data-dir "$DATA" --quiet >/dev/null
  python - "$run" "$variant" "${VARIANTS[$variant]}" >>"$OUT" <<'PY'
import json, sys
run, variant, flags = sys.argv[1:]
lines = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
train = [r for r in lines if "loss" in r][-1]
config = json.load(open(f"{run}/config.json"))
print(json.dumps({"variant": variant, "flags": flags, "teacher": config["distill"]["teacher"],
                  "student_steps": config["distill"]["steps"], "distill_steps": train["step"],
                  "distill_minutes": round(train["elapsed_s"] / 60, 2), "final_loss": train["loss"],
                  **{k: v for k, v in [r for r in lines if r.get("kind") == "eval"][-1].items() if k != "kind"}}))
PY
  tail -n 1 "$OUT"
done
