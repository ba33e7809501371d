// Fused residual add + RMSNorm forward for the `cpu` backend (fp32, inference).
//
//   new_residual = x + residual        (or x)
//   out          = new_residual / sqrt(mean(new_residual^2) + eps) * weight
//
// One pass per row computes and stores the sum while accumulating its squares, a second writes
// the scaled row from the stored sum (still in L1): two memory passes instead of the eight
// PyTorch ops of the torch backend, each a launch and a full pass. Both loops vectorise.
#include <math.h>
#include <stdint.h>

// x, residual, out, new_residual: (rows, D) contiguous; residual may be NULL; weight: (D,).
void rms_norm_fwd(const float *x, const float *residual, const float *weight, float *out, float *new_residual,
                  int64_t rows, int64_t D, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * D;
        float *restrict total = new_residual + r * D, *restrict o = out + r * D;
        float squares = 0.0f;
        if (residual) {
            const float *restrict rr = residual + r * D;
            for (int64_t d = 0; d < D; d++) {
                total[d] = xr[d] + rr[d];
                squares += total[d] * total[d];
            }
        } else {
            for (int64_t d = 0; d < D; d++) {
                total[d] = xr[d];
                squares += total[d] * total[d];
            }
        }
        const float inv_rms = 1.0f / sqrtf(squares / (float)D + eps);
        for (int64_t d = 0; d < D; d++) o[d] = total[d] * inv_rms * weight[d];
    }
}
