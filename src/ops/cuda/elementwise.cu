// The CUDA executor's non-matmul kernels: embedding gather, RMSNorm (f32
// residual in, bf16 matmul input out; Gemma 3's post-norm added into the
// residual), the fused QKV epilogue (QK-norm, RoPE on q and k, q to its
// attention row, K and V into their cache pages), SwiGLU and GeGLU, logit
// soft-capping, and row gathers. Each is a plain memory-bound kernel: one pass over its inputs.
// Math in f32; bf16 only where a tensor is stored for the tensor cores.
// Checked against the CPU ops in tests/gpu/check_cuda.c.
#include <cuda_bf16.h>

#include "ops/cuda/cuda_check.cuh"
#include "ops/cuda/cuda_ops.h"

typedef __nv_bfloat16 bf16;

// ---- embedding --------------------------------------------------------------------------------
static __global__ void embed_kernel(const bf16 *__restrict__ table, const int32_t *__restrict__ tok,
                                    float *__restrict__ x, int dim, float scale) {
    const bf16 *row = table + (size_t)tok[blockIdx.x] * dim;
    float *out = x + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = __bfloat162float(row[i]) * scale;
}

extern "C" int ops_cuda_embed(const void *table, const int32_t *tok, int n, int dim, float scale, float *x,
                              void *stream) {
    if (!table || !tok || !x || n <= 0 || dim <= 0) return LC_EINVAL;
    embed_kernel<<<n, 256, 0, (cudaStream_t)stream>>>((const bf16 *)table, tok, x, dim, scale);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- RMSNorm ----------------------------------------------------------------------------------
// Block-wide sum of squares: warp shuffles, then one warp over the warp sums.
static __device__ float block_sum(float v) {
    __shared__ float ws[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) ws[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)((blockDim.x + 31) >> 5) ? ws[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) ws[0] = v;
    }
    __syncthreads();
    const float s = ws[0];
    __syncthreads();
    return s;
}

// Row r of y = bf16(x[rows ? rows[r] : r] / rms * w).
static __global__ void rmsnorm_bf16_kernel(const float *__restrict__ x, const int32_t *__restrict__ rows,
                                           const float *__restrict__ w, bf16 *__restrict__ y, int dim, float eps) {
    const float *xr = x + (size_t)(rows ? rows[blockIdx.x] : blockIdx.x) * dim;
    bf16 *yr = y + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(ss) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = __float2bfloat16(xr[i] * inv * w[i]);
}

static int threads_for(int dim) { return dim >= 1024 ? 1024 : ((dim + 31) / 32) * 32; }

// Row r of x += y[r] / rms(y[r]) * w (Gemma 3's norm of a block's output).
static __global__ void rmsnorm_add_kernel(float *__restrict__ x, const float *__restrict__ y,
                                          const float *__restrict__ w, int dim, float eps) {
    const float *yr = y + (size_t)blockIdx.x * dim;
    float *xr = x + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += yr[i] * yr[i];
    const float inv = rsqrtf(block_sum(ss) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) xr[i] += yr[i] * inv * w[i];
}

