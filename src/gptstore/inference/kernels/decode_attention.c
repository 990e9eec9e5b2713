/* Attention for decode rows (one new token per sequence) over the slot KV cache.
 *
 * Why hand-written (docs/design.md, "Native decode attention"): for one query token
 * PyTorch's CPU flash-attention kernel costs tens of microseconds of setup around a
 * few microseconds of arithmetic, and a decode step calls it once per layer. Measured
 * in a SmolLM2 decode step on an AVX2 EPYC, attention (SDPA and the cache writes) took
 * ~5 ms of a ~24 ms step at 150 cached positions.
 *
 * Layout: the cache is [slots, n_kv, cap, head_dim] (kv_cache.py), fp32 or bf16 like
 * q and out; row r of the group reads slot slot0 + r and its first lengths[r]
 * positions (its own new token already written); with `slot_step` 0
 * (`gptstore_attention_rows`) the rows of one prompt chunk, all on one slot, the same
 * way. Query head j attends with kv head
 * j / (n_heads / n_kv), as transformers' repeat_kv pairs them. Scores, softmax and the
 * weighted sum are fp32; exp is a vectorised polynomial (Cephes' expf, relative error
 * ~2e-7). head_dim must be a multiple of 8, at most 256. Threads: OpenMP over
 * (row, kv head).
 *
 * Rotary embedding (optional, `rot_cos` and `rot_sin` not NULL): q and the new keys
 * arrive unrotated and are rotated here at each row's position, so a Llama step needs
 * no separate rotary kernels (four per layer in PyTorch: a multiply, a flip, a view and
 * an addcmul). The tables are the runner's [positions, head_dim] cos and sign-folded
 * sin (llama.py: rotate_half(x) * sin == flip_halves(x) * sin_signed) in q's dtype, and
 * the arithmetic rounds where PyTorch's does: x * cos is rounded to q's dtype, then
 * that plus flip_halves(x) * sin is one fused multiply-add in fp32 (ATen's vectorised
 * addcmul), rounded again in bf16.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "kernels.h"
#include "simd.h"

/* x[at .. at + head_dim) rotated at table row `table` (an element offset), into fp32
 * `to_f32` or, in the activations' dtype, into `to_act` at `to`: x * cos +
 * flip_halves(x) * sin_signed, rounded as PyTorch rounds it (see the top). */
static void rotate(const void *x, int64_t at, const void *cos, const void *sin,
                   int64_t table, int64_t head_dim, int bf16, float *to_f32, void *to_act,
                   int64_t to) {
    const int64_t half = head_dim / 2;
    if (half % 8 == 0) {  /* whole vectors in each half */
        for (int64_t d = 0; d < head_dim; d += 8) {
            const int64_t other = d < half ? d + half : d - half;
            __m256 product = _mm256_mul_ps(load8(x, at + d, bf16), load8(cos, table + d, bf16));
            if (bf16)
                product = round8_bf16(product);
            const __m256 rotated = _mm256_fmadd_ps(load8(x, at + other, bf16),
                                                   load8(sin, table + d, bf16), product);
            if (to_f32)
                _mm256_storeu_ps(to_f32 + d, bf16 ? round8_bf16(rotated) : rotated);
            else
                store8(to_act, to + d, rotated, bf16);
        }
        return;
    }
    for (int64_t d = 0; d < head_dim; d++) {
        const float v = load_act(x, at + d, bf16);
        const float swapped = load_act(x, at + (d < half ? d + half : d - half), bf16);
        float product = v * load_act(cos, table + d, bf16);
        if (bf16)
            product = bf16_to_f32(f32_to_bf16(product));
        float rotated = fmaf(swapped, load_act(sin, table + d, bf16), product);
        if (bf16)
            rotated = bf16_to_f32(f32_to_bf16(rotated));
        if (to_f32)
            to_f32[d] = rotated;
        else
            store_act(to_act, to + d, rotated, bf16);
    }
}

