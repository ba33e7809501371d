/* Bi-WKV (Vision-RWKV) for the `cpu` backend: fp32, inference only.
 *
 * Layout: k, v, y are contiguous (batch, T, C); w, u are (C,). Each channel is an independent
 * recurrence over T, so the vector lanes run across channels: a work unit is one batch row and a
 * block of BI_WKV_BLOCK adjacent channels, whose per-step loads are contiguous and whose inner
 * loops gcc vectorises. (Transposing to (batch, C, T) instead, one scalar row per channel, was
 * measured ~10x slower at T=4096, C=192: each row is one serial chain of exps.)
 *
 * Per unit, a forward pass stores for every t the sum over i < t in a thread-local scratch of
 * 3 * T * BI_WKV_BLOCK floats (it stays in L2 for the T of a 1024 px image); a backward pass keeps
 * the sum over i > t in registers and combines both with the token's own term e^{u + k_t}.
 * A sum is max-stabilised as (num, den, max): Σ e^{x_i} (v_i, 1) = e^max (num, den). Adding
 * token i to the sum S_t gives S_{t+1} = e^{-w} S_t + e^{k_i} (v_i, 1); rescaling both parts to
 * the new max makes one scale exactly 1 and the other <= 1, so nothing overflows for any k or
 * w * T. The empty sum is (0, 0, -inf).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GLIBC__)
/* glibc declares its vector expf (libmvec, linked through -lm) only when __FAST_MATH__ is
 * defined, which -fno-finite-math-only turns off; without it every exp is a scalar call. */
extern float expf(float) __attribute__((__simd__("notinbranch")));
#endif

/* Two AVX2 vectors per step: two independent dependency chains hide the exp latency. */
#define BI_WKV_BLOCK 16

typedef struct {
    const float *w, *u, *k, *v;
    float *y;
    int64_t batch, T, C;
    int64_t first_unit, unit_step; /* this thread runs units first_unit, first_unit + unit_step, ... */
    int failed;
} bi_wkv_job;

/* (num, den, max) += (other_num, other_den, other_max), rescaled to the larger max: one exp.
 * At most one side may be the empty sum (max -inf), else the difference would be NaN. Written
 * with selects rather than fmaxf: without finite-math-only gcc keeps fmaxf a libm call, which
 * blocks vectorisation. */
static inline __attribute__((always_inline)) void bi_wkv_merge(
    float *num, float *den, float *max, float other_num, float other_den, float other_max)
{
    float diff = *max - other_max;
    float smaller = expf(-fabsf(diff));
    int mine_larger = diff > 0.0f;
    float scale = mine_larger ? 1.0f : smaller;
    float other_scale = mine_larger ? smaller : 1.0f;
    *num = scale * *num + other_scale * other_num;
    *den = scale * *den + other_scale * other_den;
    *max = mine_larger ? *max : other_max;
}

/* Per lane: S <- e^{-decay} S + e^{key} (value, 1). */
static inline __attribute__((always_inline)) void bi_wkv_add_token(
    float *restrict num, float *restrict den, float *restrict max, const float *restrict decay,
    const float *restrict key, const float *restrict value, int64_t width)
{
    for (int64_t j = 0; j < width; j++) {
        max[j] -= decay[j];
        bi_wkv_merge(&num[j], &den[j], &max[j], value[j], 1.0f, key[j]);
    }
}

/* One batch row, channels c0 .. c0 + width - 1. width stays a run-time value on purpose: with a
 * constant 16, gcc unrolls the lane loops completely and the straight-line code it vectorises
 * then calls the scalar expf (measured 2x slower). */
