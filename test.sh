#!/usr/bin/env bash
# Everything on a fresh Debian 12 machine: dependencies, the verified models
# (the default SmolLM2 and Gemma 3 270M), the build, then the whole test
# suite (make check). A second build with AddressSanitizer +
# UndefinedBehaviorSanitizer runs the suite again unless LACUNA_SANITIZE=0;
# then the fuzz targets run for LACUNA_FUZZ_SECONDS each (default 60; 0
# skips), a subset of the unit tests runs under valgrind (LACUNA_VALGRIND=0
# skips) and `make distcheck` proves the release tarball complete
# (scripts/distcheck.sh, about 3 minutes; LACUNA_DISTCHECK=0 skips). About
# 25 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install_deps.sh
./scripts/fetch_model.sh
./scripts/fetch_model.sh gemma3-270m
./scripts/check_format.sh
export LACUNA_REQUIRE_MODEL=1

run_suite() { # build-dir, configure args...
  local bdir=$1; shift
  LACUNA_BUILD_DIR=$bdir ./scripts/build.sh "$@"
  echo "==> running the test suite in $bdir"
  if ! make -C "$bdir" -j"$(nproc)" check; then
    find "$bdir/tests" -name '*.log' -newer "$bdir/Makefile" -exec tail -n 60 {} + 2>/dev/null | tail -n 300
    return 1
  fi
}

run_suite build ${LACUNA_CONFIGURE_ARGS:-}
if [ "${LACUNA_SANITIZE:-1}" != 0 ]; then
  run_suite build-asan --enable-sanitizers --without-cuda
fi
if [ "${LACUNA_FUZZ_SECONDS:-60}" != 0 ]; then
  echo "==> fuzzing each target for ${LACUNA_FUZZ_SECONDS:-60}s"
  ./scripts/fuzz.sh
fi
if [ "${LACUNA_VALGRIND:-1}" != 0 ] && command -v valgrind >/dev/null; then
  echo "==> unit tests under valgrind"
  ./scripts/valgrind.sh build
fi
if [ "${LACUNA_DISTCHECK:-1}" != 0 ]; then
  echo "==> make distcheck"
  ./scripts/distcheck.sh build
fi
