// Selective scan forward for the `cpu` backend (fp32).
//
// One row = one (batch, channel) pair; its N-wide state lives in registers while the row walks
// over time, so the (batch, dim, L, N) tensor never exists. Rows are split over the tasks of the
// persistent thread pool (pool.h).
// B and C arrive time-major, (batch, L, N), so each step reads N contiguous floats.
//
// For inference the per-channel prologue and epilogue are fused in: delta + delta_bias and its
// softplus before the recurrence, the D skip and the SiLU(z) gate after it. Each runs over a block
// of steps in a separate loop (vectorised by gcc with glibc's vector expf/logf in the generic
// path, by hand with inlined exp and log1p in the AVX2 path for N=16), so the recurrence loop
// itself makes no calls: a call spills the state registers, every ymm register being
// caller-saved. Training passes none of them and applies them in PyTorch, whose autograd then
// differentiates them.
//
// The state may start from h0 (streaming: the last state of the previous chunk) instead of zeros.
#include <math.h>
#include <stdint.h>

#include "../pool.h"
#include "../simd_math.h"

typedef struct {
    const float *u, *delta, *A, *B, *C, *delta_bias, *D, *z;  // the last three may be NULL
    const float *h0;                                           // NULL = start from zeros
    float *y, *last_state;                                     // last_state may be NULL
    int64_t dim, L, N, row_begin, row_end;
    int softplus, reverse;
} scan_job;

// Steps per block: the block's dt (and, in the generic path, its decays) stay in L1.
#define BLOCK_STEPS 64

// dt[k] = softplus(delta[lo + k] + bias) (or without softplus) for the block's steps.
static inline void block_dt(const scan_job *job, const float *delta, float bias, int64_t lo, int64_t steps,
                            float *restrict dt) {
    for (int64_t k = 0; k < steps; k++) {
        const float x = delta[lo + k] + bias;
        // softplus(x) = log(1 + e^x); above 20 it equals x to fp32 precision (and e^x would overflow later).
        dt[k] = job->softplus ? (x > 20.0f ? x : logf(1.0f + expf(x))) : x;
    }
}

// y = (y + D u) * silu(z) over the block, as far as D and z are given.
static inline void block_epilogue(const scan_job *job, int64_t row, int64_t d, int64_t lo, int64_t steps,
                                  float *restrict y) {
    const float *u = job->u + row * job->L + lo;
    if (job->D) {
        const float Dd = job->D[d];
        for (int64_t k = 0; k < steps; k++) y[k] += Dd * u[k];
    }
    if (job->z) {
        const float *z = job->z + row * job->L + lo;
        for (int64_t k = 0; k < steps; k++) y[k] *= z[k] / (1.0f + expf(fminf(-z[k], SILU_EXP_CAP)));
    }
}

// Blocks are contiguous time ranges [lo, lo + steps), taken from the end when scanning in reverse;
// inside a block, step k is at time lo + k (forward) or lo + steps - 1 - k (reverse).
static inline int64_t block_lo(const scan_job *job, int64_t i0, int64_t steps) {
    return job->reverse ? job->L - i0 - steps : i0;
}

static void scan_row(const scan_job *job, int64_t row) {
    const int64_t L = job->L, N = job->N, b = row / job->dim, d = row % job->dim;
    const float *u = job->u + row * L, *delta = job->delta + row * L, *A = job->A + d * N;
    const float *B = job->B + b * L * N, *C = job->C + b * L * N;
    const float bias = job->delta_bias ? job->delta_bias[d] : 0.0f;
    float *y = job->y + row * L;
    float h[N], decay[BLOCK_STEPS * N], dt[BLOCK_STEPS];
    for (int64_t n = 0; n < N; n++) h[n] = job->h0 ? job->h0[row * N + n] : 0.0f;
    for (int64_t i0 = 0; i0 < L; i0 += BLOCK_STEPS) {
        const int64_t steps = L - i0 < BLOCK_STEPS ? L - i0 : BLOCK_STEPS, lo = block_lo(job, i0, steps);
        block_dt(job, delta, bias, lo, steps, dt);
        for (int64_t k = 0; k < steps; k++)
            for (int64_t n = 0; n < N; n++) decay[k * N + n] = dt[k] * A[n];
        for (int64_t j = 0; j < steps * N; j++) decay[j] = expf(decay[j]);
        for (int64_t k = 0; k < steps; k++) {
            const int64_t s = job->reverse ? steps - 1 - k : k, t = lo + s;
            const float du = dt[s] * u[t];
            const float *Bt = B + t * N, *Ct = C + t * N, *at = decay + s * N;
            float acc = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                h[n] = at[n] * h[n] + du * Bt[n];
                acc += Ct[n] * h[n];
            }
            y[t] = acc;
        }
        block_epilogue(job, row, d, lo, steps, y + lo);
    }
    if (job->last_state)
        for (int64_t n = 0; n < N; n++) job->last_state[row * N + n] = h[n];
}

