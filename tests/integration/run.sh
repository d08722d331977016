#!/bin/sh
# make check entry for the lacunad integration tests (pytest). Skips (77)
# when pytest, requests or openai is missing; scripts/install_deps.sh
# installs them (pip: pytest openai requests jsonschema).
PY=${PYTHON:-python3}
for m in pytest requests openai jsonschema; do
  if ! $PY -c "import $m" 2>/dev/null; then
    echo "SKIP: python module '$m' missing (pip install pytest openai requests jsonschema)"
    # test.sh installs them and sets LACUNA_REQUIRE_MODEL=1: there a skip would hide a broken set-up
    [ "${LACUNA_REQUIRE_MODEL:-0}" = 1 ] && exit 1
    exit 77
  fi
done
src=${LACUNA_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
exec $PY -m pytest -q -p no:cacheprovider "$src/tests/integration" "$@"
