/* A Llama layer stack's decode step in one call (rows decoding one token each: 1-2, or
 * as many as the machine measured the native GEMV faster for): for each layer, RMSNorm,
 * the fused q/k/v product, attention (rotating q and k and writing the new keys and
 * values into the cache), the output product with its residual, RMSNorm, the fused
 * gate/up product, SiLU(gate) * up and the down product with its residual.
 *
 * Why (docs/design.md, "One call per decode step"): a single-stream step of a small
 * model is ~240 short native calls (SmolLM2: 30 layers x 8), each behind a Python
 * wrapper, a ctypes call and a fresh OpenMP team. On an AVX2 EPYC the kernels were
 * ~60-70% of the step and Python and ctypes most of the rest. Here the same kernels run
 * back to back from C, in the same order on the same buffers, so the result has the
 * same bits as the step made of separate calls; only the calls between them go.
 *
 * Weights (`layers`): per layer, LAYER_FIELDS addresses in the order of the enum below;
 * the products' weights are in the layout of the kernel `kernel` names (gemv_bf16.c's
 * packed bf16, or gemv_q4.c's 4-bit records), a bias address may be 0 (none), and the
 * RMSNorm weights are [dim] of the activations' dtype. Activations (x, the rotary
 * tables, the caches, the biases) are all fp32 or all bf16 (`act_bf16`).
 * The caches are [layers, slots, n_kv, cap, head_dim] (kv_cache.py), the rows on
 * consecutive slots from `slot0`, row r at position lengths[r] - 1; or, where
 * `row_slots` is not NULL, row r on slot row_slots[r]: a step of decode rows and prompt
 * chunks, a chunk's tokens as rows of one slot at consecutive positions (each row's key
 * and value is written before any row attends).
 *
 * LoRA adapters (`lora`: per row the address of its adapter's table, per layer
 * LORA_SITES site records, or 0 for a row without one; NULL when no row has one) add
 * their deltas after each product, where models/lora.py adds them in the step of
 * separate calls.
 */
#include <stdlib.h>

#include "kernels.h"
#include "simd.h"

/* each layer's addresses in `layers` */
enum { NORM1, QKV, QKV_BIAS, O, O_BIAS, NORM2, GATE_UP, GATE_UP_BIAS, DOWN, DOWN_BIAS,
       LAYER_FIELDS };

/* the products' kernel (native.py DECODE_STEP_KERNELS) */
enum { KERNEL_BF16, KERNEL_BF16_AVX512, KERNEL_Q4 };

static const void *at(const int64_t *layer, int field) {
    return (const void *)(intptr_t)layer[field];
}

/* One LoRA site of a layer (native.py `lora_table`): A [ranks, n_in] (the stacked As of
 * its target modules; 0 where the site has no LoRA), up to LORA_MAX_BLOCKS blocks that
 * each add `width` output columns from `offset` as x A^T[r0 : r0 + rank] B^T (B [width,
 * rank], the scaling folded in), and a bias [n_out] or 0. In the activations' dtype. */
enum { LORA_A, LORA_RANKS, LORA_BLOCKS, LORA_BIAS, LORA_BLOCK0 };
enum { BLOCK_OFFSET, BLOCK_WIDTH, BLOCK_R0, BLOCK_RANK, BLOCK_B, LORA_BLOCK_FIELDS };
#define LORA_MAX_BLOCKS 3
#define LORA_SITE_FIELDS (LORA_BLOCK0 + LORA_BLOCK_FIELDS * LORA_MAX_BLOCKS)
#define LORA_MAX_RANKS 768  /* native.py LORA_MAX_RANKS */
enum { LORA_QKV, LORA_O, LORA_GATE_UP, LORA_DOWN, LORA_SITES };

