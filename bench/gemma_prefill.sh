#!/bin/sh
# Gemma 3 270M prefill on the CPU through lacunad, dense vs each sparse
# prefill method at its defaults, at 16K and 32K prompt tokens, in one run;
# with the KV memory each request held at its peak (lacuna:kv_cache_used_bytes,
# polled every 0.2 s). Then dense again at KEEP_LENGTHS with kv_keep_sliding
# (every layer keeps every position: the layout before layer groups), next to
# dense with windows at the same lengths, for the memory each layout costs.
# The prompt is gemma_32k.sh's list of numbered facts about towns with a
# question about one in the middle (8-16K tokens back: only the global layers
# reach it). Requests run one at a time, max_tokens 4, greedy, prefill chunks
# of 2048, prefix cache off; time = the request's time to its response
# (prefill plus 3 decode steps). A method may carry settings, e.g.
# "anchor:theta=6" or "flexprefill:gamma=0.8;tau=0.1" (sparse_attention keys).
# ROUNDS > 1 runs every method that many times, in turn (dense, the methods,
# dense, ...), so that a drift of the machine's speed touches all alike; the
# table gives each one's median time. CONTEXTS="1 2" runs the whole set
# again with each count of context-parallel ranks (parallel.context, sharding
# from 1024 tokens; on the CPU the ranks share its cores: the run shows the
# answers, the KV and what sharding costs, not a speed-up). Prints a markdown
# table.
#   bench/gemma_prefill.sh [BUILD_DIR] [MODEL]
#   LENGTHS="16384 32768" METHODS="dense flexprefill anchor streaming" KEEP_LENGTHS="4096" ROUNDS=1 CONTEXTS=1
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-.}
model=${2:-$here/../models/gemma-3-270m-q4_k_m.gguf}
lengths=${LENGTHS:-16384 32768}
methods=${METHODS:-dense flexprefill anchor streaming}
keep_lengths=${KEEP_LENGTHS-4096}
rounds=${ROUNDS:-1}
contexts=${CONTEXTS:-1}
tmp=$(mktemp -d)
pid=
trap '[ -z "$pid" ] || kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT

start() { # $1: kv_keep_sliding, $2: context-parallel ranks
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$tmp/lacuna.conf" <<EOF
[server]
max_body_bytes = 16777216
[engine]
kv_blocks = 2200
max_batch_tokens = 2048
prefill_chunk = 2048
prefix_cache = false
kv_keep_sliding = $1
[parallel]
context = $2
context_min_tokens = 1024
EOF
    "$build/lacunad" --config "$tmp/lacuna.conf" --model "$model" --host 127.0.0.1 --port "$port" >"$tmp/log" 2>&1 &
    pid=$!
    i=0
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
        i=$((i + 1))
        [ $i -lt 600 ] || { cat "$tmp/log" >&2; exit 1; }
        kill -0 $pid 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
        sleep 0.1
    done
}
stop() { kill $pid; wait $pid 2>/dev/null || true; pid=; }

