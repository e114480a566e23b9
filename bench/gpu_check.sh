#!/usr/bin/env bash
# The GPU checks of the "Speed" issue in one run of at most 6 minutes, for a machine with one NVIDIA
# GPU, CuPy and PyTorch (CUDA) but no DVC and no package index. From the repository root:
#
#     OUT=/tmp/gpu bash bench/gpu_check.sh   # MNIST from $MNIST_MIRROR, else ../shared/mnist, else data/raw
#
# 1. the backend-parametrised unit tests (gradient checks, PyTorch oracle, 20-step run, fit) on CuPy;
# 2. bench/compare.py --backend cupy for the default cnn (nnlib on CuPy against PyTorch on CUDA);
# 3. fetch, prepare, train and evaluate by hand (python stages/*.py) with train.backend and
#    evaluate.backend set to cupy, the default preset, in a scratch copy of the repository.
# Everything it prints is also written under $OUT (default /tmp/gpu_check); metrics and timings of
# step 3 are copied there. Each step has its own time limit (330 s in all), so one slow step cannot
# eat the others. SMOKE=1 rehearses the script on a CPU-only machine: backend numpy, and step 3 on
# 3,000 images for one epoch.
set -uo pipefail
BACKEND=cupy
[ "${SMOKE:-0}" = 1 ] && BACKEND=numpy
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-/tmp/gpu_check}" && cd "${OUT:-/tmp/gpu_check}" && pwd)"  # absolute: step 3 runs elsewhere
cd "$ROOT" || exit 1
MIRROR="${MNIST_MIRROR:-$ROOT/../shared/mnist}"
[ -d "$MIRROR" ] || MIRROR="$ROOT/data/raw"  # the four IDX files (.gz or not), e.g. carried to the device
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # nnlib from this checkout, without pip install
export PYTHONDONTWRITEBYTECODE=1

log() { echo "== $(date +%H:%M:%S) $*" | tee -a "$OUT/summary.txt"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
python - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import importlib
for name in ("numpy", "cupy", "torch", "scipy", "yaml", "tqdm", "matplotlib", "threadpoolctl", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError as err:
        print(f"{name}: MISSING ({err})")
EOF

log "1/3 unit tests on every backend (-m 'not slow')"
timeout -k 5 70 python -m pytest -v -m "not slow" -p no:cacheprovider \
    tests/test_backends.py tests/test_layers.py tests/test_losses.py tests/test_vs_torch.py \
    > "$OUT/unit-tests.txt" 2>&1
log "unit tests exit $?: $(tail -1 "$OUT/unit-tests.txt"); passed on cupy: $(grep -c '\[cupy.*PASSED\|-cupy\].*PASSED' "$OUT/unit-tests.txt")"

log "2/3 compare.py --backend $BACKEND --configs cnn"
timeout -k 5 50 python bench/compare.py --backend "$BACKEND" --configs cnn --rounds 5 --breakdown cnn --no-stage --no-rss \
    --json "$OUT/compare.json" > "$OUT/compare.txt" 2>&1
log "compare exit $?"
grep -E "^(GPU|sgemm|cnn:)" "$OUT/compare.txt" | tee -a "$OUT/summary.txt"

log "3/3 stages by hand, train.backend and evaluate.backend $BACKEND, default preset"
cp -r "$ROOT/stages" "$ROOT/nnlib" "$ROOT/params.yaml" "$ROOT/dvc.yaml" "$WORK/"
mkdir -p "$WORK/models/init" "$WORK/metrics" "$WORK/data"
cd "$WORK" || exit 1
export PYTHONPATH="$WORK"
BACKEND="$BACKEND" SMOKE="${SMOKE:-0}" python - <<'EOF'
import os, yaml
params = yaml.safe_load(open("params.yaml"))
params["train"]["backend"] = params["evaluate"]["backend"] = os.environ["BACKEND"]
if os.environ["SMOKE"] == "1":
    params["train"]["epochs"], params["prepare"]["max_train"], params["prepare"]["augment"]["copies"] = 1, 3000, 1
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
EOF
declare -A LIMIT=([fetch]=15 [prepare]=40 [train]=130 [evaluate]=25)
for stage in fetch prepare train evaluate; do
    start=$(date +%s.%N)
    MNIST_MIRROR="$MIRROR" MNIST_FETCH_SOURCES=mirror timeout -k 5 "${LIMIT[$stage]}" python "stages/$stage.py" > "$OUT/stage-$stage.txt" 2>&1
    code=$?
    log "stage $stage exit $code in $(python -c "print(f'{$(date +%s.%N) - $start:.1f}')") s: $(tr '\r' '\n' < "$OUT/stage-$stage.txt" | grep -v '^\s*$' | tail -1)"
    [ "$code" -eq 0 ] || break
done
cp metrics/*.json metrics/train_log.tsv "$OUT/" 2>/dev/null
tr '\r' '\n' < "$OUT/stage-train.txt" | grep -E '^epoch [0-9]+/[0-9]+: train' | tee -a "$OUT/summary.txt"
log "done"
