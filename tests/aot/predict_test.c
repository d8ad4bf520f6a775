/* Calls an exported graphc model (gcmodel.h, libgcmodel.so): predicts for the rows in argv[1] (raw float32,
 * argv[2] rows), writes the outputs to argv[3] (raw float32), and checks the error codes, that 2 threads give
 * bitwise the same outputs, and that concurrent calls from 4 threads (half of them on 2 threads each) do too.
 * Prints "ok" on success. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gcmodel.h"

static const float *X;
static int64_t N;
static const float *REF;
static int failures;

static void *worker(void *arg) {
    (void)arg;
    float *out = malloc((size_t)N * GCMODEL_N_OUTPUTS * sizeof(float));
    for (int rep = 0; rep < 40; rep++) {
        /* every other call on 2 threads: the library's thread team is shared, a call that finds it busy runs
         * on its own thread (bitwise the same) */
        int rc = rep % 2 ? gcmodel_predict_threads(X, N, out, 2) : gcmodel_predict(X, N, out);
        if (rc != GCMODEL_OK || memcmp(out, REF, (size_t)N * GCMODEL_N_OUTPUTS * sizeof(float)) != 0)
            __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
    }
    free(out);
    return NULL;
}

#define EXPECT(cond)                                              \
    do {                                                          \
        if (!(cond)) {                                            \
            fprintf(stderr, "failed: %s (line %d)\n", #cond, __LINE__); \
            return 1;                                             \
        }                                                         \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    N = atoll(argv[2]);
    float *x = malloc((size_t)N * GCMODEL_N_FEATURES * sizeof(float));
    float *out = malloc((size_t)N * GCMODEL_N_OUTPUTS * sizeof(float));
    float *out2 = malloc((size_t)N * GCMODEL_N_OUTPUTS * sizeof(float));
    FILE *f = fopen(argv[1], "rb");
    EXPECT(f && fread(x, sizeof(float), (size_t)N * GCMODEL_N_FEATURES, f) == (size_t)N * GCMODEL_N_FEATURES);
    fclose(f);
    EXPECT(gcmodel_predict(x, N, out) == GCMODEL_OK);
    f = fopen(argv[3], "wb");
    EXPECT(f && fwrite(out, sizeof(float), (size_t)N * GCMODEL_N_OUTPUTS, f) == (size_t)N * GCMODEL_N_OUTPUTS);
    fclose(f);

    EXPECT(gcmodel_predict(NULL, N, out) == GCMODEL_ERR_NULL);
    EXPECT(gcmodel_predict(x, N, NULL) == GCMODEL_ERR_NULL);
    EXPECT(gcmodel_predict(x, 0, out) == GCMODEL_ERR_N);
    EXPECT(gcmodel_predict(x, -5, out) == GCMODEL_ERR_N);
    EXPECT(gcmodel_predict(x, (int64_t)GCMODEL_MAX_BATCH + 1, out) == GCMODEL_ERR_TOO_LARGE);
    EXPECT(gcmodel_predict_threads(x, N, out2, 0) == GCMODEL_ERR_THREADS);
    EXPECT(gcmodel_predict_threads(x, N, out2, GCMODEL_MAX_THREADS + 1) == GCMODEL_ERR_THREADS);

    EXPECT(gcmodel_predict_threads(x, N, out2, 2) == GCMODEL_OK);
    EXPECT(memcmp(out, out2, (size_t)N * GCMODEL_N_OUTPUTS * sizeof(float)) == 0);
    EXPECT(gcmodel_predict(x, 1, out2) == GCMODEL_OK); /* one row: a smaller planned arena */
    EXPECT(memcmp(out, out2, GCMODEL_N_OUTPUTS * sizeof(float)) == 0);

    X = x;
    REF = out;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) EXPECT(pthread_create(&t[i], NULL, worker, NULL) == 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    EXPECT(failures == 0);
    printf("ok\n");
    return 0;
}
