#!/usr/bin/env bash
# Side-by-side CPU benchmark against llama.cpp on the same GGUF and thread
# count: llama.cpp's llama-bench (pp512; tg128 at depth 512) and our bench/cpu_forward.sh
# (512-token prompt, 128 decode tokens), in one run, as one markdown table.
# Not part of make check.
#
#   bench/vs_llamacpp.sh [--build-peer] [BUILD_DIR] [MODEL.gguf]
#     --build-peer  fetch llama.cpp's source from the llama-cpp-python sdist
#                   on PyPI (pip download; the only network use) and build
#                   llama-bench into peers/llama.cpp/build (CPU, this CPU's
#                   ISA; bench/llamacpp_peer.sh)
#     BUILD_DIR     directory holding our lacuna binary (default: build, then .)
#     MODEL         default: models/SmolLM2-135M-Instruct.Q4_1.gguf
#   env: THREADS (2), RUNS (3, both sides), LLAMA_CPP_PY_VERSION (sdist
#        version, default 0.3.36), LLAMA_BENCH (path to a llama-bench binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
build_peer=0
if [ "${1:-}" = "--build-peer" ]; then build_peer=1; shift; fi
bdir=${1:-}
if [ -z "$bdir" ]; then
  if [ -x "$top/build/lacuna" ]; then bdir=$top/build; else bdir=.; fi
fi
model=${2:-${LACUNA_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
threads=${THREADS:-2}
runs=${RUNS:-3}
peer=$top/peers/llama.cpp
ver=${LLAMA_CPP_PY_VERSION:-0.3.36}

if [ "$build_peer" = 1 ]; then
  . "$here/llamacpp_peer.sh"
  llamacpp_build_peer "$top" "$ver" llama-bench
fi
llama_bench=${LLAMA_BENCH:-$peer/build/bin/llama-bench}
[ -x "$llama_bench" ] || { echo "vs_llamacpp: no llama-bench at $llama_bench (run with --build-peer)" >&2; exit 2; }
[ -f "$model" ] || { echo "vs_llamacpp: model not found: $model" >&2; exit 2; }

# llama.cpp: one JSON record per test, avg_ts is tokens/s (mean of -r runs).
# Like for like with cpu_forward.sh: prefill of 512 tokens from an empty
# context, and decode of 128 tokens after a 512-token prompt (-d 512; a plain
# tg128 decodes from an empty context, which skips most attention work).
lj=$( { "$llama_bench" -m "$model" -t "$threads" -p 512 -n 0 -r "$runs" -o jsonl &&
        "$llama_bench" -m "$model" -t "$threads" -p 0 -n 128 -d 512 -r "$runs" -o jsonl; } 2>/dev/null)
field() { # n_prompt n_gen key
  python3 -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r["n_prompt"] == int(sys.argv[1]) and r["n_gen"] == int(sys.argv[2]):
        print(r.get(sys.argv[3], "?")); break' "$@" <<<"$lj"
}
l_pp=$(field 512 0 avg_ts) l_psd=$(field 512 0 stddev_ts)
l_tg=$(field 0 128 avg_ts) l_sd=$(field 0 128 stddev_ts)
l_commit=$(field 512 0 build_commit)

# ours: median of RUNS generate runs (prefill 512, decode 128)
o=$(OMP_NUM_THREADS=$threads RUNS=$runs N_GEN=128 "$here/cpu_forward.sh" "$bdir" "$model" | tail -1)
o_pp=$(sed -E 's/.*prefill_tok_s=([0-9.]+).*/\1/' <<<"$o")
o_tg=$(sed -E 's/.*decode_tok_s=([0-9.]+).*/\1/' <<<"$o")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "model $(basename "$model"), $threads threads, $(nproc --all) CPUs; llama.cpp $l_commit (llama-cpp-python $ver sdist)"
echo
echo "| test | llama.cpp tok/s | lacuna tok/s | lacuna / llama.cpp |"
echo "|---|---:|---:|---:|"
echo "| pp512 (prefill) | $(printf %.1f "$l_pp") ± $(printf %.1f "$l_psd") | $o_pp | $(ratio "$o_pp" "$l_pp") |"
echo "| tg128 after 512 (decode) | $(printf %.1f "$l_tg") ± $(printf %.1f "$l_sd") | $o_tg | $(ratio "$o_tg" "$l_tg") |"
echo
echo "llama.cpp: mean ± sd of $runs runs (llama-bench); lacuna: median of $runs runs (bench/cpu_forward.sh)"
