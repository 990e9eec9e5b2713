/* One- and two-row products with bf16 weights on AVX2 + FMA (or AVX-512): y = x W^T (+ bias)
 * (+ residual). More rows go two at a time over the block the rows before have just read
 * (decode steps of a few rows, where the machine measured that faster:
 * precision.py `gemv_rows`).
 *
 * Why hand-written (docs/design.md, "The native bf16 GEMV"): single-stream decoding
 * reads every weight once per token, so its speed is the rate weights stream from
 * memory. ATen's bf16 GEMV reads a row-major [out, in] matrix eight rows at a time,
 * eight interleaved streams 2*in bytes apart, and on an AVX2 EPYC it streamed 8 GB/s
 * per core where a plain sum streams 16. This kernel reads weights stored in the
 * order it consumes them (see `pack` below), one sequential stream per thread, and
 * turns bf16 into fp32 with one shift or one mask per 8 values instead of a widening
 * shuffle: the even bf16 of each 32-bit pair is `bits << 16`, the odd one
 * `bits & 0xffff0000`, and x is split into matching even and odd halves once per call.
 *
 * Packed layout (made by gptstore.inference.native.pack): the [out, in] matrix, its
 * rows padded with zeros to a multiple of 8, as [out / 8][in / 16][8][16]: block b holds
 * rows 8b..8b+7, and for each 16-column chunk their 16 values one row after another.
 * `in` must be a multiple of 16.
 *
 * Activations (x, bias, residual, y) are all fp32 or all bf16 (`act_bf16`); products
 * accumulate in fp32, and bf16 outputs round to nearest-even as PyTorch's casts do.
 * Threads: OpenMP over 8-row blocks, `n_threads` of them (PyTorch's intra-op count;
 * the process's one libgomp serves both).
 *
 * Where the CPU has AVX-512 (`gptstore_gemv_bf16_avx512`, used where the machine's
 * profile measured it faster: precision.py), one 64-byte load carries two rows' 16
 * values and the same shift / mask / FMA steps run on both at once, with a software
 * prefetch 4 KB ahead in the stream. On an AMX Sapphire Rapids VM whose memory
 * streams ~27 GB/s to two threads, 270 MB of weights at one row: a bare C loop read
 * 18.5 GB/s on the AVX2 path and 22-23 on this one; through the Python call, 17 against
 * 20 GB/s; a SmolLM2 decode step, 22.5-23.2 ms against 21.9-22.6 (docs/design.md).
 * Each 256-bit half does exactly the AVX2 loop's arithmetic for its row, in the same
 * order, so the two paths give the same bits. Where the CPU also has avx512_bf16 and the
 * activations are bf16, that path multiplies with the bf16 dot product instead (block_dp:
 * four rows of x at a time, the same bits), and so do calls of two or more rows on the
 * AVX2 entry: steps of many rows then run faster than oneDNN's batched bf16 products, in
 * the one native call of a decode step (decode_step.c). Where the caller says so
 * (`rows_loop` ROWS_LOOP_FMA: the machine measured it faster, precision.py), or where the
 * dot product cannot serve (fp32 activations, a CPU without avx512_bf16), two or more
 * rows on an AVX-512 CPU take block_fma instead: block_avx512's shift, mask and FMAs for
 * four rows of x at once, each widened weight vector feeding them all (the same bits).
 *
 * Every path adds each pair's odd column's product before its even one's, the order of
 * `vdpbf16ps`, and ends a block with hsum8 (hsum's order, eight sums at once), so a row
 * gets the same bits on each path and with any rows beside it.
 *
 * Where the CPU has AMX and the caller says so (`rows_loop` ROWS_LOOP_AMX: the machine
 * measured it fastest), calls of AMX_MIN_ROWS or more rows of bf16 activations multiply
 * on AMX tiles instead (gemv_amx below), reading the same packed weights. Those sums are
 * added in the tile unit's own order, so a row's bits may differ from the other paths'
 * in the last place (in a 16-row check, 1 value in 10,000); each row's still depend on
 * its own values alone, not on the rows beside it.
 */
#define _GNU_SOURCE  /* syscall(), to ask Linux for AMX's tile state */
#include <cpuid.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels.h"
#include "simd.h"

#define ROWS GEMV_BLOCK_ROWS  /* weight rows per block */
#define CHUNK 16  /* columns per chunk */