#if defined(__AVX2__) && defined(__FMA__)
// y = (y + D u) * silu(z), 8 steps.
static inline __m256 epilogue8(const scan_job *job, __m256 y, __m256 Dd, __m256 u, __m256 zv) {
    if (job->D) y = _mm256_fmadd_ps(Dd, u, y);
    return job->z ? _mm256_mul_ps(y, silu8(zv)) : y;
}

// N=16 (Mamba's and Vim's d_state) with the state in two ymm registers. Only h_t = a*h + du*B is
// a chain from step to step; C.h_t is a side product, so its 8 partial sums per step are stored
// and summed after the block instead of reduced across lanes inside the chain's loop. The per-block
// prologue (dt) and epilogue (D skip, gate) run 8 steps at a time.
static void scan_row16(const scan_job *job, int64_t row) {
    const int64_t L = job->L, b = row / job->dim, d = row % job->dim;
    const float *u = job->u + row * L, *delta = job->delta + row * L, *A = job->A + d * 16;
    const float *B = job->B + b * L * 16, *C = job->C + b * L * 16;
    const float *z = job->z ? job->z + row * L : 0;
    const __m256 bias = _mm256_set1_ps(job->delta_bias ? job->delta_bias[d] : 0.0f);
    const __m256 Dd = _mm256_set1_ps(job->D ? job->D[d] : 0.0f);
    float *y = job->y + row * L;
    // dt and partial get 8 floats of slack: the 8-wide loops may run past a ragged block end.
    float partial[(BLOCK_STEPS + 8) * 8] __attribute__((aligned(32))), dt[BLOCK_STEPS + 8] __attribute__((aligned(32)));
    // exp(dt A) = 2^(dt A log2 e): fold log2 e into A once per row.
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 A0 = _mm256_mul_ps(_mm256_loadu_ps(A), log2e), A1 = _mm256_mul_ps(_mm256_loadu_ps(A + 8), log2e);
    __m256 h0 = _mm256_setzero_ps(), h1 = _mm256_setzero_ps();
    if (job->h0) {
        h0 = _mm256_loadu_ps(job->h0 + row * 16);
        h1 = _mm256_loadu_ps(job->h0 + row * 16 + 8);
    }
    for (int64_t i0 = 0; i0 < L; i0 += BLOCK_STEPS) {
        const int64_t steps = L - i0 < BLOCK_STEPS ? L - i0 : BLOCK_STEPS, lo = block_lo(job, i0, steps);
        for (int64_t k = 0; k < steps; k += 8) {
            const __m256 x = _mm256_add_ps(load8(delta + lo + k, steps - k), bias);
            _mm256_store_ps(dt + k, job->softplus ? softplus8(x) : x);
        }
        for (int64_t k = 0; k < steps; k++) {
            const int64_t s = job->reverse ? steps - 1 - k : k, t = lo + s;
            const __m256 dts = _mm256_set1_ps(dt[s]), du = _mm256_set1_ps(dt[s] * u[t]);
            const float *Bt = B + t * 16, *Ct = C + t * 16;
            h0 = _mm256_fmadd_ps(exp2_8(_mm256_mul_ps(dts, A0)), h0, _mm256_mul_ps(du, _mm256_loadu_ps(Bt)));
            h1 = _mm256_fmadd_ps(exp2_8(_mm256_mul_ps(dts, A1)), h1, _mm256_mul_ps(du, _mm256_loadu_ps(Bt + 8)));
            const __m256 acc = _mm256_fmadd_ps(_mm256_loadu_ps(Ct + 8), h1, _mm256_mul_ps(_mm256_loadu_ps(Ct), h0));
            _mm256_store_ps(partial + s * 8, acc);
        }
        for (int64_t k = 0; k < steps; k += 8) {
            const int64_t t = lo + k, n = steps - k;
            const __m256 zv = z ? load8(z + t, n) : _mm256_setzero_ps();
            store8(y + t, epilogue8(job, sum_rows8(partial + k * 8), Dd, load8(u + t, n), zv), n);
        }
    }
    if (job->last_state) {
        _mm256_storeu_ps(job->last_state + row * 16, h0);
        _mm256_storeu_ps(job->last_state + row * 16 + 8, h1);
    }
}
#endif