run() { # $1 method, $2 target tokens, $3 label
    python3 - "$port" "$1" "$2" "$3" <<'PY'
import json, re, sys, threading, time, urllib.request
port, method, target, label = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
towns = ["Arden", "Brill", "Caddow", "Dunmere", "Elsby", "Farrow", "Galt", "Hessel", "Ilkton", "Jarrow",
         "Kelso", "Lyme", "Morden", "Nettle", "Orford", "Penrith", "Quarley", "Rydal", "Selby", "Tarn"]
trades = ["salt", "wool", "copper", "barley", "glass", "timber", "cheese", "rope", "tin", "honey"]
n = target * 915 // 32600  # ~35.6 tokens a fact
facts, names = [], []
for i in range(n):
    t = towns[i % len(towns)] + ("" if i < len(towns) else f" {i // len(towns) + 1}")
    names.append(t)
    facts.append(f"Fact {i + 1}: the town of {t} trades mostly in {trades[(i * 7) % len(trades)]}, "
                 f"has {100 + (i * 37) % 900} houses and a bridge built in {1500 + (i * 53) % 400}.")
ask = n // 2
prompt = ("Here is a list of facts. " + " ".join(facts) +
          f" Question: what does the town of {names[ask]} trade in? Answer: {names[ask]} trades in")
want = trades[(ask * 7) % len(trades)]
name, _, knobs = method.partition(":")
sparse = {"prefill": name, "decode": "dense"}
for kv in filter(None, knobs.split(";")):
    k, _, v = kv.partition("=")
    sparse[k] = float(v)
body = {"model": "gemma-3-270m-q4_k_m", "prompt": prompt, "max_tokens": 4, "temperature": 0,
        "sparse_attention": sparse}
base = f"http://127.0.0.1:{port}"
peak, done = [0.0], threading.Event()
def poll():
    while not done.is_set():
        m = re.search(r"^lacuna:kv_cache_used_bytes\{[^}]*\} (\S+)$",
                      urllib.request.urlopen(base + "/metrics").read().decode(), re.M)
        if m:
            peak[0] = max(peak[0], float(m.group(1)))
        time.sleep(0.2)
th = threading.Thread(target=poll)
th.start()
req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
t0 = time.time()
r = json.load(urllib.request.urlopen(req, timeout=7200))
dt = time.time() - t0
done.set()
th.join()
u, text = r["usage"], r["choices"][0]["text"]
sa = u.get("sparse_attention", {})
print(json.dumps({"label": label, "method": method, "tokens": u["prompt_tokens"], "time_s": dt,
                  "density": sa.get("prefill_density"), "peak_kv_mib": peak[0] / 2**20,
                  "answer": text.strip(), "right": text.strip().startswith(want)}))
PY
}

echo "machine: $(getconf _NPROCESSORS_ONLN) CPUs ($(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed "s/^ //")), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for c in $contexts; do
    layout=windows
    [ "$c" = 1 ] || layout="windows, $c ranks"
    start false "$c"
    for n in $lengths; do
        i=0
        while [ $i -lt "$rounds" ]; do
            for m in $methods; do run "$m" "$n" "$layout" >>"$tmp/rows.jsonl"; done
            i=$((i + 1))
        done
    done
    stop
done
if [ -n "$keep_lengths" ]; then
    start false 1
    for n in $keep_lengths; do
        case " $lengths " in *" $n "*) ;; *) run dense "$n" "windows" >>"$tmp/rows.jsonl" ;; esac
    done
    stop
    start true 1
    for n in $keep_lengths; do run dense "$n" "every position" >>"$tmp/rows.jsonl"; done
    stop
fi
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$tmp/rows.jsonl" <<'PY'
import json, statistics, sys
rows, groups = [json.loads(l) for l in open(sys.argv[1])], {}
for r in rows:  # one line per (length, method, layout): the median of its rounds
    groups.setdefault((r["tokens"], r["method"], r["label"]), []).append(r)
med = {k: statistics.median(x["time_s"] for x in g) for k, g in groups.items()}
dense = {(k[0], k[2]): t for k, t in med.items() if k[1] == "dense"}  # per length and layout
print("| prompt tokens | prefill | KV layout | runs | time (s) | speed-up vs dense | density | peak KV (MiB) | answer | right |")
print("|---:|---|---|---:|---:|---:|---:|---:|---|---|")
for k, g in groups.items():
    r, t, d = g[0], med[k], dense.get((k[0], k[2]))
    sp = f"{d / t:.2f}x" if d and k[2] != "every position" else ""
    dens = f"{r['density']:.3f}" if r["density"] is not None else ""
    times = "" if len(g) == 1 else " (" + ", ".join(f"{x['time_s']:.1f}" for x in g) + ")"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {len(g)} | {t:.1f}{times} | {sp} | {dens} | "
          f"{max(x['peak_kv_mib'] for x in g):.0f} | {r['answer']!r} | {'yes' if r['right'] else 'no'} |")
PY
