#!/usr/bin/env bash
# Constrained decoding (response_format / forced tool calls): what the token
# mask costs and what it does to throughput, for docs/benchmarks.md.
#   1. mask cost per token and per step at 1 and 64 sequences per step, on
#      the model's vocabulary and on a synthetic 262,144-token one (lacuna
#      bench-grammar), next to the decode step itself (lacuna bench-engine);
#   2. decode tokens/s through lacunad with and without a JSON schema at 1
#      and 16 concurrent requests (bench/structured_client.py), A/B runs
#      interleaved (the order alternates every round) because the machine
#      is shared and noisy.
#   bench/structured.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build}
rounds=${2:-3}
model=${LACUNA_MODEL:-$src/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -x "$build/lacuna" ] && [ -x "$build/lacunad" ] || { echo "build first (scripts/build.sh)" >&2; exit 1; }
[ -r "$model" ] || { echo "no model at $model (scripts/fetch_model.sh, or set LACUNA_MODEL)" >&2; exit 1; }
echo "Structured outputs: $(basename "$model"), $(nproc --all) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d)"
echo
echo "## mask cost ($(basename "$model") vocabulary)"
"$build/lacuna" bench-grammar -m "$model" -b 1,64 -r 2 --markdown
echo
echo "## decode step (engine alone)"
"$build/lacuna" bench-engine -m "$model" -c 1,64 -n 32 --markdown
echo
# Gemma 3's 262K vocabulary, until that model is in the tree: a random-weight
# model of Gemma 3 270M's shape with a padded synthetic vocabulary (mkmodel),
# and bench-grammar's own 262K vocabulary with word-sized tokens.
g262=$(mktemp --suffix=.gguf)
"$build/lacuna" mkmodel -o "$g262" --vocab-size 262144 --layers 18 --embd 640 --heads 4 --kv-heads 1 --ff 2048 \
  --type q4_0 --ctx 4096
echo "## mask cost (mkmodel, 262,144 tokens, Gemma 3 270M's shape)"
"$build/lacuna" bench-grammar -m "$g262" -b 1,64 -r 2 --markdown
echo
echo "## decode step (the same model)"
"$build/lacuna" bench-engine -m "$g262" -c 1,64 -n 16 --markdown
rm -f "$g262"
echo
echo "## mask cost (bench-grammar's synthetic 262,144-token vocabulary, word-sized tokens)"
"$build/lacuna" bench-grammar --synthetic 262144 -b 1,64 -r 2 --markdown
echo
echo "## through lacunad, with and without a schema"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
printf '[server]\nlog_level = warn\n[engine]\nkv_blocks = 4096\nmax_running = 64\n' > "$work/lacuna.conf"
"$build/lacunad" --config "$work/lacuna.conf" --model "$model" --host 127.0.0.1 --port "$port" >"$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
python3 "$src/bench/structured_client.py" "http://127.0.0.1:$port" --rounds "$rounds" --concurrency 1,16