static void *scan_rows(void *arg) {
    const scan_job *job = arg;
    for (int64_t row = job->row_begin; row < job->row_end; row++) {
#if defined(__AVX2__) && defined(__FMA__)
        if (job->N == 16) {
            scan_row16(job, row);
            continue;
        }
#endif
        scan_row(job, row);
    }
    return 0;
}

#define MAX_THREADS EFFVIZ_POOL_MAX_TASKS

// Task i of the pool runs jobs[i].
static void scan_task(void *jobs, int task, int ntasks) {
    (void)ntasks;
    scan_rows((scan_job *)jobs + task);
}

// u, delta, y, z: (batch, dim, L); A: (dim, N); B, C: (batch, L, N); delta_bias, D: (dim,);
// h0, last_state: (batch, dim, N). delta_bias, D, z, h0 and last_state may be NULL.
void selective_scan_fwd(const float *u, const float *delta, const float *A, const float *B,
                        const float *C, const float *delta_bias, const float *D, const float *z,
                        const float *h0, float *y, float *last_state, int64_t batch, int64_t dim, int64_t L, int64_t N,
                        int softplus, int reverse, int nthreads) {
    const int64_t rows = batch * dim;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > rows) nthreads = (int)rows;
    if (nthreads < 1) nthreads = 1;
    scan_job jobs[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (scan_job){u, delta, A, B, C, delta_bias, D, z, h0, y, last_state, dim, L, N,
                             rows * i / nthreads, rows * (i + 1) / nthreads, softplus, reverse};
    }
    effviz_parallel(scan_task, jobs, nthreads);
}

// ---------------------------------------------------------------------------------------------
// Backward. Threads own disjoint channel ranges (all batch rows of a channel), so dA needs no
// locking; dB and dC sum over channels, so each thread accumulates into its own (batch, L, N)
// buffer and the caller adds the buffers up. Each row first replays the forward pass, keeping
// its L x N states and decays in a per-thread scratch buffer, then walks back in time.
#include <stdlib.h>

typedef struct {
    const float *u, *delta, *A, *B, *C, *dy, *dlast, *h0;  // dlast, h0 may be NULL
    float *du, *ddelta, *dA, *dB, *dC, *dh0, *scratch;        // dh0 may be NULL
    int64_t batch, dim, L, N, d_begin, d_end;
    int reverse;
} scan_bwd_job;