/* y [rows, n_out] += the LoRA delta of x [rows, n_in] at site `which` of layer `layer`,
 * each row with its own adapter (`lora[r]`: the address of its table, 0 for none), as
 * models/lora.py `LoraSite.add_delta` computes it: x A^T rounded to the activations'
 * dtype (what F.linear returns), then each block's product with B added to y and
 * rounded once (what addmm_ does). Rows are shared among threads from 4 rows on. */
static void lora_delta(const int64_t *lora, int64_t layer, int which, const void *x,
                       int64_t rows, int64_t n_in, void *y, int64_t n_out, int bf16,
                       int n_threads) {
    const int64_t item = bf16 ? 2 : 4;
    #pragma omp parallel for schedule(static) num_threads(n_threads) if (rows >= 4)
    for (int64_t r = 0; r < rows; r++) {
        if (!lora[r])
            continue;
        const int64_t *site = (const int64_t *)(intptr_t)lora[r] +
                              (layer * LORA_SITES + which) * LORA_SITE_FIELDS;
        const char *a = (const char *)at(site, LORA_A);
        if (!a)
            continue;
        const int64_t ranks = site[LORA_RANKS], n_blocks = site[LORA_BLOCKS];
        const void *bias = at(site, LORA_BIAS);
        float h[LORA_MAX_RANKS];
        uint16_t h16[LORA_MAX_RANKS];
        const char *xr = (const char *)x + r * n_in * item;
        for (int64_t j = 0; j < ranks; j++) {
            const float v = dot(xr, a + j * n_in * item, n_in, bf16, bf16);
            h16[j] = f32_to_bf16(v);
            h[j] = v;
        }
        const void *hr = bf16 ? (const void *)h16 : (const void *)h;
        for (int64_t b = 0; b < n_blocks; b++) {
            const int64_t *block = site + LORA_BLOCK0 + b * LORA_BLOCK_FIELDS;
            const int64_t offset = block[BLOCK_OFFSET], width = block[BLOCK_WIDTH];
            const int64_t r0 = block[BLOCK_R0], rank = block[BLOCK_RANK];
            const char *weights = (const char *)at(block, BLOCK_B);
            const char *from = (const char *)hr + r0 * item;
            for (int64_t o = 0; o < width; o++) {
                const int64_t i = r * n_out + offset + o;
                const float delta = dot(from, weights + o * rank * item, rank, bf16, bf16);
                store_act(y, i, load_act(y, i, bf16) + delta, bf16);
            }
        }
        if (bias)
            for (int64_t o = 0; o < n_out; o++)
                store_act(y, r * n_out + o, load_act(y, r * n_out + o, bf16) +
                          load_act(bias, o, bf16), bf16);
    }
}

static int project(int kernel, int rows_loop, const void *x, int64_t rows,
                   const void *weights, int64_t n_in, int64_t n_out, const void *bias,
                   const void *residual, void *y, int act_bf16, int n_threads) {
    switch (kernel) {
    case KERNEL_BF16:
        return gptstore_gemv_bf16(x, rows, n_in, (const uint16_t *)weights, n_in, n_out, bias,
                                  residual, y, act_bf16, n_threads, rows_loop);
    case KERNEL_BF16_AVX512:
        return gptstore_gemv_bf16_avx512(x, rows, n_in, (const uint16_t *)weights, n_in,
                                         n_out, bias, residual, y, act_bf16, n_threads,
                                         rows_loop);
    default:
        return gptstore_gemv_q4(x, rows, n_in, (const uint8_t *)weights, n_in, n_out, bias,
                                residual, y, act_bf16, n_threads);
    }
}

/* x: [rows, dim] contiguous, the embeddings in and the last layer's output out (the
 * final norm is the caller's). `rows_loop`: the bf16 products' loop for two or more rows
 * (kernels.h ROWS_LOOP_*, gemv_bf16.c; the q4 kernel ignores it). Returns 0; -1 when
 * scratch memory could not be allocated, -3 where the CPU lacks the kernel (x is then
 * partly updated: the caller discards the step). */
