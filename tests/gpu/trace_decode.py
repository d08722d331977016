#!/usr/bin/env python3
"""Where a batch-1 decode call's time goes (src/attn/cuda/decode.cu), on the GPU
machine: the one-layer shape of bench_attn_cuda.py (32 query / 8 KV heads,
d 128, pages of 64 shuffled in the pool).

  scan   times batch-1 calls at several contexts (CUDA graphs of 20 calls, as
         bench_attn_cuda.py) with the library the executor links, and fits
         time = bytes / R + T0: R is the streaming rate, T0 what a call costs
         whatever its length (launch gap, ramp, tail, merge).
  trace  runs the same calls with a library built with -DATTN_DEC_TRACE,
         whose CTAs write the global timer at their phases, and prints when
         the CTAs start, issue their first loads, get their first stage,
         finish streaming and merge, relative to the first CTA's start.

  python3 tests/gpu/trace_decode.py --lib .gpu/bin/libattn_cuda.so \
      [--trace-lib .gpu/bin/libattn_cuda_trace.so] [--splits 0,16,24]
"""
import argparse
import ctypes
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attn_cuda import Attn, graph_timed, to_pool  # noqa: E402

H, KH, D, PS = 32, 8, 128, 64


def inputs(ctx, n_sets):
    torch.manual_seed(ctx)
    P = ctx // PS
    sets = []
    for _ in range(n_sets):
        k = torch.randn(1, KH, ctx, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, KH, ctx, D, device="cuda", dtype=torch.bfloat16)
        perm = torch.randperm(P, device="cuda")
        sets.append((to_pool(k, PS, perm), to_pool(v, PS, perm), perm.cpu().tolist()))
        del k, v
    q = torch.randn(1, H, D, device="cuda", dtype=torch.bfloat16)
    return sets, q


def time_ctx(lib, ctx):
    P = ctx // PS
    sets, q = inputs(ctx, 2)
    out = torch.empty_like(q)
    lse = torch.empty(1, H, device="cuda", dtype=torch.float32)
    plans = [Attn(lib, 1, H, KH, D, PS, P, None, [0, P], s[2], [ctx]) for s in sets]

    def call(i):
        s = i % 2
        plans[s].run(q, out, lse, sets[s][0], sets[s][1])
    t = graph_timed(call, 40)
    for p in plans:
        p.close()
    return t


def scan(lib, ctxs, label):
    pts = []
    for ctx in ctxs:
        t = time_ctx(lib, ctx)
        b = ctx * KH * D * 2 * 2
        pts.append((b, t))
        print(f"  {label} ctx={ctx // 1024}K: {t * 1e6:.2f} us, {b / t / 1e12:.2f} TB/s", flush=True)
        torch.cuda.empty_cache()
    n = len(pts)
    mb, mt = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    slope = sum((p[0] - mb) * (p[1] - mt) for p in pts) / sum((p[0] - mb) ** 2 for p in pts)
    t0 = mt - slope * mb
    print(f"  {label} fit: R = {1 / slope / 1e12:.2f} TB/s, T0 = {t0 * 1e6:.2f} us", flush=True)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def trace(tlib, ctx):
    P = ctx // PS
    sets, q = inputs(ctx, 1)
    out = torch.empty_like(q)
    lse = torch.empty(1, H, device="cuda", dtype=torch.float32)
    plan = Attn(tlib, 1, H, KH, D, PS, P, None, [0, P], sets[0][2], [ctx])
    for mode in ("back-to-back", "graph"):
        if mode == "graph":
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(20):
                    plan.run(q, out, lse, sets[0][0], sets[0][1])
            for _ in range(3):
                g.replay()
        else:
            for _ in range(20):
                plan.run(q, out, lse, sets[0][0], sets[0][1])
        torch.cuda.synchronize()
        n = 4096
        buf = (ctypes.c_ulonglong * (n * 8))()
        got = tlib.attn_cuda_decode_trace(buf, n)
        rows = [[buf[i * 8 + j] for j in range(8)] for i in range(got)]
        rows = [r for r in rows if r[0] and r[4]]
        t0 = min(r[0] for r in rows)
        rel = [[(x - t0) / 1e3 if x else None for x in r[:6]] for r in rows]
        names = ["start", "first TMA", "first stage", "streamed", "partial"]
        print(f"  trace ctx={ctx // 1024}K ({mode}, last call): {len(rows)} CTAs on "
              f"{len(set(r[6] for r in rows))} SMs; us after the first CTA's start, p0 / p50 / p100:")
        for j, nm in enumerate(names):
            xs = [r[j] for r in rel]
            print(f"    {nm:12s} {pct(xs, 0):7.2f} {pct(xs, 0.5):7.2f} {pct(xs, 1):7.2f}")
        for j, nm in ((1, "start->TMA"), (2, "TMA->stage"), (3, "stream"), (4, "combine")):
            xs = [r[j] - r[j - 1] for r in rel]
            print(f"    {nm:12s} {pct(xs, 0):7.2f} {pct(xs, 0.5):7.2f} {pct(xs, 1):7.2f} (durations)")
        merges = [r for r in rel if r[5]]
        if merges:
            print("    merges: " + ", ".join(f"{r[4]:.2f}->{r[5]:.2f}" for r in sorted(merges, key=lambda r: r[4])))
        end = max(max(r[4], r[5] or 0) for r in rel)
        print(f"    last write at {end:.2f} us")
    plan.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--trace-lib")
    ap.add_argument("--ctx", default="8192,16384,32768,65536,131072")
    ap.add_argument("--splits", default="0", help="LACUNA_ATTN_DEC_SPLITS values to scan (0: the default)")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}")
    ctxs = [int(c) for c in args.ctx.split(",")]
    lib = ctypes.CDLL(args.lib)
    for sp in args.splits.split(","):
        if sp == "0":
            os.environ.pop("LACUNA_ATTN_DEC_SPLITS", None)
        else:
            os.environ["LACUNA_ATTN_DEC_SPLITS"] = sp
        scan(lib, ctxs, f"splits={sp}")
    os.environ.pop("LACUNA_ATTN_DEC_SPLITS", None)
    if args.trace_lib:
        tlib = ctypes.CDLL(args.trace_lib)
        for ctx in (32768, 131072):
            trace(tlib, ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
