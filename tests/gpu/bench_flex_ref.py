#!/usr/bin/env python3
"""Side by side on one H200: our GPU FlexPrefill against the public FlexPrefill
reference (github.com/bytedance/FlexPrefill, Apache-2.0, Triton kernels), with
dense attention (ours and torch SDPA) as the baseline (issue 11, "Kernels").

One layer of causal prefill, 32 query / 8 KV heads, d 128, bf16, the same
inputs for every method:
  sdpa dense      torch SDPA, the best of its default GQA choice and cuDNN on
                  K/V expanded to 32 heads (as bench_attn_cuda.py); its output
                  is the reference of every error below
  ours dense      attn_cuda_run without a mask (libattn_cuda.so, paged pool)
  ours flex g     attn_cuda_flex_select (the per-layer selection) then
                  attn_cuda_run with its block mask; timed together, the
                  selection alone and the kernel alone (attn_cuda_flex_plan
                  is the once-per-step host part and is not timed)
  ref flex g      the reference's flex_prefill_attention (its entry point),
                  and its two halves alone: get_active_blocks (selection) and
                  triton_block_wise_attention (kernel, with its index prep)
at gamma 0.9 and 0.95, tau 0.1, min_budget 1024 tokens, no max_budget, block
128 for both (the paper's defaults).

Per method: median time over CUDA events; density = computed query-key pairs /
causal pairs (ours: attn_cuda_mask_pairs over the mask; the reference: the
pairs its block list implies, counted the same way: an off-diagonal block
128 x 128, a diagonal block 128 x 129 / 2; its own "computational ratio",
selected blocks over the full square grid, is kept in the JSON); rel err =
||o - o_sdpa|| / ||o_sdpa|| in f32; recall = the share of the dense softmax
mass (f32) of sampled rows (--recall-rows positions spread over the sequence,
every head) that falls on the keys the method computes (from the mask bits;
1 for dense). Derived: kernel efficiency = density x t_dense(ours) /
t_kernel; selection share = t_select / t_dense(ours); speed-up = the
reference's total time / ours at the same gamma.

Inputs (seeded, generated on the GPU): synthetic with an attention sink,
locality (q.k a sum of cosines of the distance, like RoPE on a constant
vector), heavy key columns, and noise, each head drawing its own strengths,
at three sparsity levels; --real FILE adds captured q, k, v. Each input's
line says how sparse it is: the share of a row's keys that holds 90% of its
softmax mass (median and 90th percentile over the sampled rows).

A reference that fails to import or run (Triton versions) is a table row
"failed: <reason>"; ours still runs. --dry-run checks the input builder, the
mask packing, density, recall and table code on the CPU at 4K (exit 77 when
torch is not installed).
"""
import argparse
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import signal
import statistics
import sys
import time
import types

torch = None  # imported in main(): the module stays importable without torch
DEV = "cuda"  # where the measured tensors live
BLK = 128
GAMMAS = (0.9, 0.95)
TAU = 0.1
MIN_BUDGET = 1024

# Synthetic inputs: per head, the logit (nats) of the local peak, of the sink,
# of the heavy columns, the noise std, each drawn uniformly in its range; win:
# the distance at which locality has faded (the lowest cosine frequency);
# diffuse: the share of heads with 3/4 of that structure. Calibrated at 32K
# (64 sampled positions, every head; the share of a row's keys holding 90% of
# its mass, median / p90): moderate 0.84% / 27% (sparse-attention.md's recipe:
# 0.7% / 28%), sink 0.008% / 0.9%, denser 1.5% / 9.6%. The run prints the
# statistic of every input at every length.
INPUTS = {
    "sink": dict(loc=(4.0, 7.0), win=512, sink=(12.0, 16.0), heavy=(2.0, 5.0), heavy_per_4k=1, noise=(0.3, 0.8)),
    "moderate": dict(loc=(10.0, 14.0), win=1024, sink=(8.0, 12.0), heavy=(6.0, 10.0), heavy_per_4k=4,
                     noise=(0.8, 1.5), diffuse=0.18),
    "denser": dict(loc=(9.0, 13.0), win=2048, sink=(6.0, 10.0), heavy=(5.0, 9.0), heavy_per_4k=8, noise=(1.0, 1.6)),
}


def load_torch():
    global torch
    if torch is None:
        import torch as t
        torch = t
    return torch


