// The radix top-k of the sparse decode selections (Quest's pages, TidalDecode's
// positions): order keys of float scores, the histogram add, and the choice
// of the byte-bin holding the k-th largest key. The caller runs the passes
// (one byte at a time from the top, a 256-bin histogram of the keys that
// match the bytes fixed so far) and the final scan in its own order.
#pragma once
#include <cstdint>

// Order-preserving key of a score (larger score, larger key); -0 counts as +0
// (the CPU compares the scores as floats, so they tie).
__device__ __forceinline__ uint32_t order_key(float f) {
    const uint32_t u = __float_as_uint(f == 0.f ? 0.f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One atomic per distinct bin and warp (scores crowd into few top bytes);
// every lane of the warp calls it, bin 256 meaning none.
__device__ __forceinline__ void hist_add(unsigned *hist, unsigned bin, int lane) {
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin < 256u && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
}

// On one whole warp: the bin of hist (256 counts) holding the k-th largest
// key (1-based; the bins hold at least k keys) into *bin, and that key's rank
// among the bin's own keys into *k_in, written by one lane. Lane l reads
// bins 255 - 8l down to 248 - 8l; an inclusive scan from the top finds the
// lane, a walk down its eight bins the bin.
__device__ __forceinline__ void radix_pick_bin(const unsigned *hist, int lane, int k, int *bin, int *k_in) {
    unsigned c[8], sum = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        c[i] = hist[255 - 8 * lane - i];
        sum += c[i];
    }
    unsigned incl = sum;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, incl >= (unsigned)k);
    if (lane == __ffs(hit) - 1) {
        unsigned run = incl - sum;
        for (int i = 0; i < 8; i++) {
            if (run + c[i] >= (unsigned)k) {
                *bin = 255 - 8 * lane - i;
                *k_in = k - (int)run;
                break;
            }
            run += c[i];
        }
    }
}
