#!/usr/bin/env bash
# The check of train.py on the GPU machine, which has JAX with CUDA, numpy, h5py and pytest but no
# TensorFlow, no Keras and no internet: installs Keras from carried wheels, prints the GPU, runs
# `python -m bench.gpu_check` (ResNet-20 trained a few epochs on Keras' JAX backend in float32 and
# mixed precision: accuracy, images/s) and the tests marked `gpu` (tests/test_backends.py).
#
#     bash bench/gpu_check.sh OUT [DATA_DIR]
#
# OUT receives gpu_check.json and gpu_check.md (bench/gpu_check.py), gpu_check.log (everything
# printed) and pytest.txt: four files, two levels down at most, as the device tool brings back.
# DATA_DIR (default .gpudata at the repository's root) holds CIFAR-10 in the official format.
# Every part runs under `timeout`, so the whole stays under 8 minutes: at most 485 s (the limits
# below, 5 s each to stop, nvidia-smi's 10 s). The exit status is non-zero if any part failed,
# once all of them have run.
#
# Prepare, once, in the repository's root on the machine that calls the device tool. Neither folder
# is committed: both are listed in .git/info/exclude, so only `carry` takes them along.
#
#     printf '/.whl/\n/.gpudata/\n' >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#     python -m bench.cifar_subset --data-dir ../shared/data --out /tmp/gpudata-cut --train-per-batch 1500 --test 1000
#     mkdir .gpudata && mv /tmp/gpudata-cut/cifar-10-batches-py .gpudata/
#
# (cifar_subset writes outside the repository only; .gitignore ignores cifar-10-batches-py/ too.)
# The wheels' other needs (Keras': absl-py, rich, h5py, ml-dtypes, packaging, numpy; optree's:
# typing-extensions; `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`) are on that
# machine already; Python there is 3.12.
#
# Size: what travels (tracked and untracked-not-ignored files plus the carried folders) must stay
# under 64 MiB. The wheels are about 3 MB; the data 3,073 bytes per image, (5 * 1500 + 1000) images
# = 26 MB; the repository's tracked files: `git ls-files | xargs du -ch | tail -1` (under 2 MB
# when this was written). The default --val-split of 1000 fits the 7,500 training images.
#
# Then, through the device tool:
#
#     run(command="bash bench/gpu_check.sh $OUT", carry=[".whl", ".gpudata"], timeout_s=540)
#
# Settings from the environment, for a check on a CPU (see tests/test_bench.py for the figures' test):
# WHEELS (default .whl), SITE (where the wheels are installed, default /tmp/site), EPOCHS (4),
# STEPS (50), VAL_SPLIT (1000), BATCH (the recipe's), and the limits INSTALL_TIMEOUT (20),
# CHECK_TIMEOUT (240), TESTS_TIMEOUT (200) in seconds (the tests train on jax and, where torch is
# installed, as there, on torch too). For instance, in a venv without TensorFlow:
#
#     PATH=/tmp/notf-venv/bin:$PATH WHEELS=/tmp/whl311 SITE=/tmp/site311 EPOCHS=2 STEPS=2 VAL_SPLIT=100 \
#         BATCH=32 CHECK_TIMEOUT=900 TESTS_TIMEOUT=900 bash bench/gpu_check.sh /tmp/gpu-out /tmp/gpudata

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash bench/gpu_check.sh OUT [DATA_DIR]" >&2
    exit 2
fi
OUT=$1
DATA=${2:-$REPO/.gpudata}
WHEELS=${WHEELS:-$REPO/.whl}
SITE=${SITE:-/tmp/site}
EPOCHS=${EPOCHS:-4}
STEPS=${STEPS:-50}
VAL_SPLIT=${VAL_SPLIT:-1000}
BATCH=${BATCH:-}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-20}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-240}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-200}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

FAILED=()

# part NAME LIMIT COMMAND...: runs COMMAND under `timeout` (which stops its children too), says how it
# ended, and remembers a failure.
part() {
    local name=$1 limit=$2 start=$SECONDS rc=0
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout -k 5 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "== $name: ok after $((SECONDS - start)) s"
    else
        if [ "$rc" -eq 124 ]; then echo "== $name: stopped at its limit"; fi
        echo "== $name: FAILED (exit status $rc) after $((SECONDS - start)) s"
        FAILED+=("$name")
    fi
}

main() {
    echo "== bench/gpu_check.sh $OUT $DATA on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(python3 --version 2>&1) at $(command -v python3)"
    if ! python3 -c 'import keras' >/dev/null 2>&1; then
        if [ -d "$WHEELS" ]; then
            ls -l "$WHEELS"
            part "install the wheels into $SITE" "$INSTALL_TIMEOUT" python3 -m pip install -q --no-index --no-deps \
                --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
            export PYTHONPATH="$SITE:$PYTHONPATH"  # the tests' training processes keep it
        else
            echo "== keras is not importable and $WHEELS does not exist: see this script's header"
            FAILED+=("keras")
        fi
    fi
    du -sh "$WHEELS" "$DATA" 2>/dev/null || true
    if command -v nvidia-smi >/dev/null; then
        timeout 10 nvidia-smi -L || FAILED+=("nvidia-smi")
    else
        echo "== no nvidia-smi here"
    fi
    part "bench.gpu_check" "$CHECK_TIMEOUT" python3 -m bench.gpu_check "$OUT" --data-dir "$DATA" --epochs "$EPOCHS" \
        --steps "$STEPS" --val-split "$VAL_SPLIT" ${BATCH:+--batch-size "$BATCH"}
    part "pytest -m gpu" "$TESTS_TIMEOUT" bash -c 'set -o pipefail; python3 -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_backends.py 2>&1 | tee "$1/pytest.txt"' pytest "$OUT"
    if [ ${#FAILED[@]} -eq 0 ]; then
        echo "== all parts ok after $SECONDS s"
    else
        echo "== failed: ${FAILED[*]} (after $SECONDS s)"
        return 1
    fi
}

main 2>&1 | tee "$OUT/gpu_check.log"