def gen_inputs(spec, L, H, KH, D, seed, device):
    """q (L, H, D), k and v (L, KH, D), bf16. Dims: 2F cosine features of the
    position, 1 sink, 8 heavy-column directions, the rest noise."""
    g = torch.Generator(device=device).manual_seed(seed)

    # a share of the heads (spec "diffuse") get 3/4 of the structure: rows
    # that need many keys
    weak = torch.where(torch.rand(H, generator=g, device=device) < spec.get("diffuse", 0.0), 0.75, 1.0)

    def uni(rng, n):
        x = rng[0] + (rng[1] - rng[0]) * torch.rand(n, generator=g, device=device)
        return x * weak if n == H else x

    F = 24
    n_noise = D - 2 * F - 9
    sq = math.sqrt(D)
    # locality: frequencies from 1 down to 1/win, so q.k = c * sum cos(w (i - j))
    # is ~c F at distance 0 and decays like 1 - log(dist)/log(win)
    omega = torch.logspace(0, -math.log10(spec["win"]), F, dtype=torch.float64, device=device)
    ang = torch.arange(L, dtype=torch.float64, device=device)[:, None] * omega[None, :]
    cs = torch.stack((ang.cos(), ang.sin()), -1).reshape(L, 2 * F).float()
    del ang
    k = torch.zeros(L, KH, D, device=device)
    q = torch.zeros(L, H, D, device=device)
    k[:, :, :2 * F] = cs[:, None, :]
    q[:, :, :2 * F] = cs[:, None, :] * (uni(spec["loc"], H) * sq / F)[None, :, None]
    del cs
    # sink: the first key, a little of it in the next three
    k[0, :, 2 * F] = 1.0
    k[1:4, :, 2 * F] = 0.5
    q[:, :, 2 * F] = (uni(spec["sink"], H) * sq)[None, :]
    # heavy columns: runs of 1-4 keys per KV head, each on one of 8 directions
    n_heavy = max(1, spec["heavy_per_4k"] * L // 4096)
    for kh in range(KH):
        pos = torch.randint(4, L, (n_heavy,), generator=g, device=device)
        run = torch.randint(1, 5, (n_heavy,), generator=g, device=device)
        dirs = torch.randint(0, 8, (n_heavy,), generator=g, device=device)
        for r in range(4):
            sel = run > r
            k[(pos[sel] + r).clamp(max=L - 1), kh, 2 * F + 1 + dirs[sel]] = 1.0
    w = 0.5 + 0.5 * torch.rand(H, 8, generator=g, device=device)
    q[:, :, 2 * F + 1:2 * F + 9] = (uni(spec["heavy"], H)[:, None] * w * sq)[None]
    # noise: logit std = the head's noise level
    k[:, :, D - n_noise:] = torch.randn(L, KH, n_noise, generator=g, device=device)
    qn = torch.randn(L, H, n_noise, generator=g, device=device)
    q[:, :, D - n_noise:] = qn * (uni(spec["noise"], H) * math.sqrt(D / n_noise))[None, :, None]
    del qn
    v = torch.randn(L, KH, D, generator=g, device=device)
    return q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)


def load_real(path, layer):
    """q, k, v from FILE.pt (a dict with q, k, v or a tuple), FILE.npz, or a
    directory with q.npy, k.npy, v.npy; (L, heads, d), or with a leading
    batch of 1 or a leading layer axis (--real-layer picks one)."""
    if os.path.isdir(path):
        import numpy as np
        t = [torch.from_numpy(np.load(os.path.join(path, n + ".npy"))) for n in "qkv"]
    elif path.endswith(".npz"):
        import numpy as np
        z = np.load(path)
        t = [torch.from_numpy(z[n]) for n in "qkv"]
    else:
        obj = torch.load(path, map_location="cpu")
        t = [obj[n] for n in "qkv"] if isinstance(obj, dict) else list(obj)
    out = []
    for x in t:
        if x.dim() == 4:
            x = x[0] if x.shape[0] == 1 else x[layer]
        if x.dim() != 3:
            raise ValueError(f"{path}: expected (L, heads, d) tensors, got {tuple(x.shape)}")
        out.append(x.to(torch.bfloat16).contiguous())
    q, k, v = out
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{path}: inconsistent shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    return q, k, v


