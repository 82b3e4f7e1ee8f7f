#!/usr/bin/env bash
# The GPU check of issues 1/4 and 2/4 as one prepared run (a lent GPU machine has no internet).
#
#   bash benchmarks/gpu_device_run.sh prepare          # here, with internet: wheels + tokenizers (git-ignored)
#   bash benchmarks/gpu_device_run.sh run [SECTIONS]   # on the GPU machine, carrying .whl and .bench_assets
#
# `run` installs the wheels the GPU machine lacks (sentence-transformers' trainer needs `datasets`) into
# /tmp/site, runs benchmarks/gpu.py for SECTIONS (default: the compiled embedder and cross-encoder runs, side
# by side with sentence-transformers), keeping the other sections of benchmarks/results/gpu.json, then the GPU
# tests (at most TEST_SECONDS). Results and logs land in $OUT when that is set, else in benchmarks/results/.
# RESULTS (another results file) and BENCH_FLAGS (e.g. "--tiny --steps 6 --warmup 2") check the script on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
shift || true
PY="${PYTHON:-python}"

if [ "$mode" = prepare ]; then
  PY="${PYTHON:-.venv/bin/python}"
  mkdir -p .whl
  # pure-Python wheels for the GPU machine's Python (3.12 there); --no-deps: it has the compiled ones
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    "datasets>=4,<6" dill "multiprocess>=0.70" fsspec
  "$PY" benchmarks/gpu.py --prepare_assets --assets .bench_assets
  echo "prepared: .whl/ $(ls .whl | wc -l) wheels, .bench_assets/ tokenizers; carry both to the GPU machine"
  exit 0
fi

if ! "$PY" -c "import datasets" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(embed ce embed_compile ce_compile)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# the benchmark first, its results written after every section straight where they come back from ($OUT),
# so a run cut short by the device's time limit still returns what it measured; the GPU tests after it
results="${RESULTS:-${OUT:+$OUT/gpu.json}}"
results="${results:-benchmarks/results/gpu.json}"
logs="${OUT:-$(dirname "$results")}"
# shellcheck disable=SC2086
"$PY" benchmarks/gpu.py --assets .bench_assets --only "${sections[@]}" --update benchmarks/results/gpu.json \
  --out "$results" ${BENCH_FLAGS:-} 2>&1 | tee "$logs/bench.log" | grep -v "^ *warnings.warn\|Warning:" | tail -60 || echo "benchmark: non-zero exit (see bench.log)"
if [ "${TEST_SECONDS:-240}" -gt 0 ]; then  # TEST_SECONDS=0: benchmark only
  timeout "${TEST_SECONDS:-240}" "$PY" -m pytest -q -m gpu tests/test_gpu.py > "$logs/tests.log" 2>&1 || true
  tail -15 "$logs/tests.log"
fi
