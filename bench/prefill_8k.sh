#!/bin/sh
# End-to-end CPU prefill of one ~8K-token prompt through the engine (lacuna
# complete: scheduler, paged KV, model forward; max_tokens 1), dense vs each
# sparse prefill method with its defaults, one after the other in the same
# run. Prints a markdown table: time to first token (= prefill), speedup vs
# dense, and the prefill density the engine reported.
#   bench/prefill_8k.sh [BUILD_DIR] [MODEL]   (OMP_WAIT_POLICY=passive is set)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-.}
model=${2:-$here/../models/SmolLM2-135M-Instruct.Q4_1.gguf}
chunk=${CHUNK:-2048}
export OMP_WAIT_POLICY=passive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# 29,000 characters of the repository's docs and comments: ~8.1K tokens.
python3 "$here/accuracy/corpus.py" | python3 -c '
import json, sys
print(json.dumps({"id": "8k", "prompt": sys.stdin.read()[:29000], "max_tokens": 1}))' >"$tmp/p.jsonl"
echo "machine: $(nproc) CPUs ($(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed "s/^ //")), prefill chunk $chunk" >&2
echo "| prefill | prompt tokens | time (s) | speedup vs dense | density |"
echo "|---|---:|---:|---:|---:|"
dense=
for m in dense flexprefill anchor streaming; do
    "$build/lacuna" complete -m "$model" -i "$tmp/p.jsonl" -o "$tmp/$m.jsonl" --prefill "$m" --decode dense \
        --chunk "$chunk" --max-batch "$chunk" --no-prefix-cache 2>/dev/null
    python3 - "$tmp/$m.jsonl" "$m" "${dense:-0}" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
dense = float(sys.argv[3]) or r["ttft_s"]
print(f"| {sys.argv[2]} | {r['prompt_tokens']} | {r['ttft_s']:.1f} | {dense / r['ttft_s']:.2f}x | {r['prefill_density']:.3f} |")
PY
    [ -n "$dense" ] || dense=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["ttft_s"])' "$tmp/dense.jsonl")
done
