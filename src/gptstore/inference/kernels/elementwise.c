/* The small per-layer operations of a Llama decode step (its rows decode one token
 * each): RMSNorm and SiLU(gate) * up.
 *
 * Why hand-written (docs/design.md, "Native decode attention" and the ablation there):
 * in PyTorch each is several kernels (RMSNorm as cat + neg + layer_norm + a view,
 * SwiGLU as silu + mul on views), a few microseconds of arithmetic behind tens of
 * microseconds of dispatch and cold caches, 61 + 30 times per SmolLM2 token. Here each
 * is one call: RMSNorm single-threaded (a row is a few kilobytes), SwiGLU over threads
 * from 8 rows.
 *
 * Activations are fp32 or bf16 (`bf16`); the arithmetic is fp32. Outputs are
 * contiguous [rows, dim].
 */
#include <math.h>

#include "kernels.h"
#include "simd.h"

/* out = weight * (x / sqrt(mean(x^2) + eps)), as transformers' LlamaRMSNorm: in bf16 the
 * normalised value is rounded to bf16 before the weight multiplies it. */
void gptstore_rms_norm(const void *x, int64_t rows, int64_t x_stride, const void *weight,
                       int64_t dim, float eps, void *out, int bf16) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = 0;
        __m256 sum8 = _mm256_setzero_ps();
        for (; i + 8 <= dim; i += 8) {
            __m256 v = load8(x, r * x_stride + i, bf16);
            sum8 = _mm256_fmadd_ps(v, v, sum8);
        }
        double total = hsum(sum8);
        for (; i < dim; i++) {
            float v = load_act(x, r * x_stride + i, bf16);
            total += v * v;
        }
        const float scale = 1.0f / sqrtf((float)(total / (double)dim) + eps);
        const __m256 scale8 = _mm256_set1_ps(scale);
        for (i = 0; i + 8 <= dim; i += 8) {
            __m256 normed = _mm256_mul_ps(load8(x, r * x_stride + i, bf16), scale8);
            if (bf16)
                normed = round8_bf16(normed);
            store8(out, r * dim + i, _mm256_mul_ps(load8(weight, i, bf16), normed), bf16);
        }
        for (; i < dim; i++) {
            float normed = load_act(x, r * x_stride + i, bf16) * scale;
            if (bf16)
                normed = bf16_to_f32(f32_to_bf16(normed));
            store_act(out, r * dim + i, load_act(weight, i, bf16) * normed, bf16);
        }
    }
}

/* out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]; rows shared among
 * `n_threads` (a row's exp is the costly part: 8 rows or more gain from threads) */
void gptstore_silu_mul(const void *gate_up, int64_t rows, int64_t stride, int64_t inter,
                       void *out, int bf16, int n_threads) {
    const __m256 one = _mm256_set1_ps(1.0f);
    #pragma omp parallel for schedule(static) num_threads(n_threads) if (n_threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = 0;
        for (; i + 8 <= inter; i += 8) {
            __m256 g = load8(gate_up, r * stride + i, bf16);
            __m256 u = load8(gate_up, r * stride + inter + i, bf16);
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
            store8(out, r * inter + i, _mm256_mul_ps(silu, u), bf16);
        }
        for (; i < inter; i++) {
            float g = load_act(gate_up, r * stride + i, bf16);
            float u = load_act(gate_up, r * stride + inter + i, bf16);
            store_act(out, r * inter + i, g / (1.0f + expf(-g)) * u, bf16);
        }
    }
}
