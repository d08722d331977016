#!/usr/bin/env python3
"""Performance model of context-parallel prefill (docs/scaling.md).

Prints the tables of docs/scaling.md: expected prefill time and parallel
efficiency of a Llama-3-8B-shaped model at 128K, 512K and 1M tokens on 1-8
GPUs of one host (NVLink) and on several hosts (InfiniBand), dense and
sparse, from the measured single-GPU attention kernel and stated link
bandwidths. Every input is a named constant below; change one and rerun.

    python3 bench/cp_model.py            # markdown tables
"""
import math

# ---- the model: Llama-3-8B shape ----------------------------------------------------
LAYERS, HEADS, KV_HEADS, HEAD_DIM, EMBD, FF = 32, 32, 8, 128, 4096, 14336
# Linear-layer weights per layer (Wq, Wk, Wv, Wo, gate, up, down).
W_LAYER = EMBD * HEADS * HEAD_DIM * 2 + EMBD * KV_HEADS * HEAD_DIM * 2 + 3 * EMBD * FF
LIN_FLOP_PER_TOKEN = 2 * W_LAYER * LAYERS  # the LM head runs for the last token only
KV_BYTES_PER_TOKEN_LAYER = 2 * KV_HEADS * HEAD_DIM * 2  # K and V, bf16


def attn_flop_layer(n):
    """Causal attention FLOPs of one layer (4 n^2 H d / 2, docs/benchmarks.md)."""
    return 2.0 * n * n * HEADS * HEAD_DIM


# ---- measured on one H200 (docs/benchmarks.md, 2026-12-03) ------------------------------
# Dense causal prefill attention, one layer, 32/8 heads, d 128, bf16, paged.
ATTN_TFLOPS = [(8192, 629.0), (32768, 590.0), (131072, 549.0)]


def attn_tflops(n):
    """Measured throughput at a query/key extent of n tokens, log-interpolated,
    held flat beyond the measured range."""
    pts = ATTN_TFLOPS
    if n <= pts[0][0]:
        return pts[0][1]
    if n >= pts[-1][0]:
        return pts[-1][1]
    for (n0, f0), (n1, f1) in zip(pts, pts[1:]):
        if n0 <= n <= n1:
            t = math.log(n / n0) / math.log(n1 / n0)
            return f0 + t * (f1 - f0)


# ---- assumed -----------------------------------------------------------------------------
GEMM_TFLOPS = 700.0  # large bf16 GEMMs on an H200 (~71% of 989 peak); not measured here
NVLINK_GBS = 450.0  # NVLink 4, per direction per GPU (stated)
IB_GBS = 400.0 / 8  # 400 Gb/s InfiniBand per GPU, per direction
LINK_EFF = 0.8  # share of a link's rate a large NCCL send/recv reaches
STEP_LATENCY_S = 20e-6  # per ring step: launch, NCCL protocol, the LSE merge

# ---- FlexPrefill inside the GPU ring, measured on one H100 (docs/scaling.md, 2026-12-06) ----
# At 128K, structured inputs, gamma 0.9: density 0.32; the block-sparse kernel
# kept 90% of the dense kernel's speed per pair; the selection took 4.2% of
# the dense layer's attention time (9.2 of 218 ms). Its sums over the ranks
# move about 20 H + (H + KH) D 4 / 128 bytes per token per layer (the tiles'
# row maxima and sums, the vertical mass, the slash partials; the pooled
# queries and keys), all-reduced before the ring's steps.
FLEX_DENSITY, FLEX_KERNEL_EFF, FLEX_SEL_SHARE = 0.32, 0.90, 0.042
FLEX_SEL_BYTES_PER_TOKEN_LAYER = 20 * HEADS + (HEADS + KV_HEADS) * HEAD_DIM * 4 // 128

# The generic sparse tables' kernel efficiency (speed per computed pair against
# the dense kernel's): our block-sparse kernel measured 0.95-1.02 alone at
# 128K (one H100, 2026-12-07) and 0.90 inside the ring (above); the tables
# take the ring's figure. (The public reference kernels reach 0.21-0.58.)
SPARSE_KERNEL_EFF = 0.90


