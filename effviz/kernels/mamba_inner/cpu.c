// Fused inference of a Mamba mixer's inner part on the CPU (fp32): what mamba_ssm's
// mamba_inner_fn fuses on the GPU, for one branch or Vim's two (bimamba v2).
//
// For each branch k (0 = forward in time, 1 = backward), with S = R + 2N columns of x_proj's
// output xdbl_k (batch, L, S) holding [dt_low | B | C] for each step:
//
//   delta_k[d, t] = softplus(dt_b_k[d] + sum_r dt_w_k[d, r] * xdbl_k[t, r])
//   h_t = exp(delta A_k) h_{t-1} + delta u_k[d, t] B_t     (t ascending for k = 0, descending for 1)
//   y_k[d, t] = C_t . h_t + D_k[d] u_k[d, t],              A_k = -exp(A_log_k)
//   out[d, t] = scale * silu(z[d, t]) * sum_k y_k[d, t]
//
// so the (batch, dim, L) delta never exists (dt_proj is computed in the row loop from the
// low-rank input), B and C are read in place from x_proj's output (each step's N values are
// contiguous there), and the branches' sum, the gate and the scale are one epilogue. Work goes to
// the tasks of the persistent pool by rows, one (batch, channel) pair each, or, for N = 16 where
// there is AVX-512, by groups of 16 channels side by side in the lanes of a register (one
// register per state: see branch_lanes16). A row or group runs both branches before its
// epilogue, so the branches need no synchronisation. A task's scratch is O(L) floats (the
// partial sums of its row or group, and for rows the low-rank dt transposed to (R, L)), never
// O(batch * dim * L).
//
// The causal depthwise conv + SiLU in front of both branches is one call too (mamba_conv_fwd),
// over any range of steps, so that x_proj can read a long sequence's u a chunk at a time. The
// scan then either reads the whole u (given) or recomputes it a block at a time from the conv's
// input x: 4 taps and a SiLU per step, where keeping u would cost 2 x batch x dim x L floats.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../pool.h"
#include "../simd_math.h"

// From causal_conv1d/cpu.c: the conv + SiLU of one row, over a range of steps.
void causal_conv1d_silu_range(const float *x, int64_t L, const float *w, float bias, int64_t K, int reverse,
                              int64_t t0, int64_t T, float *y);

// Steps per block: the block's dt and partial sums stay in L1.
#define BLOCK_STEPS 64

typedef struct {
    const float *u, *xdbl, *dt_w, *dt_b, *A_log, *D;  // u, xdbl as in the file comment; u may be NULL:
    const float *conv_w, *conv_b;                     // then u is recomputed from x by these
} branch;

typedef struct {
    branch br[2];
    int nbranch;
    const float *x;  // the conv's input, read where u is NULL
    const float *z;  // may be NULL: no gate
    float *out;      // may equal z (the gate is read before out is written, element by element)
    int64_t x_bstride, z_bstride, out_bstride, batch, dim, L, R, N, K;
    float scale;
    int failed;  // set by a task whose scratch could not be allocated
} inner_job;

// Padded row length of the scratch: 8-wide loads past a block's ragged end stay inside.
static int64_t padded(int64_t L) { return (L + 15) / 8 * 8; }

// dtT[r * Lp + t] = xdbl[b, t, r] for every branch: the low-rank dt of batch element b, time-major to channel-major.
static void transpose_dt(const inner_job *job, int64_t b, float *dtT) {
    const int64_t L = job->L, R = job->R, S = R + 2 * job->N, Lp = padded(L);
    for (int k = 0; k < job->nbranch; k++) {
        const float *src = job->br[k].xdbl + b * L * S;
        float *dst = dtT + k * R * Lp;
        for (int64_t t = 0; t < L; t++)
            for (int64_t r = 0; r < R; r++) dst[r * Lp + t] = src[t * S + r];
    }
}

// Blocks are contiguous time ranges [lo, lo + steps), taken from the end for the backward branch.
static inline int64_t block_lo(int64_t L, int reverse, int64_t i0, int64_t steps) {
    return reverse ? L - i0 - steps : i0;
}

static inline float softplus1(float x) { return x > 20.0f ? x : logf(1.0f + expf(x)); }

