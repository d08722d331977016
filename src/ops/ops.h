/* Non-attention compute of the transformer forward pass on the host: matmul
 * (weights in their block format, our own kernels; plain f32 matrices through
 * CBLAS for tests and benchmarks), RMSNorm, RoPE, SwiGLU, softmax, add.
 * Activations are f32, row-major.
 *
 * The kernels are thread-safe. The matmuls split their work over the calling
 * thread's OpenMP team (see ops_cpu_init); the RoPE tables are built once per
 * model. */
#ifndef LC_OPS_H
#define LC_OPS_H

#include <stddef.h>
#include <stdint.h>

/* ---- CPU start-up ------------------------------------------------------------- */
/* One OpenMP team does the work and every BLAS call inside it runs on one
 * thread: a second pool would oversubscribe the cores (10x slower decode on
 * 2 cores). ops_cpu_init sets that up; call it
 *  - first thing in main() with argv (lacunad, the lacuna CLI): when
 *    OpenBLAS picked kernels older than the CPU's vector units (Debian 12's
 *    0.3.21 falls back to SSE3 "Prescott" kernels on CPUs it does not know,
 *    as virtual machines often report: 5x slower sgemm measured on a
 *    Sapphire Rapids VM), it sets OPENBLAS_CORETYPE to SkylakeX or Haswell;
 *    and when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set, it sets a
 *    shorter spin (GOMP_SPINCOUNT=30000, ~0.3 ms) instead of libgomp's
 *    ~3 ms, which made decode 15-20x slower on a 2-vCPU VM whose cores
 *    other processes were using (threads.c has the measurements). Either way it re-executes the program once (argv
 *    unchanged), since both libraries read their settings only when loaded.
 *    It returns when nothing had to change or exec failed;
 *  - with argv NULL on the thread that runs the forward pass (the
 *    scheduler's engine thread): never re-executes.
 * Either way it sizes the calling thread's OpenMP team to `threads` (0: as
 * OMP_NUM_THREADS or the CPU count say) and returns that team's size. */
int ops_cpu_init(char **argv, int threads);
/* The OpenBLAS kernel set in use ("Haswell", ...), NULL for another BLAS. */
const char *ops_cpu_blas_core(void);

/* ---- f32 weights --------------------------------------------------------------- */
/* y = x · wᵀ through CBLAS sgemm, for plain f32 matrices (tests and
 * benchmarks; the forward pass uses ops_matmul_w). A BLAS picks its kernels by
 * shape, so a row's result may depend on n.
 *   x: (n, in)   w: (out, in)   y: (n, out)   (all row-major, contiguous) */
void ops_matmul(float *y, const float *x, const float *w, int n, int in, int out);

/* ---- weights in their file format ---------------------------------------------- */
/* A weight matrix kept in its GGUF block format and multiplied in place (no
 * f32 copy). Type values are ggml's type ids, so a GGUF tensor's type passes
 * through unchanged. */
enum {
    OPS_W_F32 = 0,
    OPS_W_F16 = 1,
    OPS_W_Q4_0 = 2,
    OPS_W_Q4_1 = 3,
    OPS_W_Q5_0 = 6,
    OPS_W_Q8_0 = 8,
    OPS_W_Q4_K = 12,
    OPS_W_Q6_K = 14,
    OPS_W_BF16 = 30,
};

typedef struct {
    int type;         // OPS_W_*
    int rows;         // out
    int cols;         // in, a multiple of the type's block size
    size_t row_bytes; // ops_w_row_bytes(type, cols)
    const void *data; // (rows, row_bytes), borrowed: the holder frees it
    int packed;       // 0: rows in the file's order; 1: groups of 16 rows interleaved (ops_w_pack)
} ops_w_t;

/* Bytes of one row of `cols` weights of `type`; 0 when the type is not
 * supported or cols is not a multiple of its block size. */
size_t ops_w_row_bytes(int type, int cols);
/* Rearranges w's data in place into groups of 16 rows interleaved block by
 * block (src/ops/cpu/qformat.h says how), which the decode matmul multiplies
 * 16 rows at a time: Q4_0, Q4_1 and Q8_0 with rows a multiple of 16; other
 * matrices are left as they are. The same bytes, the same values: every
 * function here reads either layout, and the exact path gives the same bits
 * in both. w->data must be writable memory the caller owns. Returns 1 when
 * packed, 0 when left, LC_ENOMEM. Not thread-safe for one w. */
int ops_w_pack(ops_w_t *w);
/* Expands row r of w to f32 with the kernel set in use. dst: (w->cols) */
void ops_w_row_f32(const ops_w_t *w, int r, float *dst);
/* Expands n weights of `type` (n a multiple of its block size) at src to f32
 * with the scalar reference kernels, bit-exact with ggml's dequantize_row_*
 * (what the SIMD kernels are tested against). dst: (n). Returns 0, or
 * LC_EUNSUPPORTED for a type not listed above / LC_EINVAL for a bad n. */
int ops_w_dequantize(int type, const void *src, float *dst, size_t n);

