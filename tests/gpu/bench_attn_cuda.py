#!/usr/bin/env python3
"""Benchmark of the GPU attention kernels (src/attn/cuda) against torch SDPA,
in the same run on the same inputs.

Our kernels are called through libattn_cuda.so (the plan/run C API) with raw
device pointers of torch tensors. Our KV sits in a paged pool with shuffled
pages; SDPA gets the same keys and values contiguous. Prefill times are the median of
CUDA-event timings around single calls; decode times are the median over
replays of a CUDA graph of up to 20 calls (as decode steps run under graphs), and
decode rotates between two copies of the inputs when one copy is under 1 GiB,
so that L2 (60 MB) holds none of it.

  prefill: one layer, causal, 32 query / 8 KV heads, d 128;
           TFLOP/s = 4 * heads * d * causal pairs / time
  decode:  one query per sequence, B sequences of the same context;
           TB/s = K and V bytes read (B * ctx * kv_heads * d * 2 * 2) / time

SDPA is timed with its default backend choice on GQA inputs, and with cuDNN
forced on K/V expanded to 32 heads (prefill) or each backend forced on GQA
inputs (decode); the best is the reference.
"""
import argparse
import ctypes
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

P32 = ctypes.POINTER(ctypes.c_int32)


class Shape(ctypes.Structure):
    _fields_ = [("n_heads", ctypes.c_int), ("n_kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("page_size", ctypes.c_int), ("n_pool_pages", ctypes.c_int64), ("scale", ctypes.c_float)]


class Limits(ctypes.Structure):
    _fields_ = [("max_seqs", ctypes.c_int), ("max_q_rows", ctypes.c_int64), ("max_pages", ctypes.c_int64),
                ("split_keys", ctypes.c_int)]


class Batch(ctypes.Structure):
    _fields_ = [("n_seqs", ctypes.c_int), ("q_indptr", P32), ("kv_indptr", P32), ("kv_indices", P32),
                ("kv_len", P32), ("mask_off", P32), ("q_pos0", P32),
                ("window", ctypes.c_int)]  # as attn_cuda_batch_t (q_pos0: NULL, window: 0)


class Args(ctypes.Structure):
    _fields_ = [("q", ctypes.c_void_p), ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p), ("k", ctypes.c_void_p),
                ("v", ctypes.c_void_p), ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_size_t),
                ("variant", ctypes.c_int), ("block_mask", ctypes.c_void_p), ("rowmax", ctypes.c_void_p),
                ("mask_only", ctypes.c_int), ("pdl_fresh", ctypes.c_int)]


def i32(values):
    arr = (ctypes.c_int32 * len(values))(*[int(x) for x in values])
    return arr


class Attn:
    """A plan of our kernels over one batch."""

    def __init__(self, lib, kind, H, KH, D, ps, n_pool_pages, q_indptr, kv_indptr, kv_indices, kv_len,
                 split_keys=0, mask_off=None):
        self.lib = lib
        shape = Shape(H, KH, D, ps, n_pool_pages, D ** -0.5)
        n = len(kv_len)
        lim = Limits(n, max(1, q_indptr[-1] if q_indptr else n), len(kv_indices), split_keys)
        self.plan = ctypes.c_void_p()
        rc = lib.attn_cuda_plan_create(ctypes.byref(shape), kind, ctypes.byref(lim), ctypes.byref(self.plan))
        if rc:
            raise RuntimeError(f"attn_cuda_plan_create: {rc}")
        self.keep = [i32(q_indptr) if q_indptr else None, i32(kv_indptr), i32(kv_indices), i32(kv_len),
                     i32(mask_off) if mask_off else None]
        batch = Batch(n, self.keep[0], self.keep[1], self.keep[2], self.keep[3], self.keep[4])
        ws = ctypes.c_size_t()
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        rc = lib.attn_cuda_plan(self.plan, ctypes.byref(batch), stream, ctypes.byref(ws))
        if rc:
            raise RuntimeError(f"attn_cuda_plan: {rc}")
        self.ws = torch.empty(max(16, ws.value), dtype=torch.uint8, device="cuda")
        self.ws_bytes = ws.value

    def variants(self):
        n = self.lib.attn_cuda_variant_count(self.plan)
        return [self.lib.attn_cuda_variant_name(self.plan, v).decode() for v in range(n)]

    def run(self, q, out, lse, k, v, variant=0, mask=None, pdl_fresh=0):
        a = Args(q.data_ptr(), out.data_ptr(), lse.data_ptr() if lse is not None else None, k.data_ptr(),
                 v.data_ptr(), self.ws.data_ptr(), self.ws_bytes, variant,
                 mask.data_ptr() if mask is not None else None, None, 0, pdl_fresh)
        rc = self.lib.attn_cuda_run(self.plan, ctypes.byref(a),
                                    ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        if rc:
            raise RuntimeError(f"attn_cuda_run: {rc}")

    def close(self):
        self.lib.attn_cuda_plan_destroy(self.plan)


def timed(fn, reps, warmup=2):
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    evs = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        evs.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in evs) / 1e3  # seconds


