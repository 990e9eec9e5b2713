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
 * positions (its own new token already written). Query head j attends with kv head
 * j / (n_heads / n_kv), as transformers' repeat_kv pairs them. Scores, softmax and the
 * weighted sum are fp32; exp is a vectorised polynomial (Cephes' expf, relative error
 * ~2e-7). head_dim must be a multiple of 8, at most 256. Threads: OpenMP over
 * (row, kv head).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "simd.h"

/* q: element [r, j, d] at q + r * q_row_stride + j * q_head_stride + d.
 * k_new, v_new (or NULL): the rows' new keys and values, element [r, h, d] at
 * r * new_strides[0] + h * new_strides[1] + d of k_new and r * new_strides[2] +
 * h * new_strides[3] + d of v_new, written into the cache at position lengths[r] - 1
 * first (else the caller has written them).
 * out: [n_rows, n_heads * head_dim] contiguous. Returns 0, or -1 when scratch memory
 * could not be allocated (nothing written then). */
int gptstore_decode_attention(const void *q, int64_t q_row_stride, int64_t q_head_stride,
                              const void *k_new, const void *v_new,
                              const int64_t *new_strides, void *k_cache, void *v_cache,
                              int64_t slot0,
                              int64_t n_rows, const int64_t *lengths, int64_t n_heads,
                              int64_t n_kv, int64_t head_dim, int64_t cap, float scale,
                              void *out, int bf16, int n_threads) {
    const int64_t group = n_heads / n_kv, n_tasks = n_rows * n_kv, vecs = head_dim / 8;
    int64_t longest = 1;
    for (int64_t r = 0; r < n_rows; r++)
        longest = lengths[r] > longest ? lengths[r] : longest;
    /* per thread: a task's scores (rows padded to whole vectors) and its queries in fp32 */
    const int64_t stride = (longest + 7) / 8 * 8, per_task = group * (stride + head_dim);
    const int64_t workers = n_threads < n_tasks ? (n_threads > 0 ? n_threads : 1) : n_tasks;
    float *scratch = (float *)aligned_alloc(32, (size_t)(workers * per_task) * sizeof(float) + 32);
    if (!scratch)
        return -1;

    #pragma omp parallel for schedule(static) num_threads(workers)
    for (int64_t task = 0; task < n_tasks; task++) {
        const int64_t r = task / n_kv, h = task % n_kv, length = lengths[r];
        float *scores = scratch + omp_get_thread_num() * per_task, *qf = scores + group * stride;
        const int64_t base = ((slot0 + r) * n_kv + h) * cap * head_dim;
        if (k_new && v_new) {
            const int64_t item = bf16 ? 2 : 4, to = (base + (length - 1) * head_dim) * item;
            const size_t size = (size_t)(head_dim * item);
            memcpy((char *)k_cache + to,
                   (const char *)k_new + (r * new_strides[0] + h * new_strides[1]) * item, size);
            memcpy((char *)v_cache + to,
                   (const char *)v_new + (r * new_strides[2] + h * new_strides[3]) * item, size);
        }
        for (int64_t j = 0; j < group; j++) {
            const int64_t at = r * q_row_stride + (h * group + j) * q_head_stride;
            for (int64_t d = 0; d < head_dim; d += 8)
                _mm256_storeu_ps(qf + j * head_dim + d, load8(q, at + d, bf16));
        }
        /* scores: each key is read once for the whole group of query heads */
        for (int64_t t = 0; t < length; t++) {
            const int64_t row = base + t * head_dim;
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
            for (int64_t v = 0; v < vecs; v++) {
                float o[8];
                _mm256_storeu_ps(o, _mm256_mul_ps(acc[v], inv));
                for (int i = 0; i < 8; i++) {
                    if (bf16)
                        ((uint16_t *)out)[at + 8 * v + i] = f32_to_bf16(o[i]);
                    else
                        ((float *)out)[at + 8 * v + i] = o[i];
                }
            }
        }
    }
    free(scratch);
    return 0;
}