def prefill(n, gpus, link_gbs, density=1.0, kernel_eff=1.0, tp=1, flex_sel=False):
    """Seconds to prefill n tokens on `gpus` GPUs.

    Context parallelism over cp = gpus / tp ranks (zig-zag, pass-KV ring); tp
    GPUs per rank split the heads (tp = 1: every GPU is a rank). Sparse
    attention computes `density` of the causal pairs at `kernel_eff` of the
    dense kernel's speed per pair; flex_sel adds FlexPrefill's selection
    (FLEX_SEL_SHARE of the dense layer, divided over the ranks, as compute)
    and the all-reduce of its tables (exposed: it precedes the steps).
    Returns (total, attention compute, exposed communication, linear layers)."""
    cp = gpus // tp
    # linear layers: every GPU its share of the tokens (and heads)
    t_lin = LIN_FLOP_PER_TOKEN * n / gpus / (GEMM_TFLOPS * 1e12)
    # attention per layer per GPU: the causal work divided evenly (zig-zag)
    ext = n / cp  # query/key extent of one ring step's blocks on a rank
    t_attn_layer = attn_flop_layer(n) * density / kernel_eff / gpus / (attn_tflops(ext) * 1e12)
    t_sel = t_sel_comm = 0.0
    if flex_sel:
        t_sel = FLEX_SEL_SHARE * attn_flop_layer(n) / gpus / (attn_tflops(n) * 1e12)
        if cp > 1:  # a ring all-reduce: 2 (cp - 1) / cp of the tables through each GPU's link
            t_sel_comm = 2 * (cp - 1) / cp * n * FLEX_SEL_BYTES_PER_TOKEN_LAYER / tp / (link_gbs * LINK_EFF * 1e9)
    t_attn_layer += t_sel
    if cp == 1:
        return t_lin + LAYERS * t_attn_layer, LAYERS * t_attn_layer, 0.0, t_lin
    t_step = t_attn_layer / cp
    # one step moves a rank's KV pack (its n/cp tokens); with tp the heads are split
    pack = n / cp * KV_BYTES_PER_TOKEN_LAYER / tp
    t_comm = pack / (link_gbs * LINK_EFF * 1e9)
    exposed = (cp - 1) * max(0.0, t_comm - t_step) + cp * STEP_LATENCY_S + t_sel_comm
    t_layer = cp * t_step + exposed
    return t_lin + LAYERS * t_layer, LAYERS * cp * t_step, LAYERS * exposed, t_lin


def eff(n, gpus, **kw):
    """Time and parallel efficiency: the share of the time the GPUs compute
    (linear layers, and attention at the measured speed of the ring step's
    block size), i.e. 1 - (exposed transfers + per-step latency) / time. A
    speed-up over one GPU can exceed N slightly: the ring's smaller blocks run
    faster per FLOP than one long kernel (629 vs 549 TFLOP/s, 8K vs 128K)."""
    tn, a, x, l = prefill(n, gpus, **kw)
    return tn, (a + l) / tn


def fmt_t(s):
    return f"{s:.2f}" if s < 100 else f"{s:.0f}"


def table_one_host(title, density=1.0, kernel_eff=1.0, flex_sel=False):
    print(f"\n{title}\n")
    print("| tokens | 1 GPU s | 2 GPUs s (eff.) | 4 GPUs s (eff.) | 8 GPUs s (eff.) | 8 GPUs: attention / exposed comm / linear s |")
    print("|---|---:|---:|---:|---:|---|")
    for n in (131072, 524288, 1048576):
        row = [f"{n // 1024}K"]
        t1 = prefill(n, 1, NVLINK_GBS, density, kernel_eff, flex_sel=flex_sel)[0]
        row.append(fmt_t(t1))
        for g in (2, 4, 8):
            tn, e = eff(n, g, link_gbs=NVLINK_GBS, density=density, kernel_eff=kernel_eff, flex_sel=flex_sel)
            row.append(f"{fmt_t(tn)} ({e:.0%})")
        _, a, x, l = prefill(n, 8, NVLINK_GBS, density, kernel_eff, flex_sel=flex_sel)
        row.append(f"{a:.2f} / {x:.2f} / {l:.2f}")
        print("| " + " | ".join(row) + " |")


def table_hosts(title, density=1.0, kernel_eff=1.0, flex_sel=False):
    print(f"\n{title}\n")
    print("| tokens | hosts x 8 GPUs | flat ring over IB: s (eff.) | TP8 x CP over hosts: s (eff.) |")
    print("|---|---|---:|---:|")
    for n in (131072, 524288, 1048576):
        for hosts in (2, 4, 16):
            g = 8 * hosts
            flat, ef = eff(n, g, link_gbs=IB_GBS, density=density, kernel_eff=kernel_eff, flex_sel=flex_sel)
            tpcp, et = eff(n, g, link_gbs=IB_GBS, density=density, kernel_eff=kernel_eff, tp=8, flex_sel=flex_sel)
            print(f"| {n // 1024}K | {hosts} x 8 | {fmt_t(flat)} ({ef:.0%}) | {fmt_t(tpcp)} ({et:.0%}) |")


