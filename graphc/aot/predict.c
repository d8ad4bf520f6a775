/* graphc's inference library: the model's forward function with its trained weights embedded.
 *
 * Linked by `graphc export` with the LLVM object of the inference program (`lib_graphc_run`) and a generated
 * manifest, graphc_lib.h. Each call allocates its own arena (sized by the memory plan of the smallest planned
 * batch that holds n rows) and workspace, so concurrent calls never share writable memory; the weights and
 * constants are read-only. The public declarations are in the generated NAME.h. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphc_lib.h"

#define API __attribute__((visibility("default")))

enum { OK = 0, ERR_NULL = 1, ERR_N = 2, ERR_TOO_LARGE = 3, ERR_THREADS = 4, ERR_NOMEM = 5, ERR_CPU = 6, ERR_CHECK = 7,
       ERR_INPUT = 8 };

extern int32_t lib_graphc_error __attribute__((weak));
/* The program's run-time checks report into one word per library, not per call: a model that has checks runs its
 * calls one at a time, or a failed check of one thread's call was read (and cleared) by another's, which then
 * returned ERR_CHECK for valid outputs while the failing call returned OK. */
static pthread_mutex_t check_lock = PTHREAD_MUTEX_INITIALIZER;

static int cpu_state; /* 0: not checked yet, 1: fine, -1: a required feature is missing */

static int cpu_ok(void) {
    int s = __atomic_load_n(&cpu_state, __ATOMIC_ACQUIRE);
    if (s == 0) {
        __builtin_cpu_init();
        s = 1;
        for (int i = 0; i < GC_NCPU; i++)
            if (!gc_cpu_has(i)) s = -1;
        __atomic_store_n(&cpu_state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
}

static int predict(const float *x, int64_t n, float *out, int nthreads, int raw) {
    if (!x || !out) return ERR_NULL;
    if (n < GC_FEWEST_ROWS) return ERR_N; /* at least 1; more where the model slices its batch axis */
    if (n > GC_MAX_BATCH) return ERR_TOO_LARGE;
    if (nthreads < 1 || nthreads > GC_MAX_THREADS) return ERR_THREADS;
    if (!cpu_ok()) return ERR_CPU;
    if (GC_LENGTHS > 0) /* padded sequences: each row's length, after its features, an integer in [0, steps] */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i * GC_X_WIDTH + GC_N_FEATURES];
            if (!(v >= 0.0f && v <= (float)GC_LENGTHS && v == (float)(int64_t)v)) return ERR_INPUT;
        }
    else if (GC_VOCAB > 0 && gc_bad_token(x, n * GC_N_FEATURES, GC_VOCAB) >= 0) return ERR_INPUT; /* token ids */
    int b = 0;
    while (gc_buckets[b] < n) b++;
    size_t arena_bytes = ((size_t)gc_arena[b] + 63) / 64 * 64;
    size_t ws_bytes = ((size_t)gc_ws[b][nthreads] + 63) / 64 * 64;
    int standardize = raw && GC_HAS_STD;
    int copy = standardize || GC_LENGTHS > 0; /* padded sequences: a copy whose padding is 0, never read */
    size_t x_bytes = copy ? ((size_t)n * GC_X_WIDTH * sizeof(float) + 63) / 64 * 64 : 0;
    char *mem = NULL;
    if (posix_memalign((void **)&mem, 64, arena_bytes + ws_bytes + x_bytes + 64) != 0) return ERR_NOMEM;
    const float *xin = x;
    if (copy) { /* (x - mean) / std in double, as the trainer standardizes, then float */
        float *xs = (float *)(mem + arena_bytes + ws_bytes);
        for (int64_t i = 0; i < n; i++) {
            /* the values of a padded sequence's real steps: its first len * (features per step) */
            int64_t real = GC_LENGTHS > 0 ? (int64_t)x[i * GC_X_WIDTH + GC_N_FEATURES] * (GC_N_FEATURES / (GC_LENGTHS
                                            ? GC_LENGTHS : 1)) : GC_N_FEATURES;
            for (int j = 0; j < GC_N_FEATURES; j++) {
                int64_t k = i * GC_X_WIDTH + j;
                xs[k] = j >= real ? 0.0f : standardize ? (float)(((double)x[k] - gc_x_mean[j]) / gc_x_std[j]) : x[k];
            }
            if (GC_X_WIDTH > GC_N_FEATURES) xs[i * GC_X_WIDTH + GC_N_FEATURES] = x[i * GC_X_WIDTH + GC_N_FEATURES];
            if (GC_LENGTHS > 0 && GC_VOCAB > 0 && gc_bad_token(xs + i * GC_X_WIDTH, GC_N_FEATURES, GC_VOCAB) >= 0) {
                free(mem);
                return ERR_INPUT; /* token ids of the real steps */
            }
        }
        xin = xs;
    }
    uintptr_t table[GC_NBUF];
    int64_t dims[GC_NSYM];
    memset(table, 0, sizeof table);
    memset(dims, 0, sizeof dims);
    for (int i = 0; i < GC_NTEMPS; i++) table[gc_temp_slots[i]] = (uintptr_t)(mem + gc_temp_offsets[b][i]);
    for (const gc_place_t *p = gc_consts; p->slot >= 0; p++) table[p->slot] = (uintptr_t)(gc_blob + p->offset);
    for (int i = 0; i < GC_NPARAMS; i++) table[gc_params[i].eval_slot] = (uintptr_t)(gc_blob + gc_params[i].blob);
    table[GC_X] = (uintptr_t)xin; /* read only */
    table[GC_OUT] = (uintptr_t)out;
    dims[GC_NDIM] = n;
    /* a run-time check that failed leaves its number in the program's error word (defined when it has checks) */
    int checked = &lib_graphc_error != NULL, failed = 0;
    if (checked) pthread_mutex_lock(&check_lock);
    lib_graphc_run(table, dims, mem + arena_bytes, nthreads);
    if (checked) {
        failed = __atomic_exchange_n(&lib_graphc_error, 0, __ATOMIC_ACQ_REL) != 0;
        pthread_mutex_unlock(&check_lock);
    }
    if (failed) {
        free(mem);
        return ERR_CHECK;
    }
    if (raw && GC_UNSCALE_Y) /* regression targets were standardized: back to the target's units */
        for (int64_t k = 0; k < n * GC_OUT_ROW; k++) out[k] = (float)((double)out[k] * GC_Y_STD + GC_Y_MEAN);
    free(mem);
    return OK;
}

/* raw features in (standardized here when the export knew the training statistics) */
API int GC_PREDICT(const float *x, int64_t n, float *out) { return predict(x, n, out, 1, 1); }

API int GC_PREDICT_THREADS(const float *x, int64_t n, float *out, int nthreads) {
    return predict(x, n, out, nthreads, 1);
}

/* features standardized already, the model's own outputs */
API int GC_PREDICT_STANDARDIZED(const float *x, int64_t n, float *out) { return predict(x, n, out, 1, 0); }