/* Bytes ahead of the current chunk that the AVX-512 loop prefetches (16 chunks of
 * 256 bytes): past a block's end this is the next block, which follows it in memory. */
#define PREFETCH_BYTES 4096

/* Sums of one weight row block (8 rows) against one row of x, AVX2. */
static inline void block_avx2(const uint16_t *block, const float *xr, int64_t n_in,
                              float out[ROWS]) {
    const __m256i odd_mask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[ROWS];
    for (int k = 0; k < ROWS; k++)
        acc[k] = _mm256_setzero_ps();
    for (int64_t c = 0; c < n_in; c += CHUNK) {
        const __m256 x_even = _mm256_load_ps(xr + c);
        const __m256 x_odd = _mm256_load_ps(xr + c + CHUNK / 2);
        const uint16_t *chunk = block + c * ROWS;
        for (int k = 0; k < ROWS; k++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(chunk + k * CHUNK));
            acc[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, odd_mask)),
                                     x_odd, acc[k]);
            acc[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
                                     x_even, acc[k]);
        }
    }
    _mm256_storeu_ps(out, hsum8(acc));
}

/* The sums of block_avx2 for two rows of x at once, four weight rows at a time: each
 * widened weight vector feeds both rows' FMAs, which halves the shifts and masks per
 * FMA and keeps eight independent sums in flight. Each (row, weight row) sum takes the
 * same FMAs in the same order as block_avx2's, so the bits are the same. In a C loop on
 * an AVX2 EPYC (Zen 3, 2 threads, 24 distinct 576 x 1536 weights), 16 rows ran at 127
 * GFLOP/s against 107 one row at a time, 2 rows at 93 against 81. */
static inline void block_pair_avx2(const uint16_t *block, const float *x0, const float *x1,
                                   int64_t n_in, float out0[ROWS], float out1[ROWS]) {
    const __m256i odd_mask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 sums0[ROWS], sums1[ROWS];
    for (int half = 0; half < ROWS; half += ROWS / 2) {
        __m256 acc0[ROWS / 2], acc1[ROWS / 2];
        for (int k = 0; k < ROWS / 2; k++)
            acc0[k] = acc1[k] = _mm256_setzero_ps();
        for (int64_t c = 0; c < n_in; c += CHUNK) {
            const __m256 x0_even = _mm256_load_ps(x0 + c);
            const __m256 x0_odd = _mm256_load_ps(x0 + c + CHUNK / 2);
            const __m256 x1_even = _mm256_load_ps(x1 + c);
            const __m256 x1_odd = _mm256_load_ps(x1 + c + CHUNK / 2);
            const uint16_t *chunk = block + c * ROWS + half * CHUNK;
            for (int k = 0; k < ROWS / 2; k++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(chunk + k * CHUNK));
                const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, odd_mask));
                acc0[k] = _mm256_fmadd_ps(odd, x0_odd, acc0[k]);
                acc0[k] = _mm256_fmadd_ps(even, x0_even, acc0[k]);
                acc1[k] = _mm256_fmadd_ps(odd, x1_odd, acc1[k]);
                acc1[k] = _mm256_fmadd_ps(even, x1_even, acc1[k]);
            }
        }
        for (int k = 0; k < ROWS / 2; k++) {
            sums0[half + k] = acc0[k];
            sums1[half + k] = acc1[k];
        }
    }
    _mm256_storeu_ps(out0, hsum8(sums0));
    _mm256_storeu_ps(out1, hsum8(sums1));
}

#define GEMV_AVX512 __attribute__((target("avx512f,avx512dq")))

/* hsum8 of the eight weight rows' sums held as rows 2k and 2k+1 in the low and high
 * halves of acc[k] */
static inline GEMV_AVX512 __m256 hsum8_avx512(const __m512 acc[ROWS / 2]) {
    __m256 rows[ROWS];
    for (int k = 0; k < ROWS / 2; k++) {
        rows[2 * k] = _mm512_castps512_ps256(acc[k]);
        rows[2 * k + 1] = _mm512_extractf32x8_ps(acc[k], 1);
    }
    return hsum8(rows);
}