// One backward time step over the N states. Separate, with restrict pointers, so gcc can prove
// the arrays do not overlap and vectorise the loop. ``at`` holds exp(dt*A), kept by the replay.
static inline void scan_bwd_step(const int64_t N, const float *restrict A, const float *restrict at,
                                 const float *restrict Bt,
                                 const float *restrict Ct, const float *restrict ht,
                                 const float *restrict hp, float *restrict dBt, float *restrict dCt,
                                 float *restrict g, float *restrict dA_acc, const float dt,
                                 const float ut, const float dyt, float *d_delta, float *gB_sum) {
    float dd = 0.0f, gb = 0.0f;
    for (int64_t n = 0; n < N; n++) {
        const float a = at[n];
        const float gn = g[n] + dyt * Ct[n];  // dL/dh_t
        const float ga = gn * hp[n] * a;      // dL/d(dt*A) for this n
        dCt[n] += dyt * ht[n];
        dBt[n] += gn * dt * ut;
        dd += ga * A[n];
        dA_acc[n] += ga * dt;
        gb += gn * Bt[n];
        g[n] = gn * a;  // carried to step t-1
    }
    *d_delta = dd;
    *gB_sum = gb;
}

static inline void scan_bwd_row(const scan_bwd_job *job, int64_t b, int64_t d, const int64_t N) {
    const int64_t L = job->L, row = b * job->dim + d;
    const float *u = job->u + row * L, *delta = job->delta + row * L, *dy = job->dy + row * L;
    const float *A = job->A + d * N, *B = job->B + b * L * N, *C = job->C + b * L * N;
    float *du = job->du + row * L, *ddelta = job->ddelta + row * L, *dA = job->dA + d * N;
    // Scratch: the L x N states, then the L x N decays exp(dt*A) (one expf per element, not two).
    float *dB = job->dB + b * L * N, *dC = job->dC + b * L * N, *H = job->scratch, *E = H + L * N;
    float h[N], g[N], dA_acc[N], start[N];  // start: the state before the first step
    for (int64_t n = 0; n < N; n++) {
        start[n] = job->h0 ? job->h0[row * N + n] : 0.0f;
        h[n] = start[n];
        dA_acc[n] = 0.0f;
    }
    for (int64_t i = 0; i < L; i++) {
        const int64_t t = job->reverse ? L - 1 - i : i;
        const float dt = delta[t], dtu = dt * u[t];
        for (int64_t n = 0; n < N; n++) {
            const float a = expf(dt * A[n]);
            h[n] = a * h[n] + dtu * B[t * N + n];
            H[i * N + n] = h[n];
            E[i * N + n] = a;
        }
    }
    for (int64_t n = 0; n < N; n++) g[n] = job->dlast ? job->dlast[row * N + n] : 0.0f;
    for (int64_t i = L - 1; i >= 0; i--) {
        const int64_t t = job->reverse ? L - 1 - i : i;
        const float dt = delta[t], ut = u[t], dyt = dy[t];
        const float *Bt = B + t * N, *Ct = C + t * N, *ht = H + i * N, *hp = i > 0 ? H + (i - 1) * N : start;
        float d_delta, gB_sum;
        scan_bwd_step(N, A, E + i * N, Bt, Ct, ht, hp, dB + t * N, dC + t * N, g, dA_acc, dt, ut, dyt, &d_delta, &gB_sum);
        du[t] = gB_sum * dt;
        ddelta[t] = d_delta + gB_sum * ut;
    }
    for (int64_t n = 0; n < N; n++) dA[n] += dA_acc[n];
    if (job->dh0)  // g now holds dL/dh_{-1}: the gradient of the initial state
        for (int64_t n = 0; n < N; n++) job->dh0[row * N + n] = g[n];
}

static void *scan_bwd_rows(void *arg) {
    const scan_bwd_job *job = arg;
    // Batch outer: consecutive rows share B[b], C[b], dB[b], dC[b], which then stay in cache.
    for (int64_t b = 0; b < job->batch; b++)
        for (int64_t d = job->d_begin; d < job->d_end; d++) {
            if (job->N == 16) scan_bwd_row(job, b, d, 16);  // constant N: gcc vectorises the state loops
            else scan_bwd_row(job, b, d, job->N);
        }
    return 0;
}

static void scan_bwd_task(void *jobs, int task, int ntasks) {
    (void)ntasks;
    scan_bwd_rows((scan_bwd_job *)jobs + task);
}

