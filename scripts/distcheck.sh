#!/usr/bin/env bash
# `make distcheck` from a configured build directory: the release tarball
# unpacks read-only, configures, builds, passes `make check` (unit, fuzz
# replay and integration tests) out of tree, installs and uninstalls
# cleanly. The real models' tests run when models/ holds them (the tarball
# has no model; LACUNA_MODEL and LACUNA_GEMMA_MODEL point at this tree's),
# else they report SKIP.
# test.sh runs it last (3 minutes measured on the two-core development VM).
# Usage: scripts/distcheck.sh [BUILD_DIR] (default build/, configured by
# scripts/build.sh when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
bdir=${1:-build}
[ -f "$bdir/Makefile" ] || LACUNA_BUILD_DIR=$bdir ./scripts/build.sh
model=${LACUNA_MODEL:-$src/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$model" ]; then export LACUNA_MODEL=$model; else unset LACUNA_MODEL; fi
gemma=${LACUNA_GEMMA_MODEL:-$src/models/gemma-3-270m-q4_k_m.gguf}
if [ -f "$gemma" ]; then export LACUNA_GEMMA_MODEL=$gemma; else unset LACUNA_GEMMA_MODEL; fi
make -C "$bdir" -j"$(nproc)" distcheck