/* The same sums with AVX-512: rows 2k and 2k+1 in the low and high halves of acc[k]. */
static inline GEMV_AVX512 void block_avx512(const uint16_t *block, const float *xr,
                                            int64_t n_in, float out[ROWS]) {
    const __m512i odd_mask = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[ROWS / 2];
    for (int k = 0; k < ROWS / 2; k++)
        acc[k] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_in; c += CHUNK) {
        const __m512 x_even = _mm512_broadcast_f32x8(_mm256_load_ps(xr + c));
        const __m512 x_odd = _mm512_broadcast_f32x8(_mm256_load_ps(xr + c + CHUNK / 2));
        const uint16_t *chunk = block + c * ROWS;
        const char *ahead = (const char *)chunk + PREFETCH_BYTES;
        for (int line = 0; line < ROWS * CHUNK * 2; line += 64)
            _mm_prefetch(ahead + line, _MM_HINT_T0);
        for (int k = 0; k < ROWS / 2; k++) {
            __m512i v = _mm512_loadu_si512((const void *)(chunk + 2 * k * CHUNK));
            acc[k] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, odd_mask)),
                                     x_odd, acc[k]);
            acc[k] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
                                     x_even, acc[k]);
        }
    }
    _mm256_storeu_ps(out, hsum8_avx512(acc));
}

/* The prefetches of a chunk in the loops of several rows: the chunk PREFETCH_BYTES ahead
 * into L1 and, where `later` is not NULL, the same chunk of a block read later into L2. */
static inline void prefetch_chunk(const uint16_t *chunk, const uint16_t *later) {
    const char *ahead = (const char *)chunk + PREFETCH_BYTES;
    for (int line = 0; line < ROWS * CHUNK * 2; line += 64)
        _mm_prefetch(ahead + line, _MM_HINT_T0);
    if (later)
        for (int line = 0; line < ROWS * CHUNK * 2; line += 64)
            _mm_prefetch((const char *)later + line, _MM_HINT_T1);
}

/* The sums of block_avx512 for up to DP_ROWS rows of bf16 x at once, with AVX-512's bf16
 * dot product (`vdpbf16ps`, where the CPU has avx512_bf16): each instruction adds to a
 * fp32 sum the products of a bf16 pair, the odd column's first and then the even one's,
 * each product exact and each add rounded, as the FMA loops above do (so the same bits;
 * unlike them it reads subnormal inputs and writes subnormal sums as zero, values under
 * 1.2e-38 that weights and activations do not hold). One instruction does the work of a
 * shift, a mask and two FMAs, and each weight load feeds `n_rows` rows: on a Zen 4 EPYC
 * (one thread, 24 distinct 576 x 1536 weights, a C loop) 16 rows ran at 246 GFLOP/s
 * against 103 one row at a time on block_avx512, 4 rows at 169 against 81; one row
 * alone is a stream from memory either way (49 GFLOP/s both). x is read as it is,
 * pairs in their natural order (row r at x + r * x_stride); `n_rows` is a constant
 * where it is inlined, so each count gets its own loop. */
#define DP_ROWS 4
#define GEMV_AVX512_BF16 __attribute__((target("avx512f,avx512dq,avx512bf16")))
static inline GEMV_AVX512_BF16 void block_dp(const uint16_t *block, const uint16_t *later,
                                             const uint16_t *x, int64_t x_stride,
                                             int n_rows, int64_t n_in,
                                             float out[DP_ROWS][ROWS]) {
    __m512 acc[DP_ROWS][ROWS / 2];
    for (int r = 0; r < n_rows; r++)
        for (int k = 0; k < ROWS / 2; k++)
            acc[r][k] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_in; c += CHUNK) {
        const uint16_t *chunk = block + c * ROWS;
        prefetch_chunk(chunk, later ? later + c * ROWS : NULL);
        __m512i w[ROWS / 2];
        for (int k = 0; k < ROWS / 2; k++)
            w[k] = _mm512_loadu_si512((const void *)(chunk + 2 * k * CHUNK));
        for (int r = 0; r < n_rows; r++) {
            const __m512i xr = _mm512_broadcast_i64x4(
                _mm256_loadu_si256((const __m256i *)(x + r * x_stride + c)));
            for (int k = 0; k < ROWS / 2; k++)
                acc[r][k] = _mm512_dpbf16_ps(acc[r][k], (__m512bh)w[k], (__m512bh)xr);
        }
    }
    for (int r = 0; r < n_rows; r++)
        _mm256_storeu_ps(out[r], hsum8_avx512(acc[r]));
}

/* One weight block against rows r0 .. r0 + n_rows - 1 of bf16 x, stored (block_dp);
 * `later`: a block to prefetch meanwhile, or NULL. */
