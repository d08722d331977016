#!/usr/bin/env python3
"""Side by side on one H200: our GPU FlexPrefill against the public FlexPrefill
reference (github.com/bytedance/FlexPrefill, Apache-2.0, Triton kernels), our
GPU AnchorAttention beside them, with dense attention (ours and torch SDPA)
as the baseline (issue 11, "Kernels").

One layer of causal prefill, bf16, the same inputs for every method:
synthetic ones at 32 query / 8 KV heads, d 128, and real activations at the
captured model's shape (the default model: 9 / 3 heads, d 64). Methods:
  sdpa dense      torch SDPA, the best of its default GQA choice and cuDNN on
                  K/V expanded to all heads (as bench_attn_cuda.py); its output
                  is the reference of every error below
  ours dense      attn_cuda_run without a mask (libattn_cuda.so, paged pool)
  ours flex g mbN attn_cuda_flex_select (the per-layer selection) then
                  attn_cuda_run with its block mask, at gamma g and min_budget
                  N tokens; timed together (ms), the selection alone and the
                  kernel alone (attn_cuda_flex_plan is the once-per-step host
                  part and is not timed)
  ours anchor t   attn_cuda_anchor_run at theta t (nats), anchor_init and
                  anchor_local 2048, anchor_lookback 1024 (the policy
                  defaults): ms = the run alone
                  (per layer: anchor pass, selection, token gather, merge);
                  attn_cuda_anchor_plan (once per step: page tables to the
                  device, the anchor pass's plan) + run timed together is in
                  the note and the JSON (plan_run_ms). The API has no entry
                  for the passes alone; the "selection ms" column of the
                  anchor rows is the same run at theta = -inf (row "ours
                  anchor -inf": the anchor pass, every candidate key scored,
                  empty stripe lists, the merge), the part that does not
                  depend on theta
  ref flex g      the reference's flex_prefill_attention (its entry point),
                  and its two halves alone: get_active_blocks (selection) and
                  triton_block_wise_attention (kernel, with its index prep)
The reference runs at tau 0.1, min_budget 1024 tokens, no max_budget, block
128 (the paper's defaults); ours at the same tau and block.

Per method: median time over CUDA events; density = computed query-key pairs /
causal pairs (ours flex: attn_cuda_mask_pairs over the mask; ours anchor:
attn_cuda_anchor_pairs, exact integer sums; the reference: the pairs its
block list implies, counted the same way: an off-diagonal block 128 x 128, a
diagonal block 128 x 129 / 2; its own "computational ratio", selected blocks
over the full square grid, is kept in the JSON); rel err = ||o - o_sdpa|| /
||o_sdpa|| in f32; recall = the share of the dense softmax mass (f32) of
sampled rows (--recall-rows positions spread over the sequence, every head)
that falls on the keys the method computes: from the mask bits for the block
masks (ours flex, the reference; 1 for dense), and for AnchorAttention, whose
key lists are not read back here, from the LSE it returns: exp(lse_method -
lse_dense) per sampled row and head, exactly the attended mass since each
key is attended at most once (the JSON's recall_lse has the same for ours
dense and flex, a check of the two ways). Derived: kernel efficiency =
density x t_dense(ours) / t_kernel (AnchorAttention: / its whole run);
selection share = t_select / t_dense(ours); speed-up vs ref = the
reference's total time / ours at the same gamma and min_budget 1024.

Equal error (bench_sparse_common.py says the rule exactly): per input and
length, for each reference row our fastest FlexPrefill setting with a rel
err <= the reference's (speed-up = ref ms / ours ms), for each FlexPrefill
setting the fastest AnchorAttention setting at <= its error, and the other
way round; printed after each case and at the end, and in the JSON
("equal_error").

Inputs (seeded, generated on the GPU): synthetic with an attention sink,
locality (q.k a sum of cosines of the distance, like RoPE on a constant
vector), heavy key columns, and noise, each head drawing its own strengths,
at three sparsity levels; --capture-hf GGUF captures real q, k, v of
--capture-layers from one transformers forward of the repository's text
(capture_hf.py: how, and what the text is) and runs every --capture-lengths
prefix of them ("real L<layer>"); --real FILE adds q, k, v captured
elsewhere. Each input's line says how sparse it is: the share of a row's
keys that holds 90% of its softmax mass (median and 90th percentile over the
sampled rows).

--preset equal-error: the run for the equal-error tables in a few minutes
of GPU (the options it sets are in PRESETS; flags given explicitly win):
synthetic moderate and sink at 32K and 128K, real at 32K, 64K and 128K
(three layers), ours flex at gamma 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95 x
min_budget 64, 256 and 1024 x both vertical-slash rules (flex_select tokens
and blocks), ours anchor at theta 3, 6, 9, 12 (and -inf), the reference at 0.9 and
0.95, 3 timed calls per measurement, a guard per case. Estimate from
docs/benchmarks.md's times: 128K synthetic about 35-40 s a case, 32K about
6, real about 15 s per layer for its three lengths, capture and Triton
compiles about 1 min: about 3.5-4 min in all (2.3 min on an H100 on
2026-12-07).

A method that fails (the reference on a shape its Triton kernels do not
take, a capacity) is a table row "failed: <reason>"; the others still run.
A case past --case-limit seconds skips its remaining methods (their rows
say so); SIGTERM prints the rows so far. --dry-run checks on the CPU at 4K
what needs no GPU: the input builder, the mask packing, density, recall
(both ways), the table and the equal-error rule on FABRICATED rows (marked
as such), and the capture on a tiny random transformers Llama when
transformers is importable (with --capture-hf GGUF also the real model at
2K tokens); exit 77 when torch is not installed.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sparse_common import equal_error, equal_error_table, lse_recall, row, table  # noqa: E402

torch = None  # imported in main(): the module stays importable without torch
DEV = "cuda"  # where the measured tensors live
BLK = 128
TAU = 0.1
MIN_BUDGET = 1024  # the reference's (the paper's default)

# --preset NAME: option defaults (flags given explicitly win)
PRESETS = {
    "equal-error": dict(inputs="moderate,sink", lengths="32K,128K", capture_lengths="32K,64K,128K",
                        gammas="0.5,0.6,0.7,0.8,0.85,0.9,0.95", min_budgets="64,256,1024", thetas="3,6,9,12",
                        flex_selects="tokens,blocks",
                        ref_gammas="0.9,0.95", max_reps=3, budget_s=0.2, recall_rows=128, case_limit=180,
                        method_limit=90),  # a first Triton compile (the reference) fits
}

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


def analyse(q, k, masks, positions, scale, lses=None):
    """Over the sampled rows (every head): the share of a row's causal keys
    holding 90% of its softmax mass (median, p90); per block mask, the dense
    mass on the keys it computes (mean, 10th percentile); per entry of lses
    (name -> (len(positions), H) f32 LSEs a method returned for those rows),
    the same mass from the LSEs (bench_sparse_common.lse_recall)."""
    L, H, _ = q.shape
    g = H // k.shape[1]
    pos = torch.tensor(positions, device=q.device)
    keys = torch.arange(L, device=q.device)
    fracs, rec, lse_d = [], {name: [] for name in masks}, []
    kf = None
    for h in range(H):
        if h % g == 0:
            kf = k[:, h // g].float()
        s = (q[pos, h].float() @ kf.T) * scale
        s.masked_fill_(keys[None, :] > pos[:, None], float("-inf"))
        lse_d.append(torch.logsumexp(s, -1))
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
    lse_d = torch.stack(lse_d, 1)
    from_lse = {name: lse_recall(x.to(lse_d.device), lse_d) for name, x in (lses or {}).items()}
    return stats, recall, from_lse


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
    compiles there), then as many calls as fit the budget, 3 to max_reps
    (3 at once when max_reps <= 3: no estimate call)."""
    fn()
    torch.cuda.synchronize()
    reps = 3
    if max_reps > 3:
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
                        ("max_budget", ctypes.c_int), ("prompt_end", ctypes.c_int),  # prompt_end 0: unknown
                        ("blocks", ctypes.c_int)]  # 1: flex_select "blocks"
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

    def plan(self, gamma, tau, min_budget, max_budget, mask_words, blocks=0):
        b = self.bac.Batch(1, self.keep[0], self.keep[1], self.keep[2], self.keep[3], None)
        sel = (ctypes.c_uint8 * 1)(1)
        pol = (self.Policy * 1)(self.Policy(gamma, tau, min_budget, max_budget, 0, blocks))
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


