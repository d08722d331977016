#!/usr/bin/env bash
# Soak test of lacunad on loopback, bounded in time: a mix of streaming and
# plain clients, random disconnects, slowloris, oversized and malformed
# bodies, bursts past the queue limit; then SIGTERM under load and kill -9 +
# restart. Prints a summary table and exits nonzero on any violation (see
# bench/soak.py for the checks).
#
#   bench/soak.sh [--smollm2] [-- extra soak.py args]
# Environment: LACUNA_SOAK_SECONDS (default 120), LACUNA_BUILD_DIR (default
# build/), LACUNA_MODEL (the SmolLM2 GGUF for --smollm2).
# Without --smollm2 it uses a tiny random model written by `lacuna mkmodel`.
set -euo pipefail
cd "$(dirname "$0")/.."
bdir=${LACUNA_BUILD_DIR:-build}
secs=${LACUNA_SOAK_SECONDS:-120}
model=()
if [ "${1:-}" = --smollm2 ]; then
  model=(--model "${LACUNA_MODEL:-$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf}")
  shift
fi
[ "${1:-}" = -- ] && shift
[ -x "$bdir/lacunad" ] || { echo "soak: $bdir/lacunad not built (scripts/build.sh)" >&2; exit 2; }
mkdir -p bench/out
exec python3 bench/soak.py --lacunad "$bdir/lacunad" --lacuna "$bdir/lacuna" "${model[@]}" \
  --duration "$secs" --json bench/out/soak.json "$@"