static void bi_wkv_unit(const bi_wkv_job *job, int64_t b, int64_t c0, int64_t width, float *restrict scratch)
{
    const int64_t T = job->T, C = job->C;
    const float *restrict k = job->k + b * T * C + c0;
    const float *restrict v = job->v + b * T * C + c0;
    float *restrict y = job->y + b * T * C + c0;
    const float *restrict decay = job->w + c0;
    const float *restrict first = job->u + c0;
    /* left_*[t * BI_WKV_BLOCK + j]: the sum over i < t of channel c0 + j. */
    float *restrict left_num = scratch;
    float *restrict left_den = scratch + T * BI_WKV_BLOCK;
    float *restrict left_max = scratch + 2 * T * BI_WKV_BLOCK;

    float num[BI_WKV_BLOCK], den[BI_WKV_BLOCK], max[BI_WKV_BLOCK];
    for (int64_t j = 0; j < width; j++) {
        num[j] = 0.0f;
        den[j] = 0.0f;
        max[j] = -INFINITY;
    }
    for (int64_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < width; j++) {
            left_num[t * BI_WKV_BLOCK + j] = num[j];
            left_den[t * BI_WKV_BLOCK + j] = den[j];
            left_max[t * BI_WKV_BLOCK + j] = max[j];
        }
        bi_wkv_add_token(num, den, max, decay, k + t * C, v + t * C, width);
    }

    for (int64_t j = 0; j < width; j++) { /* from here on: the sum over i > t */
        num[j] = 0.0f;
        den[j] = 0.0f;
        max[j] = -INFINITY;
    }
    for (int64_t t = T - 1; t >= 0; t--) {
        const float *restrict key = k + t * C;
        const float *restrict value = v + t * C;
        for (int64_t j = 0; j < width; j++) {
            /* Start from the token's own term, which is never empty, then merge both sides. */
            int64_t at = t * BI_WKV_BLOCK + j;
            float out_num = value[j], out_den = 1.0f, out_max = first[j] + key[j];
            bi_wkv_merge(&out_num, &out_den, &out_max, left_num[at], left_den[at], left_max[at]);
            bi_wkv_merge(&out_num, &out_den, &out_max, num[j], den[j], max[j]);
            y[t * C + j] = out_num / out_den;
        }
        bi_wkv_add_token(num, den, max, decay, key, value, width);
    }
}

static void *bi_wkv_thread(void *arg)
{
    bi_wkv_job *job = arg;
    float *scratch = malloc((size_t)job->T * 3 * BI_WKV_BLOCK * sizeof(float));
    if (scratch == NULL) {
        job->failed = 1;
        return NULL;
    }
    const int64_t blocks = (job->C + BI_WKV_BLOCK - 1) / BI_WKV_BLOCK;
    for (int64_t unit = job->first_unit; unit < job->batch * blocks; unit += job->unit_step) {
        int64_t b = unit / blocks, c0 = (unit % blocks) * BI_WKV_BLOCK;
        int64_t width = job->C - c0 < BI_WKV_BLOCK ? job->C - c0 : BI_WKV_BLOCK;
        bi_wkv_unit(job, b, c0, width, scratch);
    }
    free(scratch);
    return NULL;
}

/* y = Bi-WKV(w, u, k, v) over nthreads threads; returns 0, or -1 when scratch memory ran out. */
int bi_wkv_forward(const float *w, const float *u, const float *k, const float *v, float *y,
                   int64_t batch, int64_t T, int64_t C, int nthreads)
{
    enum { MAX_THREADS = 256 };
    const int64_t units = batch * ((C + BI_WKV_BLOCK - 1) / BI_WKV_BLOCK);
    if (units == 0 || T == 0)
        return 0;
    int64_t n = nthreads < 1 ? 1 : nthreads;
    if (n > units)
        n = units;
    if (n > MAX_THREADS)
        n = MAX_THREADS;

    bi_wkv_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t i = 0; i < n; i++) {
        jobs[i] = (bi_wkv_job){w, u, k, v, y, batch, T, C, i, n, 0};
        /* Share 0 runs on the caller; a thread that cannot be created runs its share inline too. */
        if (i > 0)
            started[i] = pthread_create(&threads[i], NULL, bi_wkv_thread, &jobs[i]) == 0;
    }
    int failed = 0;
    for (int64_t i = 0; i < n; i++) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            bi_wkv_thread(&jobs[i]);
        failed |= jobs[i].failed;
    }
    return failed ? -1 : 0;
}