class AnchorSel:
    """attn_cuda_anchor_t over one sequence of L rows (anchor_cuda.h)."""

    def __init__(self, lib, bac, H, KH, D, ps, L, perm, local):
        self.lib, self.bac = lib, bac

        class Policy(ctypes.Structure):
            _fields_ = [("theta", ctypes.c_float), ("anchor_init", ctypes.c_int), ("anchor_local", ctypes.c_int),
                        ("anchor_lookback", ctypes.c_int), ("probe", ctypes.c_float)]
        self.Policy = Policy
        vp = ctypes.c_void_p
        lib.attn_cuda_anchor_create.argtypes = [ctypes.POINTER(bac.Shape), ctypes.c_int, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int, ctypes.POINTER(vp)]
        lib.attn_cuda_anchor_plan.argtypes = [vp, ctypes.POINTER(bac.Batch), ctypes.POINTER(ctypes.c_uint8),
                                              ctypes.POINTER(Policy), vp]
        lib.attn_cuda_anchor_run.argtypes = [vp, vp, vp, vp, vp, vp, vp]
        lib.attn_cuda_anchor_pairs.argtypes = [vp, vp, vp]
        lib.attn_cuda_anchor_destroy.argtypes = [vp]
        lib.attn_cuda_anchor_destroy.restype = None
        shape = bac.Shape(H, KH, D, ps, L // ps, D ** -0.5)
        self.a = vp()
        rc = lib.attn_cuda_anchor_create(ctypes.byref(shape), 1, L, L, local, ctypes.byref(self.a))
        if rc:
            raise RuntimeError(f"attn_cuda_anchor_create: {rc}")
        self.keep = [bac.i32([0, L]), bac.i32([0, L // ps]), bac.i32(perm), bac.i32([L])]

    def plan(self, theta, init, local, lookback):
        b = self.bac.Batch(1, self.keep[0], self.keep[1], self.keep[2], self.keep[3], None)
        sel = (ctypes.c_uint8 * 1)(1)
        pol = (self.Policy * 1)(self.Policy(theta, init, local, lookback))
        rc = self.lib.attn_cuda_anchor_plan(self.a, ctypes.byref(b), sel, pol, stream())
        if rc:
            raise RuntimeError(f"attn_cuda_anchor_plan: {rc}")

    def run(self, q, pk, pv, out, lse):
        rc = self.lib.attn_cuda_anchor_run(self.a, q.data_ptr(), pk.data_ptr(), pv.data_ptr(), out.data_ptr(),
                                           lse.data_ptr(), stream())
        if rc:
            raise RuntimeError(f"attn_cuda_anchor_run: {rc}")

    def pairs(self):
        """The pairs of the last run, all heads (exact)."""
        buf = torch.zeros(1, dtype=torch.int64, device=DEV)
        rc = self.lib.attn_cuda_anchor_pairs(self.a, buf.data_ptr(), stream())
        if rc:
            raise RuntimeError(f"attn_cuda_anchor_pairs: {rc}")
        return int(buf.item())

    def close(self):
        self.lib.attn_cuda_anchor_destroy(self.a)


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


def run_case(args, lib, bac, peer, peer_err, inp, q, k, v, rows):
    """Every method on one input: appends its rows to rows as they are
    measured (a SIGTERM keeps those), then adds recall and the derived
    columns."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    L, H, D = q.shape
    KH = k.shape[1]
    ps, nb, scale = 64, L // BLK, D ** -0.5
    budget, lim = args.budget_s, args.method_limit
    masks, lses = {}, {}
    t_case = time.perf_counter()
    positions = sample_positions(L, args.recall_rows)
    pos_t = torch.tensor(positions, device=DEV)

    def attempt(method, fn, **kw):
        left = args.case_limit - (time.perf_counter() - t_case) if args.case_limit else lim
        if left < 1:
            print(f"    {method}: skipped (the case's {args.case_limit} s guard)", flush=True)
            rows.append(row(inp, L, method, note=f"skipped: the case's {args.case_limit} s guard", **kw))
            return rows[-1]
        try:
            with time_limit(max(1, int(min(lim, left)))):
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
        lses["ours dense"] = lse[pos_t].clone()
        return row(inp, L, "ours dense", ms=t * 1e3, kernel_ms=t * 1e3, density=1.0, rel_err=rel_err(out, o_ref),
                   recall=1.0, recall_p10=1.0)
    t_dense = attempt("ours dense", ours_dense)["ms"]

    words = lib.attn_cuda_mask_words(L, L, H)
    mask = torch.zeros(words, dtype=torch.int32, device=DEV)
    flex, sparse, anc = [None], [None], [None]

    def ours_flex(gamma, mb, name, blocks=0):
        def fn():
            if flex[0] is None:
                if not hasattr(lib, "attn_cuda_flex_select"):
                    raise Unavailable("libattn_cuda.so has no attn_cuda_flex_select (flex.cu not built in)")
                flex[0] = FlexSel(lib, bac, H, KH, D, ps, L, perm)
                sparse[0] = bac.Attn(lib, 0, H, KH, D, ps, L // ps, *kv, mask_off=[0])
                plans.append(sparse[0])
            f, sp = flex[0], sparse[0]
            t0 = time.perf_counter()
            f.plan(gamma, TAU, mb, 0, words, blocks)  # once per step (all layers): not in the times
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
            masks[name] = m
            lses[name] = lse[pos_t].clone()
            dens = mask_pairs(lib, sp, mask) / (H * L * (L + 1) / 2)
            if abs(dens - mask_density(m, L)) > 1e-9:
                raise RuntimeError(f"attn_cuda_mask_pairs density {dens} != the unpacked mask's {mask_density(m, L)}")
            qa = f.query_aware_heads()
            return row(inp, L, name, family="flex", gamma=gamma, min_budget=mb,
                       flex_select="blocks" if blocks else "tokens", ms=t_all * 1e3,
                       select_ms=t_sel * 1e3, kernel_ms=t_ker * 1e3, density=dens, rel_err=rel_err(out, o_ref),
                       note=(f"{qa}/{H} heads query-aware; " if qa is not None else "") +
                       f"step plan {t_plan * 1e3:.2f} ms (host)")
        return fn

    def ours_anchor(theta, name):
        def fn():
            if anc[0] is None:
                if not hasattr(lib, "attn_cuda_anchor_run"):
                    raise Unavailable("libattn_cuda.so has no attn_cuda_anchor_run (anchor.cu not built in)")
                anc[0] = AnchorSel(lib, bac, H, KH, D, ps, L, perm, args.anchor_local)
            a = anc[0]
            t0 = time.perf_counter()
            a.plan(theta, args.anchor_init, args.anchor_local, args.anchor_lookback)
            torch.cuda.synchronize()
            t_plan = time.perf_counter() - t0
            t_run = timed(lambda: a.run(q, pk, pv, out, lse), budget, args.max_reps)

            def both():
                a.plan(theta, args.anchor_init, args.anchor_local, args.anchor_lookback)
                a.run(q, pk, pv, out, lse)
            t_both = timed(both, budget, args.max_reps)
            a.run(q, pk, pv, out, lse)
            lses[name] = lse[pos_t].clone()
            dens = a.pairs() / (H * L * (L + 1) / 2)
            fam, th = ("anchor", theta) if theta > -math.inf else ("anchor-fixed", "-inf")  # JSON has no -inf
            return row(inp, L, name, family=fam, theta=th,
                       ms=t_run * 1e3, plan_run_ms=t_both * 1e3, density=dens, rel_err=rel_err(out, o_ref),
                       note=f"plan + run {t_both * 1e3:.2f} ms; step plan {t_plan * 1e3:.2f} ms (host)")
        return fn

    def ref_flex(gamma, name):
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
                masks[name] = torch.ones(H, nb, nb, dtype=torch.bool, device=DEV).tril()
                return row(inp, L, name, family="ref", gamma=gamma, ms=t_all * 1e3, density=1.0, rel_err=err,
                           note="dense at this length (its rule)")
            t_sel = timed(lambda: peer.get_active_blocks(q4, k4, v4, BLK, gamma, mb, xb, TAU, False), budget,
                          args.max_reps)
            idx = peer.get_active_blocks(q4, k4, v4, BLK, gamma, mb, xb, TAU, False)
            t_ker = timed(lambda: peer.triton_block_wise_attention(q4, k4, v4, idx, BLK), budget, args.max_reps)
            m = ref_mask(idx[0], H, nb, DEV)
            masks[name] = m
            return row(inp, L, name, family="ref", gamma=gamma, ms=t_all * 1e3, select_ms=t_sel * 1e3,
                       kernel_ms=t_ker * 1e3, density=mask_density(m, L), rel_err=err, ref_ratio=ratio,
                       note=f"its ratio {ratio:.3f} (of the square grid)")
        return fn

    for gamma in args.ref_gammas:
        attempt(f"ref flex {gamma:g}", ref_flex(gamma, f"ref flex {gamma:g}"), family="ref", gamma=gamma)
    for sel in args.flex_selects:
        for mb in args.min_budgets:
            for gamma in args.gammas:
                name = f"ours flex {gamma:g} mb{mb}" + (" blocks" if sel == "blocks" else "")
                attempt(name, ours_flex(gamma, mb, name, sel == "blocks"), family="flex", gamma=gamma,
                        min_budget=mb, flex_select=sel)
    if flex[0] is not None:
        flex[0].close()
    if args.thetas:
        fixed = attempt("ours anchor -inf", ours_anchor(-math.inf, "ours anchor -inf"), family="anchor-fixed")
        for theta in args.thetas:
            r = attempt(f"ours anchor {theta:g}", ours_anchor(theta, f"ours anchor {theta:g}"), family="anchor",
                        theta=theta)
            if r["ms"]:
                r["select_ms"] = fixed["ms"]
    if anc[0] is not None:
        anc[0].close()
    for p in plans:
        p.close()
    del out, lse, pk, pv, mask, o_ref

    try:
        stats, recall, from_lse = analyse(q, k, masks, positions, scale, lses)
    except Exception as e:  # the rows measured so far still count
        print(f"    recall: failed: {short(e)}", flush=True)
        stats, recall, from_lse = {}, {}, {}
    ref_ms = {r.get("gamma"): r["ms"] for r in rows if r["family"] == "ref" and r["ms"]}
    for r in rows:
        r["input_stats"] = stats
        if r["method"] in recall:
            r["recall"], r["recall_p10"] = recall[r["method"]]
        elif r["recall"] is None and r["method"] in from_lse:  # dense keeps its 1 (its LSE form: a check)
            r["recall"], r["recall_p10"] = from_lse[r["method"]]
            r["recall_from"] = "lse"
        if r["method"] in from_lse:
            r["recall_lse"] = from_lse[r["method"]][0]
        if t_dense and r["density"] is not None and r["ms"] and r["family"] in ("flex", "ref"):
            r["efficiency"] = r["density"] * t_dense / r["kernel_ms"] if r["kernel_ms"] else None
        if t_dense and r["density"] is not None and r["ms"] and r["family"] == "anchor":
            r["efficiency"] = r["density"] * t_dense / r["ms"]
        if t_dense and r["family"] in ("flex", "anchor") and r["select_ms"]:
            r["select_share"] = r["select_ms"] / t_dense
        if r["family"] == "flex" and r.get("min_budget") == MIN_BUDGET and r["ms"] and ref_ms.get(r["gamma"]):
            r["speedup_vs_ref"] = ref_ms[r["gamma"]] / r["ms"]
    both = [abs(r["recall"] - r["recall_lse"]) for r in rows if r.get("recall_lse") is not None
            and r.get("recall_from") != "lse" and r["recall"] is not None]
    if both:
        print(f"    recall from the masks vs from the LSEs (dense, flex): max difference {max(both):.2e}", flush=True)
    print(f"    case done in {time.perf_counter() - t_case:.1f} s", flush=True)


# --- output ----------------------------------------------------------------

def report(args, rows, meta, final=True):
    """The tables (final: with the command) and the JSON so far."""
    ee = equal_error(rows)
    if final:
        print("\ncommand: " + " ".join(["python3"] + sys.argv))
        print(table(rows))
        print("\nequal error (bench_sparse_common.py: rel err <= the target's, same input and length; fastest):")
        print(equal_error_table(ee))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(["python3"] + sys.argv), **meta, "rows": rows, "equal_error": ee}, f,
                      indent=1)


# --- the CPU dry run -------------------------------------------------------

def dry_run(args):
    """Builds every synthetic input on the CPU at 4K and checks the code that
    does not need a GPU: shapes, mask packing against attn_cuda.h's layout,
    densities against counted pairs, recall, the reference's block list, the
    table and the JSON. Exit 0 / 1 (a check failed)."""
    import torch.nn.functional as F
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
        # recall of one mask once more, from the (H, L, L) key mask and all sampled rows at once, and the
        # LSE of the attention over exactly that mask's keys (what a kernel returns) for the LSE form
        pp = torch.tensor(pos)
        sc = torch.einsum("phd,lhd->hpl", q[pp].float(), k.float().repeat_interleave(H // KH, 1)) * scale
        sc.masked_fill_(torch.arange(L)[None, None, :] > pp[None, :, None], float("-inf"))
        km = keymask(sinkdiag)[:, pp, :]
        lse_m = sc.masked_fill(~km, float("-inf")).logsumexp(-1).T.contiguous()  # (positions, H)
        stats, rec, from_lse = analyse(q, k, masks, pos, scale, {"sink+diagonal": lse_m})
        bf = float((sc.softmax(-1) * km).sum(-1).mean())
        check(abs(bf - rec["sink+diagonal"][0]) < 1e-5, f"{name}: recall {bf:.5f} as counted over the key mask")
        d = max(abs(from_lse["sink+diagonal"][i] - rec["sink+diagonal"][i]) for i in (0, 1))
        check(d < 1e-5, f"{name}: recall from the LSEs = from the mask ({d:.1e})")
        del sc, km
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
    # the equal-error rule on FABRICATED rows; their table is printed, never written to --out
    from bench_sparse_common import check_equal_error
    check_equal_error(check)
    meta = {"dry_run": True}
    try:
        import transformers  # noqa: F401
        have_tf = True
    except ImportError:
        print("  note transformers is not installed: the capture is not checked")
        have_tf = False
    if have_tf:
        import capture_hf
        capture_hf.check_tiny(check, torch)
        if args.capture_hf:
            try:
                rows += dry_capture(args, check, meta)
            except Exception as e:
                check(False, f"capture of {args.capture_hf}: {short(e)}")
    if args.peer:
        try:
            _, info = load_peer(args.peer)
            print(f"  ok   the reference imports on the CPU (shims: {info['shims'] or 'none'})")
        except Exception as e:  # no GPU here: import failures are reported, not fatal
            print(f"  note the reference does not import here: {str(e).splitlines()[0][:120]}")
    report(args, rows, meta)
    print(f"\ndry run: {'FAILED: ' + '; '.join(bad) if bad else 'all checks passed'}")
    return 1 if bad else 0


# --- real activations ------------------------------------------------------

def capture_real(args, device, dtype, n_tokens):
    """q, k, v of --capture-layers from one forward of n_tokens of text
    (capture_hf.py): ({layer: (q, k, v)}, info)."""
    import capture_hf
    t0 = time.perf_counter()
    model, tok = capture_hf.load_gguf(args.capture_hf, device, dtype)
    t1 = time.perf_counter()
    ids, tinfo = capture_hf.corpus_ids(tok, n_tokens)
    caps, info = capture_hf.capture(model, torch.tensor([ids], device=device), args.capture_layers)
    del model
    info.update(tinfo, gguf=os.path.basename(args.capture_hf), load_s=t1 - t0, capture_s=time.perf_counter() - t1)
    print(f"# captured {args.capture_hf}: {n_tokens} tokens of {info['text']} (its {info['base_tokens']} tokens "
          + (f"repeated from token {info['repeated_from']}" if info["repeated_from"] else "not repeated")
          + f"), layers {info['layers']}, transformers {info['transformers']} ({info['implementation']}); "
          f"load {info['load_s']:.1f} s, forward {info['capture_s']:.1f} s", flush=True)
    return caps, info


def dry_capture(args, check, meta):
    """The real model on the CPU at 2K tokens: the capture's shapes, and the
    analysis on them (no timing)."""
    L = 2048
    caps, info = capture_real(args, "cpu", torch.float32, L)
    meta["capture"] = info
    rows = []
    for li, qkv in sorted(caps.items()):
        q, k, v = (x.to(torch.bfloat16) for x in qkv)
        H, KH, D = q.shape[1], k.shape[1], q.shape[2]
        check(q.shape[0] == L and k.shape == (L, KH, D) and v.shape == k.shape and H % KH == 0,
              f"real L{li}: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
        check(all(bool(torch.isfinite(x.float()).all()) for x in (q, k, v)), f"real L{li}: finite")
        nb = L // BLK
        masks = {"full": torch.ones(H, nb, nb, dtype=torch.bool).tril(),
                 "diagonal": torch.eye(nb, dtype=torch.bool).expand(H, nb, nb)}
        stats, rec, _ = analyse(q, k, masks, sample_positions(L, 64), D ** -0.5)
        check(abs(rec["full"][0] - 1) < 1e-5 and rec["diagonal"][0] < 1, f"real L{li}: recall full 1, diagonal "
              f"{rec['diagonal'][0]:.4f}; 90% of a row's mass in a median {stats['median_keys_90'] * 100:.2f}% "
              f"of its keys (p90 {stats['p90_keys_90'] * 100:.1f}%)")
        for mn in masks:
            rows.append(row(f"real L{li}", L, f"dry {mn}", density=mask_density(masks[mn], L), recall=rec[mn][0],
                            recall_p10=rec[mn][1], input_stats=stats, note="CPU capture, no timing"))
    return rows


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


def floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), help="option defaults for a named run (PRESETS)")
    ap.add_argument("--lib", help="libattn_cuda.so (built as tests/gpu/libattn_cuda.so)")
    ap.add_argument("--peer", default=".peer/flexprefill", help="the fetched reference (fetch_peer_flexprefill.sh)")
    ap.add_argument("--lengths", type=parse_lengths, default="32K,64K,128K", help="synthetic inputs' lengths")
    ap.add_argument("--quick", action="store_true", help="32K only")
    ap.add_argument("--inputs", default=",".join(INPUTS), help="synthetic inputs: " + ", ".join(INPUTS))
    ap.add_argument("--gammas", type=floats, default="0.9,0.95", help="ours flex: gamma values")
    ap.add_argument("--min-budgets", type=ints, default=str(MIN_BUDGET), help="ours flex: min_budget values (tokens)")
    ap.add_argument("--flex-selects", type=lambda s: [x for x in s.split(",") if x.strip()], default="tokens",
                    help="ours flex: vertical-slash rules, tokens and/or blocks (flex_select)")
    ap.add_argument("--ref-gammas", type=floats, default="0.9,0.95", help="the reference: gamma values")
    ap.add_argument("--thetas", type=floats, default="12", help="ours anchor: theta values (nats; empty: none)")
    ap.add_argument("--anchor-init", type=int, default=2048)
    ap.add_argument("--anchor-local", type=int, default=2048)
    ap.add_argument("--anchor-lookback", type=int, default=1024)
    ap.add_argument("--real", help="captured q, k, v (.pt, .npz, or a directory of q.npy k.npy v.npy)")
    ap.add_argument("--real-layer", type=int, default=0, help="the layer when --real holds several")
    ap.add_argument("--capture-hf", metavar="GGUF", help="capture real q, k, v from this model (capture_hf.py)")
    ap.add_argument("--capture-lengths", type=parse_lengths, default="32K,64K,128K",
                    help="prefixes of the capture to run (the forward is the longest)")
    ap.add_argument("--capture-layers", type=ints, default="2,15,28", help="layers to capture")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--recall-rows", type=int, default=256, help="sampled positions (every head) for recall")
    ap.add_argument("--budget-s", type=float, default=2.0, help="seconds of timed calls per measurement")
    ap.add_argument("--max-reps", type=int, default=20)
    ap.add_argument("--method-limit", type=int, default=240, help="seconds a method may take at one length")
    ap.add_argument("--case-limit", type=int, default=0,
                    help="seconds a case (input, length) may take before its remaining methods are skipped (0: none)")
    ap.add_argument("--out", help="write the rows as JSON here (rewritten after every case)")
    ap.add_argument("--dry-run", action="store_true", help="CPU checks at 4K, no GPU, no timing")
    pre, _ = ap.parse_known_args()
    if pre.preset:
        ap.set_defaults(**PRESETS[pre.preset])
    args = ap.parse_args()
    if set(args.flex_selects) - {"tokens", "blocks"}:
        ap.error("--flex-selects: tokens and/or blocks")
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
            "cudnn": torch.backends.cudnn.version(), "peer": info, "peer_error": peer_err, "preset": args.preset,
            "gammas": args.gammas, "min_budgets": args.min_budgets, "flex_selects": args.flex_selects,
            "ref_gammas": args.ref_gammas,
            "thetas": args.thetas, "anchor_init": args.anchor_init, "anchor_local": args.anchor_local,
            "anchor_lookback": args.anchor_lookback, "tau": TAU,
            "ref_min_budget": MIN_BUDGET, "block": BLK, "seed": args.seed}
    print(f"# {meta['device']}, torch {meta['torch']}, triton {meta['triton']}, cuDNN {meta['cudnn']}; "
          f"reference {info.get('commit', '-')[:12]} (shims: {info.get('shims') or 'none'})", flush=True)
    lengths = [32768] if args.quick else args.lengths
    names = [n for n in args.inputs.split(",") if n]
    for n in names:
        if n not in INPUTS:
            ap.error(f"unknown input {n} ({', '.join(INPUTS)})")
    rows = []
    signal.signal(signal.SIGTERM, on_term)
    try:
        import capture_hf
        real = {}
        if args.real:
            real["real"] = (capture_hf.load_real(args.real, args.real_layer), lengths)
        if args.capture_hf:
            try:
                with time_limit(max(args.method_limit, 120)):  # the model's load is part of it
                    caps, meta["capture"] = capture_real(args, DEV, torch.bfloat16, max(args.capture_lengths))
                real.update({f"real L{li}": (qkv, args.capture_lengths) for li, qkv in sorted(caps.items())})
            except Exception as e:  # the synthetic inputs still run
                meta["capture_error"] = short(e)
                print(f"# capture: failed: {short(e)}", flush=True)
                rows.append(row("real", max(args.capture_lengths), "capture", note=f"failed: {short(e)}"))
            torch.cuda.empty_cache()
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
    """Every case, shortest first: the synthetic inputs at lengths, each real
    input (name -> ((q, k, v), its lengths)) at its lengths (prefixes)."""
    cases = [(L, n) for L in lengths for n in names] + [(L, n) for n, (_, ls) in real.items() for L in ls]
    cases.sort(key=lambda c: c[0])  # stable: synthetic before real at a length
    for L, name in cases:
        try:
            if name in real:
                t = real[name][0]
                Lr = min(L, t[0].shape[0] // BLK * BLK)
                if Lr < L and any(Lr == r["length"] and r["input"] == name for r in rows):
                    continue  # shorter than asked and already measured at its own length
                q, k, v = (x[:Lr].to(DEV) for x in t)
            else:
                i = list(INPUTS).index(name)  # an input's seed does not depend on --inputs
                q, k, v = gen_inputs(INPUTS[name], L, 32, 8, 128, args.seed * 1000003 + i * 7919 + L, DEV)
            print(f"  {name} L={q.shape[0]} ({q.shape[1]}/{k.shape[1]} heads, d {q.shape[2]})", flush=True)
            case = []
            try:
                run_case(args, lib, bac, peer, peer_err, name, q, k, v, case)
            finally:  # a SIGTERM (Stopped) or a failure keeps the rows measured so far
                rows += case
        except Exception as e:  # a broken CUDA context: keep what was measured
            print(f"  {name} L={L}: failed: {short(e)}; stopping", flush=True)
            rows.append(row(name, L, "all", note=f"failed: {short(e)}"))
            raise CaseFailed() from e
        # the partial tables: a timeout after this still leaves them in the log
        print(table(case), flush=True)
        print(equal_error_table(equal_error(case)), flush=True)
        report(args, rows, meta, final=False)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
