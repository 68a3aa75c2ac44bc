#!/usr/bin/env bash
# Every CUDA check, in one run on a lent GPU machine (see benchmarks/README.md, "On a GPU"): the CUDA-only tests,
# then speed.py's rows (eager, compiled, compiled with CUDA graphs) for the given sizes, each size's JSON saved row by
# row so that a run cut short keeps what it measured.
#   bash benchmarks/cuda_check.sh [SIZES] [BATCH]    # defaults: "mnist cifar10", 128; results in $OUT
set -u
OUT=${OUT:-benchmarks/results/cuda}
SIZES=${1:-mnist cifar10}
BATCH=${2:-128}
mkdir -p "$OUT"
if [ -d .whl ]; then  # packages the machine lacks (diffusers), carried as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k cuda 2>&1 | tee "$OUT/tests.log"
for size in $SIZES; do
    timeout "${SIZE_TIMEOUT:-210}" python3 benchmarks/speed.py --device cuda --sizes "$size" --batch "$BATCH" \
        --repeats 10 --no-wait --max-load 16 --no-memory --no-breakdown --matmul-size 8192 \
        --out "$OUT/speed-$size.json" > /dev/null 2> >(tee "$OUT/speed-$size.log" >&2)
done
