#!/usr/bin/env bash
# Aggregate decode throughput of the engine for 1, 4, 16 and 64 concurrent
# requests (greedy, ignore_eos, fixed prompts) on SmolLM2; prints a markdown
# table for docs/benchmarks.md.
#   bench/engine_throughput.sh [BUILD_DIR] [-n TOKENS]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build}
shift || true
model=${LACUNA_MODEL:-$src/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -x "$build/lacuna" ] || { echo "no $build/lacuna: build first (scripts/build.sh)" >&2; exit 1; }
[ -r "$model" ] || { echo "no model at $model (scripts/fetch_model.sh, or set LACUNA_MODEL)" >&2; exit 1; }
echo "Engine throughput: $(basename "$model"), $(nproc --all) CPUs, OMP_NUM_THREADS=${OMP_NUM_THREADS:-default}, OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-default}, $(date -u +%Y-%m-%d)"
echo
exec "$build/lacuna" bench-engine -m "$model" -c 1,4,16,64 -n 64 --markdown "$@"
