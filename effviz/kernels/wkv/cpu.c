/* Causal WKV (RWKV-4) for the `cpu` backend: fp32, inference only, with state in and out.
 *
 * Layout: k, v, y are contiguous (batch, T, C); w, u are (C,); a state is contiguous
 * (batch, 3, C) holding (a, b, p) per channel: the running sums Σ e^{x_i} (v_i, 1) of the tokens
 * so far equal e^p (a, b), with p their largest exponent x_i (RWKV-4's aa, bb, pp). As in
 * bi_wkv/cpu.c, a work unit is one batch row and a block of WKV_BLOCK adjacent channels, so every
 * per-step load is contiguous and gcc vectorises the lane loops across channels.
 *
 * Per token t: y_t = (e^p (a, b) + e^{u+k_t} (v_t, 1)) merged and divided, then the sums advance:
 * S <- e^{-w} S + e^{k_t} (v_t, 1). Each merge rescales both parts to the larger exponent (one
 * exp, of a value <= 0), so nothing overflows for any k or w * T. The empty sum is
 * (0, 0, -1e38): finite, because -ffast-math assumes no infinities.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GLIBC__)
/* The vector expf of glibc (libmvec), as in bi_wkv/cpu.c. */
extern float expf(float) __attribute__((__simd__("notinbranch")));
#endif

/* Two AVX2 vectors per step: two independent dependency chains hide the exp latency. */
#define WKV_BLOCK 16
#define WKV_EMPTY_P (-1e38f)

typedef struct {
    const float *w, *u, *k, *v, *state_in;
    float *y, *state_out;
    int64_t batch, T, C;
    int64_t first_unit, unit_step; /* this thread runs units first_unit, first_unit + unit_step, ... */
} wkv_job;

/* (num, den, max) += (other_num, other_den, other_max), rescaled to the larger max: one exp.
 * Selects rather than fmaxf keep the loop vectorisable (see bi_wkv/cpu.c). */
static inline __attribute__((always_inline)) void wkv_merge(
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

/* One batch row, channels c0 .. c0 + width - 1 (width stays a run-time value: see bi_wkv/cpu.c). */
static void wkv_unit(const wkv_job *job, int64_t b, int64_t c0, int64_t width)
{
    const int64_t T = job->T, C = job->C;
    const float *restrict k = job->k + b * T * C + c0;
    const float *restrict v = job->v + b * T * C + c0;
    float *restrict y = job->y + b * T * C + c0;
    const float *restrict decay = job->w + c0;
    const float *restrict first = job->u + c0;

    float a[WKV_BLOCK], bsum[WKV_BLOCK], p[WKV_BLOCK];
    for (int64_t j = 0; j < width; j++) {
        if (job->state_in != NULL) {
            const float *s = job->state_in + b * 3 * C + c0 + j;
            a[j] = s[0];
            bsum[j] = s[C];
            p[j] = s[2 * C];
        } else {
            a[j] = 0.0f;
            bsum[j] = 0.0f;
            p[j] = WKV_EMPTY_P;
        }
    }
    for (int64_t t = 0; t < T; t++) {
        const float *restrict key = k + t * C;
        const float *restrict value = v + t * C;
        for (int64_t j = 0; j < width; j++) {
            /* Start from the token's own term, which is never empty, then merge the prefix. */
            float out_num = value[j], out_den = 1.0f, out_max = first[j] + key[j];
            wkv_merge(&out_num, &out_den, &out_max, a[j], bsum[j], p[j]);
            y[t * C + j] = out_num / out_den;
            p[j] -= decay[j];
            wkv_merge(&a[j], &bsum[j], &p[j], value[j], 1.0f, key[j]);
        }
    }
    if (job->state_out != NULL) {
        for (int64_t j = 0; j < width; j++) {
            float *s = job->state_out + b * 3 * C + c0 + j;
            s[0] = a[j];
            s[C] = bsum[j];
            s[2 * C] = p[j];
        }
    }
}

static void *wkv_thread(void *arg)
{
    const wkv_job *job = arg;
    const int64_t blocks = (job->C + WKV_BLOCK - 1) / WKV_BLOCK;
    for (int64_t unit = job->first_unit; unit < job->batch * blocks; unit += job->unit_step) {
        int64_t b = unit / blocks, c0 = (unit % blocks) * WKV_BLOCK;
        int64_t width = job->C - c0 < WKV_BLOCK ? job->C - c0 : WKV_BLOCK;
        wkv_unit(job, b, c0, width);
    }
    return NULL;
}

/* y = WKV(w, u, k, v) over nthreads threads, starting from state_in (NULL: no tokens before) and
 * writing the state after the last token to state_out (NULL: not wanted). */
void wkv_forward(const float *w, const float *u, const float *k, const float *v, const float *state_in,
                 float *y, float *state_out, int64_t batch, int64_t T, int64_t C, int nthreads)
{
    enum { MAX_THREADS = 256 };
    const int64_t units = batch * ((C + WKV_BLOCK - 1) / WKV_BLOCK);
    if (units == 0)
        return;
    int64_t n = nthreads < 1 ? 1 : nthreads;
    if (n > units)
        n = units;
    if (n > MAX_THREADS)
        n = MAX_THREADS;

    wkv_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t i = 0; i < n; i++) {
        jobs[i] = (wkv_job){w, u, k, v, state_in, y, state_out, batch, T, C, i, n};
        /* Share 0 runs on the caller; a thread that cannot be created runs its share inline too. */
        if (i > 0)
            started[i] = pthread_create(&threads[i], NULL, wkv_thread, &jobs[i]) == 0;
    }
    for (int64_t i = 0; i < n; i++) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            wkv_thread(&jobs[i]);
    }
}