static GEMV_AVX512_BF16 void block_dp_rows(const uint16_t *block, const uint16_t *later,
                                           const uint16_t *x, int64_t x_stride, int64_t r0,
                                           int n_rows,
                                           int64_t n_in, int64_t b, int64_t n_out,
                                           const void *bias, const void *residual, void *y) {
    float sums[DP_ROWS][ROWS];
    const uint16_t *xr = x + r0 * x_stride;
    switch (n_rows) {  /* constant counts, so each is its own unrolled loop */
    case 4: block_dp(block, later, xr, x_stride, 4, n_in, sums); break;
    case 3: block_dp(block, later, xr, x_stride, 3, n_in, sums); break;
    case 2: block_dp(block, later, xr, x_stride, 2, n_in, sums); break;
    default: block_dp(block, later, xr, x_stride, 1, n_in, sums); break;
    }
    for (int r = 0; r < n_rows; r++)
        store_block_sums(sums[r], b, r0 + r, n_out, bias, residual, y, 1);
}

/* The sums of block_avx512 for up to FMA_ROWS rows of x (fp32, each chunk split into its
 * even and odd halves as block_avx512 reads it) at once: each 64-byte weight load is
 * widened once (one mask, one shift) and feeds every row's two FMAs, in block_avx512's
 * order, so each row gets the bits it gets alone. The loop of steps of several rows where
 * the bf16 dot product is slower than two FMAs: on an Intel Xeon (family 6 model 207,
 * avx512_bf16, no AMX) `vdpbf16ps` ran 1.6 G instructions/s per core against 6.5 G for
 * FMAs (a scratch loop of independent sums), so its 64 FLOPs each gave 100 GFLOP/s
 * against FMAs' 208, and 16 rows over SmolLM2's 24 projections of 6 layers, 2 threads,
 * ran at 226-228 GFLOP/s on this loop against 170-175 on block_dp (a C loop, scratch
 * `ab.py`). On a Zen 4 EPYC, whose 512-bit FMAs issue at half an Intel core's rate, the
 * dot product should stay the faster (not yet timed there against this loop): so the
 * choice is measured. Four rows take 26 of the 32 vector registers (16 sums, each row's
 * two x halves, one widened weight vector's two halves); five measured the same. */
#define FMA_ROWS 4
static inline GEMV_AVX512 void block_fma(const uint16_t *block, const uint16_t *later,
                                         const float *xs, int64_t n_in, int n_rows,
                                         float out[FMA_ROWS][ROWS]) {
    const __m512i odd_mask = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[FMA_ROWS][ROWS / 2];
    for (int r = 0; r < n_rows; r++)
        for (int k = 0; k < ROWS / 2; k++)
            acc[r][k] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_in; c += CHUNK) {
        const uint16_t *chunk = block + c * ROWS;
        prefetch_chunk(chunk, later ? later + c * ROWS : NULL);
        __m512 x_even[FMA_ROWS], x_odd[FMA_ROWS];
        for (int r = 0; r < n_rows; r++) {
            x_even[r] = _mm512_broadcast_f32x8(_mm256_load_ps(xs + r * n_in + c));
            x_odd[r] = _mm512_broadcast_f32x8(_mm256_load_ps(xs + r * n_in + c + CHUNK / 2));
        }
        for (int k = 0; k < ROWS / 2; k++) {
            const __m512i v = _mm512_loadu_si512((const void *)(chunk + 2 * k * CHUNK));
            const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, odd_mask));
            const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            for (int r = 0; r < n_rows; r++) {
                acc[r][k] = _mm512_fmadd_ps(odd, x_odd[r], acc[r][k]);
                acc[r][k] = _mm512_fmadd_ps(even, x_even[r], acc[r][k]);
            }
        }
    }
    for (int r = 0; r < n_rows; r++)
        _mm256_storeu_ps(out[r], hsum8_avx512(acc[r]));
}

/* One weight block against rows r0 .. r0 + n_rows - 1 of split fp32 x, stored
 * (block_fma); `later` as for block_dp_rows. */