/* s[0 .. length) <- exp(s - max(s)); returns their sum (the softmax's divisor) */
static float softmax_weights(float *s, int64_t length) {
    float top = s[0];
    for (int64_t t = 1; t < length; t++)
        top = s[t] > top ? s[t] : top;
    const __m256 m = _mm256_set1_ps(top);
    __m256 sum8 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= length; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
        _mm256_storeu_ps(s + t, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    float total = hsum(sum8);
    if (t < length) {  /* the last partial vector: padded with zeros */
        float tail[8] = {0}, e[8];
        memcpy(tail, s + t, (size_t)(length - t) * sizeof(float));
        _mm256_storeu_ps(e, exp8(_mm256_sub_ps(_mm256_loadu_ps(tail), m)));
        for (int64_t i = 0; i < length - t; i++) {
            s[t + i] = e[i];
            total += e[i];
        }
    }
    return total;
}

/* A cache row (one position of one kv head) requested into L2 ahead of its use. The
 * score loop requests each value row as it reads the key row of the same position:
 * the hardware prefetcher follows the keys' sequential stream, and the values then
 * stream beside it instead of after it. Measured on the Zen 4 EPYC (16 rows x 160
 * positions over 30 layers' caches, 2 threads): 183 -> 125-134 us a layer. Requesting
 * the next task's keys during the weighted sum was slower (165-171 us). */
static inline void prefetch_row(const void *cache, int64_t row, int64_t head_dim, int bf16) {
    const int64_t item = bf16 ? 2 : 4;
    const char *at = (const char *)cache + row * item;
    for (int64_t b = 0; b < head_dim * item; b += 64)
        _mm_prefetch(at + b, _MM_HINT_T1);
}

#define PAIRED_GROUP 4  /* the most query heads per kv head `attend_paired` takes */

/* 16 cache values at p + i as two fp32 vectors: fp32 in order; bf16 as the 8 even, then
 * the 8 odd positions (one load, a shift and a mask, as in gemv_bf16.c) */
static inline void load16(const void *p, int64_t i, int bf16, __m256 *first,
                          __m256 *second) {
    if (bf16) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
        *first = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *second = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
    } else {
        *first = _mm256_loadu_ps((const float *)p + i);
        *second = _mm256_loadu_ps((const float *)p + i + 8);
    }
}

/* the sums of four vectors, in the result's four lanes */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* One (row, kv head) task where the group has at most PAIRED_GROUP query heads and
 * head_dim is a multiple of 16 (SmolLM2: 3 and 64): each key and value is widened once
 * for the whole group instead of once per query head, and four scores are reduced
 * together. qf: the group's queries, fp32 in order; qp: room for them in the order
 * load16 gives bf16 cache values; out_at: where the group's first head goes in out.
 * The same arithmetic as the general loop, summed in another order. */
static void attend_paired(const float *qf, float *qp, float *scores, int64_t stride,
                          const void *k_cache, const void *v_cache, int64_t base,
                          int64_t length, int64_t group, int64_t head_dim, float scale,
                          void *out, int64_t out_at, int bf16) {
    const int64_t chunks = head_dim / 16;
    if (bf16) {  /* fp32 values load in order: the queries stay as they are */
        for (int64_t j = 0; j < group; j++) {
            for (int64_t c = 0; c < chunks; c++) {
                const float *from = qf + j * head_dim + 16 * c;
                float *to = qp + j * head_dim + 16 * c;
                for (int i = 0; i < 8; i++) {
                    to[i] = from[2 * i];
                    to[8 + i] = from[2 * i + 1];
                }
            }
        }
        qf = qp;
    }
    for (int64_t t = 0; t < length; t++) {
        const int64_t row = base + t * head_dim;
        prefetch_row(v_cache, row, head_dim, bf16);
        __m256 acc[PAIRED_GROUP];
        for (int j = 0; j < PAIRED_GROUP; j++)
            acc[j] = _mm256_setzero_ps();
        for (int64_t c = 0; c < chunks; c++) {
            __m256 first, second;
            load16(k_cache, row + 16 * c, bf16, &first, &second);
            for (int64_t j = 0; j < group; j++) {
                const float *qj = qf + j * head_dim + 16 * c;
                acc[j] = _mm256_fmadd_ps(first, _mm256_loadu_ps(qj), acc[j]);
                acc[j] = _mm256_fmadd_ps(second, _mm256_loadu_ps(qj + 8), acc[j]);
            }
        }
        float sums[4];
        _mm_storeu_ps(sums, hsum4(acc[0], acc[1], acc[2], acc[3]));
        for (int64_t j = 0; j < group; j++)
            scores[j * stride + t] = sums[j] * scale;
    }
    float inv[PAIRED_GROUP];
    for (int64_t j = 0; j < group; j++)
        inv[j] = 1.0f / softmax_weights(scores + j * stride, length);
    /* the weighted sums of values, 16 dimensions at a time (all in registers) */
    for (int64_t c = 0; c < chunks; c++) {
        __m256 lo[PAIRED_GROUP], hi[PAIRED_GROUP];
        for (int j = 0; j < PAIRED_GROUP; j++)
            lo[j] = hi[j] = _mm256_setzero_ps();
        for (int64_t u = 0; u < length; u++) {
            __m256 first, second;
            load16(v_cache, base + u * head_dim + 16 * c, bf16, &first, &second);
            for (int64_t j = 0; j < group; j++) {
                const __m256 p = _mm256_set1_ps(scores[j * stride + u]);
                lo[j] = _mm256_fmadd_ps(p, first, lo[j]);
                hi[j] = _mm256_fmadd_ps(p, second, hi[j]);
            }
        }
        for (int64_t j = 0; j < group; j++) {
            const __m256 norm = _mm256_set1_ps(inv[j]);
            __m256 first = _mm256_mul_ps(lo[j], norm), second = _mm256_mul_ps(hi[j], norm);
            if (bf16) {  /* even and odd positions back in order */
                const __m256 low = _mm256_unpacklo_ps(first, second);
                const __m256 high = _mm256_unpackhi_ps(first, second);
                first = _mm256_permute2f128_ps(low, high, 0x20);
                second = _mm256_permute2f128_ps(low, high, 0x31);
            }
            const int64_t at = out_at + j * head_dim + 16 * c;
            store8(out, at, first, bf16);
            store8(out, at + 8, second, bf16);
        }
    }
}