def crossover():
    """Smallest prompt whose ring step hides its transfer, dense and sparse."""
    print("\nRing step compute vs transfer at 8 GPUs (NVLink) and over IB, per layer:\n")
    print("| tokens | 8 GPUs NVLink: step compute / transfer ms | 16 hosts IB flat: step compute / transfer ms |")
    print("|---|---:|---:|")
    for n in (32768, 131072, 524288, 1048576):
        out = [f"{n // 1024}K"]
        for g, bw in ((8, NVLINK_GBS), (128, IB_GBS)):
            ext = n / g
            step = attn_flop_layer(n) / g / (attn_tflops(ext) * 1e12) / g
            comm = n / g * KV_BYTES_PER_TOKEN_LAYER / (bw * LINK_EFF * 1e9)
            out.append(f"{step * 1e3:.3f} / {comm * 1e3:.3f}")
        print("| " + " | ".join(out) + " |")


def meta():
    """Meta's 405B run (arXiv 2411.01783): 1M tokens, 77 s, 128 H100s (16 hosts,
    TP8 x CP16), 93% efficiency. Per GPU: the FLOP rate it sustained."""
    L, H, d, E = 126, 128, 128, 16384
    params = 405e9
    n = 1048576
    flop = 2 * params * n + L * 2.0 * n * n * H * d
    per_gpu = flop / 77 / 128 / 1e12
    ours_n, ours_g = 1048576, 128
    t, a, x, l = prefill(ours_n, ours_g, IB_GBS, tp=8)
    ours_flop = LIN_FLOP_PER_TOKEN * ours_n + LAYERS * attn_flop_layer(ours_n)
    print(f"\nMeta 405B: {flop / 1e18:.2f} EFLOP in 77 s on 128 H100s = {per_gpu:.0f} TFLOP/s per GPU.")
    print(f"This model, 8B at 1M on 128 GPUs (TP8 x CP16 over IB): {t:.2f} s, "
          f"{ours_flop / t / 128 / 1e12:.0f} TFLOP/s per GPU.")
    t, a, x, l = prefill(ours_n, ours_g, IB_GBS)
    print(f"This model, 8B at 1M on 128 GPUs (flat CP128 ring over IB): {t:.2f} s, "
          f"{ours_flop / t / 128 / 1e12:.0f} TFLOP/s per GPU.")
    for g in (8, 16):
        bw = NVLINK_GBS if g == 8 else IB_GBS
        t, a, x, l = prefill(ours_n, g, bw)
        print(f"This model, 8B at 1M on {g} GPUs (flat ring): {t:.2f} s, {ours_flop / t / g / 1e12:.0f} TFLOP/s per GPU.")


if __name__ == "__main__":
    print(f"Linear FLOPs per token: {LIN_FLOP_PER_TOKEN / 1e9:.2f} G; KV per token per layer: "
          f"{KV_BYTES_PER_TOKEN_LAYER} B; attention FLOPs per layer at 128K: {attn_flop_layer(131072) / 1e12:.0f} T")
    table_one_host("Dense, one host (NVLink 4):")
    table_one_host(f"Sparse (density 0.2 at {SPARSE_KERNEL_EFF:.0%} of the dense kernel's speed per pair), one host:", 0.2,
                   SPARSE_KERNEL_EFF)
    table_one_host(f"Sparse (density 0.05 at {SPARSE_KERNEL_EFF:.0%}), one host:", 0.05, SPARSE_KERNEL_EFF)
    table_one_host("FlexPrefill as measured in the ring (density 0.32 at 90%, its selection and the selection's "
                   "all-reduce), one host:", FLEX_DENSITY, FLEX_KERNEL_EFF, flex_sel=True)
    table_hosts("Dense, several hosts (400 Gb/s InfiniBand per GPU):")
    table_hosts(f"Sparse (density 0.2 at {SPARSE_KERNEL_EFF:.0%}), several hosts:", 0.2, SPARSE_KERNEL_EFF)
    table_hosts("FlexPrefill as measured in the ring, several hosts:", FLEX_DENSITY, FLEX_KERNEL_EFF, flex_sel=True)
    crossover()
    meta()
