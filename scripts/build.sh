#!/usr/bin/env bash
# Configures (once) and builds Lacuna out of tree in $LACUNA_BUILD_DIR
# (default: build/). Arguments go to ./configure; it is re-run when they change.
# The binaries end up in the build directory (build/lacunad, build/lacuna).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
bdir=${LACUNA_BUILD_DIR:-build}
args="$*"
if [ ! -x configure ] || [ configure.ac -nt configure ]; then
  autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
fi
mkdir -p "$bdir"
cd "$bdir"
if [ ! -f Makefile ] || [ "$(cat .configure-args 2>/dev/null)" != "$args" ]; then
  echo "==> configuring $bdir ${args:-(defaults)}"
  # shellcheck disable=SC2086
  "$src/configure" -q $args
  echo "$args" > .configure-args
fi
echo "==> building in $bdir"
make -j"$(nproc)" -s
