// Causal depthwise conv1d forward for the `cpu` backend (fp32, inference), SiLU optional.
//
//   y[b, d, t] = act(bias[d] + sum_{j<K} w[d, K-1-j] * x[b, d, t-j])   (reverse: x[b, d, t+j])
//
// Each row (one batch, one channel) is built tap by tap: y = bias, then y[t] += w_j * x[t -+ j]
// over the range where that tap exists (with a streaming state, also the first steps, whose tap
// reaches back into the state), then the SiLU, each pass a branch-free loop over a row that
// stays in L1, so gcc vectorises all of them. The SiLU's exp is the inlined AVX2 one where there is
// AVX2 (glibc's vector expf made it most of the kernel's time), else glibc's.
#include <math.h>
#include <stdint.h>
#include "../simd_math.h"

// y = silu(y) over a row. The ragged end takes the 8-wide path too, so that an element's value
// does not depend on where its row or block starts (the fused Mamba scan recomputes u by blocks).
static void silu_row(float *y, int64_t L) {
#if defined(__AVX2__) && defined(__FMA__)
    for (int64_t t = 0; t < L; t += 8) store8(y + t, silu8(load8(y + t, L - t)), L - t);
#else
    for (int64_t t = 0; t < L; t++) y[t] = y[t] / (1.0f + expf(fminf(-y[t], SILU_EXP_CAP)));
#endif
}

// y[s] = bias + sum_{j<K} w[K-1-j] * x[t0+s -+ j] for s < T: steps [t0, t0 + T) of one row x of
// length L, zeros outside it; w: (K,) this channel's taps.
static void conv_range(const float *x, int64_t L, const float *w, float bias, int64_t K, int reverse,
                       int64_t t0, int64_t T, float *restrict y) {
    for (int64_t s = 0; s < T; s++) y[s] = bias;
    for (int64_t j = 0; j < K; j++) {
        const float wj = w[K - 1 - j];
        const int64_t shift = reverse ? j : -j;  // y[s] reads x[t0 + s + shift]
        int64_t lo = -(t0 + shift), hi = L - (t0 + shift);
        lo = lo < 0 ? 0 : lo;
        hi = hi > T ? T : hi;
        for (int64_t s = lo; s < hi; s++) y[s] += wj * x[t0 + shift + s];
    }
}

// x, y: (batch, dim, L); w: (dim, K); bias: (dim,) or NULL; state: (batch, dim, K-1), the K-1
// inputs before x[.., 0] oldest first, or NULL for zeros (forward only: NULL when reverse).
void causal_conv1d_fwd(const float *x, const float *w, const float *bias, const float *state, float *y,
                       int64_t batch, int64_t dim, int64_t L, int64_t K, int silu, int reverse) {
    for (int64_t row = 0; row < batch * dim; row++) {
        const int64_t d = row % dim;
        float *restrict yr = y + row * L;
        conv_range(x + row * L, L, w + d * K, bias ? bias[d] : 0.0f, K, reverse, 0, L, yr);
        if (state) {
            // x[t - j] for t < j is state[K-1 + t - j].
            const float *sr = state + row * (K - 1);
            for (int64_t j = 1; j < K; j++) {
                const float wj = w[d * K + K - 1 - j];
                for (int64_t t = 0; t < j && t < L; t++) yr[t] += wj * sr[K - 1 + t - j];
            }
        }
        if (silu) silu_row(yr, L);
    }
}

// silu(conv_range(...)): the fused Mamba inference computes long sequences' conv outputs a block
// at a time with this, where the whole row would not be kept.
void causal_conv1d_silu_range(const float *x, int64_t L, const float *w, float bias, int64_t K, int reverse,
                              int64_t t0, int64_t T, float *restrict y) {
    conv_range(x, L, w, bias, K, reverse, t0, T, y);
    silu_row(y, T);
}
