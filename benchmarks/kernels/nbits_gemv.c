/* Prototype: an int4 / int8 weight-only GEMV that streams, to measure how far ONNX Runtime's MatMulNBits is from
 * the memory floor at batch 1 (benchmarks/gemv_headroom.py). Not used by the runtime yet (issue 13).
 *
 * Weights come in MatMulNBits' layout (symmetric, no zero points, blocks of 128): B (N, K/128, 128*bits/8) uint8,
 * 4-bit element 2j in byte j's low nibble and 2j+1 in its high nibble, stored as q + 8 (8-bit: q + 128); scales
 * (N, K/128) float. nbits_repack interleaves four rows per block, so one sequential stream feeds four dot products,
 * and puts block element i and i + 64 in one byte (a 64-byte load unpacks to two vectors with one mask and one shift).
 * The activation is quantized per block of 128 to int8 (MatMulNBits' accuracy level 4 does the same); AVX-512 VNNI's
 * vpdpbusd multiplies unsigned weights by signed activations, and the zero point comes off as zp * sum(q_a).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 128
#define ROWS 4 /* weight rows per interleaved group */

int nbits_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

/* Bytes of the repacked weights: N rounded up to a multiple of ROWS. */
long nbits_packed_size(long k, long n, int bits) {
    return ((n + ROWS - 1) / ROWS) * ROWS * (k / BLOCK) * (BLOCK * bits / 8);
}

/* MatMulNBits (B, scales) -> packed weights (nbits_packed_size bytes) and scales (N rounded up, K/128), padded rows 0. */
void nbits_repack(long k, long n, int bits, const uint8_t *b, const float *scales, uint8_t *packed, float *pscales) {
    long nb = k / BLOCK, blob = BLOCK * bits / 8, groups = (n + ROWS - 1) / ROWS;
    for (long g = 0; g < groups; g++) {
        for (long blk = 0; blk < nb; blk++) {
            for (int r = 0; r < ROWS; r++) {
                long row = g * ROWS + r;
                uint8_t *dst = packed + ((g * nb + blk) * ROWS + r) * blob;
                float *sdst = pscales + (g * nb + blk) * ROWS + r;
                if (row >= n) {
                    memset(dst, bits == 4 ? 0x88 : 0x80, blob);
                    *sdst = 0.0f;
                    continue;
                }
                const uint8_t *src = b + (row * nb + blk) * blob;
                *sdst = scales[row * nb + blk];
                if (bits == 8) {
                    memcpy(dst, src, blob);
                    continue;
                }
                for (int i = 0; i < 64; i++) {  /* element e lives in byte e/2, nibble e%2 */
                    uint8_t lo = (src[i / 2] >> (4 * (i % 2))) & 0x0F;
                    uint8_t hi = (src[(i + 64) / 2] >> (4 * ((i + 64) % 2))) & 0x0F;
                    dst[i] = (uint8_t)(lo | (hi << 4));
                }
            }
        }
    }
}

/* a (K,) float -> q (K,) int8, per-block scale and sum of q. */
static void quantize_activation(long k, const float *a, int8_t *q, float *scale, int32_t *sum) {
    for (long blk = 0; blk < k / BLOCK; blk++) {
        const float *x = a + blk * BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
        float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t total = 0;
        for (int i = 0; i < BLOCK; i++) {
            int v = (int)nearbyintf(x[i] * inv);
            q[blk * BLOCK + i] = (int8_t)v;
            total += v;
        }
        scale[blk] = s;
        sum[blk] = total;
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void gemv_group(long nb, int bits, const uint8_t *w, const float *ws, const int8_t *q, const float *as,
                       const int32_t *asum, float *y) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const float zp = bits == 4 ? 8.0f : 128.0f;
    long blob = BLOCK * bits / 8;
    __m512 acc[ROWS];
    float corr[ROWS] = {0};
    for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
    for (long blk = 0; blk < nb; blk++) {
        __m512i a0 = _mm512_loadu_si512(q + blk * BLOCK), a1 = _mm512_loadu_si512(q + blk * BLOCK + 64);
        for (int r = 0; r < ROWS; r++) {
            const uint8_t *src = w + (blk * ROWS + r) * blob;
            __m512i w0, w1;
            if (bits == 4) {
                __m512i x = _mm512_loadu_si512(src);
                w0 = _mm512_and_si512(x, low);
                w1 = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);
            } else {
                w0 = _mm512_loadu_si512(src);
                w1 = _mm512_loadu_si512(src + 64);
            }
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, a0);
            dot = _mm512_dpbusd_epi32(dot, w1, a1);
            float s = ws[blk * ROWS + r] * as[blk];
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(s), acc[r]);
            corr[r] += s * zp * (float)asum[blk];
        }
    }
    for (int r = 0; r < ROWS; r++) y[r] = _mm512_reduce_add_ps(acc[r]) - corr[r];
}

/* y (N,) = a (K,) @ W^T for repacked W; `scratch` holds K int8 + 2 * K/128 words; `threads` OpenMP threads. */
void nbits_gemv(long k, long n, int bits, const uint8_t *packed, const float *pscales, const float *a, float *y,
                void *scratch, int threads) {
    long nb = k / BLOCK, groups = (n + ROWS - 1) / ROWS, blob = BLOCK * bits / 8;
    int8_t *q = (int8_t *)scratch;
    float *as = (float *)(q + k);
    int32_t *asum = (int32_t *)(as + nb);
    quantize_activation(k, a, q, as, asum);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long g = 0; g < groups; g++) {
        float out[ROWS];
        gemv_group(nb, bits, packed + g * nb * ROWS * blob, pscales + g * nb * ROWS, q, as, asum, out);
        for (int r = 0; r < ROWS && g * ROWS + r < n; r++) y[g * ROWS + r] = out[r];
    }
}

/* `count` products in a row (one call, as a graph would run them): the benchmark's stand-in for an executor. */
void nbits_gemv_many(int count, const long *k, const long *n, const int *bits, const uint8_t *const *packed,
                     const float *const *pscales, const float *const *a, float *const *y, void *scratch,
                     int threads) {
    for (int i = 0; i < count; i++) nbits_gemv(k[i], n[i], bits[i], packed[i], pscales[i], a[i], y[i], scratch, threads);
}
