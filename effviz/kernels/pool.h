// A persistent thread pool shared by the C kernels: the workers start once and then wait, so a
// kernel call costs a wake-up (microseconds) instead of creating and joining threads.
#ifndef EFFVIZ_POOL_H
#define EFFVIZ_POOL_H

// The most tasks one call may ask for; more are capped to this.
#define EFFVIZ_POOL_MAX_TASKS 64

typedef void (*effviz_task_fn)(void *ctx, int task, int ntasks);

// Runs fn(ctx, i, ntasks) once for every i in [0, ntasks) and returns when all have finished. The
// calling thread runs tasks too; the pool adds up to ntasks - 1 workers. A task's work must
// depend only on its index, never on which thread runs it, so results do not depend on how
// many workers exist. If another call is using the pool, this one runs its tasks inline on the
// calling thread rather than wait. Returns the number of tasks actually used (after capping).
int effviz_parallel(effviz_task_fn fn, void *ctx, int ntasks);

#endif
