/* The kernels one file calls in another (decode_step.c calls the rest), declared once:
 * each defining file includes this too, so the compiler checks every definition against
 * the declaration its callers use. */
#ifndef GPTSTORE_KERNELS_H
#define GPTSTORE_KERNELS_H

#include <stdint.h>

/* the loop of bf16 products of several rows (`rows_loop` below; native.py ROWS_LOOP_CODES):
 * AVX-512's bf16 dot product, FMAs on widened weights, or AMX tiles (gemv_bf16.c) */
enum { ROWS_LOOP_DOT, ROWS_LOOP_FMA, ROWS_LOOP_AMX };

int gptstore_gemv_bf16(const void *x, int64_t n_rows, int64_t x_stride,
                       const uint16_t *packed, int64_t n_in, int64_t n_out,
                       const void *bias, const void *residual, void *y,
                       int act_bf16, int n_threads, int rows_loop);
int gptstore_gemv_bf16_avx512(const void *x, int64_t n_rows, int64_t x_stride,
                              const uint16_t *packed, int64_t n_in, int64_t n_out,
                              const void *bias, const void *residual, void *y,
                              int act_bf16, int n_threads, int rows_loop);
int gptstore_gemv_q4(const void *x, int64_t n_rows, int64_t x_stride, const uint8_t *packed,
                     int64_t n_in, int64_t n_out, const void *bias, const void *residual,
                     void *y, int act_bf16, int n_threads);
int gptstore_attention_rows(const void *q, int64_t q_row_stride, int64_t q_head_stride,
                            const void *k_new, const void *v_new,
                            const int64_t *new_strides, const void *rot_cos,
                            const void *rot_sin, void *k_cache, void *v_cache, int64_t slot0,
                            int64_t slot_step, const int64_t *row_slots, int64_t n_rows,
                            const int64_t *lengths, int64_t n_heads, int64_t n_kv,
                            int64_t head_dim, int64_t cap, float scale, void *out, int bf16,
                            int n_threads);
void gptstore_rms_norm(const void *x, int64_t rows, int64_t x_stride, const void *weight,
                       int64_t dim, float eps, void *out, int bf16);
void gptstore_silu_mul(const void *gate_up, int64_t rows, int64_t stride, int64_t inter,
                       void *out, int bf16, int n_threads);

#endif
