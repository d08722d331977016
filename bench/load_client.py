#!/usr/bin/env python3
"""HTTP load benchmark: the same streaming chat load against lacunad and
llama.cpp's llama-server, on the same GGUF, in one run (bench/vs_llamacpp_load.sh
builds llama-server and calls this).

For each concurrency C (default 1, 4, 16, 64) and each server, the server is
started fresh on a free 127.0.0.1 port (llama-server with -np C slots and
-c C * ctx_per_slot; lacunad with its defaults plus [model] threads), warmed
up with one short request, then C client threads each send ROUNDS
requests back to back (a closed loop; with one round every request arrives
at once). ROUNDS is ceil(min_requests / C), so C = 1 and 4 still give
several samples. Every request: /v1/chat/completions, stream true,
temperature 0, max_tokens 128 with ignore_eos (both servers honour it, so
each request generates exactly 128 tokens; checked against the reported
usage), and a ~200-token prompt that is distinct per request (a request
number and deterministic pseudo-random words), so prefix caching cannot
trivialise the prefill; both servers get the same prompt set.

Measured per server and concurrency:
  - aggregate tok/s: generated tokens of the level / its wall time (first
    request sent to last stream closed);
  - per-stream decode tok/s: (tokens - 1) / (last token - first token) of
    each request, median over requests;
  - TTFT: request sent to first non-empty content delta, p50 and p99
    (linear interpolation between order statistics);
  - wall time of the level.
With --level-timeout S a level stops S seconds after its first request:
streams still open are closed (counted as "capped", their tokens so far
counted by content chunks, about one token each), requests not yet sent are
not sent, and the aggregate is the tokens received in the window / the
window. A capped request that had no first token by then makes the TTFT
percentiles lower bounds (reported as no_first).

Only the standard library (http.client and threads). Writes JSON (--json)
and a markdown table (stdout, and --md). Usage:
  load_client.py --lacunad build/lacunad --llama-server peers/llama.cpp/build/bin/llama-server
                 --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]
                 [--concurrency 1,4,16,64] [--servers lacunad,llama-server]
"""
import argparse
import http.client
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"

# Common English words: about 1.2-1.3 SmolLM2 tokens each.
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more about can out "
         "other into could time some these two may then do first any my now such like our over man me even "
         "most made after also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see men work "
         "long get here between both life being under never day same another know while last might us great "
         "old year off come since against go came right used take three garden river window letter engine "
         "market silver morning winter summer island valley forest station teacher doctor kitchen").split()


def make_prompt(idx, n_words, seed):
    rng = random.Random(seed * 1000003 + idx)
    words = " ".join(rng.choice(WORDS) for _ in range(n_words))
    return f"Request {idx}. Continue this text: {words}"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


