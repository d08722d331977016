#!/bin/sh
# One ~32K-token prompt served end to end by lacunad on the CPU with Gemma 3
# 270M (scripts/fetch_model.sh gemma3-270m): HTTP, tokenizer, scheduler,
# paged KV, the forward pass with its sliding-window layers, dense prefill
# (sparse_attention.prefill "dense": the server's "auto" would go sparse
# above 16K). The prompt is a list of numbered facts about towns ending with
# a question about the first one (~32K tokens back, beyond every sliding
# window: only the 3 global layers can carry it). Prints a markdown table row:
# prompt tokens, time to the response, prefill rate, the answer and whether it
# names the right trade.
#   bench/gemma_32k.sh [BUILD_DIR] [MODEL] [N_FACTS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-.}
model=${2:-$here/../models/gemma-3-270m-q4_k_m.gguf}
nfacts=${3:-915}
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/lacuna.conf" <<EOF
[server]
max_body_bytes = 16777216
[engine]
kv_blocks = 2200
max_batch_tokens = 2048
prefill_chunk = 2048
EOF
"$build/lacunad" --config "$tmp/lacuna.conf" --model "$model" --host 127.0.0.1 --port "$port" >"$tmp/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    i=$((i + 1))
    [ $i -lt 600 ] || { cat "$tmp/log" >&2; exit 1; }
    kill -0 $pid 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
    sleep 0.1
done
echo "machine: $(nproc) CPUs ($(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed "s/^ //")), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$port" "$nfacts" <<'PY'
import json, sys, time, urllib.request
port, n = int(sys.argv[1]), int(sys.argv[2])
towns = ["Arden", "Brill", "Caddow", "Dunmere", "Elsby", "Farrow", "Galt", "Hessel", "Ilkton", "Jarrow",
         "Kelso", "Lyme", "Morden", "Nettle", "Orford", "Penrith", "Quarley", "Rydal", "Selby", "Tarn"]
trades = ["salt", "wool", "copper", "barley", "glass", "timber", "cheese", "rope", "tin", "honey"]
facts = []
for i in range(n):
    t = towns[i % len(towns)] + ("" if i < len(towns) else f" {i // len(towns) + 1}")
    facts.append(f"Fact {i + 1}: the town of {t} trades mostly in {trades[(i * 7) % len(trades)]}, "
                 f"has {100 + (i * 37) % 900} houses and a bridge built in {1500 + (i * 53) % 400}.")
prompt = ("Here is a list of facts. " + " ".join(facts) +
          " Question: what does the town of Arden trade in? Answer: Arden trades in")
body = {"model": "gemma-3-270m-q4_k_m", "prompt": prompt, "max_tokens": 8, "temperature": 0,
        "sparse_attention": {"prefill": "dense", "decode": "dense"}}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
t0 = time.time()
r = json.load(urllib.request.urlopen(req, timeout=3600))
dt = time.time() - t0
u, text = r["usage"], r["choices"][0]["text"]
print("| prompt tokens | time (s) | prompt tokens/s | answer | right |")
print("|---:|---:|---:|---|---|")
print(f"| {u['prompt_tokens']} | {dt:.0f} | {u['prompt_tokens'] / dt:.0f} | {text.strip()!r} | "
      f"{'yes' if text.strip().startswith('salt') else 'no'} |")
PY