// u of steps [lo, lo + steps) of row (b, d) for branch k: in place in the given u, or recomputed
// into buf (at least BLOCK_STEPS floats).
static inline const float *block_u(const inner_job *job, int k, int64_t b, int64_t d, int64_t lo, int64_t steps,
                                   float *buf) {
    const branch *br = &job->br[k];
    if (br->u) return br->u + (b * job->dim + d) * job->L + lo;
    causal_conv1d_silu_range(job->x + b * job->x_bstride + d * job->L, job->L, br->conv_w + d * job->K,
                             br->conv_b ? br->conv_b[d] : 0.0f, job->K, k, lo, steps, buf);
    return buf;
}

// acc[t] (+)= y_k[d, t] for one row and branch k, any N: the plain loops.
static void branch_row(const inner_job *job, int k, int64_t b, int64_t d, const float *dtT, float *acc, int add) {
    const branch *br = &job->br[k];
    const int64_t L = job->L, R = job->R, N = job->N, S = R + 2 * N, Lp = padded(L);
    const float *xdbl = br->xdbl + b * L * S, *w = br->dt_w + d * R;
    const float bias = br->dt_b[d], Dd = br->D ? br->D[d] : 0.0f;
    float h[N], A[N], dt[BLOCK_STEPS], ubuf[BLOCK_STEPS + 8];
    for (int64_t n = 0; n < N; n++) h[n] = 0.0f, A[n] = -expf(br->A_log[d * N + n]);
    for (int64_t i0 = 0; i0 < L; i0 += BLOCK_STEPS) {
        const int64_t steps = L - i0 < BLOCK_STEPS ? L - i0 : BLOCK_STEPS, lo = block_lo(L, k, i0, steps);
        for (int64_t s = 0; s < steps; s++) dt[s] = bias;
        for (int64_t r = 0; r < R; r++)
            for (int64_t s = 0; s < steps; s++) dt[s] += w[r] * dtT[r * Lp + lo + s];
        for (int64_t s = 0; s < steps; s++) dt[s] = softplus1(dt[s]);
        const float *u = block_u(job, k, b, d, lo, steps, ubuf);
        for (int64_t i = 0; i < steps; i++) {
            const int64_t s = k ? steps - 1 - i : i, t = lo + s;
            const float *Bt = xdbl + t * S + R, *Ct = Bt + N, du = dt[s] * u[s];
            float y = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                h[n] = expf(dt[s] * A[n]) * h[n] + du * Bt[n];
                y += Ct[n] * h[n];
            }
            acc[t] = (add ? acc[t] : 0.0f) + y + Dd * u[s];
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__)
// branch_row for N = 16, the state in two ymm registers. As in selective_scan/cpu.c, only h is a
// chain from step to step: C.h_t's 8 partial sums per step are stored and summed 8 steps at a time
// after the block, and the block's dt (12 fmas per 8 steps from the transposed low-rank input,
// then softplus) is computed before it, so the chain's loop makes no calls.
static void branch_row16(const inner_job *job, int k, int64_t b, int64_t d, const float *dtT, float *acc, int add) {
    const branch *br = &job->br[k];
    const int64_t L = job->L, R = job->R, S = R + 32, Lp = padded(L);
    const float *xdbl = br->xdbl + b * L * S, *w = br->dt_w + d * R;
    const __m256 bias = _mm256_set1_ps(br->dt_b[d]), Dd = _mm256_set1_ps(br->D ? br->D[d] : 0.0f);
    float partial[(BLOCK_STEPS + 8) * 8] __attribute__((aligned(32))), dt[BLOCK_STEPS + 8] __attribute__((aligned(32)));
    float ubuf[BLOCK_STEPS + 8] __attribute__((aligned(32)));
    // exp(dt A) = 2^(dt A log2 e) with A = -exp(A_log): fold -log2 e into A once per row.
    float A[16];
    for (int n = 0; n < 16; n++) A[n] = -expf(br->A_log[d * 16 + n]) * 1.44269504088896341f;
    const __m256 A0 = _mm256_loadu_ps(A), A1 = _mm256_loadu_ps(A + 8);
    __m256 h0 = _mm256_setzero_ps(), h1 = _mm256_setzero_ps();
    for (int64_t i0 = 0; i0 < L; i0 += BLOCK_STEPS) {
        const int64_t steps = L - i0 < BLOCK_STEPS ? L - i0 : BLOCK_STEPS, lo = block_lo(L, k, i0, steps);
        for (int64_t s = 0; s < steps; s += 8) {  // the scratch's padding covers the ragged end
            __m256 x = bias;
            for (int64_t r = 0; r < R; r++)
                x = _mm256_fmadd_ps(_mm256_set1_ps(w[r]), _mm256_loadu_ps(dtT + r * Lp + lo + s), x);
            _mm256_store_ps(dt + s, softplus8(x));
        }
        const float *u = block_u(job, k, b, d, lo, steps, ubuf);
        for (int64_t i = 0; i < steps; i++) {
            const int64_t s = k ? steps - 1 - i : i, t = lo + s;
            const __m256 dts = _mm256_set1_ps(dt[s]), du = _mm256_set1_ps(dt[s] * u[s]);
            const float *Bt = xdbl + t * S + R, *Ct = Bt + 16;
            h0 = _mm256_fmadd_ps(exp2_8(_mm256_mul_ps(dts, A0)), h0, _mm256_mul_ps(du, _mm256_loadu_ps(Bt)));
            h1 = _mm256_fmadd_ps(exp2_8(_mm256_mul_ps(dts, A1)), h1, _mm256_mul_ps(du, _mm256_loadu_ps(Bt + 8)));
            _mm256_store_ps(partial + s * 8,
                            _mm256_fmadd_ps(_mm256_loadu_ps(Ct + 8), h1, _mm256_mul_ps(_mm256_loadu_ps(Ct), h0)));
        }
        for (int64_t s = 0; s < steps; s += 8) {
            // Lanes past the block's end are garbage; in the backward branch's last block they
            // fall on steps already done, so a ragged end stores only its own lanes.
            const int64_t t = lo + s;
            __m256 y = _mm256_fmadd_ps(Dd, load8(u + s, steps - s), sum_rows8(partial + s * 8));
            if (add) y = _mm256_add_ps(y, _mm256_loadu_ps(acc + t));
            store8(acc + t, y, steps - s);
        }
    }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// 2^t for 16 floats with t <= 0 (here t = dt A log2 e, dt >= 0 and A < 0): t = n + f, n the nearest
// integer, 2^f by the same degree-5 polynomial as simd_math.h's exp2_8, and vscalefps multiplies
// by 2^n, so no exponent-bit arithmetic is needed. t is clamped at -126: below, 2^t would be
// subnormal (slow, and ~0 anyway).
static inline __m512 exp2_16(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-126.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3276446843519807e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6755335107445717e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507130920886993e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120237350464e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314694404602051e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
    return _mm512_scalef_ps(p, n);
}

// Channels per lane group: one zmm register holds one state of 16 channels.
#define LANES 16

// Taps of the conv the lanes path recomputes u with; longer convs take the row path.
#define MAX_TAPS 8

// u[s * LANES + j] = silu(conv of x row d0 + j)[lo + s] for s < steps: causal_conv1d_silu_range
// for 16 channels at once, the same operations in the same order per element (bias, then one
// fma per tap from the newest input back, then silu8), so u is bit for bit what the u-given
// path reads. The block's inputs, K - 1 more than its steps, are transposed into xb first
// (zeros outside the sequence: the conv's padding). w[q * LANES + j] is tap q of channel d0 + j.
static void conv_lanes16(const inner_job *job, int k, int64_t b, int64_t d0, int nch, int64_t lo, int64_t steps,
                         const float *w, const float *bias, float *xb, float *ub) {
    const int64_t L = job->L, K = job->K, first = k ? lo : lo - (K - 1);  // xb row 0 is input step `first`
    for (int j = 0; j < nch; j++) {
        const float *x = job->x + b * job->x_bstride + (d0 + j) * L;
        for (int64_t s = 0; s < steps + K - 1; s++) {
            const int64_t t = first + s;
            xb[s * LANES + j] = t >= 0 && t < L ? x[t] : 0.0f;
        }
    }
    for (int64_t s = 0; s < steps; s++) {
        for (int half = 0; half < 2; half++) {
            __m256 y = _mm256_load_ps(bias + 8 * half);
            for (int64_t q = 0; q < K; q++) {  // tap K-1-q reads the input q steps back (forward in time, ahead backward)
                const int64_t row = k ? s + q : s + K - 1 - q;
                y = _mm256_fmadd_ps(_mm256_load_ps(w + (K - 1 - q) * LANES + 8 * half),
                                    _mm256_load_ps(xb + row * LANES + 8 * half), y);
            }
            _mm256_store_ps(ub + s * LANES + 8 * half, silu8(y));
        }
    }
}

// One branch of up to 16 channels d0 .. d0 + nch - 1 of batch element b, N = 16, "channels across
// lanes": lane j is channel d0 + j and state n lives in register h[n]. Per step and state, the
// 16 channels share the broadcast B[t, n] and C[t, n], and C.h is 16 fmas into one register, so
// a step of 16 channels costs 16 x (exp + 3 fma-class ops) with no horizontal sum; with one
// channel per register (the states across lanes) each channel-step also paid a fold of C*h, a
// store, and the scalar dt*u and broadcasts. dt is computed for the 16 channels at once from the
// low-rank input in place (R broadcasts of xdbl[t, r] against the channels' rows of dt_w), so
// no transposed copy is needed; u, channel-major in memory, is transposed one block at a time, or
// recomputed from x straight into the lanes (conv_lanes16).
// acc[t * LANES + j] (+)= y_k[d0 + j, t].
static void branch_lanes16(const inner_job *job, int k, int64_t b, int64_t d0, int nch, float *acc, int add) {
    const branch *br = &job->br[k];
    const int64_t L = job->L, R = job->R, S = R + 32;
    const float *xdbl = br->xdbl + b * L * S;
    // Lanes past nch stay zero: u = 0 there keeps their states at 0, and they are never stored.
    float wT[R * LANES] __attribute__((aligned(64))), A[16 * LANES] __attribute__((aligned(64)));
    float bias[LANES] __attribute__((aligned(64))) = {0}, D[LANES] __attribute__((aligned(64))) = {0};
    float ub[BLOCK_STEPS * LANES] __attribute__((aligned(64))) = {0}, dt[BLOCK_STEPS * LANES] __attribute__((aligned(64)));
    float xb[(BLOCK_STEPS + MAX_TAPS - 1) * LANES] __attribute__((aligned(64))) = {0};
    float conv_w[MAX_TAPS * LANES] __attribute__((aligned(64))) = {0}, conv_b[LANES] __attribute__((aligned(64))) = {0};
    memset(wT, 0, sizeof wT), memset(A, 0, sizeof A);
    for (int j = 0; j < nch; j++) {
        const int64_t d = d0 + j;
        bias[j] = br->dt_b[d], D[j] = br->D ? br->D[d] : 0.0f;
        if (!br->u) {
            conv_b[j] = br->conv_b ? br->conv_b[d] : 0.0f;
            for (int64_t q = 0; q < job->K; q++) conv_w[q * LANES + j] = br->conv_w[d * job->K + q];
        }
        for (int64_t r = 0; r < R; r++) wT[r * LANES + j] = br->dt_w[d * R + r];
        // exp(dt A) = 2^(dt A log2 e) with A = -exp(A_log): -log2 e folded into A once.
        for (int n = 0; n < 16; n++) A[n * LANES + j] = -expf(br->A_log[d * 16 + n]) * 1.44269504088896341f;
    }
    const __m256 bias0 = _mm256_load_ps(bias), bias1 = _mm256_load_ps(bias + 8);
    const __m512 Dv = _mm512_load_ps(D);
    __m512 h[16];
    for (int n = 0; n < 16; n++) h[n] = _mm512_setzero_ps();
    for (int64_t i0 = 0; i0 < L; i0 += BLOCK_STEPS) {
        const int64_t steps = L - i0 < BLOCK_STEPS ? L - i0 : BLOCK_STEPS, lo = block_lo(L, k, i0, steps);
        if (br->u) {
            for (int j = 0; j < nch; j++) {
                const float *u = br->u + (b * job->dim + d0 + j) * L + lo;
                for (int64_t s = 0; s < steps; s++) ub[s * LANES + j] = u[s];
            }
        } else {
            conv_lanes16(job, k, b, d0, nch, lo, steps, conv_w, conv_b, xb, ub);
        }
        for (int64_t s = 0; s < steps; s++) {
            const float *low = xdbl + (lo + s) * S;
            __m256 x0 = bias0, x1 = bias1;
            for (int64_t r = 0; r < R; r++) {
                const __m256 xr = _mm256_set1_ps(low[r]);
                x0 = _mm256_fmadd_ps(_mm256_load_ps(wT + r * LANES), xr, x0);
                x1 = _mm256_fmadd_ps(_mm256_load_ps(wT + r * LANES + 8), xr, x1);
            }
            _mm256_store_ps(dt + s * LANES, softplus8(x0));
            _mm256_store_ps(dt + s * LANES + 8, softplus8(x1));
        }
        for (int64_t i = 0; i < steps; i++) {
            const int64_t s = k ? steps - 1 - i : i, t = lo + s;
            const float *Bt = xdbl + t * S + R, *Ct = Bt + 16;
            const __m512 dts = _mm512_load_ps(dt + s * LANES), us = _mm512_load_ps(ub + s * LANES);
            const __m512 du = _mm512_mul_ps(dts, us);
            __m512 y = _mm512_mul_ps(Dv, us);
#pragma GCC unroll 16
            for (int n = 0; n < 16; n++) {
                const __m512 a = exp2_16(_mm512_mul_ps(dts, _mm512_load_ps(A + n * LANES)));
                h[n] = _mm512_fmadd_ps(a, h[n], _mm512_mul_ps(du, _mm512_set1_ps(Bt[n])));
                y = _mm512_fmadd_ps(_mm512_set1_ps(Ct[n]), h[n], y);
            }
            float *dst = acc + t * LANES;
            _mm512_store_ps(dst, add ? _mm512_add_ps(_mm512_load_ps(dst), y) : y);
        }
    }
}
#endif

// out[b, d, :] = scale * silu(z[b, d, :]) * acc.
static void gate_row(const inner_job *job, int64_t b, int64_t d, const float *acc) {
    const int64_t L = job->L;
    const float *z = job->z ? job->z + b * job->z_bstride + d * L : 0;
    float *out = job->out + b * job->out_bstride + d * L;
    int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 scale = _mm256_set1_ps(job->scale);
    for (; t + 8 <= L; t += 8) {
        __m256 y = _mm256_mul_ps(scale, _mm256_loadu_ps(acc + t));
        if (z) y = _mm256_mul_ps(y, silu8(_mm256_loadu_ps(z + t)));
        _mm256_storeu_ps(out + t, y);
    }
#endif
    for (; t < L; t++) {
        float y = job->scale * acc[t];
        if (z) y *= z[t] / (1.0f + expf(fminf(-z[t], SILU_EXP_CAP)));
        out[t] = y;
    }
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// The tasks' share for N = 16: groups of 16 channels (the last may be ragged), both branches,
// then the 16 rows' epilogues. Scratch: the group's (L, 16) partial sums and one row.
static void inner_task_lanes(inner_job *job, int task, int ntasks) {
    const int64_t groups = (job->dim + LANES - 1) / LANES, total = job->batch * groups;
    const int64_t begin = total * task / ntasks, end = total * (task + 1) / ntasks, Lp = padded(job->L);
    if (begin == end) return;
    // aligned_alloc wants a multiple of the alignment: Lp (a multiple of 8) rounded up to 16.
    float *acc = aligned_alloc(64, (size_t)(job->L * LANES + (Lp + 15) / 16 * 16) * sizeof(float));
    if (!acc) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *row = acc + job->L * LANES;
    for (int64_t g = begin; g < end; g++) {
        const int64_t b = g / groups, d0 = g % groups * LANES;
        const int nch = job->dim - d0 < LANES ? (int)(job->dim - d0) : LANES;
        for (int k = 0; k < job->nbranch; k++) branch_lanes16(job, k, b, d0, nch, acc, k > 0);
        for (int j = 0; j < nch; j++) {
            for (int64_t t = 0; t < job->L; t++) row[t] = acc[t * LANES + j];
            gate_row(job, b, d0 + j, row);
        }
    }
    free(acc);
}
#endif

static void inner_task(void *arg, int task, int ntasks) {
    inner_job *job = arg;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (job->N == 16 && job->K <= MAX_TAPS) return inner_task_lanes(job, task, ntasks);
#endif
    const int64_t rows = job->batch * job->dim, begin = rows * task / ntasks, end = rows * (task + 1) / ntasks;
    const int64_t Lp = padded(job->L);
    if (begin == end) return;
    // Zeroed: the padding lanes are read by the 8-wide loads and must be finite.
    float *scratch = calloc((size_t)((job->nbranch * job->R + 1) * Lp), sizeof(float));
    if (!scratch) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *acc = scratch, *dtT = scratch + Lp;
    int64_t current_b = -1;
    for (int64_t row = begin; row < end; row++) {
        const int64_t b = row / job->dim, d = row % job->dim;
        if (b != current_b) transpose_dt(job, b, dtT), current_b = b;
        for (int k = 0; k < job->nbranch; k++) {
            const float *dtk = dtT + k * job->R * Lp;
#if defined(__AVX2__) && defined(__FMA__)
            if (job->N == 16) {
                branch_row16(job, k, b, d, dtk, acc, k > 0);
                continue;
            }
#endif
            branch_row(job, k, b, d, dtk, acc, k > 0);
        }
        gate_row(job, b, d, acc);
    }
    free(scratch);
}

// One or two branches (dt_w_b == NULL: the forward one only). Branch k's u_k: (batch, dim, L)
// contiguous, or NULL to recompute it from x (batch, dim, L, contiguous (dim, L) planes x_bstride
// floats apart) with conv_w_k (dim, K) and conv_b_k (dim,) or NULL; xdbl_k: (batch, L, R + 2N)
// contiguous; dt_w_k: (dim, R); dt_b_k, D_k: (dim,) (D_k may be NULL); A_log_k: (dim, N); z, out:
// (batch, dim, L) with contiguous (dim, L) planes `z_bstride`, `out_bstride` floats apart (z may be
// NULL; out may be z). Returns 0, or -1 when scratch memory ran out (out is then incomplete).
int mamba_inner_fwd(const float *u_f, const float *xdbl_f, const float *dt_w_f, const float *dt_b_f,
                    const float *A_log_f, const float *D_f, const float *conv_w_f, const float *conv_b_f,
                    const float *u_b, const float *xdbl_b, const float *dt_w_b, const float *dt_b_b,
                    const float *A_log_b, const float *D_b, const float *conv_w_b, const float *conv_b_b,
                    const float *x, const float *z, float *out, int64_t x_bstride, int64_t z_bstride,
                    int64_t out_bstride, int64_t batch, int64_t dim, int64_t L, int64_t R, int64_t N, int64_t K,
                    float scale, int nthreads) {
    inner_job job = {{{u_f, xdbl_f, dt_w_f, dt_b_f, A_log_f, D_f, conv_w_f, conv_b_f},
                      {u_b, xdbl_b, dt_w_b, dt_b_b, A_log_b, D_b, conv_w_b, conv_b_b}},
                     dt_w_b ? 2 : 1, x, z, out, x_bstride, z_bstride, out_bstride, batch, dim, L, R, N, K, scale, 0};
    const int64_t rows = batch * dim;
    effviz_parallel(inner_task, &job, nthreads < rows ? nthreads : (int)rows);
    return job.failed ? -1 : 0;
}

typedef struct {
    const float *x, *w[2], *bias[2];
    float *u;
    int64_t x_bstride, batch, dim, L, K, t0, T;
    int nbranch;
} conv_job;

// The task's channel range of every (branch, batch element), steps [t0, t0 + T) of each row.
static void conv_task(void *arg, int task, int ntasks) {
    const conv_job *job = arg;
    const int64_t d0 = job->dim * task / ntasks, d1 = job->dim * (task + 1) / ntasks;
    for (int k = 0; k < job->nbranch; k++)
        for (int64_t b = 0; b < job->batch; b++)
            for (int64_t d = d0; d < d1; d++)
                causal_conv1d_silu_range(job->x + b * job->x_bstride + d * job->L, job->L, job->w[k] + d * job->K,
                                         job->bias[k] ? job->bias[k][d] : 0.0f, job->K, k, job->t0, job->T,
                                         job->u + ((k * job->batch + b) * job->dim + d) * job->T);
}

// u[k] = silu(causal depthwise conv of x with w_k, bias_k) at steps [t0, t0 + T), forward in time
// for k = 0 and backward for k = 1 (w_b == NULL: branch 0 only). x: (batch, dim, L) with contiguous
// (dim, L) planes x_bstride floats apart; w_k: (dim, K); bias_k: (dim,) or NULL; u: (nbranch,
// batch, dim, T).
void mamba_conv_fwd(const float *x, const float *w_f, const float *bias_f, const float *w_b, const float *bias_b,
                    float *u, int64_t x_bstride, int64_t batch, int64_t dim, int64_t L, int64_t K, int64_t t0,
                    int64_t T, int nthreads) {
    conv_job job = {x, {w_f, w_b}, {bias_f, bias_b}, u, x_bstride, batch, dim, L, K, t0, T, w_b ? 2 : 1};
    effviz_parallel(conv_task, &job, nthreads < dim ? nthreads : (int)dim);
}
