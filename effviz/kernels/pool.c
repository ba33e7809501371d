// The persistent thread pool of pool.h.
//
// One job at a time: the caller publishes (fn, ctx, ntasks), bumps the generation and wakes the
// workers; everyone, caller included, claims task indices from an atomic counter until none are
// left. A worker joins a job only while it is open and counts itself in `active` while it runs
// tasks; the caller closes the job once it finds no unclaimed task and waits for `active` to
// reach zero, so no worker can still be looking at this job (its ctx lives on the caller's stack)
// when the next one is published.
#include "pool.h"

#include <pthread.h>
#include <stdint.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, finished = PTHREAD_COND_INITIALIZER;
// Held for the whole of a call: concurrent callers (ctypes releases the GIL) do not share a job.
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static int workers, atfork_registered;
static effviz_task_fn job_fn;
static void *job_ctx;
static int job_tasks, job_open, active, next_task;
static uint64_t generation;

// Claims and runs tasks of the current job until none is left.
static void run_tasks(effviz_task_fn fn, void *ctx, int ntasks) {
    for (;;) {
        const int i = __atomic_fetch_add(&next_task, 1, __ATOMIC_RELAXED);
        if (i >= ntasks) return;
        fn(ctx, i, ntasks);
    }
}

static void *worker_main(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!(job_open && generation != seen)) pthread_cond_wait(&wake, &lock);
        seen = generation;
        active++;
        const effviz_task_fn fn = job_fn;
        void *ctx = job_ctx;
        const int ntasks = job_tasks;
        pthread_mutex_unlock(&lock);
        run_tasks(fn, ctx, ntasks);
        pthread_mutex_lock(&lock);
        if (--active == 0) pthread_cond_signal(&finished);
    }
    return 0;
}

// A forked child has none of the parent's workers (fork copies only the calling thread): start
// from an empty pool, with fresh locks in case a thread held one at the fork.
static void reset_in_child(void) {
    pthread_mutex_init(&lock, 0);
    pthread_mutex_init(&busy, 0);
    pthread_cond_init(&wake, 0);
    pthread_cond_init(&finished, 0);
    workers = active = job_open = 0;
}

// Starts workers until there are `want` (fewer if the system refuses threads). Called with lock held.
static void grow(int want) {
    if (!atfork_registered) atfork_registered = pthread_atfork(0, 0, reset_in_child) == 0;
    while (workers < want) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attr, worker_main, 0);
        pthread_attr_destroy(&attr);
        if (failed) return;
        workers++;
    }
}

int effviz_parallel(effviz_task_fn fn, void *ctx, int ntasks) {
    if (ntasks > EFFVIZ_POOL_MAX_TASKS) ntasks = EFFVIZ_POOL_MAX_TASKS;
    if (ntasks < 1) ntasks = 1;
    if (ntasks == 1 || pthread_mutex_trylock(&busy) != 0) {
        for (int i = 0; i < ntasks; i++) fn(ctx, i, ntasks);
        return ntasks;
    }
    pthread_mutex_lock(&lock);
    grow(ntasks - 1);
    job_fn = fn, job_ctx = ctx, job_tasks = ntasks, next_task = 0, job_open = 1;
    generation++;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    run_tasks(fn, ctx, ntasks);  // with no worker at all, the caller runs every task here
    pthread_mutex_lock(&lock);
    job_open = 0;
    while (active > 0) pthread_cond_wait(&finished, &lock);
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&busy);
    return ntasks;
}