# ---- servers -------------------------------------------------------------------------------
class Server:
    def __init__(self, kind, argv, port, log_path):
        self.kind = kind
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout=300.0):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode}; see {self.log_path}")
            try:
                c = http.client.HTTPConnection(HOST, self.port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not healthy after {timeout}s; see {self.log_path}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_server(kind, args, conc, workdir):
    port = free_port()
    log = os.path.join(workdir, f"{kind}-c{conc}.log")
    if kind in ("lacunad", "lacunad-base"):
        argv = [args.lacunad if kind == "lacunad" else args.lacunad_base, "--model", args.model, "--host", HOST, "--port", str(port), "--served-name", "bench",
                "--set", f"model.threads={args.threads}"]
        for s in args.lacunad_set:
            argv += ["--set", s]
    else:
        argv = [args.llama_server, "-m", args.model, "--host", HOST, "--port", str(port), "--alias", "bench",
                "-t", str(args.threads), "-tb", str(args.threads), "-np", str(conc),
                "-c", str(conc * args.ctx_per_slot)] + args.llama_arg
    env_note = " ".join(argv)
    with open(log, "a") as f:
        f.write(f"# {env_note}\n")
    srv = Server(kind, argv, port, log)
    srv.argv = argv
    srv.wait_healthy()
    return srv


# ---- one request -----------------------------------------------------------------------------
def one_request(port, prompt, max_tokens, timeout=1800, deadline=None):
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": max_tokens,
            "ignore_eos": True}
    data = json.dumps(body).encode()
    res = {"ok": False, "ttft": None, "t_first": None, "t_last": None, "chunks": 0, "usage": None, "err": None,
           "capped": False}
    if deadline is not None:
        timeout = max(0.5, min(timeout, deadline - time.perf_counter()))
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    t0 = time.perf_counter()
    res["t_send"] = t0
    try:
        c.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            res["err"] = f"HTTP {r.status}: {r.read()[:200]!r}"
            return res
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                res["capped"] = True
                break
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                res["ok"] = True
                break
            ev = json.loads(payload)
            if ev.get("usage"):
                res["usage"] = ev["usage"]
            for ch in ev.get("choices") or []:
                content = (ch.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    if res["t_first"] is None:
                        res["t_first"] = now
                        res["ttft"] = now - t0
                    res["t_last"] = now
                    res["chunks"] += 1
    except (OSError, http.client.HTTPException, ValueError) as e:
        if deadline is not None and time.perf_counter() >= deadline - 0.01:
            res["capped"] = True
        else:
            res["err"] = repr(e)
    finally:
        res["t_end"] = time.perf_counter()
        c.close()
    return res


def run_level(port, prompts, conc, max_tokens, level_timeout=0):
    """conc threads share the prompt list, each taking the next prompt when
    its previous stream closed."""
    results = [None] * len(prompts)
    nxt = [0]
    lock = threading.Lock()
    deadline = [None]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(prompts) or (deadline[0] is not None and time.perf_counter() >= deadline[0]):
                return
            results[i] = one_request(port, prompts[i], max_tokens, deadline=deadline[0])

    ths = [threading.Thread(target=worker) for _ in range(conc)]
    t0 = time.perf_counter()
    if level_timeout > 0:
        deadline[0] = t0 + level_timeout
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    results = [r for r in results if r is not None]
    if level_timeout > 0 and any(r["capped"] for r in results):
        wall = min(wall, level_timeout)  # tokens are counted up to the deadline
    return results, wall


def summarise(results, wall, max_tokens):
    ok = [r for r in results if r["ok"] or r["capped"]]
    toks = []
    for r in ok:
        u = r["usage"] or {}
        toks.append(u.get("completion_tokens", r["chunks"]))
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    decode = [(n - 1) / (r["t_last"] - r["t_first"]) for r, n in zip(ok, toks)
              if r["t_first"] is not None and r["t_last"] > r["t_first"] and n > 1]
    ptoks = [(r["usage"] or {}).get("prompt_tokens") for r in ok]
    ptoks = [p for p in ptoks if p]
    return {
        "requests": len(results),
        "ok": len(ok),
        "capped": sum(1 for r in results if r["capped"]),
        "no_first": sum(1 for r in results if r["capped"] and r["ttft"] is None),
        "errors": [r["err"] for r in results if not (r["ok"] or r["capped"])][:5],
        "generated_tokens": sum(toks),
        "not_exact": sum(1 for r, n in zip(ok, toks) if n != max_tokens and not r["capped"]),
        "prompt_tokens_mean": statistics.mean(ptoks) if ptoks else None,
        "wall_s": wall,
        "agg_tok_s": sum(toks) / wall if wall > 0 else 0,
        "stream_tok_s_p50": statistics.median(decode) if decode else float("nan"),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "ttft_max_s": max(ttft) if ttft else float("nan"),
    }


# ---- main ------------------------------------------------------------------------------------
def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lacunad")
    ap.add_argument("--llama-server")
    ap.add_argument("--lacunad-base", help="a second lacunad build (server name lacunad-base), for A/B in one run")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--servers", default="lacunad,llama-server")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=162, help="words per prompt (~200 tokens with the template)")
    ap.add_argument("--min-requests", type=int, default=8, help="requests per level at least (rounds = ceil(this/C))")
    ap.add_argument("--ctx-per-slot", type=int, default=512, help="llama-server -c = C * this")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--level-timeout", type=float, default=0,
                    help="stop each level this many seconds after its start (0: run it to the end)")
    ap.add_argument("--lacunad-set", action="append", default=[], help="extra --set for lacunad (repeatable)")
    ap.add_argument("--llama-arg", action="append", default=[], help="extra argument for llama-server (repeatable)")
    ap.add_argument("--workdir")
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--label", default="", help="free text for the table heading")
    args = ap.parse_args()

    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in ("lacunad", "llama-server", "lacunad-base"):
            ap.error(f"unknown server {s}")
        path = {"lacunad": args.lacunad, "llama-server": args.llama_server, "lacunad-base": args.lacunad_base}[s]
        if not path or not os.access(path, os.X_OK):
            ap.error(f"{s}: no executable given or found ({path})")
    concs = [int(c) for c in args.concurrency.split(",") if c]
    workdir = args.workdir or tempfile.mkdtemp(prefix="lacuna-load-")
    os.makedirs(workdir, exist_ok=True)

    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(), "cpu": cpu_name(),
           "cpus": os.cpu_count(), "model": os.path.basename(args.model), "threads": args.threads,
           "max_tokens": args.max_tokens, "prompt_words": args.prompt_words, "argv": sys.argv, "levels": []}
    base = 0
    for li, conc in enumerate(concs):
        n_req = max(conc, conc * math.ceil(args.min_requests / conc))
        prompts = [make_prompt(base + i, args.prompt_words, args.seed) for i in range(n_req)]
        base += n_req
        # the servers take turns going first, so that a drift in the machine's load
        # does not always favour the same one
        for kind in servers[li % len(servers):] + servers[:li % len(servers)]:
            srv = start_server(kind, args, conc, workdir)
            try:
                warm = one_request(srv.port, "Say hello.", 8)
                if not warm["ok"]:
                    raise RuntimeError(f"{kind}: warm-up failed: {warm['err']}")
                results, wall = run_level(srv.port, prompts, conc, args.max_tokens, args.level_timeout)
            finally:
                srv.close()
            s = summarise(results, wall, args.max_tokens)
            s.update({"server": kind, "concurrency": conc, "argv": srv.argv})
            out["levels"].append(s)
            print(f"[{kind} C={conc}] {s['ok']}/{s['requests']} ok, {s['generated_tokens']} tokens "
                  f"({s['not_exact']} not {args.max_tokens}), prompt {s['prompt_tokens_mean']} tok, "
                  f"agg {s['agg_tok_s']:.1f} tok/s, stream {s['stream_tok_s_p50']:.1f} tok/s, "
                  f"TTFT p50 {s['ttft_p50_s']:.2f} s p99 {s['ttft_p99_s']:.2f} s, wall {s['wall_s']:.1f} s"
                  + (f", capped {s['capped']} (no first token: {s['no_first']}), sent {len(results)}/{n_req}"
                     if args.level_timeout > 0 else ""),
                  file=sys.stderr, flush=True)
            if s["errors"]:
                print(f"  errors: {s['errors']}", file=sys.stderr)

    md = table(out, servers, concs, args.label)
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    bad = [lv for lv in out["levels"] if lv["ok"] != lv["requests"] or lv["not_exact"]]
    return 1 if bad else 0


