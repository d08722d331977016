#!/usr/bin/env bash
# Configures (once) and builds Lacuna in the source tree. Extra arguments go to
# ./configure on the first run or when they change.
set -euo pipefail
cd "$(dirname "$0")/.."
args="$*"
if [ ! -x configure ] || [ configure.ac -nt configure ]; then
  autoreconf -fi >/dev/null
fi
if [ ! -f Makefile ] || [ "$(cat .configure-args 2>/dev/null)" != "$args" ]; then
  echo "==> configuring ${args:-(defaults)}"
  # shellcheck disable=SC2086
  ./configure -q $args
  echo "$args" > .configure-args
fi
echo "==> building"
make -j"$(nproc)" -s
