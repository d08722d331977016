#!/usr/bin/env bash
# Everything on a fresh Debian 12 machine: dependencies, the verified default
# model, the build, then the whole test suite (make check).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install_deps.sh
./scripts/fetch_model.sh
./scripts/build.sh ${LACUNA_CONFIGURE_ARGS:-}
echo "==> running the test suite"
make -j"$(nproc)" check || { cat tests/*.log tests/integration/*.log 2>/dev/null | tail -200; exit 1; }
