#!/usr/bin/env bash
# What to run on the GPU machine, from the repository root, in one call (< 10 min):
#   bash tools/device_run.sh [bench_cuda.py arguments...]
# Installs this checkout without network (registers the entry points), runs the
# CUDA tests (pytest-xdist workers when available: the GPU tests are bound by
# Triton compiles), then the benchmark. Everything is teed to $OUT (default ./out).
# Knobs: PYTEST_TIMEOUT (s, default 150; 0 skips pytest), BENCH_TIMEOUT (s, default 400).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/device_run.log"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-150}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-400}"
start=$(date +%s)
{
  echo "== $(date -u +%FT%TZ) device_run: $PWD"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
  nproc

  echo "== install (no network, no deps)"
  "$PY" -m pip install --no-deps --no-build-isolation --no-index -q . 2>&1 | tail -5
  "$PY" -c "import importlib.metadata as md; print('opregistry.backends entry points:', sorted(e.name for e in md.entry_points(group='opregistry.backends')))"

  if [ "$PYTEST_TIMEOUT" != 0 ]; then
    echo "== pytest tests/test_cuda.py  [$(( $(date +%s) - start ))s]"
    XDIST=""
    "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
    timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -rs $XDIST tests/test_cuda.py > "$OUT/pytest.log" 2>&1
    echo "pytest exit: $? (full log: pytest.log)"
    tail -25 "$OUT/pytest.log"
  fi

  echo "== bench  [$(( $(date +%s) - start ))s]"
  timeout "$BENCH_TIMEOUT" "$PY" tools/bench_cuda.py --out "$OUT" "$@" 2>&1
  echo "bench exit: ${PIPESTATUS[0]}  [$(( $(date +%s) - start ))s total]"
} 2>&1 | tee "$LOG"