def graph_timed(fn, reps, per_graph=20):
    """Median time of one call, from replays of a CUDA graph of up to per_graph
    calls (fn(i) for i = 0, 1, ...): no launch or Python overhead, as a decode
    step under CUDA graphs runs. Fewer calls and replays for long calls. Falls
    back to back-to-back calls between two events when capture fails."""
    fn(0)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for i in range(4):
        fn(i)
    b.record()
    torch.cuda.synchronize()
    est = a.elapsed_time(b) / 4e3
    per_graph = max(1, min(per_graph, int(2e-3 / max(est, 1e-6))))
    reps = max(5, min(reps, int(0.3 / max(est * per_graph, 1e-6))))
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(per_graph):
                fn(i)
        g.replay()
        torch.cuda.synchronize()
        run = g.replay
    except RuntimeError as e:
        print(f"    (no graph: {str(e).splitlines()[0][:80]}; timing back-to-back calls)")
        torch.cuda.synchronize()

        def run():
            for i in range(per_graph):
                fn(i)
    evs = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        evs.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in evs) / 1e3 / per_graph


def rel_err(x, ref):
    x, ref = x.float(), ref.float()
    return ((x - ref).norm() / ref.norm()).item()


def to_pool(kv, ps, perm):
    """(B, KH, ctx, D) contiguous -> (n_pages, KH, ps, D) pool; logical page j of sequence b at perm[b*P + j]."""
    B, KH, ctx, D = kv.shape
    P = ctx // ps
    pool = torch.empty(B * P, KH, ps, D, dtype=kv.dtype, device=kv.device)
    for b in range(B):
        pool[perm[b * P:(b + 1) * P]] = kv[b].view(KH, P, ps, D).permute(1, 0, 2, 3)
    return pool


def sdpa_best(calls, reps, timer=None):
    best, name = None, None
    for label, fn in calls:
        try:
            t = (timer or timed)(fn, reps)
        except RuntimeError as e:  # a backend that refuses these inputs
            print(f"    sdpa {label}: not available ({str(e).splitlines()[0][:80]})")
            continue
        print(f"    sdpa {label}: {t * 1e3:.3f} ms")
        if best is None or t < best:
            best, name = t, label
    return best, name


