#!/usr/bin/env bash
# HTTP load against lacunad and llama.cpp's llama-server on the same GGUF and
# thread count, in one run: 1, 4, 16 and 64 concurrent streaming chat
# requests (~200-token prompts, distinct per request, the same set for both;
# 128 generated tokens with ignore_eos; temperature 0). One markdown table
# (aggregate tok/s, per-stream decode tok/s, TTFT p50 / p99, wall time) and
# a JSON file; see bench/load_client.py for what is measured and how.
# Loopback only; not part of make check.
#
#   bench/vs_llamacpp_load.sh [--build-peer] [BUILD_DIR] [MODEL.gguf]
#     --build-peer  fetch llama.cpp's source from the llama-cpp-python sdist
#                   on PyPI (pip download; the only network use) and build
#                   llama-server into peers/llama.cpp/build (bench/llamacpp_peer.sh)
#     BUILD_DIR     directory holding our lacunad (default: build, then .)
#     MODEL         default: models/SmolLM2-135M-Instruct.Q4_1.gguf
#   env: THREADS (2), CONCURRENCY (1,4,16,64), SERVERS (lacunad,llama-server),
#        MIN_REQUESTS (8: requests per level at least), OUT (bench/out/load-DATE),
#        LLAMA_CPP_PY_VERSION (sdist version, default 0.3.36),
#        LLAMA_SERVER (path to a llama-server binary), LACUNAD_BASE (a second
#        lacunad for A/B in the same run: add lacunad-base to SERVERS), LOAD_ARGS (more
#        load_client.py arguments, e.g. "--lacunad-set engine.target_step_ms=100", or
#        "--level-timeout 300" to stop each level after 300 s: see load_client.py)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
build_peer=0
if [ "${1:-}" = "--build-peer" ]; then build_peer=1; shift; fi
bdir=${1:-}
if [ -z "$bdir" ]; then
  if [ -x "$top/build/lacunad" ]; then bdir=$top/build; else bdir=.; fi
fi
model=${2:-${LACUNA_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
ver=${LLAMA_CPP_PY_VERSION:-0.3.36}

if [ "$build_peer" = 1 ]; then
  . "$here/llamacpp_peer.sh"
  llamacpp_build_peer "$top" "$ver" llama-server
fi
llama_server=${LLAMA_SERVER:-$top/peers/llama.cpp/build/bin/llama-server}
servers=${SERVERS:-lacunad,llama-server}
case ",$servers," in *,llama-server,*)
  [ -x "$llama_server" ] || { echo "vs_llamacpp_load: no llama-server at $llama_server (run with --build-peer)" >&2; exit 2; } ;;
esac
[ -x "$bdir/lacunad" ] || { echo "vs_llamacpp_load: no lacunad in $bdir" >&2; exit 2; }
[ -f "$model" ] || { echo "vs_llamacpp_load: model not found: $model" >&2; exit 2; }

out=${OUT:-$top/bench/out/load-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
# shellcheck disable=SC2086 # LOAD_ARGS is a list of words
python3 "$here/load_client.py" --lacunad "$bdir/lacunad" --llama-server "$llama_server" --model "$model" \
  --threads "${THREADS:-2}" --concurrency "${CONCURRENCY:-1,4,16,64}" --servers "$servers" \
  --min-requests "${MIN_REQUESTS:-8}" --label "llama.cpp from llama-cpp-python $ver" \
  ${LACUNAD_BASE:+--lacunad-base "$LACUNAD_BASE"} \
  --workdir "$out" --json "$out/load.json" --md "$out/load.md" ${LOAD_ARGS:-}
echo "(JSON, table and server logs in $out)" >&2
