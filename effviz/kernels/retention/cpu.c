// Recurrent retention forward for the `cpu` backend (fp32, inference), from a given state:
//
//   S_t = γ S_{t-1} + k_tᵀ v_t,   o_t = q_t S_t          (S: dk x dv per batch and head)
//
// One (batch, head) pair is a unit of work: its state (dk*dv floats, 16 KB at dk = dv = 64)
// stays in L1 while the unit walks its tokens, and each pass over a state row is a loop over dv
// that gcc vectorises. The units are split over pthreads. The state buffer is read as S_{-1} and
// left holding S_{T-1}, so one call of a stream hands the next its state with no extra copy.
#include <pthread.h>
#include <stdint.h>

typedef struct {
    const float *q, *k, *v, *gamma;
    float *out, *state;
    int64_t heads, units, T, dk, dv, first, step;
} retention_job;

static void retention_unit(const retention_job *job, int64_t unit) {
    const int64_t T = job->T, dk = job->dk, dv = job->dv;
    const float g = job->gamma[unit % job->heads];
    const float *q = job->q + unit * T * dk, *k = job->k + unit * T * dk, *v = job->v + unit * T * dv;
    float *restrict out = job->out + unit * T * dv;
    float *restrict S = job->state + unit * dk * dv;
    for (int64_t t = 0; t < T; t++) {
        const float *qt = q + t * dk, *kt = k + t * dk, *vt = v + t * dv;
        float *restrict ot = out + t * dv;
        for (int64_t j = 0; j < dv; j++) ot[j] = 0.0f;
        for (int64_t i = 0; i < dk; i++) {
            float *restrict Si = S + i * dv;
            const float ki = kt[i], qi = qt[i];
            for (int64_t j = 0; j < dv; j++) {
                Si[j] = g * Si[j] + ki * vt[j];
                ot[j] += qi * Si[j];
            }
        }
    }
}

static void *retention_thread(void *arg) {
    const retention_job *job = arg;
    for (int64_t unit = job->first; unit < job->units; unit += job->step) retention_unit(job, unit);
    return 0;
}

// q, k: (batch, heads, T, dk); v, out: (batch, heads, T, dv); gamma: (heads,); state: (batch,
// heads, dk, dv), S_{-1} on entry and S_{T-1} on return. All contiguous.
void retention_recurrent_fwd(const float *q, const float *k, const float *v, const float *gamma, float *out,
                             float *state, int64_t batch, int64_t heads, int64_t T, int64_t dk, int64_t dv,
                             int nthreads) {
    enum { MAX_THREADS = 64 };
    const int64_t units = batch * heads;
    int64_t n = nthreads < 1 ? 1 : nthreads;
    if (n > units) n = units;
    if (n > MAX_THREADS) n = MAX_THREADS;
    retention_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t i = 0; i < n; i++) {
        jobs[i] = (retention_job){q, k, v, gamma, out, state, heads, units, T, dk, dv, i, n};
        // Share 0 runs on the caller; a thread that cannot be created runs its share inline too.
        if (i > 0) started[i] = pthread_create(&threads[i], 0, retention_thread, &jobs[i]) == 0;
    }
    for (int64_t i = 0; i < n; i++) {
        if (started[i])
            pthread_join(threads[i], 0);
        else
            retention_thread(&jobs[i]);
    }
}