static GEMV_AVX512 void block_fma_rows(const uint16_t *block, const uint16_t *later,
                                       const float *xs, int64_t n_in, int64_t r0, int n_rows,
                                       int64_t b, int64_t n_out, const void *bias,
                                       const void *residual, void *y, int act_bf16) {
    float sums[FMA_ROWS][ROWS];
    const float *xr = xs + r0 * n_in;
    switch (n_rows) {  /* constant counts, so each is its own unrolled loop */
    case 4: block_fma(block, later, xr, n_in, 4, sums); break;
    case 3: block_fma(block, later, xr, n_in, 3, sums); break;
    case 2: block_fma(block, later, xr, n_in, 2, sums); break;
    default: block_fma(block, later, xr, n_in, 1, sums); break;
    }
    for (int r = 0; r < n_rows; r++)
        store_block_sums(sums[r], b, r0 + r, n_out, bias, residual, y, act_bf16);
}

/* Calls of at least this many rows take AMX where the caller asks for it; fewer go to
 * block_fma. On an AMX Sapphire Rapids VM (2 threads, SmolLM2's 30 layers of weights, a
 * C loop): 2 rows 12.3 ms on AMX against 10.6 on block_fma, 4 rows 13.7 against 14.2,
 * 8 rows 13.7 against 17.5, 16 rows 13.8 against 24.5 (1 row: 11.5). */
#define AMX_MIN_ROWS 4

/* AMX needs a compiler that knows its intrinsics (GCC 11, clang 12); elsewhere the
 * library builds without it and gptstore_amx_supported says 0. */
#if defined(__clang__)
#define HAVE_AMX (__clang_major__ >= 12)
#elif defined(__GNUC__)
#define HAVE_AMX (__GNUC__ >= 11)
#else
#define HAVE_AMX 0
#endif

/* Whether gemv_amx runs here: the CPU has AMX's tiles and bf16 products (CPUID leaf 7,
 * EDX bits 24 and 22) and Linux lets this process use their state (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, asked once for the process; Linux 5.16 or
 * later). */
int gptstore_amx_supported(void) {
    static int supported = -1;
    if (supported < 0) {
        unsigned a, b, c, d;
        int ok = HAVE_AMX && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
                 (d >> 24 & 1u) && (d >> 22 & 1u);
        if (ok)
            ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                         18 /* XFEATURE_XTILEDATA */) == 0;
        supported = ok;
    }
    return supported;
}

#if HAVE_AMX
#define GEMV_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512dq")))

/* Blocks one pass over the weights multiplies at once: AMX has eight tile registers, and
 * each block takes two (its weights, its sums) beside x's one. */
#define AMX_BLOCKS 3
/* Bytes ahead in each block's stream that the loop prefetches: 1 KB measured 5-8%
 * faster than none, 2-16 KB no better (SmolLM2's weights at 16 rows, a C loop). */
#define AMX_PREFETCH_BYTES 1024
/* rows of x a tile holds */
#define AMX_ROWS 16

/* The palette AMX's tile registers take (its layout is fixed by the ISA). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

/* The products of bf16 rows on AMX (`tdpbf16ps`): C[8 weight rows][16 x rows] += A[8
 * weight rows][16 columns] B[8 column pairs][16 x rows], where A is one 16-column chunk
 * of a weight block as the packed layout stores it (8 rows of 32 bytes, contiguous) and
 * B the same columns of 16 rows of x, pair by pair (the layout the instruction takes,
 * made once per call in `xt`). One pass over AMX_BLOCKS blocks reads each chunk once
 * for every group of 16 rows; steps of a few rows read every weight once, as one row
 * does, with the arithmetic on the tile unit. Why hand-written (docs/design.md, "Decode
 * steps of a few rows on the native GEMV"): on an AMX Sapphire Rapids VM, 16 rows over
 * SmolLM2's layer weights (2 threads) streamed them at 7-8 GB/s in oneDNN's batched bf16
 * products and at 13-16 in this loop (a row alone: 18-20), because the packed layout is
 * already the tile's A operand: no reorder, one stream per block. x: bf16, row r at x +
 * r * x_stride. Returns 0, or -1 when the scratch memory could not be allocated
 * (nothing written then). */