def bench_prefill(lib, L, ps, reps, all_variants, rows):
    H, KH, D = 32, 8, 128
    torch.manual_seed(L)
    q = torch.randn(L, H, D, device="cuda", dtype=torch.bfloat16)
    k_s = torch.randn(1, KH, L, D, device="cuda", dtype=torch.bfloat16)
    v_s = torch.randn(1, KH, L, D, device="cuda", dtype=torch.bfloat16)
    perm = torch.randperm(L // ps, device="cuda")
    pk, pv = to_pool(k_s, ps, perm), to_pool(v_s, ps, perm)
    attn = Attn(lib, 0, H, KH, D, ps, L // ps, [0, L], [0, L // ps], perm.cpu().tolist(), [L])
    out = torch.empty_like(q)
    lse = torch.empty(L, H, device="cuda", dtype=torch.float32)
    flops = 4.0 * H * D * L * (L + 1) / 2
    q_s = q.permute(1, 0, 2).unsqueeze(0).contiguous()
    ref = F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True, enable_gqa=True)
    ref = ref[0].permute(1, 0, 2)
    g = H // KH
    k_e, v_e = k_s.repeat_interleave(g, dim=1), v_s.repeat_interleave(g, dim=1)

    def cudnn(i):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(q_s, k_e, v_e, is_causal=True)

    print(f"  prefill L={L} page={ps}")
    t_sdpa, sdpa_name = sdpa_best(
        [("default gqa", lambda i: F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True, enable_gqa=True)),
         ("cudnn expanded", cudnn)], reps)
    del k_e, v_e
    names = attn.variants()
    for v in range(len(names) if all_variants else 1):
        attn.run(q, out, lse, pk, pv, v)
        err = rel_err(out, ref)
        t = timed(lambda i: attn.run(q, out, lse, pk, pv, v), reps)
        print(f"    ours [{names[v]}]: {t * 1e3:.3f} ms, {flops / t / 1e12:.0f} TFLOP/s, rel err vs sdpa {err:.2e}")
        rows.append(("prefill", f"L={L // 1024}K p{ps}", names[v], t, flops / t / 1e12, t_sdpa,
                     flops / t_sdpa / 1e12 if t_sdpa else None, sdpa_name, err))
    attn.close()


def pack_mask(sel):
    """(H, n_qb, n_kb) bool, query blocks from 0 -> (H, n_qb, words) int32 words (attn_cuda.h layout)."""
    H, nq, nk = sel.shape
    words = (nk + 31) // 32
    pad = torch.zeros(H, nq, words * 32, dtype=torch.int64, device=sel.device)
    pad[:, :, :nk] = sel.to(torch.int64)
    w = (pad.view(H, nq, words, 32) << torch.arange(32, device=sel.device)).sum(-1)
    return torch.where(w >= 2 ** 31, w - 2 ** 32, w).to(torch.int32).contiguous()


def sparse_patterns(L, H, device):
    """Block masks (H, n_qb, n_kb) bool, causal, diagonal set: random blocks at
    several densities, and a structured one (sink, local window, a few heavy
    columns and diagonals per head) as FlexPrefill's vertical-slash heads pick."""
    n = L // 128
    g = torch.Generator(device="cpu").manual_seed(L)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    qi = torch.arange(n).view(n, 1)
    ki = torch.arange(n).view(1, n)
    out = []
    for d in (0.05, 0.1, 0.2, 0.5):
        sel = (torch.rand(H, n, n, generator=g) < d) & causal
        out.append((f"random {d:g}", sel | torch.eye(n, dtype=torch.bool)))
    sel = torch.zeros(H, n, n, dtype=torch.bool)
    for h in range(H):
        cols = torch.randint(0, n, (8,), generator=g)
        diags = torch.randint(1, n, (4,), generator=g)
        m = (ki == 0) | ((qi - ki) < 8)
        for c in cols:
            m = m | (ki == c)
        for dg in diags:
            m = m | ((qi - ki) == dg)
        sel[h] = m & causal
    out.append(("sink+local 1K+8 cols+4 diags", sel))
    return [(name, pack_mask(m.to(device)), m) for name, m in out]