/* y = x · wᵀ with w in its block format.
 *   x: (n, w->cols)   y: (n, w->rows)
 * Two arithmetics, chosen per call by the caller for a kind of row, never by
 * the batch:
 *  - OPS_MM_EXACT expands panels of w to f32 and runs our own kernels: each
 *    output is one FMA chain over the input dimension in order (fast for
 *    large n: prompts);
 *  - OPS_MM_Q8 quantizes each row of x to 8-bit blocks (per 32, or per 256
 *    for the K-quants) and uses integer dot products, with an activation error
 *    of up to max|x|/254 per block (fast for small n: decode); f32/f16/bf16
 *    weights take f32 dots instead.
 * Either way each row of y depends only on its own row of x, the mode and
 * the kernel set (common/cpu.h), never on n or on the other rows.
 * Thread-safe; uses the caller's OpenMP team. Returns 0 or LC_ENOMEM. */
enum { OPS_MM_EXACT = 0, OPS_MM_Q8 = 1 };
int ops_matmul_w(float *y, const float *x, const ops_w_t *w, int n, int mode);

/* y[i] = x · w[i]ᵀ for up to OPS_MM_MAX_W matrices of the same input width
 * (Q, K and V; gate and up): one parallel region for all, x quantized once.
 * Each y[i] gets exactly what ops_matmul_w(y[i], x, w[i], n, mode) gives.
 *   x: (n, w[i]->cols)   y[i]: (n, w[i]->rows)
 * Returns 0, LC_ENOMEM, or LC_EINVAL (widths differ, nw out of range). */
#define OPS_MM_MAX_W 4
int ops_matmul_w_multi(int nw, float *const *y, const ops_w_t *const *w, const float *x, int n, int mode);

/* Turns OPS_MM_Q8 into OPS_MM_EXACT for the whole process when off (default
 * on; the environment's LACUNA_MM_Q8=0 turns it off at first use). Set it
 * before any request runs: outputs are only comparable within one setting. */
void ops_mm_set_q8(int on);
int ops_mm_q8(void);

/* Row-wise RMSNorm: y[r] = x[r] / sqrt(mean(x[r]²) + eps) * w. y may equal x.
 *   x, y: (n, dim)   w: (dim) */
void ops_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps);
/* Per-head RMSNorm in place (Gemma's QK-norm): every head of every row
 * normalised on its own with the same weights.
 *   x: (n, n_heads, head_dim)   w: (head_dim) */
void ops_rmsnorm_heads(float *x, const float *w, int n, int n_heads, int head_dim, float eps);

/* ---- RoPE ------------------------------------------------------------------ */
/* Precomputed rotation tables for positions 0..n_pos-1; positions beyond the
 * table are computed on the fly (slower, same values). theta_i(p) =
 * p * freq_scale * base^(-2i/rot_dim), i < rot_dim/2. */
typedef struct {
    int rot_dim; // rotated dimensions per head (<= head_dim, even)
    int n_pos;   // rows of the tables
    float freq_base;
    float freq_scale;
    float *cos; // (n_pos, rot_dim/2)
    float *sin; // (n_pos, rot_dim/2)
} ops_rope_t;

/* Returns 0 or LC_ENOMEM / LC_EINVAL. Free with ops_rope_fini. */
int ops_rope_init(ops_rope_t *r, int rot_dim, int n_pos, float freq_base, float freq_scale);
void ops_rope_fini(ops_rope_t *r);

/* Rotates in place the first rot_dim dims of each head of each row.
 * neox = 0: adjacent pairs (x[2i], x[2i+1]) (llama GGUFs);
 * neox = 1: halves (x[i], x[i + rot_dim/2]) (NEOX, qwen2).
 *   x: (n, n_heads, head_dim)   pos: (n) position of each row */
void ops_rope(const ops_rope_t *r, float *x, int n, const int64_t *pos, int n_heads, int head_dim, int neox);

/* ---- elementwise --------------------------------------------------------------- */
/* g[i] = silu(g[i]) * u[i]   (SwiGLU), n elements */
void ops_swiglu(float *g, const float *u, size_t n);
/* g[i] = gelu_tanh(g[i]) * u[i]   (GeGLU with PyTorch's tanh GELU), n elements */
void ops_geglu_tanh(float *g, const float *u, size_t n);
/* y[i] += x[i] */
void ops_add(float *y, const float *x, size_t n);
/* x[i] *= s */
void ops_scale(float *x, size_t n, float s);
/* x[i] = cap * tanh(x[i] / cap)   (logit soft-capping), cap > 0 */
void ops_softcap(float *x, size_t n, float cap);
/* Rows of an embedding table for n tokens, times scale (Gemma: √n_embd).
 *   x: (n, emb->cols)   tokens: (n), each in [0, emb->rows) */
void ops_embed(float *x, const ops_w_t *emb, const int32_t *tokens, int n, float scale);
/* In-place softmax of n values; returns log(sum(exp(x - max))) + max (the
 * log-sum-exp of the input). */
float ops_softmax(float *x, int n);

#endif