static GEMV_AMX int gemv_amx(const uint16_t *x, int64_t n_rows, int64_t x_stride,
                             const uint16_t *packed, int64_t n_in, int64_t n_out,
                             const void *bias, const void *residual, void *y,
                             int n_threads) {
    const int64_t n_blocks = (n_out + ROWS - 1) / ROWS;
    const int64_t n_groups = (n_rows + AMX_ROWS - 1) / AMX_ROWS, pairs = n_in / 2;
    /* xt[group][pair][16 rows]: each row's bf16 pair as one 32-bit value, zero past
     * the last row */
    uint32_t *xt = (uint32_t *)aligned_alloc(64, (size_t)(n_groups * pairs * AMX_ROWS) * 4);
    if (!xt)
        return -1;
    for (int64_t r = 0; r < n_groups * AMX_ROWS; r++) {
        uint32_t *to = xt + (r / AMX_ROWS) * pairs * AMX_ROWS + r % AMX_ROWS;
        const uint32_t *from = (const uint32_t *)(x + r * x_stride);
        for (int64_t p = 0; p < pairs; p++)
            to[p * AMX_ROWS] = r < n_rows ? from[p] : 0;
    }
    const int64_t n_passes = (n_blocks + AMX_BLOCKS - 1) / AMX_BLOCKS;
    const int64_t block_size = ROWS * n_in;  /* elements */
    #pragma omp parallel num_threads(n_threads)
    {
        /* tile 0: x's pairs (8 x 64 bytes); 1-3: weight chunks (8 x 32); 4-6: sums (8 x
         * 64). Each thread's own registers, configured for this call. */
        tile_config config;
        memset(&config, 0, sizeof config);
        config.palette = 1;
        for (int t = 0; t < 1 + 2 * AMX_BLOCKS; t++) {
            config.rows[t] = ROWS;
            config.bytes_per_row[t] = t >= 1 && t <= AMX_BLOCKS ? CHUNK * 2 : AMX_ROWS * 4;
        }
        _tile_loadconfig(&config);
        float sums[AMX_BLOCKS][ROWS][AMX_ROWS];
        #pragma omp for schedule(static)
        for (int64_t pass = 0; pass < n_passes; pass++) {
            const int64_t b0 = pass * AMX_BLOCKS;
            const int blocks = n_blocks - b0 < AMX_BLOCKS ? (int)(n_blocks - b0) : AMX_BLOCKS;
            const uint16_t *first = packed + b0 * block_size;
            for (int64_t g = 0; g < n_groups; g++) {
                const uint32_t *xg = xt + g * pairs * AMX_ROWS;
                if (blocks == AMX_BLOCKS) {
                    _tile_zero(4);
                    _tile_zero(5);
                    _tile_zero(6);
                    for (int64_t c = 0; c < n_in; c += CHUNK) {
                        const uint16_t *chunk = first + c * ROWS;
                        for (int j = 0; j < AMX_BLOCKS; j++) {
                            const char *ahead = (const char *)(chunk + j * block_size) +
                                                AMX_PREFETCH_BYTES;
                            for (int line = 0; line < ROWS * CHUNK * 2; line += 64)
                                _mm_prefetch(ahead + line, _MM_HINT_T0);
                        }
                        _tile_loadd(0, xg + c / 2 * AMX_ROWS, AMX_ROWS * 4);
                        _tile_loadd(1, chunk, CHUNK * 2);
                        _tile_loadd(2, chunk + block_size, CHUNK * 2);
                        _tile_loadd(3, chunk + 2 * block_size, CHUNK * 2);
                        _tile_dpbf16ps(4, 1, 0);
                        _tile_dpbf16ps(5, 2, 0);
                        _tile_dpbf16ps(6, 3, 0);
                    }
                    _tile_stored(4, sums[0], AMX_ROWS * 4);
                    _tile_stored(5, sums[1], AMX_ROWS * 4);
                    _tile_stored(6, sums[2], AMX_ROWS * 4);
                } else {  /* the last blocks of a product, one at a time */
                    for (int j = 0; j < blocks; j++) {
                        _tile_zero(4);
                        for (int64_t c = 0; c < n_in; c += CHUNK) {
                            _tile_loadd(0, xg + c / 2 * AMX_ROWS, AMX_ROWS * 4);
                            _tile_loadd(1, first + j * block_size + c * ROWS, CHUNK * 2);
                            _tile_dpbf16ps(4, 1, 0);
                        }
                        _tile_stored(4, sums[j], AMX_ROWS * 4);
                    }
                }
                for (int j = 0; j < blocks; j++)
                    for (int64_t r = g * AMX_ROWS; r < n_rows && r < (g + 1) * AMX_ROWS; r++) {
                        float row[ROWS];
                        for (int k = 0; k < ROWS; k++)
                            row[k] = sums[j][k][r % AMX_ROWS];
                        store_block_sums(row, b0 + j, r, n_out, bias, residual, y, 1);
                    }
            }
        }
        _tile_release();  /* the registers' state need not follow the thread around */
    }
    free(xt);
    return 0;
}
#endif