extern "C" int ops_cuda_rmsnorm_add(float *x, const float *y, const float *w, int n, int dim, float eps, void *stream) {
    if (!x || !y || !w || n <= 0 || dim <= 0) return LC_EINVAL;
    rmsnorm_add_kernel<<<n, threads_for(dim), 0, (cudaStream_t)stream>>>(x, y, w, dim, eps);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

extern "C" int ops_cuda_rmsnorm_bf16(const float *x, const int32_t *rows, const float *w, void *y, int n, int dim,
                                     float eps, void *stream) {
    if (!x || !w || !y || n <= 0 || dim <= 0) return LC_EINVAL;
    rmsnorm_bf16_kernel<<<n, threads_for(dim), 0, (cudaStream_t)stream>>>(x, rows, w, (bf16 *)y, dim, eps);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- QKV epilogue -----------------------------------------------------------------------------
// One block per token. With QK-norm, each q and k head is first scaled by
// its inverse RMS (one warp a head) and the norm's weights. q/k: rotate pairs (adjacent, or the two halves for
// NEOX) of the first rot_dim dims by the angle table of the token's position;
// q goes to row perm[t] of the attention input, k and v to slot kv_slot[t] of
// page kv_page[t] in the layer's cache, layout (page, kv_head, page_size, d).
static __global__ void qkv_post_kernel(const float *__restrict__ qkv, const int64_t *__restrict__ pos,
                                       const int32_t *__restrict__ perm, const int32_t *__restrict__ kv_page,
                                       const int32_t *__restrict__ kv_slot, const float *__restrict__ cos_t,
                                       const float *__restrict__ sin_t, ops_cuda_qkv_t p) {
    const int t = blockIdx.x, d = p.head_dim, half = p.rot_dim / 2;
    const int64_t ps = pos[t];
    const float *row = qkv + (size_t)t * (p.n_heads + 2 * p.n_kv_heads) * d;
    bf16 *qout = (bf16 *)p.q + (size_t)(perm ? perm[t] : t) * p.n_heads * d;
    const size_t page_off = ((size_t)kv_page[t] * p.n_kv_heads) * p.page_size * d + (size_t)kv_slot[t] * d;
    bf16 *kout = (bf16 *)p.k_cache + page_off, *vout = (bf16 *)p.v_cache + page_off;
    const size_t head_stride = (size_t)p.page_size * d; // next kv head inside a page
    const int n_rot = (p.n_heads + p.n_kv_heads) * d;   // q and k dims
    __shared__ float inv_rms[OPS_CUDA_QK_NORM_HEADS];
    if (p.q_norm) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        for (int h = warp; h < p.n_heads + p.n_kv_heads; h += n_warps) {
            float ss = 0.f;
            for (int c = lane; c < d; c += 32) ss += row[h * d + c] * row[h * d + c];
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if (lane == 0) inv_rms[h] = rsqrtf(ss / (float)d + p.norm_eps);
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < n_rot + p.n_kv_heads * d; i += blockDim.x) {
        const int h = i / d, c = i % d;
        const float *nw = !p.q_norm || i >= n_rot ? nullptr : h < p.n_heads ? p.q_norm : p.k_norm;
        float val = nw ? row[i] * inv_rms[h] * nw[c] : row[i];
        if (i < n_rot && c < p.rot_dim) {
            int pair, j; // j: this dim's index in its pair set (0..half)
            if (p.neox) {
                j = c < half ? c : c - half;
                pair = c < half ? c + half : c - half;
            } else {
                j = c / 2;
                pair = c ^ 1;
            }
            float cs, sn;
            if (ps < p.n_table) {
                cs = cos_t[ps * half + j];
                sn = sin_t[ps * half + j];
            } else { // beyond the table: the same formula in double, like the CPU
                const double th = (double)ps * p.freq_scale * pow((double)p.freq_base, -2.0 * j / p.rot_dim);
                cs = (float)cos(th);
                sn = (float)sin(th);
            }
            const float other = nw ? row[h * d + pair] * inv_rms[h] * nw[pair] : row[h * d + pair];
            const int first = p.neox ? c < half : (c & 1) == 0;
            val = first ? val * cs - other * sn : other * sn + val * cs;
        }
        if (h < p.n_heads)
            qout[(size_t)h * d + c] = __float2bfloat16(val);
        else if (h < p.n_heads + p.n_kv_heads)
            kout[(size_t)(h - p.n_heads) * head_stride + c] = __float2bfloat16(val);
        else
            vout[(size_t)(h - p.n_heads - p.n_kv_heads) * head_stride + c] = __float2bfloat16(val);
    }
}

extern "C" int ops_cuda_qkv_post(const float *qkv, int n, const int64_t *pos, const int32_t *perm,
                                 const int32_t *kv_page, const int32_t *kv_slot, const float *cos_t, const float *sin_t,
                                 const ops_cuda_qkv_t *p, void *stream) {
    if (!qkv || n <= 0 || !pos || !kv_page || !kv_slot || !p || !p->q || !p->k_cache || !p->v_cache ||
        p->rot_dim > p->head_dim || p->rot_dim % 2 || (p->n_table > 0 && (!cos_t || !sin_t)) ||
        (p->q_norm && (!p->k_norm || p->n_heads + p->n_kv_heads > OPS_CUDA_QK_NORM_HEADS)))
        return LC_EINVAL;
    qkv_post_kernel<<<n, 256, 0, (cudaStream_t)stream>>>(qkv, pos, perm, kv_page, kv_slot, cos_t, sin_t, *p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- SwiGLU -----------------------------------------------------------------------------------
// gu: (n, 2F) with the gate in columns [0, F) and up in [F, 2F); h = silu(g) * u.
static __global__ void swiglu_kernel(const float *__restrict__ gu, bf16 *__restrict__ h, int ff, size_t total) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / ff, c = i % ff;
        const float g = gu[r * 2 * ff + c], u = gu[r * 2 * ff + ff + c];
        h[i] = __float2bfloat16(g / (1.f + expf(-g)) * u);
    }
}

extern "C" int ops_cuda_swiglu(const float *gu, void *h, int n, int ff, void *stream) {
    if (!gu || !h || n <= 0 || ff <= 0) return LC_EINVAL;
    const size_t total = (size_t)n * ff;
    const int blocks = (int)((total + 255) / 256 < 65536 ? (total + 255) / 256 : 65536);
    swiglu_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>(gu, (bf16 *)h, ff, total);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- GeGLU ------------------------------------------------------------------------------------
// h = bf16(gelu_tanh(g) * u), the tanh GELU as the CPU writes it: x / (1 + e^(-2z)),
// z = sqrt(2/pi) (x + 0.044715 x^3).
static __global__ void geglu_kernel(const float *__restrict__ gu, bf16 *__restrict__ h, int ff, size_t total) {
    const float k2 = 2.0f * 0.7978845608028654f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / ff, c = i % ff;
        const float x = gu[r * 2 * ff + c], u = gu[r * 2 * ff + ff + c];
        h[i] = __float2bfloat16(x / (1.f + expf(-k2 * (x + 0.044715f * x * x * x))) * u);
    }
}

extern "C" int ops_cuda_geglu(const float *gu, void *h, int n, int ff, void *stream) {
    if (!gu || !h || n <= 0 || ff <= 0) return LC_EINVAL;
    const size_t total = (size_t)n * ff;
    const int blocks = (int)((total + 255) / 256 < 65536 ? (total + 255) / 256 : 65536);
    geglu_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>(gu, (bf16 *)h, ff, total);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- logit soft-capping -----------------------------------------------------------------------
static __global__ void softcap_kernel(float *__restrict__ x, size_t n, float cap) {
    const float inv = 1.f / cap;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] * inv);
}

extern "C" int ops_cuda_softcap(float *x, size_t n, float cap, void *stream) {
    if (!x || !(cap > 0.f)) return LC_EINVAL;
    if (!n) return 0;
    const int blocks = (int)((n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536);
    softcap_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>(x, n, cap);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- row gather -------------------------------------------------------------------------------
// dst row r = src row idx[r], bf16 rows of `cols`, 16 bytes at a time when aligned.
static __global__ void gather_kernel(const bf16 *__restrict__ src, const int32_t *__restrict__ idx,
                                     bf16 *__restrict__ dst, int cols) {
    const bf16 *s = src + (size_t)idx[blockIdx.x] * cols;
    bf16 *o = dst + (size_t)blockIdx.x * cols;
    if (cols % 8 == 0) {
        const uint4 *s4 = (const uint4 *)s;
        uint4 *o4 = (uint4 *)o;
        for (int i = threadIdx.x; i < cols / 8; i += blockDim.x) o4[i] = s4[i];
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = s[i];
    }
}

extern "C" int ops_cuda_gather_rows_bf16(const void *src, const int32_t *idx, void *dst, int n, int cols,
                                         void *stream) {
    if (!src || !idx || !dst || n <= 0 || cols <= 0) return LC_EINVAL;
    gather_kernel<<<n, 128, 0, (cudaStream_t)stream>>>((const bf16 *)src, idx, (bf16 *)dst, cols);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- argmax -----------------------------------------------------------------------------------
// One block per row: the largest value's index, ties to the lowest index, NaN
// below everything; -1 when no value is above -inf (the host sampler's
// greedy rule over the same floats).
static __device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && bi >= 0 && i < bi) || (bi < 0 && v > -INFINITY);
}

static __global__ void argmax_kernel(const float *__restrict__ x, int cols, int32_t *__restrict__ out) {
    const float *row = x + (size_t)blockIdx.x * cols;
    float bv = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = row[i];
        if (v > bv) { // NaN never compares greater; strided order keeps the lowest index per thread
            bv = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_down_sync(0xffffffffu, bv, o);
        const int oi = __shfl_down_sync(0xffffffffu, bi, o);
        if (oi >= 0 && better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : -1;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_down_sync(0xffffffffu, bv, o);
            const int oi = __shfl_down_sync(0xffffffffu, bi, o);
            if (oi >= 0 && better(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (lane == 0) out[blockIdx.x] = bi;
    }
}

extern "C" int ops_cuda_argmax_rows(const float *x, int rows, int cols, int32_t *out, void *stream) {
    if (!x || !out || rows <= 0 || cols <= 0) return LC_EINVAL;
    argmax_kernel<<<rows, 1024, 0, (cudaStream_t)stream>>>(x, cols, out);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- a draw at a temperature --------------------------------------------------------------------
// One block of 1024 threads per row with inv_t[r] > 0 (others are left as
// they are): the host sampler's rule for a plain temperature draw. Allowed
// tokens are those whose logit is neither NaN nor -inf; val = l * inv_t;
// e = expf(val - max); the token is the first, in id order, at which the
// running sum passes u × total, else the last allowed token; -1 when nothing
// is allowed. Thread t sums its own contiguous segment in order; thread 0
// chains the segments in order and scans the crossing one, so the result is
// a function of the row and u alone. val and val - max are rounded as the
// host rounds them (no fused multiply-add).
static __device__ __forceinline__ bool allowed(float l) { return !isnan(l) && l != -INFINITY; }

static __global__ void sample_kernel(const float *__restrict__ x, int cols, const float *__restrict__ inv_t,
                                     const double *__restrict__ u, int32_t *__restrict__ out) {
    const float it = inv_t[blockIdx.x];
    if (!(it > 0.f)) return;
    const float *row = x + (size_t)blockIdx.x * cols;
    const int seg = (cols + blockDim.x - 1) / blockDim.x, lo = threadIdx.x * seg;
    const int hi = lo + seg < cols ? lo + seg : cols;
    __shared__ double ssum[1024];
    __shared__ float smax[32];
    __shared__ int slast[32];
    float mx = -INFINITY;
    int last = -1;
    for (int i = lo; i < hi; i++)
        if (allowed(row[i])) {
            mx = fmaxf(mx, __fmul_rn(row[i], it));
            last = i;
        }
    for (int o = 16; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (lane == 0) smax[warp] = mx, slast[warp] = last;
    __syncthreads();
    mx = -INFINITY;
    last = -1;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, smax[w]), last = max(last, slast[w]);
    double sum = 0;
    for (int i = lo; i < hi; i++)
        if (allowed(row[i])) sum += (double)expf(__fsub_rn(__fmul_rn(row[i], it), mx));
    ssum[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x != 0) return;
    if (last < 0) {
        out[blockIdx.x] = -1;
        return;
    }
    double tot = 0;
    for (int t = 0; t < (int)blockDim.x; t++) tot += ssum[t];
    const double target = u[blockIdx.x] * tot;
    double acc = 0;
    int token = last;
    for (int t = 0; t < (int)blockDim.x && token == last; t++) {
        if (acc + ssum[t] <= target && t + 1 < (int)blockDim.x) { // the crossing is further on
            acc += ssum[t];
            continue;
        }
        const int a = t * seg, b = a + seg < cols ? a + seg : cols;
        for (int i = a; i < b; i++) {
            if (!allowed(row[i])) continue;
            acc += (double)expf(__fsub_rn(__fmul_rn(row[i], it), mx));
            if (target < acc) {
                token = i;
                break;
            }
        }
        if (token != last || b >= cols) break;
    }
    out[blockIdx.x] = token;
}

extern "C" int ops_cuda_sample_rows(const float *x, int rows, int cols, const float *inv_t, const double *u,
                                    int32_t *out, void *stream) {
    if (!x || !inv_t || !u || !out || rows <= 0 || cols <= 0) return LC_EINVAL;
    sample_kernel<<<rows, 1024, 0, (cudaStream_t)stream>>>(x, cols, inv_t, u, out);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}