/* Row r's new key and value for kv head h written at its position (lengths[r] - 1) of
 * the cache row block `base`, the key rotated there where the tables are given. */
static void write_new(const void *k_new, const void *v_new, const int64_t *new_strides,
                      const void *rot_cos, const void *rot_sin, void *k_cache, void *v_cache,
                      int64_t base, int64_t r, int64_t h, int64_t length, int64_t head_dim,
                      int bf16) {
    const int64_t item = bf16 ? 2 : 4, to = base + (length - 1) * head_dim;
    const int64_t k_at = r * new_strides[0] + h * new_strides[1];
    if (rot_cos)
        rotate(k_new, k_at, rot_cos, rot_sin, (length - 1) * head_dim, head_dim, bf16, NULL,
               k_cache, to);
    else
        memcpy((char *)k_cache + to * item, (const char *)k_new + k_at * item,
               (size_t)(head_dim * item));
    memcpy((char *)v_cache + to * item,
           (const char *)v_new + (r * new_strides[2] + h * new_strides[3]) * item,
           (size_t)(head_dim * item));
}

/* q: element [r, j, d] at q + r * q_row_stride + j * q_head_stride + d.
 * k_new, v_new (or NULL): the rows' new keys and values, element [r, h, d] at
 * r * new_strides[0] + h * new_strides[1] + d of k_new and r * new_strides[2] +
 * h * new_strides[3] + d of v_new, written into the cache at position lengths[r] - 1
 * first (else the caller has written them).
 * rot_cos, rot_sin (or NULL): rotary tables, element [p, d] at p * head_dim + d; with
 * them q and k_new are rotated at position lengths[r] - 1 (k_new is then required).
 * Row r reads slot slot0 + r * slot_step: 1 for decode rows on consecutive slots; 0 for
 * the tokens of one prompt chunk after its cached prefix, all on one slot (their keys
 * and values must then be written by the caller first, since each row reads the
 * others': k_new must be NULL). Or, where `row_slots` is not NULL, slot row_slots[r]:
 * rows of any slots, several of one prompt chunk on one slot among them (a step of
 * decode rows and prompt chunks in one call, decode_step.c); with k_new every row's
 * key and value is then written before any row attends.
 * out: [n_rows, n_heads * head_dim] contiguous. Returns 0, or -1 when scratch memory
 * could not be allocated (nothing written then). */
