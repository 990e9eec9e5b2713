/* Products with 4-bit weights: y = x W^T (+ bias) (+ residual), for any number of rows
 * of x: two at a time on AVX2 (each group's weights unpacked once for both), four at a
 * time on AVX-512 VNNI where the CPU has it (q4_block_vnni).
 *
 * Why hand-written (docs/design.md, "int4 serving"): a single stream reads every weight
 * once per token, and PyTorch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) streamed
 * SmolLM2's 84 MB of 4-bit projections at ~16 GB/s on the Zen 4 EPYC, under half of
 * what memory delivers; on CPUs without bf16 arithmetic it is slower than the exact
 * model. This kernel does what llama.cpp's Q4_1 x Q8 product does: each group of 32
 * activations is quantised to int8 once per call (scale d = max|x| / 127), and a group's
 * 32 products are one `maddubs` of the 4-bit values against those bytes, so the weights
 * are read as they stream, one sequential stream per thread.
 *
 * Weights: w = q * scale + min, q in 0..15, one bf16 scale and min per group of 32
 * inputs (the grid of llama.cpp's Q4_1, models/base.py `Int4Linear`). For a row,
 *   y = sum over groups g of  scale_g * d_g * sum_j q_j x8_j  +  min_g * sum_j x_j
 * with x8 = round(x / d_g) and the second sum over the unquantised x.
 *
 * Packed layout (gptstore.inference.native.pack_q4): rows padded with zeros to a multiple
 * of 8, as [out / 8][in / 32] records of 160 bytes: the 8 rows' 16 bytes of values (byte
 * j holds q_j in its low and q_{j+16} in its high nibble, as Q4_1 stores them), then their
 * 8 bf16 scales, then their 8 bf16 mins. `in` must be a multiple of 32.
 *
 * Activations (x, bias, residual, y) are all fp32 or all bf16 (`act_bf16`). Threads:
 * OpenMP over 8-row blocks, `n_threads` of them.
 */
#include <stdlib.h>

#include "kernels.h"
#include "simd.h"

#define Q4_ROWS GEMV_BLOCK_ROWS
#define Q4_GROUP 32
#define Q4_RECORD (Q4_ROWS * Q4_GROUP / 2 + 2 * Q4_ROWS * 2)  /* bytes */
#define Q4_MAX_ROWS 2  /* activation rows per pass over a block on the AVX2 path */
#define Q4_TILE 4  /* activation rows per pass over a block on the VNNI path (any per call) */

/* One block of 8 weight rows against `n_rows` activation rows (a constant where it is
 * inlined: with one row the compiler keeps the unpacked values out of memory). */
static inline void q4_block(const uint8_t *packed, int64_t b, int64_t n_groups, int64_t n_in,
                            int64_t n_out, const int8_t *xq, const float *xd,
                            const float *xsum, const int n_rows, int64_t r0, const void *bias,
                            const void *residual, void *y, int act_bf16) {
    const __m256i low_mask = _mm256_set1_epi8(0x0f);
    const __m256i ones16 = _mm256_set1_epi16(1);
    const uint8_t *block = packed + b * n_groups * Q4_RECORD;
    __m256 acc[Q4_MAX_ROWS];  /* lane k: weight row k of the block, for each x row */
    for (int64_t r = 0; r < n_rows; r++)
        acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *record = block + g * Q4_RECORD;
        /* the 8 weight rows' 32 values of this group, unpacked once for every x row */
        __m256i q[Q4_ROWS];
        for (int k = 0; k < Q4_ROWS; k++) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(record + 16 * k));
            q[k] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low_mask);
        }
        const __m256 scales = load8(record + 128, 0, 1), mins = load8(record + 144, 0, 1);
        for (int64_t r = 0; r < n_rows; r++) {
            const __m256i xv = _mm256_load_si256((const __m256i *)(xq + r * n_in + g * Q4_GROUP));
            __m256i dots[Q4_ROWS];  /* weight row k's 32 products in 8 int32 lanes */
            for (int k = 0; k < Q4_ROWS; k++)
                dots[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), ones16);
            /* 8 vectors of 8 lanes -> one vector whose lane k is row k's sum: three
             * rounds of pairwise adds, then the two 128-bit halves added */
            const __m256i s01 = _mm256_hadd_epi32(dots[0], dots[1]);
            const __m256i s23 = _mm256_hadd_epi32(dots[2], dots[3]);
            const __m256i s45 = _mm256_hadd_epi32(dots[4], dots[5]);
            const __m256i s67 = _mm256_hadd_epi32(dots[6], dots[7]);
            const __m256i s0123 = _mm256_hadd_epi32(s01, s23);
            const __m256i s4567 = _mm256_hadd_epi32(s45, s67);
            /* s0123 lanes: r0 r1 r2 r3 | r0 r1 r2 r3 (low | high half sums) */
            const __m256i lows = _mm256_permute2x128_si256(s0123, s4567, 0x20);
            const __m256i highs = _mm256_permute2x128_si256(s0123, s4567, 0x31);
            const __m256 sums = _mm256_cvtepi32_ps(_mm256_add_epi32(lows, highs));
            const int64_t at = r * n_groups + g;
            acc[r] = _mm256_fmadd_ps(sums, _mm256_mul_ps(scales, _mm256_set1_ps(xd[at])),
                                     acc[r]);
            acc[r] = _mm256_fmadd_ps(mins, _mm256_set1_ps(xsum[at]), acc[r]);
        }
    }
    for (int64_t r = 0; r < n_rows; r++) {
        float out[Q4_ROWS];
        _mm256_storeu_ps(out, acc[r]);
        store_block_sums(out, b, r0 + r, n_out, bias, residual, y, act_bf16);
    }
}