// Gradients of selective_scan_fwd's y (and last state, when dlast is not NULL), for a scan that
// started from h0 (NULL = zeros); dh0, when not NULL, receives the gradient of h0.
// dB_parts, dC_parts: (nthreads, batch, L, N), zeroed by the caller and summed over threads after.
// dA: (dim, N), zeroed by the caller. Returns 0, or -1 if scratch memory could not be allocated.
int selective_scan_bwd(const float *u, const float *delta, const float *A, const float *B,
                       const float *C, const float *dy, const float *dlast, const float *h0, float *du,
                       float *ddelta, float *dA, float *dB_parts, float *dC_parts, float *dh0, int64_t batch,
                       int64_t dim, int64_t L, int64_t N, int reverse, int nthreads) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > dim) nthreads = (int)dim;
    if (nthreads < 1) nthreads = 1;
    scan_bwd_job jobs[MAX_THREADS];
    int status = 0;
    for (int i = 0; i < nthreads; i++) {
        float *scratch = malloc(sizeof(float) * 2 * L * N);
        if (!scratch) status = -1;
        jobs[i] = (scan_bwd_job){u, delta, A, B, C, dy, dlast, h0, du, ddelta, dA,
                                 dB_parts + i * batch * L * N, dC_parts + i * batch * L * N, dh0, scratch,
                                 batch, dim, L, N, dim * i / nthreads, dim * (i + 1) / nthreads, reverse};
    }
    if (status == 0) effviz_parallel(scan_bwd_task, jobs, nthreads);
    for (int i = 0; i < nthreads; i++) free(jobs[i].scratch);
    return status;
}

// ---------------------------------------------------------------------------------------------
// One-token update for streaming: state = exp(dt A) state + dt B x, y = (C.state + D x) silu(z),
// the state rewritten in place. At one token the scan's block machinery (8-step prologue and
// epilogue, the transposed partial sums) costs more than the step itself, so this walks the
// channels instead: per block of channels a vectorised dt loop, the state loop, a vectorised
// epilogue. One thread: a token's update takes microseconds, about what starting a thread costs.

// Channels per block: their dt and y stay in L1.
#define UPDATE_BLOCK 64

// state: (batch, dim, N); x, dt, z, y: (batch, dim); A: (dim, N); B, C: (batch, N);
// dt_bias, D: (dim,). dt_bias, D and z may be NULL.
void selective_state_update(float *state, const float *x, const float *dt, const float *A, const float *B,
                            const float *C, const float *dt_bias, const float *D, const float *z, float *y,
                            int64_t batch, int64_t dim, int64_t N, int softplus) {
    float dts[UPDATE_BLOCK];
    for (int64_t b = 0; b < batch; b++) {
        const float *Bb = B + b * N, *Cb = C + b * N;
        for (int64_t d0 = 0; d0 < dim; d0 += UPDATE_BLOCK) {
            const int64_t count = dim - d0 < UPDATE_BLOCK ? dim - d0 : UPDATE_BLOCK, row0 = b * dim + d0;
            for (int64_t k = 0; k < count; k++) {
                const float v = dt[row0 + k] + (dt_bias ? dt_bias[d0 + k] : 0.0f);
                // softplus(v) = log(1 + e^v); above 20 it equals v to fp32 precision.
                dts[k] = softplus ? (v > 20.0f ? v : logf(1.0f + expf(fminf(v, 20.0f)))) : v;
            }
            for (int64_t k = 0; k < count; k++) {
                const int64_t row = row0 + k;
                const float *a = A + (d0 + k) * N, dtk = dts[k], du = dtk * x[row];
                float *h = state + row * N, acc = 0.0f;
                for (int64_t n = 0; n < N; n++) {
                    h[n] = expf(dtk * a[n]) * h[n] + du * Bb[n];
                    acc += Cb[n] * h[n];
                }
                y[row] = acc;
            }
            if (D)
                for (int64_t k = 0; k < count; k++) y[row0 + k] += D[d0 + k] * x[row0 + k];
            if (z)
                for (int64_t k = 0; k < count; k++) {
                    const float zk = z[row0 + k];
                    y[row0 + k] *= zk / (1.0f + expf(fminf(-zk, SILU_EXP_CAP)));
                }
        }
    }
}
