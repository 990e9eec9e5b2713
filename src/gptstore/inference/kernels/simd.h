/* Helpers shared by gptstore's decode kernels (AVX2 + FMA). */
#ifndef GPTSTORE_SIMD_H
#define GPTSTORE_SIMD_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline __m256 load8(const void *p, int64_t i, int bf16) {
    if (bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)p + i);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

/* The eight sums hsum gives v[0] .. v[7], in one vector, added in hsum's order (each
 * vector's halves, then neighbours, then pairs of those), so with the same bits: the
 * GEMVs end each weight block so, eight rows' sums in a few shuffles. */
static inline __m256 hsum8(const __m256 v[8]) {
    __m256 halves[4];  /* halves[i]: v[2i]'s four half sums, then v[2i + 1]'s */
    for (int i = 0; i < 4; i++)
        halves[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                                  _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
    const __m256 pairs_low = _mm256_hadd_ps(halves[0], halves[1]);
    const __m256 pairs_high = _mm256_hadd_ps(halves[2], halves[3]);
    /* sums of v[0], v[2], v[4], v[6] in the low lane, v[1], v[3], v[5], v[7] in the high */
    const __m256 sums = _mm256_hadd_ps(pairs_low, pairs_high);
    return _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* exp(x) for 8 floats: Cephes' expf (range reduction by ln 2, degree-5 polynomial) */
static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* 8 floats rounded to bf16 as f32_to_bf16 rounds them (to nearest even; NaN stays
 * NaN), returned as the floats those bf16 values are */
static inline __m256 round8_bf16(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    rounded = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                                                   _mm256_castsi256_ps(quiet), is_nan));
    return _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32((int)0xffff0000u)));
}

/* 8 floats stored at p + i: fp32 as they are, or rounded to bf16 */
static inline void store8(void *p, int64_t i, __m256 v, int bf16) {
    if (!bf16) {
        _mm256_storeu_ps((float *)p + i, v);
        return;
    }
    const __m256i high = _mm256_srli_epi32(_mm256_castps_si256(round8_bf16(v)), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(high),
                                            _mm256_extracti128_si256(high, 1));
    _mm_storeu_si128((__m128i *)((uint16_t *)p + i), packed);
}

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float load_act(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_act(void *p, int64_t i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* weight rows per block of the GEMVs' packed layouts (native.py BLOCK_ROWS) */
#define GEMV_BLOCK_ROWS 8

/* x . w over `dim` values, each fp32 or bf16, summed in fp32 */
static inline float dot(const void *x, const void *w, int64_t dim, int x_bf16, int w_bf16) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        a = _mm256_fmadd_ps(load8(x, i, x_bf16), load8(w, i, w_bf16), a);
        b = _mm256_fmadd_ps(load8(x, i + 8, x_bf16), load8(w, i + 8, w_bf16), b);
    }
    for (; i + 8 <= dim; i += 8)
        a = _mm256_fmadd_ps(load8(x, i, x_bf16), load8(w, i, w_bf16), a);
    float total = hsum(_mm256_add_ps(a, b));
    for (; i < dim; i++)
        total += load_act(x, i, x_bf16) * load_act(w, i, w_bf16);
    return total;
}

/* The GEMVs' output: weight row block b's sums for activation row r, plus bias and
 * residual, into y ([rows, n_out]); rows of the block past n_out are dropped. */
static inline void store_block_sums(const float *sums, int64_t b, int64_t r, int64_t n_out,
                                    const void *bias, const void *residual, void *y,
                                    int act_bf16) {
    const int64_t o0 = b * GEMV_BLOCK_ROWS;
    if (o0 + GEMV_BLOCK_ROWS <= n_out) {  /* a whole block: the same adds, eight at once */
        __m256 s = _mm256_loadu_ps(sums);
        if (bias)
            s = _mm256_add_ps(s, load8(bias, o0, act_bf16));
        if (residual)
            s = _mm256_add_ps(s, load8(residual, r * n_out + o0, act_bf16));
        store8(y, r * n_out + o0, s, act_bf16);
        return;
    }
    for (int k = 0; k < GEMV_BLOCK_ROWS; k++) {
        const int64_t o = b * GEMV_BLOCK_ROWS + k;
        if (o >= n_out)
            break;
        float s = sums[k];
        if (bias)
            s += load_act(bias, o, act_bf16);
        if (residual)
            s += load_act(residual, r * n_out + o, act_bf16);
        store_act(y, r * n_out + o, s, act_bf16);
    }
}

#endif