def table(out, servers, concs, label):
    by = {(lv["server"], lv["concurrency"]): lv for lv in out["levels"]}
    lines = [f"{out['model']}, {out['threads']} threads, {out['cpus']} CPUs ({out['cpu']}), {out['date']}"
             + (f"; {label}" if label else ""), "",
             "| C | server | requests | agg tok/s | stream tok/s (p50) | TTFT p50 s | TTFT p99 s | wall s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c in concs:
        for s in servers:
            lv = by.get((s, c))
            if not lv:
                continue
            cap = f" ({lv['capped']} capped, {lv['no_first']} without a first token)" if lv.get("capped") else ""
            ge = "≥ " if lv.get("no_first") else ""
            lines.append(f"| {c} | {s} | {lv['ok']}/{lv['requests']}{cap} | {lv['agg_tok_s']:.1f} | "
                         f"{lv['stream_tok_s_p50']:.1f} | {ge}{lv['ttft_p50_s']:.2f} | {ge}{lv['ttft_p99_s']:.2f} | "
                         f"{lv['wall_s']:.1f} |")
    for other in ("llama-server", "lacunad-base"):
        if "lacunad" not in servers or other not in servers:
            continue
        lines += ["", f"| C | agg ratio (lacunad / {other}) | stream ratio | TTFT p50 ratio | TTFT p99 ratio |",
                  "|---:|---:|---:|---:|---:|"]
        for c in concs:
            a, b = by.get(("lacunad", c)), by.get((other, c))
            if not a or not b:
                continue

            def r(k):
                return f"{a[k] / b[k]:.2f}" if b[k] and b[k] == b[k] else "-"

            lines.append(f"| {c} | {r('agg_tok_s')} | {r('stream_tok_s_p50')} | {r('ttft_p50_s')} | "
                         f"{r('ttft_p99_s')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
