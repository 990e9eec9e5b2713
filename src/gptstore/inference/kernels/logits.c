/* The LM head's bf16 logits as fp32, each row's top k recomputed as fp32 dot products
 * (models/base._refine_top says why they are recomputed).
 *
 * Why hand-written: in PyTorch this is six kernels over the logits (widen, topk, gather
 * the candidates' weight rows, widen them, einsum, scatter), ~0.9 ms of a 16-row decode
 * step over SmolLM2's 49,152-token vocabulary, most of it topk's. Here it is one pass per
 * row that widens each logit and keeps the k best in a sorted list on the stack (after
 * the first few thousand logits almost none beats the list's smallest, so the pass runs
 * at the speed of the widening), then k dot products. Rows are shared among threads.
 */
#include <math.h>

#include "simd.h"

#define MAX_K 64

/* (value, index) offered to the ascending list of the `*n` best so far, which holds at
 * most k: inserted in order while it is short, else it replaces the smallest if larger */
static inline void offer(float *values, int64_t *indices, int *n, int k, float v, int64_t i) {
    int j;
    if (*n < k) {
        for (j = (*n)++; j > 0 && values[j - 1] > v; j--) {
            values[j] = values[j - 1];
            indices[j] = indices[j - 1];
        }
    } else {
        if (!(v > values[0]))
            return;
        for (j = 0; j + 1 < k && values[j + 1] < v; j++) {
            values[j] = values[j + 1];
            indices[j] = indices[j + 1];
        }
    }
    values[j] = v;
    indices[j] = i;
}

/* out [rows, vocab] fp32 = logits [rows, vocab] (bf16, row stride `ld`) widened, then
 * for each row its k largest logits replaced by hidden[r] . weight[index] in fp32;
 * hidden [rows, dim] and weight [vocab, dim] (row strides given) are bf16 or fp32.
 * Returns -1 (nothing written) when k is out of range. */
int gptstore_refine_top(const uint16_t *logits, int64_t rows, int64_t vocab, int64_t ld,
                        const void *hidden, int64_t dim, int64_t hidden_ld, int hidden_bf16,
                        const void *weight, int64_t weight_ld, int weight_bf16,
                        float *out, int64_t k, int n_threads) {
    if (k < 1 || k > MAX_K || k > vocab)
        return -1;
    const int x_size = hidden_bf16 ? 2 : 4, w_size = weight_bf16 ? 2 : 4;
    #pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        float values[MAX_K];
        int64_t indices[MAX_K];
        int n = 0;
        const uint16_t *src = logits + r * ld;
        float *dst = out + r * vocab;
        __m256 floor8 = _mm256_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 8 <= vocab; i += 8) {
            const __m256 v = load8(src, i, 1);
            _mm256_storeu_ps(dst + i, v);
            int above = _mm256_movemask_ps(_mm256_cmp_ps(v, floor8, _CMP_GT_OQ));
            if (n < k)  /* the list is not full: every logit goes in */
                above = 0xff;
            while (above) {
                const int lane = __builtin_ctz((unsigned)above);
                above &= above - 1;
                offer(values, indices, &n, (int)k, dst[i + lane], i + lane);
            }
            if (n == k)
                floor8 = _mm256_set1_ps(values[0]);
        }
        for (; i < vocab; i++) {
            dst[i] = bf16_to_f32(src[i]);
            offer(values, indices, &n, (int)k, dst[i], i);
        }
        const char *x = (const char *)hidden + r * hidden_ld * x_size;
        for (int j = 0; j < n; j++) {
            const char *w = (const char *)weight + indices[j] * weight_ld * w_size;
            dst[indices[j]] = dot(x, w, dim, hidden_bf16, weight_bf16);
        }
    }
    return 0;
}
