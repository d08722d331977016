#!/usr/bin/env bash
# CPU forward-pass benchmark: prefill and decode speed of `lacuna generate` on
# a fixed 512-token prompt (bench/prompt_512.txt), greedy, EOS ignored.
# Builds nothing: point it at a built tree.
#
#   bench/cpu_forward.sh [BUILD_DIR] [MODEL.gguf]
#     BUILD_DIR  directory holding the lacuna binary (default: build, then .)
#     MODEL      default: $LACUNA_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf
#   env: RUNS (3), N_GEN decode tokens (128), OMP_NUM_THREADS (2), OMP_WAIT_POLICY (libgomp's default)
# Prints one line per run and a final median line:
#   cpu_forward: model=... prompt=512 prefill_tok_s=... decode_tok_s=... (median of 3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bdir=${1:-}
if [ -z "$bdir" ]; then
  if [ -x "$top/build/lacuna" ]; then bdir=$top/build; else bdir=.; fi
fi
lacuna=$bdir/lacuna
[ -x "$lacuna" ] || { echo "cpu_forward: no lacuna binary in $bdir (build first)" >&2; exit 2; }
model=${2:-${LACUNA_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
[ -f "$model" ] || { echo "cpu_forward: model not found: $model" >&2; exit 2; }
runs=${RUNS:-3}
n_gen=${N_GEN:-128}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

pre=() dec=()
n_prompt=0
for i in $(seq 1 "$runs"); do
  line=$("$lacuna" generate -m "$model" -f "$here/prompt_512.txt" -n "$n_gen" --temp 0 --ignore-eos 2>&1 >/dev/null |
         grep '^prefill:') || { echo "cpu_forward: run $i failed" >&2; exit 1; }
  echo "run $i: $line"
  n_prompt=$(sed -E 's/^prefill: ([0-9]+) tokens.*/\1/' <<<"$line")
  pre+=("$(sed -E 's/^prefill: [^(]*\(([0-9.]+) tok\/s\).*/\1/' <<<"$line")")
  dec+=("$(sed -E 's/.*decode: [^(]*\(([0-9.]+) tok\/s\).*/\1/' <<<"$line")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "cpu_forward: model=$(basename "$model") prompt=$n_prompt decode=$n_gen threads=$OMP_NUM_THREADS wait=${OMP_WAIT_POLICY:-default}" \
     "prefill_tok_s=$(median "${pre[@]}") decode_tok_s=$(median "${dec[@]}") (median of $runs)"