int gptstore_llama_decode(void *x, int64_t rows, int64_t dim, int64_t n_layers,
                          const int64_t *layers, int kernel, int64_t n_heads, int64_t n_kv,
                          int64_t head_dim, int64_t inter, float eps, void *k_cache,
                          void *v_cache, int64_t n_slots, int64_t cap, int64_t slot0,
                          const int64_t *row_slots, const int64_t *lengths, float scale,
                          const void *rot_cos, const void *rot_sin, const int64_t *lora,
                          int act_bf16, int n_threads, int rows_loop) {
    const int64_t item = act_bf16 ? 2 : 4;
    const int64_t q_width = n_heads * head_dim, kv_width = n_kv * head_dim;
    const int64_t qkv_width = q_width + 2 * kv_width;
    const int64_t layer_cache = n_slots * kv_width * cap;  /* elements per layer */
    const int64_t new_strides[4] = {qkv_width, head_dim, qkv_width, head_dim};
    /* h: a norm's output; mid: x after attention; qkv, attn, gate_up, act: as named */
    char *scratch = (char *)malloc((size_t)(rows * (2 * dim + qkv_width + q_width + 3 * inter)
                                            * item));
    if (!scratch)
        return -1;
    char *h = scratch, *mid = h + rows * dim * item, *qkv = mid + rows * dim * item;
    char *attn = qkv + rows * qkv_width * item, *gate_up = attn + rows * q_width * item;
    char *act = gate_up + rows * 2 * inter * item;
    int status = 0;
    for (int64_t i = 0; i < n_layers && status == 0; i++) {
        const int64_t *layer = layers + i * LAYER_FIELDS;
        gptstore_rms_norm(x, rows, dim, at(layer, NORM1), dim, eps, h, act_bf16);
        status = project(kernel, rows_loop, h, rows, at(layer, QKV), dim, qkv_width,
                         at(layer, QKV_BIAS), NULL, qkv, act_bf16, n_threads);
        if (status)
            break;
        if (lora)
            lora_delta(lora, i, LORA_QKV, h, rows, dim, qkv, qkv_width, act_bf16, n_threads);
        status = gptstore_attention_rows(
            qkv, qkv_width, head_dim, qkv + q_width * item, qkv + (q_width + kv_width) * item,
            new_strides, rot_cos, rot_sin, (char *)k_cache + i * layer_cache * item,
            (char *)v_cache + i * layer_cache * item, slot0, 1, row_slots, rows, lengths,
            n_heads, n_kv, head_dim, cap, scale, attn, act_bf16, n_threads);
        if (status)
            break;
        status = project(kernel, rows_loop, attn, rows, at(layer, O), q_width, dim,
                         at(layer, O_BIAS), x, mid, act_bf16, n_threads);
        if (status)
            break;
        if (lora)
            lora_delta(lora, i, LORA_O, attn, rows, q_width, mid, dim, act_bf16, n_threads);
        gptstore_rms_norm(mid, rows, dim, at(layer, NORM2), dim, eps, h, act_bf16);
        status = project(kernel, rows_loop, h, rows, at(layer, GATE_UP), dim, 2 * inter,
                         at(layer, GATE_UP_BIAS), NULL, gate_up, act_bf16, n_threads);
        if (status)
            break;
        if (lora)
            lora_delta(lora, i, LORA_GATE_UP, h, rows, dim, gate_up, 2 * inter, act_bf16,
                       n_threads);
        /* one thread under 8 rows, as native.silu_mul calls it */
        gptstore_silu_mul(gate_up, rows, 2 * inter, inter, act, act_bf16,
                          rows >= 8 ? n_threads : 1);
        status = project(kernel, rows_loop, act, rows, at(layer, DOWN), inter, dim,
                         at(layer, DOWN_BIAS), mid, x, act_bf16, n_threads);
        if (status == 0 && lora)
            lora_delta(lora, i, LORA_DOWN, act, rows, inter, x, dim, act_bf16, n_threads);
    }
    free(scratch);
    return status;
}