/* The same block with AVX-512 VNNI, where the CPU has it (Zen 4, Sapphire Rapids):
 * `vpdpbusd` does a group's 32 multiply-adds of 4 weight rows in one instruction per
 * nibble half, against the activations' 16-byte halves repeated in each 128-bit lane;
 * lane i of a product holds a quarter of weight row i / 4's sum. Sums stay spread over
 * those 4 lanes, each lane scaled by its row's scale, until the block's end. */
#define Q4_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static inline Q4_VNNI void q4_block_vnni(const uint8_t *packed, int64_t b, int64_t n_groups,
                                         int64_t n_in, int64_t n_out, const int8_t *xq,
                                         const float *xd, const float *xsum, const int n_rows,
                                         int64_t r0, const void *bias, const void *residual,
                                         void *y, int act_bf16) {
    const __m512i low_mask = _mm512_set1_epi8(0x0f);
    const __m512i spread_low = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i spread_high = _mm512_add_epi32(spread_low, _mm512_set1_epi32(4));
    const uint8_t *block = packed + b * n_groups * Q4_RECORD;
    __m512 acc[Q4_TILE][2];
    __m256 acc_min[Q4_TILE];
    for (int64_t r = 0; r < n_rows; r++) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        acc_min[r] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *record = block + g * Q4_RECORD;
        __m512i q_low[2], q_high[2];  /* weight rows 0-3 and 4-7, values 0-15 and 16-31 */
        for (int half = 0; half < 2; half++) {
            const __m512i raw = _mm512_loadu_si512((const void *)(record + 64 * half));
            q_low[half] = _mm512_and_si512(raw, low_mask);
            q_high[half] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_mask);
        }
        const __m512 scales = _mm512_castps256_ps512(load8(record + 128, 0, 1));
        const __m512 spread[2] = {_mm512_permutexvar_ps(spread_low, scales),
                                  _mm512_permutexvar_ps(spread_high, scales)};
        const __m256 mins = load8(record + 144, 0, 1);
        for (int64_t r = 0; r < n_rows; r++) {
            const __m256i xv = _mm256_load_si256((const __m256i *)(xq + r * n_in + g * Q4_GROUP));
            const __m512i x_low = _mm512_broadcast_i32x4(_mm256_castsi256_si128(xv));
            const __m512i x_high = _mm512_broadcast_i32x4(_mm256_extracti128_si256(xv, 1));
            const int64_t at = r * n_groups + g;
            const __m512 d = _mm512_set1_ps(xd[at]);
            for (int half = 0; half < 2; half++) {
                __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q_low[half], x_low);
                dots = _mm512_dpbusd_epi32(dots, q_high[half], x_high);
                acc[r][half] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots),
                                               _mm512_mul_ps(spread[half], d), acc[r][half]);
            }
            acc_min[r] = _mm256_fmadd_ps(mins, _mm256_set1_ps(xsum[at]), acc_min[r]);
        }
    }
    for (int64_t r = 0; r < n_rows; r++) {
        float lanes[32], out[Q4_ROWS];
        _mm512_storeu_ps(lanes, acc[r][0]);
        _mm512_storeu_ps(lanes + 16, acc[r][1]);
        _mm256_storeu_ps(out, acc_min[r]);
        for (int k = 0; k < Q4_ROWS; k++)
            out[k] += (lanes[4 * k] + lanes[4 * k + 1]) + (lanes[4 * k + 2] + lanes[4 * k + 3]);
        store_block_sums(out, b, r0 + r, n_out, bias, residual, y, act_bf16);
    }
}

/* whether gptstore_gemv_q4 uses q4_block_vnni: -1 until first asked */
static int q4_vnni = -1;

static int q4_cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* Use the VNNI path where the CPU has it (enable != 0) or not; returns whether it is used
 * now (for the tests and the benchmarks, which time both paths). */
