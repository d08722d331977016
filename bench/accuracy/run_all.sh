#!/bin/sh
# Everything behind docs/benchmarks.md "Sparse attention (CPU)", in order:
# the 8K prefill timing first (alone on the machine), then attn-eval, then
# the retrieval tasks. Results land in bench/accuracy/results/.
#   bench/accuracy/run_all.sh BUILD_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$1
out=$here/results
mkdir -p "$out"
model=$here/../../models/SmolLM2-135M-Instruct.Q4_1.gguf
"$here/../prefill_8k.sh" "$build" "$model" >"$out/prefill_8k.md"
python3 "$here/corpus.py" -o "$out/corpus.txt"
"$build/lacuna" attn-eval -m "$model" -f "$out/corpus.txt" -n 2048,4096 --markdown --csv "$out/attn_eval_2k4k.csv" >"$out/attn_eval_2k4k.md"
"$build/lacuna" attn-eval -m "$model" -f "$out/corpus.txt" -n 8000 --layers 4,12,20,29 --markdown --csv "$out/attn_eval_8k.csv" >"$out/attn_eval_8k.md"
rm -f "$out/corpus.txt"
python3 "$here/retrieval.py" --lacuna "$build/lacuna" --model "$model" --out "$out" >"$out/retrieval.md"
python3 "$here/plot.py" "$out" || echo "plot skipped" >&2