/* One 16-column chunk of x from element `at` (fp32, or bf16 where `act_bf16`) as fp32,
 * its 8 even columns then its 8 odd ones, into `out` (32-byte aligned): the layout the
 * FMA loops read. Vectorised because it runs on one thread before every call's parallel
 * loop (for a 16-row SmolLM2 step, 1.6 M values a step): 16-row products over SmolLM2's
 * weights ran 1-3% faster than with the scalar copy (C loop, Intel Xeon). bf16 pairs widen
 * as the weights do (the even value is a pair's low half shifted up, the odd its high
 * half masked); fp32 values are deinterleaved with two shuffles. */
static inline void split_chunk(const void *x, int64_t at, int act_bf16, float *out) {
    if (act_bf16) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + at));
        _mm256_store_ps(out, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        _mm256_store_ps(out + CHUNK / 2, _mm256_castsi256_ps(
            _mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u))));
        return;
    }
    const float *xf = (const float *)x + at;
    const __m256 lo = _mm256_loadu_ps(xf), hi = _mm256_loadu_ps(xf + CHUNK / 2);
    /* (lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6), then the 64-bit lanes in order 0 2 1 3 */
    const __m256 even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_store_ps(out, _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_store_ps(out + CHUNK / 2, _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0))));
}

/* Whether this CPU has AVX-512's bf16 dot product (asked once; only after
 * gptstore_gemv_bf16_avx512_supported, which checks the rest of AVX-512). */
static int dp_supported(void) {
    static int supported = -1;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx512bf16");
    }
    return supported;
}

/* Whether this CPU runs block_avx512 (asked once: every AVX-512 call checks it). */
int gptstore_gemv_bf16_avx512_supported(void) {
    static int supported = -1;  /* the same answer from any thread, so no lock */
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    }
    return supported;
}

/* The block a pass over block `b` (rows r .. r + per_pass - 1 of n_rows) brings into L2
 * meanwhile (`later` of block_dp and block_fma), or NULL: the first pass over a block that
 * several passes read prefetches the block two ahead (the rest read it from L1). */
static inline const uint16_t *block_ahead(const uint16_t *packed, int64_t b, int64_t n_blocks,
                                          int64_t n_in, int64_t r, int64_t n_rows,
                                          int per_pass) {
    return n_rows > per_pass && r == 0 && b + 2 < n_blocks ? packed + (b + 2) * ROWS * n_in
                                                           : NULL;
}

/* x: [n_rows, n_in] with row stride x_stride (elements); y, residual: [n_rows, n_out]
 * contiguous; bias: [n_out] or NULL; residual may be NULL. Returns 0, or -1 when the
 * scratch memory could not be allocated (nothing written then). */