int gptstore_attention_rows(const void *q, int64_t q_row_stride, int64_t q_head_stride,
                            const void *k_new, const void *v_new,
                            const int64_t *new_strides, const void *rot_cos,
                            const void *rot_sin, void *k_cache, void *v_cache, int64_t slot0,
                            int64_t slot_step, const int64_t *row_slots, int64_t n_rows,
                            const int64_t *lengths, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, int64_t cap, float scale, void *out, int bf16,
                            int n_threads) {
    const int64_t group = n_heads / n_kv, n_tasks = n_rows * n_kv, vecs = head_dim / 8;
    int64_t longest = 1;
    for (int64_t r = 0; r < n_rows; r++)
        longest = lengths[r] > longest ? lengths[r] : longest;
    /* per thread: a task's scores (rows padded to whole vectors) and its queries in fp32,
     * in order and in `attend_paired`'s order */
    const int64_t stride = (longest + 7) / 8 * 8, per_task = group * (stride + 2 * head_dim);
    const int paired = group <= PAIRED_GROUP && head_dim % 16 == 0;
    const int64_t workers = n_threads < n_tasks ? (n_threads > 0 ? n_threads : 1) : n_tasks;
    float *scratch = (float *)aligned_alloc(32, (size_t)(workers * per_task) * sizeof(float) + 32);
    if (!scratch)
        return -1;
    /* rows that may share a slot (`row_slots`) read each other's keys: all are written
     * before any row attends */
    const int write_first = row_slots && k_new && v_new;
    if (write_first) {
        #pragma omp parallel for schedule(static) num_threads(workers)
        for (int64_t task = 0; task < n_tasks; task++) {
            const int64_t r = task / n_kv, h = task % n_kv;
            write_new(k_new, v_new, new_strides, rot_cos, rot_sin, k_cache, v_cache,
                      (row_slots[r] * n_kv + h) * cap * head_dim, r, h, lengths[r], head_dim,
                      bf16);
        }
    }

    #pragma omp parallel for schedule(static) num_threads(workers)
    for (int64_t task = 0; task < n_tasks; task++) {
        const int64_t r = task / n_kv, h = task % n_kv, length = lengths[r];
        float *scores = scratch + omp_get_thread_num() * per_task, *qf = scores + group * stride;
        const int64_t slot = row_slots ? row_slots[r] : slot0 + r * slot_step;
        const int64_t base = (slot * n_kv + h) * cap * head_dim;
        const int64_t table = (length - 1) * head_dim;  /* this row's rotary position */
        if (k_new && v_new && !write_first)
            write_new(k_new, v_new, new_strides, rot_cos, rot_sin, k_cache, v_cache, base, r,
                      h, length, head_dim, bf16);
        for (int64_t j = 0; j < group; j++) {
            const int64_t at = r * q_row_stride + (h * group + j) * q_head_stride;
            if (rot_cos)
                rotate(q, at, rot_cos, rot_sin, table, head_dim, bf16, qf + j * head_dim,
                       NULL, 0);
            else
                for (int64_t d = 0; d < head_dim; d += 8)
                    _mm256_storeu_ps(qf + j * head_dim + d, load8(q, at + d, bf16));
        }
        if (paired) {
            attend_paired(qf, qf + group * head_dim, scores, stride, k_cache, v_cache, base,
                          length, group, head_dim, scale, out,
                          r * n_heads * head_dim + h * group * head_dim, bf16);
            continue;
        }
        /* scores: each key is read once for the whole group of query heads */
        for (int64_t t = 0; t < length; t++) {
            const int64_t row = base + t * head_dim;
            prefetch_row(v_cache, row, head_dim, bf16);
            for (int64_t j = 0; j < group; j++) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t v = 0; v < vecs; v++)
                    acc = _mm256_fmadd_ps(load8(k_cache, row + 8 * v, bf16),
                                          _mm256_loadu_ps(qf + j * head_dim + 8 * v), acc);
                scores[j * stride + t] = hsum(acc) * scale;
            }
        }
        for (int64_t j = 0; j < group; j++) {
            float *s = scores + j * stride;
            const float total = softmax_weights(s, length);
            /* the weighted sum of values, normalised once at the end */
            __m256 acc[32];  /* head_dim <= 256 */
            for (int64_t v = 0; v < vecs; v++)
                acc[v] = _mm256_setzero_ps();
            for (int64_t u = 0; u < length; u++) {
                const __m256 p = _mm256_set1_ps(s[u]);
                const int64_t row = base + u * head_dim;
                for (int64_t v = 0; v < vecs; v++)
                    acc[v] = _mm256_fmadd_ps(p, load8(v_cache, row + 8 * v, bf16), acc[v]);
            }
            const __m256 inv = _mm256_set1_ps(1.0f / total);
            const int64_t at = r * n_heads * head_dim + (h * group + j) * head_dim;
            for (int64_t v = 0; v < vecs; v++)
                store8(out, at + 8 * v, _mm256_mul_ps(acc[v], inv), bf16);
        }
    }
    free(scratch);
    return 0;
}