def sample_positions(L, n):
    return sorted({((i + 1) * L) // n - 1 for i in range(n)})


def unpack_mask(words, H, n_qb, n_kb):
    """attn_cuda.h's layout (H, n_qb, ceil(n_kb/32)) int32 words, query
    blocks from 0 -> (H, n_qb, n_kb) bool, with the diagonal (always
    computed) set and bits above it (ignored) cleared."""
    wpr = (n_kb + 31) // 32
    w = words[:H * n_qb * wpr].view(H, n_qb, wpr).to(torch.int64) & 0xFFFFFFFF
    bits = (w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1
    m = bits.view(H, n_qb, wpr * 32)[:, :, :n_kb].bool()
    causal = torch.ones(n_qb, n_kb, dtype=torch.bool, device=m.device).tril()
    return (m & causal) | torch.eye(n_qb, n_kb, dtype=torch.bool, device=m.device)


def ref_mask(block_idx, H, nb, device):
    """The reference's per-head flat block indices (q_block * nb + k_block)
    -> (H, nb, nb) bool, causal part only (what its kernel computes)."""
    m = torch.zeros(H, nb * nb, dtype=torch.bool, device=device)
    for h in range(H):
        m[h, block_idx[h].to(device).long()] = True
    return m.view(H, nb, nb) & torch.ones(nb, nb, dtype=torch.bool, device=device).tril()


def mask_density(m, L):
    """Computed pairs / causal pairs of a block mask (H, nb, nb), L a
    multiple of 128: a diagonal block holds 128 * 129 / 2 causal pairs."""
    H, nb = m.shape[0], m.shape[1]
    diag = int(torch.diagonal(m, dim1=1, dim2=2).sum())
    off = int(m.sum()) - diag
    return (off * BLK * BLK + diag * BLK * (BLK + 1) / 2) / (H * L * (L + 1) / 2)


def analyse(q, k, masks, positions, scale):
    """Over the sampled rows (every head): the share of a row's causal keys
    holding 90% of its softmax mass (median, p90) and, per block mask, the
    dense mass on the keys it computes (mean, 10th percentile)."""
    L, H, _ = q.shape
    g = H // k.shape[1]
    pos = torch.tensor(positions, device=q.device)
    keys = torch.arange(L, device=q.device)
    fracs, rec = [], {name: [] for name in masks}
    kf = None
    for h in range(H):
        if h % g == 0:
            kf = k[:, h // g].float()
        s = (q[pos, h].float() @ kf.T) * scale
        s.masked_fill_(keys[None, :] > pos[:, None], float("-inf"))
        p = torch.softmax(s, -1)
        del s
        c = p.sort(-1, descending=True).values.cumsum(-1)
        fracs.append(((c < 0.9).sum(-1) + 1).double() / (pos + 1).double())
        del c
        for name, m in masks.items():
            km = m[h, pos // BLK].repeat_interleave(BLK, dim=1)[:, :L]
            rec[name].append((p * km).sum(-1).double())
    fr = torch.cat(fracs)
    stats = {"median_keys_90": float(fr.median()), "p90_keys_90": float(fr.quantile(0.9))}
    recall = {}
    for name, r in rec.items():
        r = torch.cat(r)
        recall[name] = (float(r.mean()), float(r.quantile(0.1)))
    return stats, recall


def rel_err(x, ref):
    x, ref = x.reshape(-1, ref.shape[-1]), ref.reshape(-1, ref.shape[-1])
    num, den = 0.0, 0.0
    for i in range(0, x.shape[0], 1 << 20):  # f32 in slices: 128K x 32 rows would be 2 GB at once
        a, b = x[i:i + (1 << 20)].float(), ref[i:i + (1 << 20)].float()
        num += float(((a - b) ** 2).sum())
        den += float((b ** 2).sum())
    return math.sqrt(num / den)


# --- the reference ---------------------------------------------------------

def _einops_shim():
    """The one rearrange the reference calls, for a GPU machine without einops."""
    m = types.ModuleType("einops")

    def rearrange(x, pattern):
        if pattern.replace(" ", "") != "bhgij->b(hg)ij":
            raise NotImplementedError(f"einops shim: {pattern}")
        return x.flatten(1, 2)
    m.rearrange = rearrange
    return m


def load_peer(peer_dir):
    """Imports the reference's ops module from the fetched copy. Without
    einops or transformers (only the dense short-prompt path asks whether
    flash_attn exists) small stand-ins are registered; the list says which."""
    path = os.path.join(peer_dir, "flex_prefill", "ops", "flex_prefill_attention.py")
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} missing (scripts/fetch_peer_flexprefill.sh)")
    shims = []
    try:
        import einops  # noqa: F401
    except ImportError:
        sys.modules["einops"] = _einops_shim()
        shims.append("einops")
    try:
        import transformers.utils  # noqa: F401
    except ImportError:
        tu = types.ModuleType("transformers.utils")
        tu.is_flash_attn_2_available = lambda: False
        tr = types.ModuleType("transformers")
        tr.utils = tu
        sys.modules["transformers"], sys.modules["transformers.utils"] = tr, tu
        shims.append("transformers")
    spec = importlib.util.spec_from_file_location("flexprefill_ref_ops", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cf = os.path.join(peer_dir, "COMMIT")
    commit = open(cf).read().strip() if os.path.isfile(cf) else ""
    return mod, {"path": path, "commit": commit, "shims": shims}


# --- timing and limits -----------------------------------------------------

class MethodTimeout(Exception):
    pass


class Stopped(BaseException):
    """SIGTERM (run.sh's timeout): past every per-method handler, so that the
    rows measured so far are still printed."""


def on_term(signum, frame):
    raise Stopped()


@contextlib.contextmanager
def time_limit(seconds):
    """A method's wall-clock limit (between Python statements: a kernel that
    never returns is left to run.sh's timeout)."""
    def alarm(signum, frame):
        raise MethodTimeout(f"over its {seconds} s limit")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def timed(fn, budget_s, max_reps):
    """Median seconds of fn() between CUDA events (host work inside fn, such
    as the reference's .item() calls, counts); one warm-up call (Triton
    compiles there), then as many calls as fit the budget, 3 to max_reps."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = time.perf_counter() - t0
    reps = max(3, min(max_reps, int(budget_s / max(est, 1e-6))))
    evs = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        evs.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in evs) / 1e3


# --- ours ------------------------------------------------------------------

class FlexSel:
    """attn_cuda_flex_t over one sequence of L rows (flex_cuda.h)."""

    def __init__(self, lib, bac, H, KH, D, ps, L, perm):
        self.lib, self.bac, self.L, self.H = lib, bac, L, H

        class Policy(ctypes.Structure):
            _fields_ = [("gamma", ctypes.c_float), ("tau", ctypes.c_float), ("min_budget", ctypes.c_int),
                        ("max_budget", ctypes.c_int)]
        self.Policy = Policy
        vp = ctypes.c_void_p
        lib.attn_cuda_flex_create.argtypes = [ctypes.POINTER(bac.Shape), ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                              ctypes.POINTER(vp)]
        lib.attn_cuda_flex_plan.argtypes = [vp, ctypes.POINTER(bac.Batch), ctypes.POINTER(ctypes.c_uint8),
                                            ctypes.POINTER(Policy), bac.P32, ctypes.POINTER(ctypes.c_size_t), vp]
        lib.attn_cuda_flex_select.argtypes = [vp, vp, vp, vp, vp]
        lib.attn_cuda_flex_last_branches.argtypes = [vp, ctypes.POINTER(ctypes.c_int8), vp]
        lib.attn_cuda_flex_destroy.argtypes = [vp]
        lib.attn_cuda_flex_destroy.restype = None
        shape = bac.Shape(H, KH, D, ps, L // ps, D ** -0.5)
        self.f = vp()
        rc = lib.attn_cuda_flex_create(ctypes.byref(shape), 1, L, L, ctypes.byref(self.f))
        if rc:
            raise RuntimeError(f"attn_cuda_flex_create: {rc}")
        self.keep = [bac.i32([0, L]), bac.i32([0, L // ps]), bac.i32(perm), bac.i32([L])]

    def plan(self, gamma, tau, min_budget, max_budget, mask_words):
        b = self.bac.Batch(1, self.keep[0], self.keep[1], self.keep[2], self.keep[3], None)
        sel = (ctypes.c_uint8 * 1)(1)
        pol = (self.Policy * 1)(self.Policy(gamma, tau, min_budget, max_budget))
        need = ctypes.c_size_t()
        rc = self.lib.attn_cuda_flex_plan(self.f, ctypes.byref(b), sel, pol, self.bac.i32([0]), ctypes.byref(need),
                                          stream())
        if rc:
            raise RuntimeError(f"attn_cuda_flex_plan: {rc}")
        if need.value > mask_words:
            raise RuntimeError(f"flex masks need {need.value} words, the buffer holds {mask_words}")

    def select(self, q, pk, mask):
        rc = self.lib.attn_cuda_flex_select(self.f, q.data_ptr(), pk.data_ptr(), mask.data_ptr(), stream())
        if rc:
            raise RuntimeError(f"attn_cuda_flex_select: {rc}")

    def query_aware_heads(self):
        br = (ctypes.c_int8 * self.H)()
        rc = self.lib.attn_cuda_flex_last_branches(self.f, br, stream())
        return sum(1 for x in br if x == 1) if rc == 0 else None

    def close(self):
        self.lib.attn_cuda_flex_destroy(self.f)


def stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def mask_pairs(lib, plan, mask):
    pairs = torch.zeros(1, dtype=torch.int64, device=DEV)
    lib.attn_cuda_mask_pairs.argtypes = [ctypes.c_void_p] * 4
    rc = lib.attn_cuda_mask_pairs(plan.plan, mask.data_ptr(), pairs.data_ptr(), stream())
    if rc:
        raise RuntimeError(f"attn_cuda_mask_pairs: {rc}")
    return int(pairs.item())


# --- one case: an input at one length --------------------------------------

class Unavailable(Exception):
    """A method that cannot run here (its message says why)."""


def short(e):
    msg = str(e).strip()
    if isinstance(e, Unavailable):
        return msg
    return f"{type(e).__name__}: {msg.splitlines()[0][:120]}" if msg else type(e).__name__


def row(inp, L, method, **kw):
    r = {"input": inp, "length": L, "method": method, "ms": None, "select_ms": None, "kernel_ms": None,
         "density": None, "rel_err": None, "recall": None, "recall_p10": None, "efficiency": None,
         "select_share": None, "speedup_vs_ref": None, "note": ""}
    r.update(kw)
    return r


def run_case(args, lib, bac, peer, peer_err, inp, q, k, v):
    """Every method on one input; returns the rows and the input's sparsity."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    L, H, D = q.shape
    KH = k.shape[1]
    ps, nb, scale = 64, L // BLK, D ** -0.5
    budget, lim = args.budget_s, args.method_limit
    rows, masks = [], {}

    def attempt(method, fn, **kw):
        try:
            with time_limit(lim):
                r = fn()
                torch.cuda.synchronize()
        except Exception as e:  # a method that fails is a row, the others go on
            msg = short(e)
            print(f"    {method}: failed: {msg}", flush=True)
            r = row(inp, L, method, note=f"failed: {msg}", **kw)
        rows.append(r)
        return r

    q_s = q.permute(1, 0, 2).unsqueeze(0).contiguous()
    k_s = k.permute(1, 0, 2).unsqueeze(0).contiguous()
    v_s = v.permute(1, 0, 2).unsqueeze(0).contiguous()
    o_ref = F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True, enable_gqa=True)[0].permute(1, 0, 2)
    o_ref = o_ref.contiguous()

    def sdpa():
        g = H // KH
        k_e, v_e = k_s.repeat_interleave(g, dim=1), v_s.repeat_interleave(g, dim=1)

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(q_s, k_e, v_e, is_causal=True)
        best, name = None, None
        for label, fn in (("default gqa", lambda: F.scaled_dot_product_attention(q_s, k_s, v_s, is_causal=True,
                                                                               enable_gqa=True)),
                          ("cudnn expanded", cudnn)):
            try:
                t = timed(fn, budget, args.max_reps)
            except RuntimeError as e:
                print(f"    sdpa {label}: not available ({str(e).splitlines()[0][:80]})")
                continue
            if best is None or t < best:
                best, name = t, label
        del k_e, v_e
        return row(inp, L, "sdpa dense", ms=best * 1e3, density=1.0, rel_err=0.0, recall=1.0, recall_p10=1.0,
                   note=name)
    attempt("sdpa dense", sdpa)
    del q_s

    perm = torch.randperm(L // ps, generator=torch.Generator().manual_seed(L)).tolist()
    perm_t = torch.tensor(perm, device=DEV)
    pk, pv = bac.to_pool(k_s, ps, perm_t), bac.to_pool(v_s, ps, perm_t)
    del k_s, v_s, perm_t
    out = torch.empty_like(q)
    lse = torch.empty(L, H, device=DEV, dtype=torch.float32)
    kv = ([0, L], [0, L // ps], perm, [L])
    plans = []

    def ours_dense():
        dense = bac.Attn(lib, 0, H, KH, D, ps, L // ps, *kv)
        plans.append(dense)
        t = timed(lambda: dense.run(q, out, lse, pk, pv), budget, args.max_reps)
        dense.run(q, out, lse, pk, pv)
        return row(inp, L, "ours dense", ms=t * 1e3, kernel_ms=t * 1e3, density=1.0, rel_err=rel_err(out, o_ref),
                   recall=1.0, recall_p10=1.0)
    t_dense = attempt("ours dense", ours_dense)["ms"]

    words = lib.attn_cuda_mask_words(L, L, H)
    mask = torch.zeros(words, dtype=torch.int32, device=DEV)
    flex, sparse = [None], [None]

    def ours_flex(gamma):
        def fn():
            if flex[0] is None:
                if not hasattr(lib, "attn_cuda_flex_select"):
                    raise Unavailable("libattn_cuda.so has no attn_cuda_flex_select (flex.cu not built in)")
                flex[0] = FlexSel(lib, bac, H, KH, D, ps, L, perm)
                sparse[0] = bac.Attn(lib, 0, H, KH, D, ps, L // ps, *kv, mask_off=[0])
                plans.append(sparse[0])
            f, sp = flex[0], sparse[0]
            t0 = time.perf_counter()
            f.plan(gamma, TAU, MIN_BUDGET, 0, words)  # once per step (all layers): not in the times
            torch.cuda.synchronize()
            t_plan = time.perf_counter() - t0
            t_sel = timed(lambda: f.select(q, pk, mask), budget, args.max_reps)
            t_ker = timed(lambda: sp.run(q, out, lse, pk, pv, 0, mask), budget, args.max_reps)

            def both():
                f.select(q, pk, mask)
                sp.run(q, out, lse, pk, pv, 0, mask)
            t_all = timed(both, budget, args.max_reps)
            both()
            torch.cuda.synchronize()
            m = unpack_mask(mask, H, nb, nb)
            masks[f"ours flex {gamma:g}"] = m
            dens = mask_pairs(lib, sp, mask) / (H * L * (L + 1) / 2)
            if abs(dens - mask_density(m, L)) > 1e-9:
                raise RuntimeError(f"attn_cuda_mask_pairs density {dens} != the unpacked mask's {mask_density(m, L)}")
            qa = f.query_aware_heads()
            return row(inp, L, f"ours flex {gamma:g}", gamma=gamma, ms=t_all * 1e3, select_ms=t_sel * 1e3,
                       kernel_ms=t_ker * 1e3, density=dens, rel_err=rel_err(out, o_ref),
                       note=(f"{qa}/{H} heads query-aware; " if qa is not None else "") +
                       f"step plan {t_plan * 1e3:.2f} ms (host)")
        return fn

    def ref_flex(gamma):
        def fn():
            if peer is None:
                raise Unavailable(peer_err)
            q4, k4, v4 = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)  # (1, L, heads, d): its layout
            # its entry point's arguments to get_active_blocks (budgets in blocks)
            mb, xb = math.ceil(MIN_BUDGET / BLK), math.ceil(2147483647 / BLK)
            o, ratio = peer.flex_prefill_attention(q4, k4, v4, gamma, TAU, min_budget=MIN_BUDGET, max_budget=None,
                                                   block_size=BLK, return_computational_ratio=True)
            err = rel_err(o[0], o_ref)
            del o
            t_all = timed(lambda: peer.flex_prefill_attention(q4, k4, v4, gamma, TAU, min_budget=MIN_BUDGET,
                                                              max_budget=None, block_size=BLK), budget, args.max_reps)
            if L <= max(2 * BLK, MIN_BUDGET):  # its entry point runs dense attention there
                masks[f"ref flex {gamma:g}"] = torch.ones(H, nb, nb, dtype=torch.bool, device=DEV).tril()
                return row(inp, L, f"ref flex {gamma:g}", gamma=gamma, ms=t_all * 1e3, density=1.0, rel_err=err,
                           note="dense at this length (its rule)")
            t_sel = timed(lambda: peer.get_active_blocks(q4, k4, v4, BLK, gamma, mb, xb, TAU, False), budget,
                          args.max_reps)
            idx = peer.get_active_blocks(q4, k4, v4, BLK, gamma, mb, xb, TAU, False)
            t_ker = timed(lambda: peer.triton_block_wise_attention(q4, k4, v4, idx, BLK), budget, args.max_reps)
            m = ref_mask(idx[0], H, nb, DEV)
            masks[f"ref flex {gamma:g}"] = m
            return row(inp, L, f"ref flex {gamma:g}", gamma=gamma, ms=t_all * 1e3, select_ms=t_sel * 1e3,
                       kernel_ms=t_ker * 1e3, density=mask_density(m, L), rel_err=err, ref_ratio=ratio,
                       note=f"its ratio {ratio:.3f} (of the square grid)")
        return fn

    for gamma in GAMMAS:
        attempt(f"ours flex {gamma:g}", ours_flex(gamma), gamma=gamma)
    if flex[0] is not None:
        flex[0].close()
    for gamma in GAMMAS:
        attempt(f"ref flex {gamma:g}", ref_flex(gamma), gamma=gamma)
    for p in plans:
        p.close()
    del out, lse, pk, pv, mask, o_ref

    try:
        stats, recall = analyse(q, k, masks, sample_positions(L, args.recall_rows), scale)
    except Exception as e:  # the rows measured so far still count
        print(f"    recall: failed: {short(e)}", flush=True)
        stats, recall = {}, {}
    ref_ms = {r.get("gamma"): r["ms"] for r in rows if r["method"].startswith("ref") and r["ms"]}
    for r in rows:
        r["input_stats"] = stats
        if r["method"] in recall:
            r["recall"], r["recall_p10"] = recall[r["method"]]
        if t_dense and r["density"] is not None and r["kernel_ms"] and "flex" in r["method"]:
            r["efficiency"] = r["density"] * t_dense / r["kernel_ms"]
        if t_dense and r["method"].startswith("ours flex") and r["select_ms"]:
            r["select_share"] = r["select_ms"] / t_dense
        if r["method"].startswith("ours flex") and r["ms"] and ref_ms.get(r["gamma"]):
            r["speedup_vs_ref"] = ref_ms[r["gamma"]] / r["ms"]
    return rows


# --- output ----------------------------------------------------------------

HEADER = ("| input (keys holding 90% of a row's mass: median, p90) | length | method | ms | selection ms | kernel ms "
          "| density | rel err | recall (mean, p10) | kernel eff. | selection / dense | speed-up vs ref | note |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def fmt(x, spec, unit=""):
    return "-" if x is None else format(x, spec) + unit


def table(rows):
    out = [HEADER]
    for r in rows:
        st = r.get("input_stats") or {}
        inp = r["input"]
        if st:
            inp += f" ({st['median_keys_90'] * 100:.2g}%, {st['p90_keys_90'] * 100:.2g}%)"
        rec = "-" if r["recall"] is None else f"{r['recall']:.4f}, {r['recall_p10']:.3f}"
        out.append(f"| {inp} | {r['length'] // 1024}K | {r['method']} | {fmt(r['ms'], '.2f')} "
                   f"| {fmt(r['select_ms'], '.2f')} | {fmt(r['kernel_ms'], '.2f')} | {fmt(r['density'], '.4f')} "
                   f"| {fmt(r['rel_err'], '.4f')} | {rec} | {fmt(r['efficiency'], '.2f')} "
                   f"| {fmt(r['select_share'], '.3f')} | {fmt(r['speedup_vs_ref'], '.2f', 'x')} | {r['note']} |")
    return "\n".join(out)


def report(args, rows, meta):
    print("\ncommand: " + " ".join(["python3"] + sys.argv))
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(["python3"] + sys.argv), **meta, "rows": rows}, f, indent=1)


# --- the CPU dry run -------------------------------------------------------

def dry_run(args):
    """Builds every synthetic input on the CPU at 4K and checks the code that
    does not need a GPU: shapes, mask packing against attn_cuda.h's layout,
    densities against counted pairs, recall, the reference's block list, the
    table and the JSON. Exit 0 / 1 (a check failed)."""
    import torch.nn.functional as F
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_attn_cuda as bac
    L, H, KH, D = 4096, 32, 8, 128
    nb, scale = L // BLK, D ** -0.5
    bad = []

    def check(cond, what):
        print(f"  {'ok  ' if cond else 'FAIL'} {what}")
        bad.extend([] if cond else [what])

    def keymask(m):  # (H, nb, nb) blocks -> (H, L, L) causal keys
        return m.repeat_interleave(BLK, 1).repeat_interleave(BLK, 2) & torch.ones(L, L, dtype=torch.bool).tril()

    causal = torch.ones(nb, nb, dtype=torch.bool).tril()
    eye = torch.eye(nb, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    rnd = (torch.rand(H, nb, nb, generator=g) < 0.2) & causal | eye
    sinkdiag = eye.expand(H, nb, nb).clone()
    sinkdiag[:, :, 0] = True
    # the packed words, read back with attn_cuda.h's formula bit by bit
    words = bac.pack_mask(rnd).view(-1)
    check(words.numel() == H * nb * ((nb + 31) // 32), "mask words: H * n_qb * ceil(n_kb / 32)")
    wpr = (nb + 31) // 32
    ok = all(bool((int(words[(h * nb + qb) * wpr + kb // 32]) >> (kb % 32)) & 1) == bool(rnd[h, qb, kb])
             for h in (0, 7, 31) for qb in range(nb) for kb in range(qb + 1))
    check(ok, "pack_mask bits at (h * n_qb + qb) * words + kb / 32, bit kb % 32")
    check(torch.equal(unpack_mask(words, H, nb, nb), rnd), "unpack_mask(pack_mask(m)) == m")
    above = rnd | ~causal  # bits above the diagonal are ignored by the kernel
    check(torch.equal(unpack_mask(bac.pack_mask(above).view(-1), H, nb, nb), rnd), "bits above the diagonal dropped")
    # densities: pairs counted key by key
    for name, m in (("full", causal.expand(H, nb, nb)), ("random 0.2", rnd), ("sink+diagonal", sinkdiag)):
        check(abs(mask_density(m, L) - int(keymask(m).sum()) / (H * L * (L + 1) / 2)) < 1e-12,
              f"density of {name} = counted pairs / causal pairs ({mask_density(m, L):.4f})")
    # the reference's flat block list
    idx = [torch.nonzero(rnd[h].reshape(-1)).view(-1) for h in range(H)]
    idx[0] = torch.cat((idx[0], torch.zeros(5, dtype=torch.long)))  # its padding entries are block (0, 0)
    check(torch.equal(ref_mask(idx, H, nb, "cpu"), rnd), "ref_mask(flat q_block * nb + k_block) == m")
    sh = _einops_shim()
    x = torch.randn(1, 8, 4, 3, 5)
    check(torch.equal(sh.rearrange(x, "b h g i j -> b (h g) i j"), x.reshape(1, 32, 3, 5)), "einops shim")
    rows = []
    for i, (name, spec) in enumerate(INPUTS.items()):
        q, k, v = gen_inputs(spec, L, H, KH, D, args.seed + i, "cpu")
        check(q.shape == (L, H, D) and k.shape == (L, KH, D) and v.shape == (L, KH, D) and q.dtype == torch.bfloat16,
              f"{name}: shapes {tuple(q.shape)} {tuple(k.shape)} {tuple(v.shape)} bf16")
        check(bool(torch.isfinite(q.float()).all() and torch.isfinite(k.float()).all()), f"{name}: finite")
        q2, _, _ = gen_inputs(spec, L, H, KH, D, args.seed + i, "cpu")
        check(torch.equal(q, q2), f"{name}: seeded (the same twice)")
        masks = {"full": causal.expand(H, nb, nb), "random 0.2": rnd, "sink+diagonal": sinkdiag,
                 "diagonal": eye.expand(H, nb, nb)}
        pos = sample_positions(L, args.recall_rows)
        stats, rec = analyse(q, k, masks, pos, scale)
        # recall of one mask once more, from the (H, L, L) key mask and all sampled rows at once
        pp = torch.tensor(pos)
        sc = torch.einsum("phd,lhd->hpl", q[pp].float(), k.float().repeat_interleave(H // KH, 1)) * scale
        sc.masked_fill_(torch.arange(L)[None, None, :] > pp[None, :, None], float("-inf"))
        bf = float((sc.softmax(-1) * keymask(sinkdiag)[:, pp, :]).sum(-1).mean())
        check(abs(bf - rec["sink+diagonal"][0]) < 1e-5, f"{name}: recall {bf:.5f} as counted over the key mask")
        print(f"    {name}: 90% of a row's mass in a median {stats['median_keys_90'] * 100:.2f}% of its keys "
              f"(p90 {stats['p90_keys_90'] * 100:.1f}%); recall " +
              ", ".join(f"{n} {r[0]:.4f}" for n, r in rec.items()))
        check(abs(rec["full"][0] - 1) < 1e-5 and abs(rec["full"][1] - 1) < 1e-5, f"{name}: recall of the full mask 1")
        check(rec["diagonal"][0] <= rec["sink+diagonal"][0] + 1e-9 <= 1 + 1e-6, f"{name}: recall grows with the mask")
        # the mask's output against SDPA: full mask == dense, fewer keys, more error
        qs, ks, vs = (t.permute(1, 0, 2).unsqueeze(0).float() for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)[0].permute(1, 0, 2)
        errs = {}
        for mn in ("full", "sink+diagonal"):
            om = F.scaled_dot_product_attention(qs, ks.repeat_interleave(H // KH, 1), vs.repeat_interleave(H // KH, 1),
                                                attn_mask=keymask(masks[mn]).unsqueeze(0))[0].permute(1, 0, 2)
            errs[mn] = rel_err(om, o)
            rows.append(row(name, L, f"dry {mn}", density=mask_density(masks[mn], L), rel_err=errs[mn],
                            recall=rec[mn][0], recall_p10=rec[mn][1], input_stats=stats, note="CPU, no timing"))
        check(errs["full"] < 1e-5, f"{name}: full mask == dense (rel err {errs['full']:.1e})")
        check(errs["sink+diagonal"] > errs["full"], f"{name}: sink+diagonal rel err {errs['sink+diagonal']:.3f}")
    if args.peer:
        try:
            _, info = load_peer(args.peer)
            print(f"  ok   the reference imports on the CPU (shims: {info['shims'] or 'none'})")
        except Exception as e:  # no GPU here: import failures are reported, not fatal
            print(f"  note the reference does not import here: {str(e).splitlines()[0][:120]}")
    report(args, rows, {"dry_run": True})
    print(f"\ndry run: {'FAILED: ' + '; '.join(bad) if bad else 'all checks passed'}")
    return 1 if bad else 0


# --- main ------------------------------------------------------------------

def parse_lengths(s):
    out = []
    for x in s.split(","):
        x = x.strip().upper()
        n = int(x[:-1]) * 1024 if x.endswith("K") else int(x)
        if n < 2 * BLK or n % BLK:
            raise argparse.ArgumentTypeError(f"length {x}: a multiple of {BLK}, at least {2 * BLK}")
        out.append(n)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", help="libattn_cuda.so (built as tests/gpu/libattn_cuda.so)")
    ap.add_argument("--peer", default=".peer/flexprefill", help="the fetched reference (fetch_peer_flexprefill.sh)")
    ap.add_argument("--lengths", type=parse_lengths, default=parse_lengths("32K,64K,128K"))
    ap.add_argument("--quick", action="store_true", help="32K only")
    ap.add_argument("--inputs", default=",".join(INPUTS), help="synthetic inputs: " + ", ".join(INPUTS))
    ap.add_argument("--real", help="captured q, k, v (.pt, .npz, or a directory of q.npy k.npy v.npy)")
    ap.add_argument("--real-layer", type=int, default=0, help="the layer when --real holds several")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--recall-rows", type=int, default=256, help="sampled positions (every head) for recall")
    ap.add_argument("--budget-s", type=float, default=2.0, help="seconds of timed calls per measurement")
    ap.add_argument("--max-reps", type=int, default=20)
    ap.add_argument("--method-limit", type=int, default=240, help="seconds a method may take at one length")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="CPU checks at 4K, no GPU, no timing")
    args = ap.parse_args()
    try:
        load_torch()
    except ImportError:
        print("SKIP: torch is not installed")
        return 77
    if args.dry_run:
        return dry_run(args)
    if not args.lib:
        ap.error("--lib is required (or --dry-run)")
    if not torch.cuda.is_available():
        print("SKIP: no GPU")
        return 77
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_attn_cuda as bac
    import triton
    lib = ctypes.CDLL(args.lib)
    lib.attn_cuda_mask_words.restype = ctypes.c_size_t
    lib.attn_cuda_mask_words.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    peer, peer_err, info = None, "", {}
    try:
        peer, info = load_peer(args.peer)
    except Exception as e:
        peer_err = f"import: {short(e)}"
        print(f"# the reference: failed to import ({peer_err})")
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cudnn": torch.backends.cudnn.version(), "peer": info, "peer_error": peer_err, "gammas": GAMMAS,
            "tau": TAU, "min_budget": MIN_BUDGET, "block": BLK, "seed": args.seed}
    print(f"# {meta['device']}, torch {meta['torch']}, triton {meta['triton']}, cuDNN {meta['cudnn']}; "
          f"reference {info.get('commit', '-')[:12]} (shims: {info.get('shims') or 'none'})", flush=True)
    lengths = [32768] if args.quick else args.lengths
    names = [n for n in args.inputs.split(",") if n]
    for n in names:
        if n not in INPUTS:
            ap.error(f"unknown input {n} ({', '.join(INPUTS)})")
    real = load_real(args.real, args.real_layer) if args.real else None
    rows = []
    signal.signal(signal.SIGTERM, on_term)
    try:
        run_all(args, lib, bac, peer, peer_err, meta, lengths, names, real, rows)
    except Stopped:
        print("# stopped (SIGTERM): the rows so far", flush=True)
        report(args, rows, meta)
        return 124
    except CaseFailed:
        report(args, rows, meta)
        return 1
    report(args, rows, meta)
    return 0


class CaseFailed(Exception):
    pass


def run_all(args, lib, bac, peer, peer_err, meta, lengths, names, real, rows):
    for L in lengths:
        cases = [(n, list(INPUTS).index(n)) for n in names]  # an input's seed does not depend on --inputs
        if real is not None:
            cases.append(("real", None))
        for name, i in cases:
            try:
                if i is None:
                    Lr = min(L, real[0].shape[0] // BLK * BLK)
                    if Lr < L and any(Lr == r["length"] and r["input"] == "real" for r in rows):
                        continue  # shorter than asked and already measured at its own length
                    q, k, v = (t[:Lr].to(DEV) for t in real)
                else:
                    q, k, v = gen_inputs(INPUTS[name], L, 32, 8, 128, args.seed * 1000003 + i * 7919 + L, DEV)
                print(f"  {name} L={q.shape[0]}", flush=True)
                rows += run_case(args, lib, bac, peer, peer_err, name, q, k, v)
            except Exception as e:  # a broken CUDA context: keep what was measured
                print(f"  {name} L={L}: failed: {short(e)}; stopping", flush=True)
                rows.append(row(name, L, "all", note=f"failed: {short(e)}"))
                raise CaseFailed() from e
            for r in rows[-(len(GAMMAS) * 2 + 2):]:
                print(f"    {r['method']}: {fmt(r['ms'], '.2f', ' ms')} density {fmt(r['density'], '.4f')} "
                      f"rel err {fmt(r['rel_err'], '.4f')} recall {fmt(r['recall'], '.4f')} {r['note']}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
