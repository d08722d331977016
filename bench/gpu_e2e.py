#!/usr/bin/env python3
"""End to end on one GPU: lacunad (--device cuda:0) against Hugging Face
transformers with SDPA attention, on the same GGUF, in one run.

For each: time to first token at several prompt lengths (one request at a
time; lacunad through its streaming HTTP API, transformers as prefill plus
the first sampled token), and decode tokens/s with 1 and N concurrent
streams of 128 tokens (greedy, EOS ignored). Prints a table and writes JSON.

  bench/gpu_e2e.py --lacunad BIN --libpath DIRS --model M.gguf [--hf-model M.gguf]
                   [--prompts 1024,8192] [--streams 1,64] [--out FILE]
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post_stream(port, body):
    """POST a streaming completion; returns (ttft_s, n_tokens, total_s, usage)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, n, usage = None, 0, None
    body = dict(body, stream_options={"include_usage": True})
    req = urllib.request.Request(req.full_url, data=json.dumps(body).encode(), headers=req.headers)
    with urllib.request.urlopen(req, timeout=1800) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    n += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    return ttft, n, time.perf_counter() - t0, usage


def engine_times(port):
    """The engine's step counters from /metrics: steps, forward s, sampling s."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        for k in ("engine_steps_total", "engine_forward_seconds_total", "engine_sample_seconds_total"):
            if line.startswith("lacuna:" + k + "{"):
                vals[k] = float(line.rsplit(" ", 1)[1])
    return vals


class PeakKV:
    """Polls /metrics' lacuna:kv_cache_used_bytes (every 20 ms) while a phase
    runs: the largest value seen (the KV a phase held at its peak)."""

    def __init__(self, port):
        self.port, self.peak, self.stop = port, 0.0, threading.Event()
        self.t = threading.Thread(target=self.poll, daemon=True)

    def poll(self):
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                    for line in r.read().decode().splitlines():
                        if line.startswith("lacuna:kv_cache_used_bytes"):
                            self.peak = max(self.peak, float(line.rsplit(" ", 1)[1]))
            except Exception:
                pass
            self.stop.wait(0.02)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()


def prompt_ids(n, vocab, salt=0):
    """A deterministic token sequence (ids, so both sides read the same
    prompt); prompts of different salts share no prefix (no cache hits)."""
    return [((i + 1) * 7919 + salt * 104729 + 13) % (vocab - 100) + 50 for i in range(n)]


def bench_lacunad(a, vocab):
    port = free_port()
    env = dict(os.environ, LD_LIBRARY_PATH=a.libpath)
    # the GPU defaults (max_batch_tokens 8192, prefill_chunk 4096, max_running 256, target_step_ms 50)
    log = open(a.lacunad_log, "w") if a.lacunad_log else subprocess.DEVNULL
    daemon = subprocess.Popen([a.lacunad, "--model", a.model, "--device", a.device, "--host", "127.0.0.1", "--port",
                               str(port)] + a.lacunad_args, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        for _ in range(600):
            if daemon.poll() is not None:
                raise RuntimeError(f"lacunad exited with status {daemon.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.5)
        else:
            raise RuntimeError("lacunad did not come up")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            name = json.loads(r.read())["data"][0]["id"]
        res = {"ttft": {}, "ttft_sparse": {}, "ttft_peak_kv_bytes": {}, "decode": {}}
        body = {"model": name, "max_tokens": 1, "temperature": 0, "stream": True}
        if a.sparse:
            body["sparse_attention"] = json.loads(a.sparse)
        post_stream(port, dict(body, prompt=prompt_ids(64, vocab, 99)))  # warm-up
        for n in a.prompts:  # a warm-up, then --reps prompts of each length, none cached: the median
            with PeakKV(port) as pk:
                got = [post_stream(port, dict(body, prompt=prompt_ids(n, vocab, 1000 * n + r)))
                       for r in range(a.reps + 1)]
            res["ttft"][n] = statistics.median(g[0] for g in got[1:])
            res["ttft_peak_kv_bytes"][n] = pk.peak
            if got[-1][3] and got[-1][3].get("sparse_attention"):  # the prefill's density (usage)
                res["ttft_sparse"][n] = got[-1][3]["sparse_attention"]
        for s in a.streams:
            out = [None] * s
            def run(i):
                req = {"model": name, "prompt": prompt_ids(a.decode_prompt, vocab, 7 + i), "max_tokens": 128,
                       "temperature": a.temperature, "seed": i, "ignore_eos": True, "stream": True}
                if a.sparse:
                    req["sparse_attention"] = json.loads(a.sparse)
                out[i] = post_stream(port, req)
            if a.decode_prompt > 1000:  # long prompts: cache them first, so the timed streams decode together
                warm = [threading.Thread(target=post_stream, args=(
                    port, dict(body, prompt=prompt_ids(a.decode_prompt, vocab, 7 + i))))
                    for i in range(s)]
                for t in warm:
                    t.start()
                for t in warm:
                    t.join()
            ts = [threading.Thread(target=run, args=(i,)) for i in range(s)]
            m0 = engine_times(port)
            t0 = time.perf_counter()
            with PeakKV(port) as pk:
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            wall = time.perf_counter() - t0
            m1 = engine_times(port)
            dm = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
            toks = sum(o[1] for o in out)
            # decode rate: tokens after the first, over the time after the last first token
            first = max(o[0] for o in out)
            res["decode"][s] = {"tok_s": (toks - s) / max(wall - first, 1e-9), "tokens": toks, "wall_s": wall,
                                "steps": dm.get("engine_steps_total"),
                                "forward_s": dm.get("engine_forward_seconds_total"),
                                "sample_s": dm.get("engine_sample_seconds_total"),
                                "peak_kv_bytes": pk.peak,
                                "sparse": out[0][3].get("sparse_attention") if out[0][3] else None}
        return res
    finally:  # the whole session, so nothing keeps the output pipes open
        try:
            os.killpg(daemon.pid, 15)
            daemon.wait(timeout=60)
        except Exception:
            os.killpg(daemon.pid, 9)


def bench_hf(a, vocab):
    import torch
    from transformers import AutoModelForCausalLM
    path = a.hf_model or a.model
    kw = dict(gguf_file=os.path.basename(path), attn_implementation="sdpa")
    try:  # transformers 5 names it dtype; 4.x torch_dtype
        m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path) or ".", dtype=torch.bfloat16, **kw)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path) or ".", torch_dtype=torch.bfloat16, **kw)
    m = m.to(dtype=torch.bfloat16, device="cuda").eval()
    res = {"ttft": {}, "decode": {}}
    def sync():
        torch.cuda.synchronize()
    with torch.no_grad():
        x = torch.tensor([prompt_ids(64, vocab, 99)], device="cuda")
        m.generate(x, max_new_tokens=1, do_sample=False)
        for n in a.prompts:
            x = torch.tensor([prompt_ids(n, vocab, 1000 * n)], device="cuda")
            times = []
            for _ in range(6):
                sync()
                t0 = time.perf_counter()
                m.generate(x, max_new_tokens=1, do_sample=False)
                sync()
                times.append(time.perf_counter() - t0)
            res["ttft"][n] = sorted(times[1:])[2]
        for s in a.streams:
            x = torch.tensor([prompt_ids(200, vocab, 7 + i) for i in range(s)], device="cuda")
            sync()
            t0 = time.perf_counter()
            m.generate(x, max_new_tokens=1, do_sample=False)
            sync()
            t1 = time.perf_counter()
            m.generate(x, max_new_tokens=128, min_new_tokens=128, do_sample=False)
            sync()
            t2 = time.perf_counter()
            res["decode"][s] = {"tok_s": s * 127 / max((t2 - t1) - (t1 - t0), 1e-9), "tokens": s * 128}
    return res


def main():
    # a timeout's SIGTERM unwinds through the finally blocks (lacunad is stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--lacunad", required=True)
    ap.add_argument("--libpath", default="")
    ap.add_argument("--model", required=True)
    ap.add_argument("--hf-model")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--prompts", default="1024,8000")
    ap.add_argument("--streams", default="1,64")
    ap.add_argument("--reps", type=int, default=5, help="timed prompts per length (after one warm-up): the median")
    ap.add_argument("--out")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="the decode streams' temperature (0: greedy, drawn on the GPU as an argmax)")
    ap.add_argument("--device", default="cuda:0", help="lacunad's device (cpu: to try the script here)")
    ap.add_argument("--sparse", help="a sparse_attention object (JSON) sent with every request")
    ap.add_argument("--decode-prompt", type=int, default=200, help="prompt tokens of each decode stream")
    ap.add_argument("--lacunad-log", help="lacunad's log file (default: discarded)")
    ap.add_argument("--lacunad-arg", dest="lacunad_args", action="append", default=[],
                    help="an extra lacunad argument (repeat), e.g. --lacunad-arg=--set --lacunad-arg=engine.x=y")
    a = ap.parse_args()
    a.prompts = [int(x) for x in a.prompts.split(",")]
    a.streams = [int(x) for x in a.streams.split(",") if x]  # "": no decode streams
    ours = bench_lacunad(a, a.vocab)
    print("lacunad:", json.dumps(ours), flush=True)  # kept if the transformers side runs out of time
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"lacunad": ours, "transformers": None}, f, indent=1)
    hf = None
    if not a.skip_hf:
        try:
            hf = bench_hf(a, a.vocab)
        except Exception as e:  # report, keep ours
            print(f"transformers: {e!r}", file=sys.stderr)
    rows = [("TTFT %d tokens (s)" % n, ours["ttft"][n], hf["ttft"][n] if hf else None) for n in a.prompts]
    rows += [("decode tok/s, %d stream%s" % (s, "s" if s > 1 else ""), ours["decode"][s]["tok_s"],
              hf["decode"][s]["tok_s"] if hf else None) for s in a.streams]
    for n in a.prompts:
        print(f"lacunad, TTFT {n} tokens: peak KV {ours['ttft_peak_kv_bytes'][n] / 2**20:.1f} MiB")
    print("| measure | lacunad | transformers + SDPA |")
    print("|---|---:|---:|")
    for name, o, h in rows:
        print(f"| {name} | {o:.4g} | {'' if h is None else f'{h:.4g}'} |")
    for s in a.streams:
        d = ours["decode"][s]
        if d.get("steps"):
            print(f"lacunad, {s} stream(s): {d['steps']:.0f} steps, forward {1e3 * d['forward_s'] / d['steps']:.3f} ms "
                  f"and sampling {1e3 * d['sample_s'] / d['steps']:.3f} ms per step; peak KV "
                  f"{d['peak_kv_bytes'] / 2**20:.1f} MiB"
                  + (f"; sparse {json.dumps(d['sparse'])}" if d.get("sparse") else ""))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"lacunad": ours, "transformers": hf}, f, indent=1)


if __name__ == "__main__":
    main()