static int gemv_bf16(const void *x, int64_t n_rows, int64_t x_stride, const uint16_t *packed,
                     int64_t n_in, int64_t n_out, const void *bias, const void *residual,
                     void *y, int act_bf16, int n_threads, int use_avx512, int rows_loop) {
#if HAVE_AMX
    if (rows_loop == ROWS_LOOP_AMX && act_bf16 && n_rows >= AMX_MIN_ROWS &&
            gptstore_amx_supported())
        return gemv_amx((const uint16_t *)x, n_rows, x_stride, packed, n_in, n_out, bias,
                        residual, y, n_threads);
#endif
    /* fewer rows under AMX take the FMA loop, as they would where AMX is not there */
    const int rows_fma = rows_loop != ROWS_LOOP_DOT;
    const int64_t n_blocks = (n_out + ROWS - 1) / ROWS;
    const int wide = gptstore_gemv_bf16_avx512_supported();
    /* Several rows of bf16 activations take the dot-product loop from either entry
     * where the CPU has it, unless the caller measured block_fma faster (`rows_fma`;
     * either gives the same bits): the choice between the AVX2 and AVX-512
     * loops is made by timing one row, a stream from memory where either may win by a
     * few percent, while with more rows the arithmetic counts and one `vdpbf16ps` does
     * a shift, a mask and two FMAs' work. On a Zen 4 EPYC whose one row measured faster
     * on the AVX2 loop, 16-row steps on that loop had lost to oneDNN's batched products
     * (11.9 against 6.8 ms for six SmolLM2 layers, one thread), so the engine's 16
     * streams ran on those: 564-581 tok/s, against 652-725 with the steps on this loop
     * (docs/design.md, "Decode steps of a few rows on the native GEMV"). */
    if (act_bf16 && (n_rows > 1 ? !rows_fma : use_avx512) && wide && dp_supported()) {
        /* More rows than one pass takes read each block several times, from L1 after
         * the first: that first pass also brings the block two ahead into L2, where
         * the 4 KB prefetch alone left the passes waiting on memory (a C loop over
         * 24 SmolLM2 weights, 2 threads, Zen 4 EPYC, median of 15: 16 rows 259-271
         * -> 283-294 GFLOP/s, 8 rows 197-217 -> 226-266, 5 rows 148-169 -> 180-235). */
        #pragma omp parallel for schedule(static) num_threads(n_threads)
        for (int64_t b = 0; b < n_blocks; b++)
            for (int64_t r = 0; r < n_rows; r += DP_ROWS)
                block_dp_rows(packed + b * ROWS * n_in,
                              block_ahead(packed, b, n_blocks, n_in, r, n_rows, DP_ROWS),
                              (const uint16_t *)x, x_stride, r,
                              n_rows - r < DP_ROWS ? (int)(n_rows - r) : DP_ROWS, n_in, b,
                              n_out, bias, residual, y);
        return 0;
    }
    /* x as fp32, each 16-column chunk split into its 8 even then its 8 odd columns */
    float *xs = (float *)aligned_alloc(32, (size_t)(n_rows * n_in) * sizeof(float) + 32);
    if (!xs)
        return -1;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t c = 0; c < n_in; c += CHUNK)
            split_chunk(x, r * x_stride + c, act_bf16, xs + r * n_in + c);

    #pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint16_t *block = packed + b * ROWS * n_in;
        int64_t r = 0;  /* rows after the first find the block in cache */
        if (n_rows > 1 && wide) {  /* block_fma, four rows at a time, from either entry */
            for (; r < n_rows; r += FMA_ROWS)
                block_fma_rows(block,
                               block_ahead(packed, b, n_blocks, n_in, r, n_rows, FMA_ROWS),
                               xs, n_in, r,
                               n_rows - r < FMA_ROWS ? (int)(n_rows - r) : FMA_ROWS, b,
                               n_out, bias, residual, y, act_bf16);
        }
        if (!use_avx512) {
            for (; r + 1 < n_rows; r += 2) {
                float sums0[ROWS], sums1[ROWS];
                block_pair_avx2(block, xs + r * n_in, xs + (r + 1) * n_in, n_in, sums0, sums1);
                store_block_sums(sums0, b, r, n_out, bias, residual, y, act_bf16);
                store_block_sums(sums1, b, r + 1, n_out, bias, residual, y, act_bf16);
            }
        }
        for (; r < n_rows; r++) {
            float sums[ROWS];
            if (use_avx512)
                block_avx512(block, xs + r * n_in, n_in, sums);
            else
                block_avx2(block, xs + r * n_in, n_in, sums);
            store_block_sums(sums, b, r, n_out, bias, residual, y, act_bf16);
        }
    }
    free(xs);
    return 0;
}

/* The AVX2 path (with AVX-512's loops for two or more rows where the CPU has them).
 * `rows_loop` (kernels.h): two or more rows of bf16 activations on the bf16 dot product,
 * on block_fma (the same bits), or from AMX_MIN_ROWS rows on AMX tiles (gemv_amx), as
 * the machine measured fastest. */
int gptstore_gemv_bf16(const void *x, int64_t n_rows, int64_t x_stride,
                       const uint16_t *packed, int64_t n_in, int64_t n_out,
                       const void *bias, const void *residual, void *y,
                       int act_bf16, int n_threads, int rows_loop) {
    return gemv_bf16(x, n_rows, x_stride, packed, n_in, n_out, bias, residual, y, act_bf16,
                     n_threads, 0, rows_loop);
}

/* The AVX-512 path (same arguments and bits); -3 where the CPU lacks AVX-512. */
int gptstore_gemv_bf16_avx512(const void *x, int64_t n_rows, int64_t x_stride,
                              const uint16_t *packed, int64_t n_in, int64_t n_out,
                              const void *bias, const void *residual, void *y,
                              int act_bf16, int n_threads, int rows_loop) {
    if (!gptstore_gemv_bf16_avx512_supported())
        return -3;
    return gemv_bf16(x, n_rows, x_stride, packed, n_in, n_out, bias, residual, y, act_bf16,
                     n_threads, 1, rows_loop);
}