int gptstore_gemv_q4_use_vnni(int enable) {
    q4_vnni = enable && q4_cpu_has_vnni();
    return q4_vnni;
}

/* Whether the VNNI path is used (by default where the CPU has it). */
int gptstore_gemv_q4_vnni(void) {
    if (q4_vnni < 0)
        q4_vnni = q4_cpu_has_vnni();
    return q4_vnni;
}

/* x: [n_rows, n_in] with row stride x_stride (elements); y, residual: [n_rows, n_out]
 * contiguous; bias: [n_out] or NULL; residual may be NULL. Returns 0; -1 when the
 * scratch memory could not be allocated (nothing written then). On an AVX2 EPYC (Zen 3,
 * 2 threads, 24 distinct 576 x 1536 weights), rows in pairs took 6.0 ms for 16 rows
 * against PyTorch's int4 kernel's 8.6 (8 rows 3.2 / 4.5, 4 rows 1.8 / 2.3); each row's
 * arithmetic is that of the row alone. */
int gptstore_gemv_q4(const void *x, int64_t n_rows, int64_t x_stride, const uint8_t *packed,
                     int64_t n_in, int64_t n_out, const void *bias, const void *residual,
                     void *y, int act_bf16, int n_threads) {
    const int64_t n_groups = n_in / Q4_GROUP;
    const int vnni = gptstore_gemv_q4_vnni();
    /* per row and group: 32 int8 activations, their scale d and their plain sum */
    int8_t *xq = (int8_t *)aligned_alloc(32, (size_t)(n_rows * n_in) + 32);
    float *xd = (float *)malloc((size_t)(n_rows * n_groups) * 2 * sizeof(float) + 8);
    if (!xq || !xd) {
        free(xq);
        free(xd);
        return -1;
    }
    float *xsum = xd + n_rows * n_groups;
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t g = 0; g < n_groups; g++) {
            const int64_t at = r * x_stride + g * Q4_GROUP;
            __m256 v[4];
            __m256 amax8 = _mm256_setzero_ps(), sum8 = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = load8(x, at + 8 * j, act_bf16);
                amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign_bit, v[j]));
                sum8 = _mm256_add_ps(sum8, v[j]);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float d = _mm_cvtss_f32(m4) / 127.0f;
            const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
            /* round to nearest even, then pack 4 x 8 int32 into 32 int8 in order */
            __m256i q[4];
            for (int j = 0; j < 4; j++)
                q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
            const __m256i packed16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                                        _mm256_packs_epi32(q[2], q[3]));
            _mm256_store_si256((__m256i *)(xq + r * n_in + g * Q4_GROUP),
                               _mm256_permutevar8x32_epi32(packed16, unshuffle));
            xd[r * n_groups + g] = d;
            xsum[r * n_groups + g] = hsum(sum8);
        }
    }
    const int64_t n_blocks = (n_out + Q4_ROWS - 1) / Q4_ROWS;
    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t b = 0; b < n_blocks; b++) {
        if (vnni) {
            for (int64_t r0 = 0; r0 < n_rows; r0 += Q4_TILE) {
                const int8_t *tx = xq + r0 * n_in;
                const float *td = xd + r0 * n_groups, *ts = xsum + r0 * n_groups;
                switch (n_rows - r0) {  /* constants, so each size compiles on its own */
                case 1:
                    q4_block_vnni(packed, b, n_groups, n_in, n_out, tx, td, ts, 1, r0, bias,
                                  residual, y, act_bf16);
                    break;
                case 2:
                    q4_block_vnni(packed, b, n_groups, n_in, n_out, tx, td, ts, 2, r0, bias,
                                  residual, y, act_bf16);
                    break;
                case 3:
                    q4_block_vnni(packed, b, n_groups, n_in, n_out, tx, td, ts, 3, r0, bias,
                                  residual, y, act_bf16);
                    break;
                default:
                    q4_block_vnni(packed, b, n_groups, n_in, n_out, tx, td, ts, Q4_TILE, r0,
                                  bias, residual, y, act_bf16);
                }
            }
        } else {  /* rows two at a time: each group's weights unpacked once for both */
            int64_t r0 = 0;
            for (; r0 + 1 < n_rows; r0 += 2)
                q4_block(packed, b, n_groups, n_in, n_out, xq + r0 * n_in, xd + r0 * n_groups,
                         xsum + r0 * n_groups, 2, r0, bias, residual, y, act_bf16);
            if (r0 < n_rows)
                q4_block(packed, b, n_groups, n_in, n_out, xq + r0 * n_in, xd + r0 * n_groups,
                         xsum + r0 * n_groups, 1, r0, bias, residual, y, act_bf16);
        }
    }
    free(xq);
    free(xd);
    return 0;
}
