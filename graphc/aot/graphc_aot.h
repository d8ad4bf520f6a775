/* graphc ahead-of-time code: what the generated manifests (graphc_model.h, graphc_lib.h) and the C drivers
 * (driver.c: the training binary, predict.c: the inference library) share.
 *
 * A compiled graphc program is called as `int32_t run(uintptr_t *table, int64_t *dims, void *ws, int32_t
 * nthreads)`: `table` holds one pointer per buffer of the program (inputs, parameters, outputs, the
 * temporaries inside one arena at offsets fixed by graphc's memory plan, constants), `dims` the run-time sizes
 * (the batch dim N), `ws` the matrix products' packing workspace. The manifest says which table slot is what. */
#ifndef GRAPHC_AOT_H
#define GRAPHC_AOT_H

#include <stdint.h>

/* A named array the caller owns: a parameter or an optimizer-state buffer (float32). */
typedef struct {
    const char *name;
    int32_t slot;       /* table slot in the training program (-1: not used there) */
    int32_t eval_slot;  /* table slot in the evaluation / inference program (-1: not used there) */
    int32_t ndim;
    int64_t shape[8];
    int64_t size;       /* elements */
    int64_t blob;       /* byte offset in the blob of embedded values (an inference library's weights, a training
                         * binary's initial values of a layer's state), -1 if none */
} gc_tensor_t;

/* A float32 scalar input of the training step fed once per epoch. */
enum { GC_SCALAR_LR = 0, GC_SCALAR_MOMENTUM = 1, GC_SCALAR_L2 = 2, GC_SCALAR_L1 = 3, GC_SCALAR_KEEP = 4,
       GC_SCALAR_WEIGHT_DECAY = 5, GC_SCALAR_CLIP = 6 };
typedef struct {
    const char *name;
    int32_t slot;
    int32_t kind;   /* GC_SCALAR_* */
    int32_t index;  /* for GC_SCALAR_KEEP: the layer (keep.<index>) */
} gc_scalar_t;

/* (table slot, byte offset): a temporary in the arena, or a constant in the blob. */
typedef struct {
    int32_t slot;
    int64_t offset;
} gc_place_t;

/* The CPU check. GC_CPU_SUPPORTS may be predefined (tests pretend a feature is missing). */
#ifndef GC_CPU_SUPPORTS
#define GC_CPU_SUPPORTS(feature) __builtin_cpu_supports(feature)
#endif

/* The first of n token ids (passed as floats) that is not an integer in [0, vocab), or -1 (NaN fails the test). */
static inline int64_t gc_bad_token(const float *v, int64_t n, int32_t vocab) {
    for (int64_t i = 0; i < n; i++)
        if (!(v[i] >= 0.0f && v[i] < (float)vocab && v[i] == (float)(int64_t)v[i])) return i;
    return -1;
}

#endif
