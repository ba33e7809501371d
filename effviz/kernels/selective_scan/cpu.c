// Selective scan forward for the `cpu` backend (fp32, inference).
//
// One row = one (batch, channel) pair; its N-wide state lives in registers while the row walks
// over time, so the (batch, dim, L, N) tensor never exists. Rows are split over pthreads.
// B and C arrive time-major, (batch, L, N), so each step reads N contiguous floats.
#include <math.h>
#include <pthread.h>
#include <stdint.h>

typedef struct {
    const float *u, *delta, *A, *B, *C;
    float *y, *last_state;
    int64_t dim, L, N, row_begin, row_end;
    int reverse;
} scan_job;

// Inlined with N known at compile time for the common N=16 so gcc fully vectorises the state
// update, including expf (glibc vector math under -ffast-math).
static inline void scan_row(const scan_job *job, int64_t row, const int64_t N) {
    const int64_t L = job->L, b = row / job->dim, d = row % job->dim;
    const float *u = job->u + row * L, *delta = job->delta + row * L, *A = job->A + d * N;
    const float *B = job->B + b * L * N, *C = job->C + b * L * N;
    float *y = job->y + row * L;
    float h[N];
    for (int64_t n = 0; n < N; n++) h[n] = 0.0f;
    for (int64_t i = 0; i < L; i++) {
        const int64_t t = job->reverse ? L - 1 - i : i;
        const float dt = delta[t], du = dt * u[t];
        const float *Bt = B + t * N, *Ct = C + t * N;
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            h[n] = expf(dt * A[n]) * h[n] + du * Bt[n];
            acc += Ct[n] * h[n];
        }
        y[t] = acc;
    }
    if (job->last_state)
        for (int64_t n = 0; n < N; n++) job->last_state[row * N + n] = h[n];
}

static void *scan_rows(void *arg) {
    const scan_job *job = arg;
    // A constant N=16 (Mamba's and Vim's d_state) lets gcc keep the state in two registers.
    for (int64_t row = job->row_begin; row < job->row_end; row++) {
        if (job->N == 16) scan_row(job, row, 16);
        else scan_row(job, row, job->N);
    }
    return 0;
}

#define MAX_THREADS 64

// u, delta, y: (batch, dim, L); A: (dim, N); B, C: (batch, L, N); last_state: (batch, dim, N) or NULL.
void selective_scan_fwd(const float *u, const float *delta, const float *A, const float *B,
                        const float *C, float *y, float *last_state, int64_t batch, int64_t dim,
                        int64_t L, int64_t N, int reverse, int nthreads) {
    const int64_t rows = batch * dim;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > rows) nthreads = (int)rows;
    if (nthreads < 1) nthreads = 1;
    scan_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (scan_job){u, delta, A, B, C, y, last_state, dim, L, N,
                             rows * i / nthreads, rows * (i + 1) / nthreads, reverse};
    }
    // The calling thread takes the first share; a thread that fails to start runs inline.
    int started[MAX_THREADS] = {0};
    for (int i = 1; i < nthreads; i++)
        started[i] = pthread_create(&threads[i], 0, scan_rows, &jobs[i]) == 0;
    scan_rows(&jobs[0]);
    for (int i = 1; i < nthreads; i++) {
        if (started[i]) pthread_join(threads[i], 0);
        else scan_rows(&jobs[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward. Threads own disjoint channel ranges (all batch rows of a channel), so dA needs no
// locking; dB and dC sum over channels, so each thread accumulates into its own (batch, L, N)
// buffer and the caller adds the buffers up. Each row first replays the forward pass, keeping
// its L x N states and decays in a per-thread scratch buffer, then walks back in time.
#include <stdlib.h>

typedef struct {
    const float *u, *delta, *A, *B, *C, *dy, *dlast;
    float *du, *ddelta, *dA, *dB, *dC, *scratch;
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
    float h[N], g[N], dA_acc[N], zero[N];
    for (int64_t n = 0; n < N; n++) { h[n] = 0.0f; dA_acc[n] = 0.0f; zero[n] = 0.0f; }
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
        const float *Bt = B + t * N, *Ct = C + t * N, *ht = H + i * N, *hp = i > 0 ? H + (i - 1) * N : zero;
        float d_delta, gB_sum;
        scan_bwd_step(N, A, E + i * N, Bt, Ct, ht, hp, dB + t * N, dC + t * N, g, dA_acc, dt, ut, dyt, &d_delta, &gB_sum);
        du[t] = gB_sum * dt;
        ddelta[t] = d_delta + gB_sum * ut;
    }
    for (int64_t n = 0; n < N; n++) dA[n] += dA_acc[n];
}

static void *scan_bwd_rows(void *arg) {
    const scan_bwd_job *job = arg;
    // Batch outer: consecutive rows share B[b], C[b], dB[b], dC[b], which then stay in cache.
    for (int64_t b = 0; b < job->batch; b++)
        for (int64_t d = job->d_begin; d < job->d_end; d++) {
            if (job->N == 16) scan_bwd_row(job, b, d, 16);  // constant N: see scan_rows
            else scan_bwd_row(job, b, d, job->N);
        }
    return 0;
}

// Gradients of selective_scan_fwd's y (and last state, when dlast is not NULL).
// dB_parts, dC_parts: (nthreads, batch, L, N), zeroed by the caller and summed over threads after.
// dA: (dim, N), zeroed by the caller. Returns 0, or -1 if scratch memory could not be allocated.
int selective_scan_bwd(const float *u, const float *delta, const float *A, const float *B,
                       const float *C, const float *dy, const float *dlast, float *du,
                       float *ddelta, float *dA, float *dB_parts, float *dC_parts, int64_t batch,
                       int64_t dim, int64_t L, int64_t N, int reverse, int nthreads) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > dim) nthreads = (int)dim;
    if (nthreads < 1) nthreads = 1;
    scan_bwd_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0}, status = 0;
    for (int i = 0; i < nthreads; i++) {
        float *scratch = malloc(sizeof(float) * 2 * L * N);
        if (!scratch) status = -1;
        jobs[i] = (scan_bwd_job){u, delta, A, B, C, dy, dlast, du, ddelta, dA,
                                 dB_parts + i * batch * L * N, dC_parts + i * batch * L * N, scratch,
                                 batch, dim, L, N, dim * i / nthreads, dim * (i + 1) / nthreads, reverse};
    }
    if (status == 0) {
        for (int i = 1; i < nthreads; i++)
            started[i] = pthread_create(&threads[i], 0, scan_bwd_rows, &jobs[i]) == 0;
        scan_bwd_rows(&jobs[0]);
        for (int i = 1; i < nthreads; i++) {
            if (started[i]) pthread_join(threads[i], 0);
            else scan_bwd_rows(&jobs[i]);
        }
    }
    for (int i = 0; i < nthreads; i++) free(jobs[i].scratch);
    return status;
}
