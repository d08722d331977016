#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and
# runs each for LACUNA_FUZZ_SECONDS (default 60) on a scratch copy of its
# committed seed corpus. A crash is copied into tests/fuzz/regressions/NAME/
# (so `make check` replays it from then on) and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
secs=${LACUNA_FUZZ_SECONDS:-60}
command -v clang >/dev/null || { echo "fuzz: clang not installed; skipping"; exit 0; }
export LACUNA_MODEL=${LACUNA_MODEL:-$src/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# Any UBSan report is a crash (by default UBSan prints and carries on, and
# libFuzzer would not notice).
cflags="-g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
mkdir -p build-fuzz
cd build-fuzz
if [ ! -f Makefile ] || [ "$(cat .fuzz-cflags 2>/dev/null)" != "$cflags" ]; then
  CC=clang CFLAGS="$cflags" "$src/configure" -q --without-cuda --without-systemd --disable-openmp
  echo "$cflags" > .fuzz-cflags
fi
make -s -j"$(nproc)" liblacuna.a
make -s fuzz
status=0
for t in tests/fuzz/fuzz_*; do
  name=${t##*/fuzz_}
  work=$(mktemp -d)
  cp -r "$src/tests/fuzz/corpus/$name/." "$work/" 2>/dev/null || true
  mkdir -p "$work/artifacts"
  echo "==> fuzzing $name for ${secs}s"
  if ! "./$t" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
       -artifact_prefix="$work/artifacts/" -print_final_stats=0 "$work" >"$work/log" 2>&1; then
    tail -40 "$work/log"
    mkdir -p "$src/tests/fuzz/regressions/$name"
    cp "$work"/artifacts/* "$src/tests/fuzz/regressions/$name/" 2>/dev/null || true
    echo "fuzz: $name crashed; input saved under tests/fuzz/regressions/$name/" >&2
    status=1
  else
    grep -E "^(#[0-9]+|Done)" "$work/log" | tail -1 || true
  fi
  rm -rf "$work"
done
exit $status