def bench_sparse(lib, L, ps, reps, rows):
    """Block-sparse prefill against our dense kernel on the same inputs:
    kernel efficiency = density x t_dense / t_sparse (density: computed pairs
    over causal pairs)."""
    H, KH, D = 32, 8, 128
    torch.manual_seed(L)
    q = torch.randn(L, H, D, device="cuda", dtype=torch.bfloat16)
    k_s = torch.randn(1, KH, L, D, device="cuda", dtype=torch.bfloat16)
    v_s = torch.randn(1, KH, L, D, device="cuda", dtype=torch.bfloat16)
    perm = torch.randperm(L // ps, device="cuda")
    pk, pv = to_pool(k_s, ps, perm), to_pool(v_s, ps, perm)
    dense = Attn(lib, 0, H, KH, D, ps, L // ps, [0, L], [0, L // ps], perm.cpu().tolist(), [L])
    sparse = Attn(lib, 0, H, KH, D, ps, L // ps, [0, L], [0, L // ps], perm.cpu().tolist(), [L], mask_off=[0])
    out = torch.empty_like(q)
    lse = torch.empty(L, H, device="cuda", dtype=torch.float32)
    t_dense = timed(lambda i: dense.run(q, out, lse, pk, pv), reps)
    n = L // 128
    pairs_full, pairs_diag = 128.0 * 128.0, 128.0 * 129.0 / 2
    total = H * (n * (n - 1) / 2 * pairs_full + n * pairs_diag)
    print(f"  block-sparse prefill L={L} page={ps}: dense {t_dense * 1e3:.3f} ms")
    for name, mask, m in sparse_patterns(L, H, "cuda"):
        nsel = int(m.sum()) - H * n  # off-diagonal blocks
        density = (nsel * pairs_full + H * n * pairs_diag) / total
        t = timed(lambda i: sparse.run(q, out, lse, pk, pv, 0, mask), reps)
        eff = density * t_dense / t
        print(f"    {name}: density {density:.3f}, {t * 1e3:.3f} ms, {t_dense / t:.2f}x dense, efficiency {eff:.2f}")
        rows.append(("sparse", f"L={L // 1024}K p{ps}", name, t, density, t_dense, eff, None, None))
    dense.close()
    sparse.close()


def bench_decode(lib, ctx, B, ps, reps, rows):
    H, KH, D = 32, 8, 128
    torch.manual_seed(ctx + B)
    P = ctx // ps
    kv_bytes = B * ctx * KH * D * 2 * 2
    n_sets = 2 if kv_bytes < (1 << 30) else 1
    sets = []
    for _ in range(n_sets):
        k_s = torch.randn(B, KH, ctx, D, device="cuda", dtype=torch.bfloat16)
        v_s = torch.randn(B, KH, ctx, D, device="cuda", dtype=torch.bfloat16)
        perm = torch.randperm(B * P, device="cuda")
        sets.append((k_s, v_s, to_pool(k_s, ps, perm), to_pool(v_s, ps, perm), perm.cpu().tolist()))
    q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
    q_s = q.unsqueeze(2)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, device="cuda", dtype=torch.float32)
    plans = [Attn(lib, 1, H, KH, D, ps, B * P, None, list(range(0, B * P + 1, P)), s[4], [ctx] * B) for s in sets]
    print(f"  decode ctx={ctx} B={B} page={ps} ({kv_bytes / 1e9:.2f} GB of KV per call, {n_sets} input sets)")

    def sdpa_fn(backend):
        def fn(i):
            k_s, v_s = sets[i % n_sets][0], sets[i % n_sets][1]
            if backend is None:
                F.scaled_dot_product_attention(q_s, k_s, v_s, enable_gqa=True)
            else:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q_s, k_s, v_s, enable_gqa=True)
        return fn

    t_sdpa, sdpa_name = sdpa_best([("default gqa", sdpa_fn(None)), ("flash", sdpa_fn(SDPBackend.FLASH_ATTENTION)),
                                   ("efficient", sdpa_fn(SDPBackend.EFFICIENT_ATTENTION)),
                                   ("cudnn", sdpa_fn(SDPBackend.CUDNN_ATTENTION))], reps, graph_timed)
    ref = F.scaled_dot_product_attention(q_s, sets[0][0], sets[0][1], enable_gqa=True)[:, :, 0]
    plans[0].run(q, out, lse, sets[0][2], sets[0][3])
    err = rel_err(out, ref)

    def ours(i):
        s = i % n_sets
        plans[s].run(q, out, lse, sets[s][2], sets[s][3])

    t = graph_timed(ours, reps)
    print(f"    ours: {t * 1e6:.1f} us, {kv_bytes / t / 1e12:.2f} TB/s, rel err vs sdpa {err:.2e}")
    rows.append(("decode", f"ctx={ctx // 1024}K B={B} p{ps}", "split-K", t, kv_bytes / t / 1e12, t_sdpa,
                 kv_bytes / t_sdpa / 1e12 if t_sdpa else None, sdpa_name, err))

    # The same calls as programmatic dependent launches (attn_cuda_args_t.pdl_fresh): each call's CTAs
    # start as the previous call's free their SMs and load their first stages before it completes, as
    # a decode step's attention may overlap the kernel before it. The output must not change.
    plans[0].run(q, out, lse, sets[0][2], sets[0][3])
    out_plain = out.clone()
    plans[0].run(q, out, lse, sets[0][2], sets[0][3], pdl_fresh=1)
    torch.cuda.synchronize()
    same = torch.equal(out, out_plain)

    def ours_pdl(i):
        s = i % n_sets
        plans[s].run(q, out, lse, sets[s][2], sets[s][3], pdl_fresh=1)

    t_pdl = graph_timed(ours_pdl, reps)
    print(f"    ours, chained (PDL): {t_pdl * 1e6:.1f} us, {kv_bytes / t_pdl / 1e12:.2f} TB/s, "
          f"output {'bitwise the same' if same else 'DIFFERS'}")
    rows.append(("decode", f"ctx={ctx // 1024}K B={B} p{ps}", "split-K, PDL", t_pdl, kv_bytes / t_pdl / 1e12, t_sdpa,
                 kv_bytes / t_sdpa / 1e12 if t_sdpa else None, sdpa_name, err if same else float("nan")))
    for p in plans:
        p.close()


HEADER = ("| kind | size | ours | ours ms | ours TFLOP/s or TB/s | SDPA ms | SDPA TFLOP/s or TB/s | ours/SDPA "
          "| SDPA backend | rel err vs SDPA |\n|---|---|---|---|---|---|---|---|---|---|")


def table_rows(rows):
    out = []
    for kind, size, name, t, r, ts, rs, sname, err in rows:
        if kind == "sparse":  # r: density, ts: dense time, rs: kernel efficiency
            out.append(f"| {kind} | {size} | {name} (density {r:.3f}) | {t * 1e3:.3f} | efficiency {rs:.2f} "
                       f"| dense {ts * 1e3:.3f} | | {ts / t:.2f}x dense | ours dense | |")
        elif ts is None:
            out.append(f"| {kind} | {size} | {name} | {t * 1e3:.3f} | {r:.2f} | - | - | - | none | - |")
        else:
            out.append(f"| {kind} | {size} | {name} | {t * 1e3:.3f} | {r:.2f} | {ts * 1e3:.3f} | {rs:.2f} "
                       f"| {r / rs:.2f} | {sname} | {err:.1e} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--part", choices=("all", "prefill", "decode", "sparse"), default="all")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (8K prefill; decode at 32K, B 1 and 8, and 128K, B 1)")
    ap.add_argument("--table", help="also write the table rows (no header) to this file")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.attn_cuda_variant_name.restype = ctypes.c_char_p
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows = []
    if args.part in ("all", "prefill"):
        pre = [(8192, 64, 20, True)] if args.quick else [(8192, 64, 20, True), (32768, 64, 8, True),
                                                         (32768, 128, 8, False), (131072, 64, 3, False)]
        for L, ps, reps, allv in pre:
            bench_prefill(lib, L, ps, reps, allv, rows)
            torch.cuda.empty_cache()
    if args.part in ("all", "sparse"):
        for L, reps in ((32768, 8), (65536, 5), (131072, 3)):
            bench_sparse(lib, L, 64, reps, rows)
            torch.cuda.empty_cache()
    if args.part in ("all", "decode"):
        dec = [(32768, 1), (32768, 8), (131072, 1)] if args.quick else [(c, b) for c in (32768, 131072) for b in (1, 8, 32, 64)]
        for ctx, B in dec:
            bench_decode(lib, ctx, B, 64, 30, rows)
            torch.cuda.empty_cache()
    lines = table_rows(rows)
    print("\n" + HEADER)
    print("\n".join(lines))
    if args.table:
        with open(args.table, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
