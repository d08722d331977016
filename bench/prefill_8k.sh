#!/bin/sh
# End-to-end CPU prefill of one ~8K-token prompt through the engine (lacuna
# complete: scheduler, paged KV, model forward; max_tokens 1), dense vs each
# sparse prefill method with its defaults, one after the other in the same
# run. Prints a markdown table: time to first token (= prefill), speedup vs
# dense, and the prefill density the engine reported.
#   bench/prefill_8k.sh [BUILD_DIR] [MODEL]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-.}
model=${2:-$here/../models/SmolLM2-135M-Instruct.Q4_1.gguf}
chunk=${CHUNK:-2048}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The start of the repository's docs and comments, cut to ~8,100 tokens as the
# model's tokenizer counts them (characters per token vary with the text).
python3 "$here/accuracy/corpus.py" | python3 -c '
import json, subprocess, sys
lacuna, model, text = sys.argv[1], sys.argv[2], sys.stdin.read()
def n_tok(n):
    return len(subprocess.run([lacuna, "tokenize", "-m", model, "--ids-only"], input=text[:n],
                              capture_output=True, text=True, check=True).stdout.split())
lo, hi = 0, min(len(text), 40000)   # the longest prefix of at most 8,100 tokens, to 100 characters
while hi - lo > 100:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if n_tok(mid) <= 8100 else (lo, mid)
print(json.dumps({"id": "8k", "prompt": text[:lo], "max_tokens": 1}))' "$build/lacuna" "$model" >"$tmp/p.jsonl"
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
