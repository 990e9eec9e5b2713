/* The small per-layer operations of a Llama decode step, for 1-2 rows: RMSNorm and
 * SiLU(gate) * up.
 *
 * Why hand-written (docs/design.md, "Native decode attention" and the ablation there):
 * in PyTorch each is several kernels (RMSNorm as cat + neg + layer_norm + a view,
 * SwiGLU as silu + mul on views), a few microseconds of arithmetic behind tens of
 * microseconds of dispatch and cold caches, 61 + 30 times per SmolLM2 token. Here each
 * is one call, single-threaded (a row is a few kilobytes).
 *
 * Activations are fp32 or bf16 (`bf16`); the arithmetic is fp32. Outputs are
 * contiguous [rows, dim].
 */
#include <math.h>

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
        for (i = 0; i < dim; i++) {
            float normed = load_act(x, r * x_stride + i, bf16) * scale;
            if (bf16)
                normed = bf16_to_f32(f32_to_bf16(normed));
            store_act(out, r * dim + i, load_act(weight, i, bf16) * normed, bf16);
        }
    }
}

/* out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i] */
void gptstore_silu_mul(const void *gate_up, int64_t rows, int64_t stride, int64_t inter,
                       void *out, int bf16) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = 0;
        for (; i + 8 <= inter; i += 8) {
            __m256 g = load8(gate_up, r * stride + i, bf16);
            __m256 u = load8(gate_up, r * stride + inter + i, bf16);
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
            float v[8];
            _mm256_storeu_ps(v, _mm256_mul_ps(silu, u));
            for (int k = 0; k < 8; k++)
                store_act(out, r * inter + i + k, v[k], bf16);
        }
        for (; i < inter; i++) {
            float g = load_act(gate_up, r * stride + i, bf16);
            float u = load_act(gate_up, r * stride + inter + i, bf16);
            store_act(out, r * inter + i, g / (1.0f + expf(-g)) * u, bf16);
        }
    }
}
