/* graphc's standalone training driver.
 *
 * Linked by `graphc build` with LLVM objects made from the same modules graphc trains with in process (one or two
 * step programs, each with its native epoch driver `<prefix>graphc_epoch` and initializer `<prefix>graphc_init`:
 * the full step with every run-time feature and the plain one graphc train builds without them; and the
 * evaluation program `eval_graphc_run`) and a generated manifest, graphc_model.h, that says which table slot is
 * what. This file does what graphc's Python trainer does between native calls, and nothing else: it reads and
 * checks the data (.npy), initializes the parameters natively from the seed, fills the epoch context exactly
 * as graphc.runtime.epoch.EpochFunction.run_epoch does, evaluates on the validation split, stops early as
 * graphc.nn.train.Trainer.run does, and writes the parameters as .npy files. The state the model's layers keep
 * (batch norm's running statistics: gc_bufs) starts from the values graphc.nn.init_state gives, is updated in
 * place by the training step, read by the evaluation program and written beside the parameters, as gc.fit keeps
 * it; a model that draws gc.random numbers gets its key per step from the epoch driver, as dropout does, and
 * is evaluated with the seed as its key, as Trainer.evaluate does.
 *
 * Built with `graphc build --mpi` (GC_MPI defined, linked by the MPI extra's mpicc), `mpirun -n P BINARY ...` trains
 * data-parallel as graphc.distributed does in process: the same two programs per step (the gradients of a rank's
 * share of the global batch into its slot; the update of a share of the parameters from the gradient summed over
 * the slots in rank order), the same MPI-3 shared-memory exchange (or MPI_Allreduce across machines), so the same
 * weights, bit for bit, as `mpirun -n P graphc train`.
 *
 * Exit status: 0 trained; 2 bad usage or bad data (nothing written); 3 this CPU lacks a feature the code needs;
 * 4 an output file could not be written; 5 training diverged (a non-finite loss, or a parameter or optimizer state
 * that an epoch's last update made non-finite); 6 (--mpi) a rank was lost or
 * stopped answering. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "graphc_model.h"

#ifdef GC_MPI
#include <mpi.h>
#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <stdatomic.h>
static int g_rank = 0, g_size = 1;
static int g_pre = 0; /* before training: a failure on one rank is agreed on by every rank (all exit 2) */
static void mpi_failed_before_training(int code) __attribute__((noreturn));
#endif

#define EXIT_BAD 2
#define EXIT_CPU 3
#define EXIT_IO 4
#define EXIT_DIVERGED 5
#define MAX_HEADER (1 << 16)

static const char *prog = "graphc-model";
static char g_created_out[4096]; /* --out when this run created it: removed again if the run fails (when empty) */
/* The results written so far, each still under its temporary name (DIR/.NAME.tmp): they are renamed into place only
 * when every one is written (commit_outputs), and fail() removes them, so a write that fails (a full disk: exit 4)
 * leaves DIR as it was -- never one run's weights beside another's data.json, nor stray temporaries. */
enum { GC_NOUT = GC_NPARAMS + GC_NBUFS + 3 }; /* the <param>.npy files, history.csv, data.json, metrics.json */
static char g_out_tmp[GC_NOUT][4096], g_out_final[GC_NOUT][4096];
static volatile sig_atomic_t g_nout;
#ifdef GC_MPI
#define RANK0 (g_rank == 0)
#else
#define RANK0 1
#endif

static void fail(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void fail(int code, const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: error: ", prog);
#ifdef GC_MPI
    if (g_size > 1) fprintf(stderr, "rank %d: ", g_rank);
#endif
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    for (int i = 0; i < g_nout; i++) unlink(g_out_tmp[i]); /* a failed run's results, written or half written */
    if (g_created_out[0]) rmdir(g_created_out); /* nothing of a failed run is kept: no empty --out behind */
#ifdef GC_MPI
    if (g_pre) mpi_failed_before_training(code);
#endif
    exit(code);
}

/* Ctrl-C (or a kill) ends the run as the signal always did, but, like a failure, leaves no --out it created (empty
 * then) and no temporaries of results being written: unlink and rmdir are async-signal-safe. */
static void on_signal(int sig) {
    for (int i = 0; i < g_nout; i++) unlink(g_out_tmp[i]);
    if (g_created_out[0]) rmdir(g_created_out);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void catch_signals(void) {
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        struct sigaction old, sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        /* a signal the caller ignores (a background job's SIGINT, nohup's SIGHUP) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(sigs[i], &sa, NULL);
    }
}

/* a clean exit (MPI finalized under --mpi) */
static void finish(int code) __attribute__((noreturn));
static void finish(int code) {
    fflush(stdout);
#ifdef GC_MPI
    MPI_Finalize();
#endif
    exit(code);
}

static void *xalloc(size_t n) {
    void *p = NULL;
    if (n == 0) n = 64;
    n = (n + 63) / 64 * 64;
    if (posix_memalign(&p, 64, n) != 0) fail(EXIT_IO, "out of memory (%zu bytes)", n);
    memset(p, 0, n);
    return p;
}

/* like xalloc, without zeroing: for buffers filled right away (file data) */
static void *xalloc_raw(size_t n) {
    void *p = NULL;
    if (n == 0) n = 64;
    n = (n + 63) / 64 * 64;
    if (posix_memalign(&p, 64, n) != 0) fail(EXIT_IO, "out of memory (%zu bytes)", n);
    return p;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ------------------------------------------------------------------------------------------------ options */

typedef struct {
    const char *x_train, *y_train, *x_val, *y_val, *x_test, *y_test, *out;
    const char *len_train, *len_val, *len_test; /* a model that takes lengths: each split's (rows,) lengths */
    int64_t epochs, batch, patience, threads, seed;
    double lr, momentum, weight_decay, clip_grad_norm, l2, l1, min_delta;
    int schedule; /* 0 constant, 1 step (x step_gamma every step_every epochs), 2 cosine (to 0 over the epochs) */
    int64_t step_every;
    double step_gamma;
    double lr_now; /* this epoch's learning rate: the schedule's */
    const char *step_given; /* --step-every or --step-gamma, where one was given */
    double keep[GC_NKEEP + 1];
    int quiet, momentum_set, l2_set, l1_set, dropout_set, standardize, overwrite;
} opts_t;

static const char *const VALUED[] = {"--x-train", "--y-train", "--x-val", "--y-val", "--x-test", "--y-test",
                                     "--lengths-train", "--lengths-val", "--lengths-test",
                                     "--out", "--epochs", "--batch-size", "--early-stopping", "--threads", "--seed",
                                     "--lr", "--momentum", "--weight-decay", "--clip-grad-norm", "--l2", "--l1",
                                     "--min-delta", "--dropout", "--schedule", "--step-every", "--step-gamma",
                                     NULL};

static const char *const SCHEDULES[] = {"constant", "step", "cosine"};

/* The learning rate of epoch `epoch` (from 0), as graphc.nn.optim.Schedule.lr computes it (the same operations in
 * double precision, so the same value) */
static double epoch_lr(const opts_t *o, int64_t epoch) {
    if (o->schedule == 1) return o->lr * pow(o->step_gamma, (double)(epoch / o->step_every));
    if (o->schedule == 2) {
        double frac = (double)(epoch < o->epochs ? epoch : o->epochs) / (double)o->epochs;
        return 0.0 + 0.5 * (o->lr - 0.0) * (1.0 + cos(M_PI * frac));
    }
    return o->lr;
}

static int valued_option(const char *name) {
    for (int i = 0; VALUED[i]; i++)
        if (!strcmp(name, VALUED[i])) return 1;
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: %s --x-train F.npy --y-train F.npy [--x-val F.npy --y-val F.npy] [--x-test F.npy --y-test F.npy]\n"
            "       [--epochs N] [--batch-size B] [--lr LR] [--momentum M] [--weight-decay WD] [--clip-grad-norm MAX]\n"
            "       [--schedule constant|step|cosine] [--step-every E] [--step-gamma G] [--l2 NU] [--l1 NU]\n"
            "       [--dropout KEEP[,KEEP...]]\n"
            "       [--early-stopping PATIENCE] [--min-delta D] [--seed S] [--threads T] [--standardize] [--quiet]\n       --out DIR\n"
            "       %s --info | --help\n\n",
            prog, prog);
    fprintf(f,
            "Trains %s (task %s: %d features -> %d outputs) natively, as graphc trains it in process;\n"
            "built by graphc build for target %s (optimizer %s). No Python is needed.\n\n",
            GC_MODEL_DESC, GC_TASK_NAME, GC_N_FEATURES, GC_N_OUTPUTS, GC_TARGET, GC_OPTIMIZER);
    fprintf(f,
            "data (.npy, little-endian, C order):\n"
            "  --x-train F     %s (rows, %d)\n", GC_VOCAB > 0 ? "token ids: int32, int64 or float32" :
            "features: float32", GC_N_FEATURES);
    if (GC_TASK == 0)
        fprintf(f, "  --y-train F     labels: int32 or int64 (rows,), class indices 0..%d\n", GC_N_CLASSES - 1);
    else
        fprintf(f, "  --y-train F     targets: float32 (rows%s)%s\n", GC_Y_NDIM ? ", ..." : "",
                GC_TASK == 1 ? ", each 0 or 1" : "");
    fprintf(f,
            "  --x-val F --y-val F    validation split: val loss each epoch, early stopping\n"
            "  --x-test F --y-test F  test split: the final metrics\n\n"
            "training (defaults in brackets):\n"
            "  --epochs N             [%d]\n"
            "  --batch-size B         mini-batch size, at most %d (the build's --max-batch) [%d]\n"
            "  --lr LR                learning rate [%g]\n",
            GC_DEF_EPOCHS, GC_MAX_BATCH, GC_DEF_BATCH, GC_DEF_LR);
    if (GC_HAS_MOMENTUM) fprintf(f, "  --momentum M           momentum in [0, 1) [%g]\n", GC_DEF_MOMENTUM);
    if (GC_HAS_WEIGHT_DECAY)
        fprintf(f, "  --weight-decay WD      AdamW's decoupled decay w <- w(1 - lr*WD) of every parameter [%g]\n",
                GC_DEF_WEIGHT_DECAY);
    if (GC_HAS_CLIP)
        fprintf(f, "  --clip-grad-norm MAX   scale each step's gradients together to a 2-norm of at most MAX; inf: no\n"
                   "                         clipping (the same steps as a binary built without it) [%g]\n",
                GC_DEF_CLIP);
    fprintf(f,
            "  --schedule S           the learning rate per epoch: constant; step, x G every E epochs (torch's\n"
            "                         StepLR); cosine, from LR to 0 over the epochs (CosineAnnealingLR) [%s]\n"
            "  --step-every E         --schedule step: epochs between steps [%d]\n"
            "  --step-gamma G         --schedule step: the rate's factor at each step [%g]\n",
            SCHEDULES[GC_DEF_SCHEDULE], GC_DEF_STEP_EVERY, GC_DEF_STEP_GAMMA);
    if (GC_HAS_L2) fprintf(f, "  --l2 NU                L2 penalty nu/2 ||w||^2 [%g]\n", GC_DEF_L2);
    if (GC_HAS_L1) fprintf(f, "  --l1 NU                L1 penalty nu ||w||_1 [%g]\n", GC_DEF_L1);
    if (GC_NKEEP)
        fprintf(f,
                "  --dropout KEEP[,...]   keep probabilities, input first, then each of the %d hidden layers; one\n"
                "                         number: 0.8 on the inputs and KEEP on hidden units [1.0: no dropout]\n",
                GC_NKEEP - 1);
    fprintf(f,
            "  --early-stopping P     stop after P epochs without validation improvement; restore the best\n"
            "  --min-delta D          the smallest validation improvement that counts [%g]\n"
            "  --seed S               initialization, shuffling and dropout masks [%lld]\n"
            "  --threads T            1..%d [1 for small steps, else the CPUs this process may use]\n"
            "  --standardize          standardize features with the training rows' mean and standard deviation\n"
            "                         (as graphc train does; data.json records them for graphc export)\n"
            "  --quiet                no per-epoch progress lines\n"
            "  --out DIR              writes <param>.npy for each parameter%s, history.csv, metrics.json, data.json\n"
            "  --overwrite            replace the run an existing --out holds (refused without it)\n\n"
            "exit status: 0 trained; 2 bad usage or data (nothing written); 3 CPU lacks a required feature;\n"
            "4 cannot write output; 5 training diverged%s\n",
            GC_DEF_MIN_DELTA, (long long)GC_DEF_SEED, GC_MAX_THREADS,
            GC_NBUFS ? " and running statistic" : "",
#ifdef GC_MPI
            "; 6 a rank was lost or stopped answering"
#else
            ""
#endif
    );
#ifdef GC_MPI
    fprintf(f,
            "\ndata-parallel (built with --mpi): mpirun -n P %s ... trains on P ranks, as mpirun -n P graphc train\n"
            "does: --batch-size is the global batch, each rank takes a contiguous share of it; --threads is threads\n"
            "per rank [this machine's CPUs over its ranks]; rank 0 alone prints and writes --out. Environment:\n"
            "GRAPHC_MPI_SHARED=0 sums gradients with MPI_Allreduce even when every rank is on one machine;\n"
            "GRAPHC_MPI_TIMEOUT=S seconds a rank waits in one exchange before it gives up [120].\n", prog);
#endif
    if (GC_LENGTHS > 0)
        fprintf(f, "  --lengths-train F  --lengths-val F  --lengths-test F\n"
                   "                  each split's padded sequences' lengths: int32 or int64 (rows,), each in [0, %d];\n"
                   "                  the steps past a row's length are never read\n", GC_LENGTHS);
    if (GC_VOCAB > 0)
        fprintf(f, "\nthis model reads token ids: each row of --x-* is %d ids in [0, %d), saved as int32 or int64\n"
                   "(as graphc train reads them) or as float32 integers\n",
                GC_N_FEATURES, GC_VOCAB);
}

static void info(void) {
    printf("model: %s\ntask: %s\nfeatures: %d\noutputs: %d\n", GC_MODEL_DESC, GC_TASK_NAME, GC_N_FEATURES,
           GC_N_OUTPUTS);
    if (GC_NCLASSNAMES) {
        printf("classes:");
        for (int i = 0; i < GC_NCLASSNAMES; i++) printf(" %s", gc_class_names[i]);
        printf("\n");
    }
    printf("built from: %s\ntarget: %s (cpu %s)\ncpu features:", GC_DATASET, GC_TARGET, GC_TARGET_CPU);
    for (int i = 0; i < GC_NCPU; i++) printf(" %s", gc_cpu_features[i]);
    printf("\noptimizer: %s\nmax batch: %d\nmax threads: %d\n", GC_OPTIMIZER, GC_MAX_BATCH, GC_MAX_THREADS);
    for (int k = 0; k < GC_NSTEPS; k++) {
        const gc_step_t *s = &gc_steps[k];
        printf("step %s: digest %s, arena %lld bytes (batch %d), scalar inputs:", s->label, s->digest,
               (long long)s->arena, GC_MAX_BATCH);
        for (int i = 0; i < s->nscalars; i++) printf(" %s", s->scalars[i].name);
        printf("\n");
    }
    printf("parameters:\n");
    for (int i = 0; i < GC_NPARAMS; i++) {
        printf("  %s (", gc_params[i].name);
        for (int d = 0; d < gc_params[i].ndim; d++) printf(d ? ", %lld" : "%lld", (long long)gc_params[i].shape[d]);
        printf(gc_params[i].ndim == 1 ? ",)\n" : ")\n");
    }
    if (GC_NBUFS) printf("running statistics (updated in training, used in evaluation):\n");
    for (int i = 0; i < GC_NBUFS; i++) {
        printf("  %s (", gc_bufs[i].name);
        for (int d = 0; d < gc_bufs[i].ndim; d++) printf(d ? ", %lld" : "%lld", (long long)gc_bufs[i].shape[d]);
        printf(gc_bufs[i].ndim == 1 ? ",)\n" : ")\n");
    }
    printf("evaluation arena: %lld bytes (batch %d)\n", (long long)GC_E_ARENA, GC_EVAL_BATCH);
}

static int64_t parse_int(const char *opt, const char *s, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) fail(EXIT_BAD, "%s: expected an integer, got '%s'", opt, s);
    if (v < lo || v > hi) fail(EXIT_BAD, "%s: %lld is out of range [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
    return v;
}

static double parse_float(const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) fail(EXIT_BAD, "%s: expected a finite number, got '%s'", opt, s);
    return v;
}

static void parse_dropout(opts_t *o, const char *s) {
    double vals[64];
    int n = 0;
    const char *p = s;
    char buf[64];
    if (GC_NKEEP == 0)
        fail(EXIT_BAD, "--dropout: this model has no run-time dropout (keep.<i> inputs); --dropout applies to the "
                       "default MLP");
    while (*p) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == 0 || len >= sizeof buf || n >= 64) fail(EXIT_BAD, "--dropout: expected comma-separated numbers, got '%s'", s);
        memcpy(buf, p, len);
        buf[len] = 0;
        vals[n] = parse_float("--dropout", buf);
        if (!(vals[n] > 0.0 && vals[n] <= 1.0))
            fail(EXIT_BAD, "--dropout: keep probabilities must be in (0, 1], got %s", buf);
        n++;
        p += len;
        if (*p == ',') p++;
    }
    if (n == 0) fail(EXIT_BAD, "--dropout: expected comma-separated numbers, got '%s'", s);
    for (int i = 0; i < GC_NKEEP; i++) o->keep[i] = 1.0;
    if (n == 1) { /* the lecture's convention: 0.8 on the inputs, this number on hidden units */
        o->keep[0] = 0.8;
        for (int i = 1; i < GC_NKEEP; i++) o->keep[i] = vals[0];
    } else {
        if (n > GC_NKEEP)
            fail(EXIT_BAD, "--dropout: %d keep probabilities given, but the model has %d dropout layers (input first, "
                           "then each hidden layer)", n, GC_NKEEP);
        for (int i = 0; i < n; i++) o->keep[i] = vals[i];
    }
    o->dropout_set = 1;
}

static void parse_args(opts_t *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->epochs = GC_DEF_EPOCHS;
    o->batch = GC_DEF_BATCH;
    o->lr = GC_DEF_LR;
    o->momentum = GC_DEF_MOMENTUM;
    o->weight_decay = GC_DEF_WEIGHT_DECAY;
    o->clip_grad_norm = GC_DEF_CLIP;
    o->l2 = GC_DEF_L2;
    o->l1 = GC_DEF_L1;
    o->patience = GC_DEF_PATIENCE;
    o->min_delta = GC_DEF_MIN_DELTA;
    o->seed = GC_DEF_SEED;
    o->schedule = GC_DEF_SCHEDULE;
    o->step_every = GC_DEF_STEP_EVERY;
    o->step_gamma = GC_DEF_STEP_GAMMA;
    for (int i = 0; i < GC_NKEEP; i++) o->keep[i] = i < GC_DEF_NKEEP ? gc_def_keep[i] : 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (RANK0) usage(stdout);
            finish(0);
        }
        if (!strcmp(a, "--info")) {
            if (RANK0) info();
            finish(0);
        }
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--standardize")) {
            o->standardize = 1;
            continue;
        }
        if (!strcmp(a, "--overwrite")) {
            o->overwrite = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) fail(EXIT_BAD, "unexpected argument '%s' (see --help)", a);
        char name[64];
        const char *val;
        const char *eq = strchr(a, '=');
        if (eq) {
            size_t len = (size_t)(eq - a);
            if (len >= sizeof name) fail(EXIT_BAD, "unknown option '%s' (see --help)", a);
            memcpy(name, a, len);
            name[len] = 0;
            val = eq + 1;
        } else {
            if (strlen(a) >= sizeof name) fail(EXIT_BAD, "unknown option '%s' (see --help)", a);
            strcpy(name, a);
            if (!valued_option(name)) fail(EXIT_BAD, "unknown option '%s' (see --help)", name);
            if (i + 1 >= argc) fail(EXIT_BAD, "%s needs a value (see --help)", a);
            val = argv[++i];
        }
        if (!strcmp(name, "--x-train")) o->x_train = val;
        else if (!strcmp(name, "--y-train")) o->y_train = val;
        else if (!strcmp(name, "--x-val")) o->x_val = val;
        else if (!strcmp(name, "--y-val")) o->y_val = val;
        else if (!strcmp(name, "--x-test")) o->x_test = val;
        else if (!strcmp(name, "--y-test")) o->y_test = val;
        else if (!strcmp(name, "--lengths-train")) o->len_train = val;
        else if (!strcmp(name, "--lengths-val")) o->len_val = val;
        else if (!strcmp(name, "--lengths-test")) o->len_test = val;
        else if (!strcmp(name, "--out")) o->out = val;
        else if (!strcmp(name, "--epochs")) o->epochs = parse_int(name, val, 1, 100000000);
        else if (!strcmp(name, "--batch-size")) o->batch = parse_int(name, val, 1, INT64_MAX / 2);
        else if (!strcmp(name, "--early-stopping")) o->patience = parse_int(name, val, 1, 100000000);
        else if (!strcmp(name, "--threads")) o->threads = parse_int(name, val, 1, GC_MAX_THREADS);
        else if (!strcmp(name, "--seed")) o->seed = parse_int(name, val, 0, INT64_MAX);  /* as graphc train */
        else if (!strcmp(name, "--lr")) {
            o->lr = parse_float(name, val);
            if (!(o->lr > 0)) fail(EXIT_BAD, "--lr: the learning rate must be positive, got %s", val);
        } else if (!strcmp(name, "--momentum")) {
            o->momentum = parse_float(name, val);
            if (!(o->momentum >= 0 && o->momentum < 1)) fail(EXIT_BAD, "--momentum: must be in [0, 1), got %s", val);
            if (!GC_HAS_MOMENTUM && o->momentum != 0)
                fail(EXIT_BAD, "--momentum: this binary's optimizer (%s) has no momentum", GC_OPTIMIZER);
            o->momentum_set = 1;
        } else if (!strcmp(name, "--weight-decay")) {
            o->weight_decay = parse_float(name, val);
            if (!(o->weight_decay >= 0)) fail(EXIT_BAD, "--weight-decay: must be >= 0, got %s", val);
            if (!GC_HAS_WEIGHT_DECAY && o->weight_decay != 0)
                fail(EXIT_BAD, "--weight-decay: this binary's optimizer (%s) has no decoupled weight decay (build with "
                     "graphc build --optimizer adamw); for a coupled L2 penalty use --l2", GC_OPTIMIZER);
        } else if (!strcmp(name, "--clip-grad-norm")) {
            /* inf: no clipping (torch's clip_grad_norm_(max_norm=inf)): the factor min(1, inf / (norm + eps)) is
             * exactly 1, so the step is the unclipped one's, bit for bit */
            char *end;
            errno = 0;
            o->clip_grad_norm = strtod(val, &end);
            if (!*val || *end || errno || !(o->clip_grad_norm > 0))
                fail(EXIT_BAD, "--clip-grad-norm: the largest gradient norm must be a number > 0, or inf for no "
                     "clipping, got '%s'", val);
            if (!GC_HAS_CLIP)
                fail(EXIT_BAD, "--clip-grad-norm: this binary was built without gradient clipping (build it with "
                     "graphc build --clip-grad-norm MAX; MAX becomes its default)");
        } else if (!strcmp(name, "--l2") || !strcmp(name, "--l1")) {
            double v = parse_float(name, val);
            if (!(v >= 0)) fail(EXIT_BAD, "%s: the penalty must be >= 0, got %s", name, val);
            if (name[3] == '2') {
                if (!GC_HAS_L2 && v != 0) fail(EXIT_BAD, "--l2: this model has no penalized parameters");
                o->l2 = v;
            } else {
                if (!GC_HAS_L1 && v != 0) fail(EXIT_BAD, "--l1: this model has no penalized parameters");
                o->l1 = v;
            }
        } else if (!strcmp(name, "--min-delta")) {
            o->min_delta = parse_float(name, val);
            if (o->min_delta < 0) fail(EXIT_BAD, "--min-delta: must be >= 0, got %s", val);
        } else if (!strcmp(name, "--dropout")) parse_dropout(o, val);
        else if (!strcmp(name, "--schedule")) {
            o->schedule = -1;
            for (int k = 0; k < 3; k++)
                if (!strcmp(val, SCHEDULES[k])) o->schedule = k;
            if (o->schedule < 0) fail(EXIT_BAD, "--schedule: constant, step or cosine, got '%s'", val);
        } else if (!strcmp(name, "--step-every")) {
            o->step_every = parse_int(name, val, 1, 100000000);
            o->step_given = "--step-every";
        } else if (!strcmp(name, "--step-gamma")) {
            o->step_gamma = parse_float(name, val);
            if (!(o->step_gamma > 0) || isinf(o->step_gamma))
                fail(EXIT_BAD, "--step-gamma: the rate's factor at each step must be a number > 0, got %s", val);
            o->step_given = "--step-gamma";
        }
        else fail(EXIT_BAD, "unknown option '%s' (see --help)", name);
    }
    if (o->step_given && o->schedule != 1)
        fail(EXIT_BAD, "%s sets the step schedule's decay, but the schedule is %s: add --schedule step, or leave %s "
             "out", o->step_given, SCHEDULES[o->schedule], o->step_given);
    if (!o->x_train || !o->y_train) fail(EXIT_BAD, "--x-train and --y-train are required (see --help)");
    if (!o->out) fail(EXIT_BAD, "--out DIR is required (see --help)");
    if (!*o->out) fail(EXIT_BAD, "--out: an empty directory name");
    if (GC_VOCAB > 0 && o->standardize)
        fail(EXIT_BAD, "--standardize: this model reads token ids, which standardizing would make non-integers");
    if (!o->x_val != !o->y_val) fail(EXIT_BAD, "--x-val and --y-val go together");
    if (!o->x_test != !o->y_test) fail(EXIT_BAD, "--x-test and --y-test go together");
    if (GC_LENGTHS > 0) {
        const char *xs[3] = {o->x_train, o->x_val, o->x_test}, *ls[3] = {o->len_train, o->len_val, o->len_test};
        const char *split[3] = {"train", "val", "test"};
        for (int k = 0; k < 3; k++)
            if (!xs[k] != !ls[k])
                fail(EXIT_BAD, "--x-%s and --lengths-%s go together: this model takes each padded sequence's length "
                               "(an int32 or int64 .npy of one length per row)", split[k], split[k]);
    } else if (o->len_train || o->len_val || o->len_test)
        fail(EXIT_BAD, "--lengths-*: this model takes no lengths (its first parameter reads every step of every row)");
    if (o->patience && !o->x_val) fail(EXIT_BAD, "--early-stopping needs a validation split (--x-val, --y-val)");
}

/* ------------------------------------------------------------------------------------------------ .npy */

typedef struct {
    const char *opt, *path;
    char descr[32];
    char kind; /* f, i, u, b, c, or ? */
    int itemsize, ndim, fortran;
    int64_t shape[8], count;
    void *data;
} npy_t;

static void bad_file(const npy_t *a, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void bad_file(const npy_t *a, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail(EXIT_BAD, "%s %s: %s", a->opt, a->path, msg);
}

typedef struct {
    const char *p, *end;
} cur_t;

static void skip_ws(cur_t *c) {
    while (c->p < c->end && *c->p == ' ') c->p++;
}

static int take(cur_t *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int take_word(cur_t *c, const char *w) {
    size_t n = strlen(w);
    skip_ws(c);
    if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, w, n)) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int take_string(cur_t *c, char *out, size_t cap) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || n + 1 >= cap) return 0;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return 0;
    c->p++;
    out[n] = 0;
    return 1;
}

static int take_int(cur_t *c, int64_t *v) {
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
    int64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        int d = *c->p++ - '0';
        if (x > (INT64_MAX - d) / 10) return 0;
        x = x * 10 + d;
    }
    *v = x;
    return 1;
}

static const char *dtype_name(const npy_t *a) {
    static char buf[48];
    const char *k = a->kind == 'f' ? "float" : a->kind == 'i' ? "int" : a->kind == 'u' ? "uint"
                  : a->kind == 'c' ? "complex" : NULL;
    if (a->kind == 'b' && a->itemsize == 1) return "bool";
    if (!k) {
        snprintf(buf, sizeof buf, "'%s'", a->descr);
        return buf;
    }
    snprintf(buf, sizeof buf, "%s%d", k, a->itemsize * 8);
    return buf;
}

static void shape_str(const npy_t *a, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < a->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)a->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, a->ndim == 1 ? ",)" : ")");
}

/* The dtype as numpy reads a descr (np.dtype(descr)): a one-letter code ('f', 'd', 'l') or a kind with a size
 * ('f4', 'b1'), either after an optional byte order ('<' little, '>' big, '=' or '|' or none native), or a bare
 * name ('float32', 'double', 'int'). Every spelling of the same bytes is accepted: np.save writes '<f4', but a
 * header written by another tool may say 'f4', '|f4' or 'float32'. Sizes of the C types ('i', 'l', 'p') are this
 * machine's, as for the numpy that runs here. Big-endian is refused unless the items are single bytes. */
static void parse_descr(npy_t *a) {
    static const struct {
        const char *s;
        char kind, is_code;
        int size;
    } types[] = {
        {"?", 'b', 1, 1}, {"b", 'i', 1, 1}, {"B", 'u', 1, 1}, {"h", 'i', 1, sizeof(short)},
        {"H", 'u', 1, sizeof(short)}, {"i", 'i', 1, sizeof(int)}, {"I", 'u', 1, sizeof(int)},
        {"l", 'i', 1, sizeof(long)}, {"L", 'u', 1, sizeof(long)}, {"q", 'i', 1, sizeof(long long)},
        {"Q", 'u', 1, sizeof(long long)}, {"n", 'i', 1, sizeof(intptr_t)}, {"p", 'i', 1, sizeof(intptr_t)},
        {"N", 'u', 1, sizeof(intptr_t)}, {"P", 'u', 1, sizeof(intptr_t)}, {"e", 'f', 1, 2}, {"f", 'f', 1, 4},
        {"d", 'f', 1, 8}, {"g", 'f', 1, sizeof(long double)}, {"F", 'c', 1, 8}, {"D", 'c', 1, 16},
        {"bool", 'b', 0, 1}, {"bool_", 'b', 0, 1}, {"byte", 'i', 0, 1}, {"ubyte", 'u', 0, 1}, {"short", 'i', 0, 2},
        {"ushort", 'u', 0, 2}, {"intc", 'i', 0, sizeof(int)}, {"uintc", 'u', 0, sizeof(int)},
        {"long", 'i', 0, sizeof(long)}, {"ulong", 'u', 0, sizeof(long)}, {"longlong", 'i', 0, sizeof(long long)},
        {"ulonglong", 'u', 0, sizeof(long long)}, {"int", 'i', 0, sizeof(intptr_t)},
        {"int_", 'i', 0, sizeof(intptr_t)}, {"intp", 'i', 0, sizeof(intptr_t)}, {"uint", 'u', 0, sizeof(intptr_t)},
        {"uintp", 'u', 0, sizeof(intptr_t)}, {"int8", 'i', 0, 1}, {"int16", 'i', 0, 2}, {"int32", 'i', 0, 4},
        {"int64", 'i', 0, 8}, {"uint8", 'u', 0, 1}, {"uint16", 'u', 0, 2}, {"uint32", 'u', 0, 4},
        {"uint64", 'u', 0, 8}, {"half", 'f', 0, 2}, {"single", 'f', 0, 4}, {"double", 'f', 0, 8},
        {"float", 'f', 0, 8}, {"float16", 'f', 0, 2}, {"float32", 'f', 0, 4}, {"float64", 'f', 0, 8},
    };
    const char *d = a->descr, *body = d;
    char order = '=';
    if (*d && strchr("<>=|", *d)) order = *body++;
    a->kind = 0;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (!strcmp(body, types[i].s) && (types[i].is_code || body == d)) {
            a->kind = types[i].kind;
            a->itemsize = types[i].size;
        }
    if (!a->kind) { /* a kind and its size in bytes: 'f4', 'i8', 'b1', 'c8', 'U3' */
        char *end = NULL;
        long size = body[0] && body[1] >= '0' && body[1] <= '9' ? strtol(body + 1, &end, 10) : 0;
        if (size <= 0 || size > 64 || *end) bad_file(a, "unsupported dtype '%s'", d);
        a->kind = body[0];
        a->itemsize = (int)size;
    }
    if (order == '>' && a->itemsize > 1)
        bad_file(a, "big-endian data ('%s') is not supported: save it little-endian (x.astype('<%s'))", d, body);
}

/* Parse the header dict strictly: exactly the keys descr, fortran_order and shape, Python literal syntax, padded
 * with spaces and ended by one newline. */
static void parse_header(npy_t *a, const char *h, size_t len) {
    cur_t c = {h, h + len};
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    if (len == 0 || h[len - 1] != '\n') bad_file(a, "malformed .npy header (it must end with a newline)");
    c.end = h + len - 1;
    for (size_t i = 0; i + 1 < len; i++)
        if ((unsigned char)h[i] < 32 || (unsigned char)h[i] > 126)
            bad_file(a, "malformed .npy header (unexpected byte 0x%02x)", (unsigned char)h[i]);
    if (!take(&c, '{')) bad_file(a, "malformed .npy header (not a dict)");
    for (;;) {
        char key[32];
        if (take(&c, '}')) break;
        if (!take_string(&c, key, sizeof key)) bad_file(a, "malformed .npy header (expected a quoted key)");
        if (!take(&c, ':')) bad_file(a, "malformed .npy header (expected ':' after '%s')", key);
        if (!strcmp(key, "descr")) {
            if (seen_descr++) bad_file(a, "malformed .npy header (duplicate key 'descr')");
            if (!take_string(&c, a->descr, sizeof a->descr))
                bad_file(a, "unsupported dtype (descr is not a simple type string: structured arrays are not "
                            "supported)");
        } else if (!strcmp(key, "fortran_order")) {
            if (seen_fortran++) bad_file(a, "malformed .npy header (duplicate key 'fortran_order')");
            if (take_word(&c, "True")) a->fortran = 1;
            else if (take_word(&c, "False")) a->fortran = 0;
            else bad_file(a, "malformed .npy header (fortran_order must be True or False)");
        } else if (!strcmp(key, "shape")) {
            if (seen_shape++) bad_file(a, "malformed .npy header (duplicate key 'shape')");
            if (!take(&c, '(')) bad_file(a, "malformed .npy header (shape must be a tuple)");
            a->ndim = 0;
            if (!take(&c, ')')) {
                for (;;) {
                    int64_t v;
                    if (a->ndim >= 8) bad_file(a, "arrays of more than 8 dims are not supported");
                    if (!take_int(&c, &v)) bad_file(a, "malformed .npy header (shape must hold non-negative integers)");
                    a->shape[a->ndim++] = v;
                    if (take(&c, ',')) {
                        if (take(&c, ')')) break;
                        continue;
                    }
                    if (take(&c, ')')) {
                        if (a->ndim == 1) bad_file(a, "malformed .npy header (shape (n) must be written (n,))");
                        break;
                    }
                    bad_file(a, "malformed .npy header (bad shape tuple)");
                }
            }
        } else {
            bad_file(a, "malformed .npy header (unexpected key '%s')", key);
        }
        if (take(&c, ',')) continue;
        if (take(&c, '}')) break;
        bad_file(a, "malformed .npy header (expected ',' or '}')");
    }
    skip_ws(&c);
    if (c.p != c.end) bad_file(a, "malformed .npy header (text after the dict)");
    if (!seen_descr || !seen_fortran || !seen_shape)
        bad_file(a, "malformed .npy header (it needs descr, fortran_order and shape)");
    parse_descr(a);
    if (!strchr("fiubc", a->kind)) a->kind = '?';
    if (a->fortran && a->ndim > 1) {
        int many = 0;
        for (int i = 0; i < a->ndim; i++) many += a->shape[i] > 1;
        if (many > 1) bad_file(a, "Fortran-order arrays are not supported: save np.ascontiguousarray(x)");
    }
}

/* Open, parse and size-check; the data is read by npy_read once dtype and shape are known to be right. */
static void npy_open(npy_t *a, const char *opt, const char *path) {
    memset(a, 0, sizeof *a);
    a->opt = opt;
    a->path = path;
    int fd = open(path, O_RDONLY);
    if (fd < 0) bad_file(a, "%s", errno == ENOENT ? "no such file" : strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) bad_file(a, "not a regular file");
    unsigned char pre[12];
    int64_t fsize = st.st_size;
    if (fsize < 10 || pread(fd, pre, 10, 0) != 10) bad_file(a, "truncated: too short to be a .npy file (%lld bytes)",
                                                            (long long)fsize);
    if (memcmp(pre, "\x93NUMPY", 6) != 0) bad_file(a, "not a .npy file (bad magic)");
    int major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0) bad_file(a, "unsupported .npy format version %d.%d", major, minor);
    int64_t hlen, pos;
    if (major == 1) {
        hlen = pre[8] | (pre[9] << 8);
        pos = 10;
    } else {
        if (fsize < 12 || pread(fd, pre + 10, 2, 10) != 2) bad_file(a, "truncated: the .npy header is cut off");
        hlen = (int64_t)pre[8] | ((int64_t)pre[9] << 8) | ((int64_t)pre[10] << 16) | ((int64_t)pre[11] << 24);
        pos = 12;
    }
    if (hlen > MAX_HEADER) bad_file(a, "the .npy header claims %lld bytes (more than %d): not a sane .npy file",
                                    (long long)hlen, MAX_HEADER);
    if (pos + hlen > fsize)
        bad_file(a, "truncated: the header claims %lld bytes but the file has only %lld after the preamble",
                 (long long)hlen, (long long)(fsize - pos));
    char *h = malloc((size_t)hlen + 1);
    if (!h || pread(fd, h, (size_t)hlen, pos) != hlen) bad_file(a, "cannot read the .npy header");
    parse_header(a, h, (size_t)hlen);
    free(h);
    int64_t count = 1;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] && count > INT64_MAX / a->itemsize / a->shape[i])
            bad_file(a, "the header's shape is impossibly large");
        count *= a->shape[i];
    }
    a->count = count;
    int64_t need = count * a->itemsize, have = fsize - pos - hlen;
    char shp[256];
    shape_str(a, shp, sizeof shp);
    if (have < need)
        bad_file(a, "truncated: the header says %s %s (%lld data bytes) but the file holds %lld", dtype_name(a), shp,
                 (long long)need, (long long)have);
    if (have > need)
        bad_file(a, "the file holds %lld data bytes but its header says %s %s (%lld bytes): the header does not "
                    "describe the data", (long long)have, dtype_name(a), shp, (long long)need);
    a->data = (void *)(intptr_t)(pos + hlen); /* the data's offset, until npy_read */
    close(fd);
}

static void npy_read(npy_t *a) {
    int64_t off = (int64_t)(intptr_t)a->data, need = a->count * a->itemsize;
    int fd = open(a->path, O_RDONLY);
    if (fd < 0) bad_file(a, "%s", strerror(errno));
    char *buf = xalloc_raw((size_t)need);
    int64_t got = 0;
    while (got < need) {
        ssize_t r = pread(fd, buf + got, (size_t)(need - got), off + got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) bad_file(a, "truncated while reading (%lld of %lld data bytes)", (long long)got, (long long)need);
        got += r;
    }
    close(fd);
    a->data = buf;
}

static int64_t rows_of(const npy_t *a) { return a->ndim ? a->shape[0] : 0; }

/* "the parameter 'NAME'" (or the optimizer state, or the layer state) of the first array holding a non-finite
 * value, in gc.fit's order (parameters, optimizer state, the layers' state); NULL if all are finite. */
static const char *first_nonfinite(float *const *params, float *const *state, float *const *bufs) {
    static char what[320];
    const struct { const char *kind; const gc_tensor_t *t; float *const *a; int n; } groups[3] = {
        {"the parameter", gc_params, params, GC_NPARAMS},
        {"the optimizer state", gc_state, state, GC_NSTATE},
        {"the layer state", gc_bufs, bufs, GC_NBUFS},
    };
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < groups[g].n; i++) {
            const float *v = groups[g].a[i];
            for (int64_t j = 0; j < groups[g].t[i].size; j++)
                if (!isfinite(v[j])) {
                    snprintf(what, sizeof what, "%s '%s' (its value %g at flat index %lld)", groups[g].kind,
                             groups[g].t[i].name, (double)v[j], (long long)j);
                    return what;
                }
        }
    return NULL;
}

static void check_finite(const npy_t *a, int64_t row_len) {
    const float *v = a->data;
    for (int64_t i = 0; i < a->count; i++)
        if (!isfinite(v[i])) {
            if (row_len > 1)
                bad_file(a, "non-finite value %g at row %lld, column %lld", (double)v[i], (long long)(i / row_len),
                         (long long)(i % row_len));
            bad_file(a, "non-finite value %g at row %lld", (double)v[i], (long long)i);
        }
}

/* Token ids saved as integers (what graphc train reads from a .npz) as the float32 rows the model takes: each
   checked to lie in [0, GC_VOCAB) first, so the float32 is exact (the vocabulary is below 2^24). */
static void ids_to_float(npy_t *a) {
    float *f = xalloc_raw((size_t)a->count * sizeof(float));
    for (int64_t i = 0; i < a->count; i++) {
        const char *p = (const char *)a->data + i * a->itemsize;
        int64_t v = 0;
        uint64_t u = 0;
        int neg = 0;
        if (a->kind == 'i') {
            if (a->itemsize == 1) v = *(const int8_t *)p;
            else if (a->itemsize == 2) v = *(const int16_t *)p;
            else if (a->itemsize == 4) v = *(const int32_t *)p;
            else v = *(const int64_t *)p;
            neg = v < 0;
            u = neg ? 0 : (uint64_t)v;
        } else {
            if (a->itemsize == 1) u = *(const uint8_t *)p;
            else if (a->itemsize == 2) u = *(const uint16_t *)p;
            else if (a->itemsize == 4) u = *(const uint32_t *)p;
            else u = *(const uint64_t *)p;
        }
        if (neg || u >= (uint64_t)GC_VOCAB) {
            char shown[32];
            if (neg) snprintf(shown, sizeof shown, "%lld", (long long)v);
            else snprintf(shown, sizeof shown, "%llu", (unsigned long long)u);
            bad_file(a, "token id %s at row %lld, step %lld is not in [0, %d) (the model's vocabulary)", shown,
                     (long long)(i / GC_N_FEATURES), (long long)(i % GC_N_FEATURES), GC_VOCAB);
        }
        f[i] = (float)u;
    }
    free(a->data);
    a->data = f;
    a->kind = 'f';
    a->itemsize = 4;
}

/* Padded sequences: the lengths (rows,) of x's rows, integers in [0, GC_LENGTHS], as graphc.data checks them;
 * x's steps past each row's length are zeroed (in its own dtype: zero bytes), so that what the padding held is
 * never read, checked or trained on. Kept until with_lengths appends them to the rows. */
static int64_t *g_lengths;

static void read_lengths(npy_t *x, const char *lopt, const char *lpath) {
    npy_t l;
    char shp[256];
    npy_open(&l, lopt, lpath);
    shape_str(&l, shp, sizeof shp);
    if ((l.kind != 'i' && l.kind != 'u') || (l.itemsize != 4 && l.itemsize != 8))
        bad_file(&l, "dtype %s: lengths must be int32 or int64 (save lengths.astype(np.int64))", dtype_name(&l));
    if (l.ndim != 1 || l.shape[0] != rows_of(x))
        bad_file(&l, "shape %s: lengths must be (%lld,), one per row of %s", shp, (long long)rows_of(x), x->path);
    npy_read(&l);
    g_lengths = xalloc_raw((size_t)l.count * sizeof(int64_t));
    const int64_t step = GC_N_FEATURES / GC_LENGTHS;
    for (int64_t r = 0; r < l.count; r++) {
        const char *p = (const char *)l.data + r * l.itemsize;
        int64_t v;
        if (l.kind == 'i') v = l.itemsize == 4 ? *(const int32_t *)p : *(const int64_t *)p;
        else {
            uint64_t u = l.itemsize == 4 ? *(const uint32_t *)p : *(const uint64_t *)p;
            v = u > (uint64_t)GC_LENGTHS ? GC_LENGTHS + 1 : (int64_t)u;
        }
        if (v < 0 || v > GC_LENGTHS)
            bad_file(&l, "length %lld at row %lld is outside [0, %d] (the steps of a sequence padded to T = %d)",
                     (long long)v, (long long)r, GC_LENGTHS, GC_LENGTHS);
        g_lengths[r] = v;
        memset((char *)x->data + (r * GC_N_FEATURES + v * step) * x->itemsize, 0,
               (size_t)((GC_LENGTHS - v) * step * x->itemsize));
    }
    free(l.data);
}

/* x's float32 rows widened by one column, the row's length: the rows the step reads (GC_X_WIDTH floats). */
static void with_lengths(npy_t *a) {
    if (GC_LENGTHS == 0) return;
    const int64_t n = rows_of(a);
    float *w = xalloc_raw((size_t)(n * GC_X_WIDTH) * sizeof(float));
    for (int64_t r = 0; r < n; r++) {
        memcpy(w + r * GC_X_WIDTH, (const float *)a->data + r * GC_N_FEATURES, GC_N_FEATURES * sizeof(float));
        w[r * GC_X_WIDTH + GC_N_FEATURES] = (float)g_lengths[r];
    }
    free(a->data);
    free(g_lengths);
    g_lengths = NULL;
    a->data = w;
    a->shape[1] = GC_X_WIDTH;
    a->count = n * GC_X_WIDTH;
}

/* Features: float32 (rows, GC_N_FEATURES), finite; a token model's ids: integers of any width, or float32
   integers. */
static void load_x(npy_t *a, const char *opt, const char *path, const char *lopt, const char *lpath) {
    char shp[256];
    npy_open(a, opt, path);
    shape_str(a, shp, sizeof shp);
    int ids = GC_VOCAB > 0 && (a->kind == 'i' || a->kind == 'u') &&
              (a->itemsize == 1 || a->itemsize == 2 || a->itemsize == 4 || a->itemsize == 8);
    if (GC_VOCAB > 0 && !ids && (a->kind != 'f' || a->itemsize != 4))
        bad_file(a, "dtype %s: token ids must be integers (int32 or int64, as graphc train reads them) or float32 "
                    "integers (save x.astype(np.int32))", dtype_name(a));
    if (!ids && (a->kind != 'f' || a->itemsize != 4))
        bad_file(a, "dtype %s: features must be float32 (save x.astype(np.float32))", dtype_name(a));
    if (a->ndim != 2) bad_file(a, "shape %s: features must be a 2-D array (rows, %d)", shp, GC_N_FEATURES);
    if (a->shape[1] != GC_N_FEATURES)
        bad_file(a, "shape %s: rows have %lld features but the model takes %d", shp, (long long)a->shape[1],
                 GC_N_FEATURES);
    if (a->shape[0] < 1) bad_file(a, "shape %s: no rows", shp);
    npy_read(a);
    if (GC_LENGTHS > 0) read_lengths(a, lopt, lpath); /* zeroes the padding before anything reads it */
    if (ids) {
        ids_to_float(a);
        with_lengths(a);
        return;
    }
    check_finite(a, GC_N_FEATURES);
    int64_t i = GC_VOCAB > 0 ? gc_bad_token(a->data, a->count, GC_VOCAB) : -1; /* token ids, as graphc train checks */
    if (i >= 0)
        bad_file(a, "token id %g at row %lld, step %lld is not an integer in [0, %d) (the model's vocabulary)",
                 (double)((const float *)a->data)[i], (long long)(i / GC_N_FEATURES), (long long)(i % GC_N_FEATURES),
                 GC_VOCAB);
    with_lengths(a);
}

/* Labels (int32/int64 class indices, stored as int32) or float32 targets, one row per row of x. */
static void load_y(npy_t *a, const char *opt, const char *path, const npy_t *x) {
    char shp[256];
    npy_open(a, opt, path);
    shape_str(a, shp, sizeof shp);
    if (GC_TASK == 0) {
        if (a->kind != 'i' || (a->itemsize != 4 && a->itemsize != 8))
            bad_file(a, "dtype %s: labels must be int32 or int64 class indices 0..%d", dtype_name(a), GC_N_CLASSES - 1);
        if (a->ndim != 1) bad_file(a, "shape %s: labels must be a 1-D array (rows,)", shp);
    } else {
        if (a->kind != 'f' || a->itemsize != 4)
            bad_file(a, "dtype %s: targets must be float32 (save y.astype(np.float32))", dtype_name(a));
        int ok = a->ndim == 1 + GC_Y_NDIM;
        for (int d = 0; ok && d < GC_Y_NDIM; d++) ok = a->shape[1 + d] == gc_y_dims[d];
        if (GC_Y_NDIM == 0 && a->ndim == 2 && a->shape[1] == 1) ok = 1;
        if (!ok) bad_file(a, "shape %s: targets must have %d value(s) per row", shp, GC_Y_ROW);
    }
    if (rows_of(a) != rows_of(x))
        bad_file(a, "has %lld rows but %s %s has %lld", (long long)rows_of(a), x->opt, x->path,
                 (long long)rows_of(x));
    npy_read(a);
    if (GC_TASK == 0) {
        int32_t *lab = xalloc((size_t)a->count * 4);
        for (int64_t i = 0; i < a->count; i++) {
            int64_t v = a->itemsize == 4 ? ((int32_t *)a->data)[i] : ((int64_t *)a->data)[i];
            if (v < 0 || v >= GC_N_CLASSES)
                bad_file(a, "label %lld at row %lld is out of range: the model has %d classes (0..%d)", (long long)v,
                         (long long)i, GC_N_CLASSES, GC_N_CLASSES - 1);
            lab[i] = (int32_t)v;
        }
        free(a->data);
        a->data = lab;
        a->itemsize = 4;
    } else {
        check_finite(a, GC_Y_ROW);
        if (GC_TASK == 1) {
            const float *v = a->data;
            for (int64_t i = 0; i < a->count; i++)
                if (v[i] != 0.0f && v[i] != 1.0f)
                    bad_file(a, "binary label %g at row %lld is not 0 or 1", (double)v[i], (long long)i);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ output */

static void mkdirs(const char *path) {
    char buf[4096];
    struct stat st0;
    if (stat(path, &st0) != 0) snprintf(g_created_out, sizeof g_created_out, "%s", path);
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) fail(EXIT_IO, "--out %s: bad directory name", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) fail(EXIT_IO, "--out %s: cannot create %s: %s", path, buf,
                                                               strerror(errno));
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) fail(EXIT_IO, "--out %s: not a directory", path);
}

/* The files of a run in --out (graphc train's, or a training binary's: this model's <param>.npy): an existing
 * --out that holds any is refused without --overwrite, so that one run's files are never mixed with another's
 * (gc.load would read one run's weights with another's metrics). */
static const char *const RUN_FILES[] = {"metrics.json", "history.csv", "data.json", "weights.npz", "loss.png",
                                        "checkpoints", NULL};

static int in_out(const char *dir, const char *name) {
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static void check_earlier_run(const opts_t *o) {
    char held[1024] = "";
    size_t n = 0;
    int count = 0;
    for (int i = 0; RUN_FILES[i]; i++)
        if (in_out(o->out, RUN_FILES[i]) && n < sizeof held - 64) {
            n += (size_t)snprintf(held + n, sizeof held - n, "%s%s", count++ ? ", " : "", RUN_FILES[i]);
        }
    for (int i = 0; i < GC_NPARAMS + GC_NBUFS; i++) {
        char f[1024];
        snprintf(f, sizeof f, "%s.npy", i < GC_NPARAMS ? gc_params[i].name : gc_bufs[i - GC_NPARAMS].name);
        if (in_out(o->out, f) && n < sizeof held - 64)
            n += (size_t)snprintf(held + n, sizeof held - n, "%s%s", count++ ? ", " : "", f);
    }
    if (count && !o->overwrite)
        fail(EXIT_BAD, "--out %s: already holds a run (%s); pass --overwrite to replace it, or choose another --out",
             o->out, held);
}

/* --overwrite, once this run's results are ready: the earlier run's files this run does not write itself */
static void remove_earlier_run(const char *dir) {
    char p[4096];
    const char *gone[] = {"weights.npz", "loss.png", NULL};
    for (int i = 0; gone[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, gone[i]);
        if (unlink(p) != 0 && errno != ENOENT) fail(EXIT_IO, "--overwrite: cannot remove %s: %s", p, strerror(errno));
    }
    snprintf(p, sizeof p, "%s/checkpoints", dir);
    DIR *d = opendir(p);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, "ckpt-", 5) != 0) continue;
            char f[8192];
            snprintf(f, sizeof f, "%s/%s", p, e->d_name);
            if (unlink(f) != 0 && errno != ENOENT) fail(EXIT_IO, "--overwrite: cannot remove %s: %s", f, strerror(errno));
        }
        closedir(d);
        rmdir(p); /* when nothing else is there */
    }
}

static FILE *open_out(const char *dir, const char *name, char *tmp, char *final) {
    snprintf(final, 4096, "%s/%s", dir, name);
    snprintf(tmp, 4096, "%s/.%s.tmp", dir, name);
    if (g_nout == GC_NOUT) fail(EXIT_IO, "internal error: more result files than planned (%d)", GC_NOUT);
    memcpy(g_out_tmp[g_nout], tmp, 4096); /* before the file exists: a signal from here on removes it */
    memcpy(g_out_final[g_nout], final, 4096);
    g_nout++;
    FILE *f = fopen(tmp, "wb");
    if (!f) fail(EXIT_IO, "cannot write %s: %s", tmp, strerror(errno));
    return f;
}

/* the file is complete under its temporary name; commit_outputs moves it into place */
static void close_out(FILE *f, const char *tmp, const char *final) {
    (void)final;
    if (fflush(f) != 0 || ferror(f) || fclose(f) != 0) fail(EXIT_IO, "cannot write %s: %s", tmp, strerror(errno));
}

/* Every result is written: (with --overwrite) remove the earlier run's other files, then rename each into place. A
 * directory in the way of a name is found before anything is renamed. */
static void commit_outputs(const char *dir, int overwrite) {
    struct stat st;
    for (int i = 0; i < g_nout; i++)
        if (stat(g_out_final[i], &st) == 0 && S_ISDIR(st.st_mode))
            fail(EXIT_IO, "cannot write %s: a directory of that name is in the way", g_out_final[i]);
    if (overwrite) remove_earlier_run(dir);
    for (int i = 0; i < g_nout; i++)
        if (rename(g_out_tmp[i], g_out_final[i]) != 0)
            fail(EXIT_IO, "cannot rename %s to %s: %s", g_out_tmp[i], g_out_final[i], strerror(errno));
    g_nout = 0;
}

static void write_npy(const char *dir, const gc_tensor_t *t, const float *data) {
    char tmp[4096], final[4096], name[1024], hdr[512];
    snprintf(name, sizeof name, "%s.npy", t->name);
    FILE *f = open_out(dir, name, tmp, final);
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int d = 0; d < t->ndim; d++) n += snprintf(hdr + n, sizeof hdr - n, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    n += snprintf(hdr + n, sizeof hdr - n, t->ndim == 1 ? ",), }" : "), }");
    while ((10 + n + 1) % 64) hdr[n++] = ' ';
    hdr[n++] = '\n';
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xff), (unsigned char)(n >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(hdr, 1, (size_t)n, f);
    fwrite(data, 4, (size_t)t->size, f);
    close_out(f, tmp, final);
}

/* ------------------------------------------------------------------------------------------------ standardization */

/* --standardize: (x - mean) / std with the training rows' statistics (double; population std; a constant feature
 * keeps std 1), as graphc.data standardizes, applied to every split. Padded sequences (a model that takes lengths:
 * rows of GC_LENGTHS steps of F features, the row's length after them): per feature, the statistics of the training
 * rows' real steps, tiled over the steps, and the padding left at 0, as graphc.data's _standardized_sequences. */
static double x_mean[GC_N_FEATURES], x_std[GC_N_FEATURES];

/* the steps of row i that standardizing reads and writes: all of them, or a padded sequence's real ones */
static int64_t real_steps(const float *d, int64_t i) {
    return GC_LENGTHS > 0 ? (int64_t)d[i * GC_X_WIDTH + GC_N_FEATURES] : 1;
}

static void sequence_stats(const npy_t *x) {
    enum { F = GC_LENGTHS > 0 ? GC_N_FEATURES / GC_LENGTHS : 1 };
    const float *d = x->data;
    double m[F], v[F];
    int64_t count = 0;
    for (int f = 0; f < F; f++) m[f] = v[f] = 0.0;
    for (int64_t i = 0; i < x->shape[0]; i++) {
        for (int64_t t = 0; t < real_steps(d, i); t++)
            for (int f = 0; f < F; f++) m[f] += d[i * GC_X_WIDTH + t * F + f];
        count += real_steps(d, i);
    }
    for (int f = 0; f < F; f++) m[f] = count ? m[f] / (double)count : 0.0;
    for (int64_t i = 0; i < x->shape[0]; i++)
        for (int64_t t = 0; t < real_steps(d, i); t++)
            for (int f = 0; f < F; f++) {
                double e = d[i * GC_X_WIDTH + t * F + f] - m[f];
                v[f] += e * e;
            }
    for (int f = 0; f < F; f++) {
        v[f] = count ? sqrt(v[f] / (double)count) : 1.0;
        if (v[f] == 0.0) v[f] = 1.0;
        if (!isfinite(m[f]) || !isfinite(v[f]))
            fail(EXIT_BAD, "--x-train: feature %d of the sequences' steps has values too large to standardize (its "
                           "variance overflows double); rescale, clip or drop them", f);
    }
    for (int j = 0; j < GC_N_FEATURES; j++) {
        x_mean[j] = m[j % F];
        x_std[j] = v[j % F];
    }
}

static void feature_stats(const npy_t *x) {
    if (GC_LENGTHS > 0) {
        sequence_stats(x);
        return;
    }
    const float *d = x->data;
    int64_t n = x->shape[0];
    for (int j = 0; j < GC_N_FEATURES; j++) x_mean[j] = x_std[j] = 0.0;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < GC_N_FEATURES; j++) x_mean[j] += d[i * GC_N_FEATURES + j];
    for (int j = 0; j < GC_N_FEATURES; j++) x_mean[j] /= (double)n;
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < GC_N_FEATURES; j++) {
            double e = d[i * GC_N_FEATURES + j] - x_mean[j];
            x_std[j] += e * e;
        }
    for (int j = 0; j < GC_N_FEATURES; j++) {
        x_std[j] = sqrt(x_std[j] / (double)n);
        if (x_std[j] == 0.0) x_std[j] = 1.0;
    }
}

static void standardize(npy_t *x, const char *opt) {
    float *d = x->data;
    const int64_t width = GC_X_WIDTH, step = GC_LENGTHS > 0 ? GC_N_FEATURES / GC_LENGTHS : GC_N_FEATURES;
    for (int64_t i = 0; i < x->shape[0]; i++)
        for (int j = 0; j < real_steps(d, i) * step; j++) { /* a sequence's padding stays 0 */
            float z = (float)(((double)d[i * width + j] - x_mean[j]) / x_std[j]);
            if (!isfinite(z))
                fail(EXIT_BAD, "%s %s: feature %d of row %lld is %g standard deviations from the training mean: beyond "
                               "float32; rescale, clip or drop it", opt, x->path, j, (long long)i,
                     ((double)d[i * width + j] - x_mean[j]) / x_std[j]);
            d[i * width + j] = z;
        }
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* data.json: what travels with the weights to graphc export: the standardization (null: the features were used
 * as given), the class labels in output order, and eval_key: the key of the model's gc.random draws in evaluation
 * (the seed), with which gc.load and graphc export predict as the binary evaluated (graphc.fitting.eval_key). */
static void write_data_json(const char *dir, int standardized, int64_t eval_key) {
    char tmp[4096], final[4096];
    FILE *f = open_out(dir, "data.json", tmp, final);
    fprintf(f, "{\n  \"task\": \"%s\",\n%s  \"eval_key\": %lld,\n", GC_TASK_NAME, GC_RUN_JSON,
            (long long)eval_key);
    for (int k = 0; k < 2; k++) {
        fprintf(f, "  \"%s\": ", k ? "x_std" : "x_mean");
        if (!standardized) fprintf(f, "null");
        else
            for (int j = 0; j < GC_N_FEATURES; j++)
                fprintf(f, "%s%.17g%s", j ? ", " : "[", k ? x_std[j] : x_mean[j], j == GC_N_FEATURES - 1 ? "]" : "");
        fprintf(f, ",\n");
    }
    fprintf(f, "  \"classes\": %s\n}\n", GC_CLASSES_JSON); /* as gc.fit writes them (numbers stay numbers) */
    close_out(f, tmp, final);
}

/* ------------------------------------------------------------------------------------------------ training */

typedef struct {
    int64_t epoch, step;
    double lr, train_loss, rate, val_loss, val_metric, val_rmse;
    int has_val;
} row_t;

static uintptr_t etab[GC_E_NBUF];
static int64_t edims[GC_E_NSYM];
static void *ews;
static int64_t ekey; /* a model that draws gc.random numbers in evaluation: the seed is their key (Trainer.evaluate) */

/* Mean data loss over (X, Y) in inference mode and the model's outputs, in chunks of GC_EVAL_BATCH rows, summed
 * as Trainer.evaluate does (float loss * rows, in double). */
static double evaluate(const float *X, const void *Y, int64_t n, float *out, int threads) {
    double total = 0.0;
    for (int64_t lo = 0; lo < n; lo += GC_EVAL_BATCH) {
        int64_t m = n - lo < GC_EVAL_BATCH ? n - lo : GC_EVAL_BATCH;
        float loss = 0.0f;
        etab[GC_E_X] = (uintptr_t)(X + lo * GC_X_WIDTH);
        if (GC_E_Y >= 0) etab[GC_E_Y] = (uintptr_t)((const char *)Y + lo * GC_Y_ROW_BYTES);
        etab[GC_E_LOSS] = (uintptr_t)&loss;
        etab[GC_E_OUT] = (uintptr_t)(out + lo * GC_OUT_ROW);
        edims[GC_E_NDIM] = m;
        eval_graphc_run(etab, edims, ews, threads);
        total += (double)loss * (double)m;
    }
    return total / (double)(n > 0 ? n : 1);
}

/* Where the model slices its batch axis (x[2:] needs 3 rows), every batch a program gets must have at least
 * `fewest` rows (graphc build found the count; `why` says what one row fewer gives): checked for the run's batch
 * sizes before anything runs or is written, as in-process training refuses such a batch, so the native code never
 * reads past a batch. A split of n rows into batches of `batch`, each shared over `ranks` ranks (shares of q or
 * q + 1 rows; a rank with no rows skips the step). */
static void check_batches(const char *what, int64_t n, int64_t batch, int ranks, int64_t fewest, const char *why) {
    int64_t sizes[2] = {n < batch ? n : batch, n % batch};
    for (int k = 0; k < 2; k++)
        for (int64_t rows = sizes[k] / ranks; rows <= (sizes[k] + ranks - 1) / ranks; rows++)
            if (rows > 0 && rows < fewest)
                fail(EXIT_BAD, "%s: a batch of %lld row(s)%s does not fit the model, which needs at least %lld rows in a batch "
                               "(%s)", what, (long long)rows, ranks > 1 ? " on a rank" : "", (long long)fewest, why);
}

/* accuracy (classification) or MSE (regression), as Trainer.metrics computes them */
static double metric(const float *out, const void *Y, int64_t n, double *rmse) {
    if (GC_TASK == 2) {
        const float *y = Y;
        double s = 0.0;
        for (int64_t i = 0; i < n * GC_Y_ROW; i++) {
            double d = (double)out[i] - (double)y[i]; /* in double: outputs near float32's range */
            s += d * d;
        }
        s /= (double)(n * GC_Y_ROW);
        if (rmse) *rmse = sqrt(s);
        return s;
    }
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *o = out + i * GC_OUT_ROW;
        int64_t pred, truth;
        if (GC_TASK == 0) {
            pred = 0;
            for (int k = 1; k < GC_OUT_ROW; k++)
                if (o[k] > o[pred]) pred = k;
            truth = ((const int32_t *)Y)[i];
        } else {
            pred = o[0] > 0.0f;
            truth = (int64_t)((const float *)Y)[i];
        }
        correct += pred == truth;
    }
    return (double)correct / (double)n;
}

static int auto_threads(int64_t batch) {
    double flops = 0.0;
    for (int i = 0; i < GC_NMATMUL; i++) {
        double f = 2.0;
        for (int d = 0; d < 3; d++) f *= (double)(gc_matmul[i][d] < 0 ? batch : gc_matmul[i][d]);
        flops += f;
    }
    if (flops * 3 < 4e6) return 1;
    int n = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n < 1) n = 1;
    return n > GC_MAX_THREADS ? GC_MAX_THREADS : n;
}

static void rate_str(double rate, char *buf, size_t cap) {
    if (rate >= 1e6) snprintf(buf, cap, "%.2fM", rate / 1e6);
    else snprintf(buf, cap, "%.1fk", rate / 1e3);
}

static void write_history(const char *dir, const row_t *rows, int64_t nrows, int has_val) {
    char tmp[4096], final[4096];
    FILE *f = open_out(dir, "history.csv", tmp, final);
    fprintf(f, "phase,epoch,step,lr,train_loss,samples_per_second");
    if (has_val) fprintf(f, GC_TASK == 2 ? ",val_loss,val_mse,val_rmse" : ",val_loss,val_accuracy");
    fprintf(f, "\n");
    for (int64_t i = 0; i < nrows; i++) {
        const row_t *r = rows + i;
        fprintf(f, "1,%lld,%lld,%.17g,%.17g,%.17g", (long long)r->epoch, (long long)r->step, r->lr, r->train_loss,
                r->rate);
        if (has_val) {
            fprintf(f, ",%.17g,%.17g", r->val_loss, r->val_metric);
            if (GC_TASK == 2) fprintf(f, ",%.17g", r->val_rmse);
        }
        fprintf(f, "\n");
    }
    close_out(f, tmp, final);
}

/* the process's peak resident set size in MB (VmHWM, Linux), or -1 where /proc does not say */
static double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1.0;
    char line[256];
    double mb = -1.0;
    while (fgets(line, sizeof line, f)) {
        long long kb;
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) {
            mb = (double)kb / 1024.0;
            break;
        }
    }
    fclose(f);
    return mb;
}

static void json_num(FILE *f, const char *key, double v, int last) {
    if (isfinite(v)) fprintf(f, "  \"%s\": %.17g%s\n", key, v, last ? "" : ",");
    else fprintf(f, "  \"%s\": null%s\n", key, last ? "" : ",");
}

/* The plain step (what graphc train compiles without momentum, penalties or dropout) when the run leaves every
 * feature it lacks at its identity value, else the full step: each run trains with the step graphc train would
 * build for the same options. */
static const gc_step_t *choose_step(const opts_t *o) {
    for (int k = GC_NSTEPS - 1; k > 0; k--) {
        const gc_step_t *s = &gc_steps[k];
        int ok = (s->has_momentum || o->momentum == 0.0) && (s->has_l2 || o->l2 == 0.0) && (s->has_l1 || o->l1 == 0.0);
        for (int i = s->nkeep; ok && i < GC_NKEEP; i++) ok = o->keep[i] == 1.0;
        if (ok) return s;
    }
    return &gc_steps[0];
}

#ifdef GC_MPI
/* ------------------------------------------------------------------------------------------------ data-parallel */

#define EXIT_LOST 6

static MPI_Comm g_comm = MPI_COMM_NULL, g_node = MPI_COMM_NULL;
static MPI_Win g_win = MPI_WIN_NULL;
static int *g_pids;
static char (*g_hosts)[MPI_MAX_PROCESSOR_NAME];
static char g_host[MPI_MAX_PROCESSOR_NAME];
static double g_timeout = 120.0;
static _Atomic double g_wait_since = 0.0; /* when this rank entered the exchange it waits in (0: none) */
static const char *_Atomic g_what = "";
static atomic_int g_done = 0;

static int pid_alive(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return !(p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'));
}

/* the ranks on this machine whose processes are gone, as "rank 1 (pid 812 on host), ..." (empty: none) */
static void gone_ranks(char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (int r = 0; r < g_size; r++)
        if (r != g_rank && !strcmp(g_hosts[r], g_host) && !pid_alive(g_pids[r]))
            len += (size_t)snprintf(buf + len, len < cap ? cap - len : 0, "%srank %d (pid %d on %s)", len ? ", " : "",
                                    r, g_pids[r], g_hosts[r]);
}

static void lost(const char *why) __attribute__((noreturn));
static void lost(const char *why) {
    fflush(stdout);
    fprintf(stderr, "%s: error: rank %d: %s; stopping (a training binary keeps no checkpoints: no output was "
                    "written)\n", prog, g_rank, why);
    fflush(stderr);
    _exit(EXIT_LOST);
}

/* the watchdog: a local peer process that disappeared, or an exchange that makes no progress for GRAPHC_MPI_TIMEOUT
 * seconds, stops this rank (exit 6) with a message naming the rank or the exchange: a lost rank cannot hang it */
static void *watchdog(void *unused) {
    (void)unused;
    char gone[1024], msg[1200];
    /* a pidfd per local peer turns readable the moment that process ends: the lost rank is named at once, before
     * the launcher's clean-up kills this one (polling every 100 ms often lost that race, and the launcher's
     * message may name the wrong process) */
    struct pollfd *fds = calloc((size_t)g_size, sizeof *fds);
    int nfds = 0;
#ifdef SYS_pidfd_open
    for (int r = 0; fds && r < g_size; r++)
        if (r != g_rank && !strcmp(g_hosts[r], g_host)) {
            int fd = (int)syscall(SYS_pidfd_open, (pid_t)g_pids[r], 0);
            if (fd >= 0) fds[nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
#endif
    for (;;) {
        if (nfds) {
            (void)poll(fds, (nfds_t)nfds, 100);
        } else {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
        if (atomic_load(&g_done)) return NULL;
        gone_ranks(gone, sizeof gone);
        if (gone[0] && !atomic_load(&g_done)) {
            snprintf(msg, sizeof msg, "%s %s gone", gone, strchr(gone, ',') ? "are" : "is");
            lost(msg);
        }
        double since = atomic_load(&g_wait_since);
        if (since > 0 && now() - since > g_timeout && !atomic_load(&g_done)) {
            snprintf(msg, sizeof msg, "no progress for %g s in %s (a rank stopped answering; set GRAPHC_MPI_TIMEOUT "
                                      "to wait longer)", g_timeout, atomic_load(&g_what));
            lost(msg);
        }
    }
}

static void waiting(const char *what) {
    atomic_store(&g_what, what);
    atomic_store(&g_wait_since, now());
}

/* after a collective: an error names the lost rank where one is gone, else MPI's message */
static void checked(int rc, const char *what) {
    atomic_store(&g_wait_since, 0.0);
    if (rc == MPI_SUCCESS) return;
    char gone[1024], msg[1400];
    gone_ranks(gone, sizeof gone);
    if (gone[0]) {
        snprintf(msg, sizeof msg, "%s %s gone", gone, strchr(gone, ',') ? "are" : "is");
    } else {
        char err[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, err, &len);
        snprintf(msg, sizeof msg, "%s failed: %s", what, err);
    }
    lost(msg);
}

static void mpi_start(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    MPI_Comm_dup(MPI_COMM_WORLD, &g_comm);
    MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN); /* errors come back here, named, instead of aborting */
    MPI_Comm_rank(g_comm, &g_rank);
    MPI_Comm_size(g_comm, &g_size);
    /* a launcher of another MPI (Open MPI's mpirun for an MPICH build, or the reverse) starts P processes that
       each see a world of one: each would train the whole run alone, all writing --out */
    static const char *size_envs[] = {"PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"};
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(size_envs[i]);
        if (v && *v) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end == 0 && n > 1 && n != g_size) {
                fprintf(stderr, "graphc: error: distributed training: the launcher started %ld processes (%s=%s) but "
                        "the MPI this binary was linked with sees a world of %d: the mpirun is another MPI's, so "
                        "every process would train alone. Start it with the mpirun of the MPI it was built with "
                        "(mpich's, from `pip install 'graphc[mpi]'`)\n", n, size_envs[i], v, g_size);
                MPI_Finalize();
                exit(2);
            }
            break;
        }
    }
    int len = 0;
    memset(g_host, 0, sizeof g_host);
    MPI_Get_processor_name(g_host, &len);
    g_pids = calloc((size_t)g_size, sizeof *g_pids);
    g_hosts = calloc((size_t)g_size, sizeof *g_hosts);
    int pid = (int)getpid();
    checked(MPI_Allgather(&pid, 1, MPI_INT, g_pids, 1, MPI_INT, g_comm), "starting");
    checked(MPI_Allgather(g_host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, g_hosts, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, g_comm),
            "starting");
    const char *t = getenv("GRAPHC_MPI_TIMEOUT");
    if (t && *t) {
        char *end;
        double v = strtod(t, &end);
        if (*end == 0 && v > 0) g_timeout = v;
    }
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&th, &attr, watchdog, NULL);
    g_pre = 1;
}

/* Every rank says whether it got through its options and data (0) or not (its exit status): if any did not,
 * every rank stops before training, exit 2 (the failing rank its own status), none waiting for the others. */
static void mpi_agree_ready(int code) {
    int *codes = calloc((size_t)g_size, sizeof *codes);
    waiting("checking every rank's options and data");
    checked(MPI_Allgather(&code, 1, MPI_INT, codes, 1, MPI_INT, g_comm), "checking every rank's options and data");
    char list[512] = "";
    size_t len = 0;
    int nbad = 0;
    for (int r = 0; r < g_size; r++)
        if (codes[r]) {
            nbad++;
            len += (size_t)snprintf(list + len, len < sizeof list ? sizeof list - len : 0, "%s%d", len ? ", " : "", r);
        }
    free(codes);
    if (!nbad) return;
    g_pre = 0;
    if (g_rank == 0 || code == 0)
        fprintf(stderr, "%s: error: rank %d: reading the options or the data failed on rank%s %s (%s message above); "
                        "no rank trained\n", prog, g_rank, nbad > 1 ? "s" : "", list, nbad > 1 ? "their" : "its");
    atomic_store(&g_done, 1);
    finish(code ? code : EXIT_BAD);
}

static void mpi_failed_before_training(int code) {
    mpi_agree_ready(code); /* code != 0: every rank stops */
    finish(code);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

/* Ranks that would train differently refuse to start: a hash of the binary's steps, the options that shape the
 * run and the data's shape, compared with rank 0's. */
static void mpi_agree_run(const opts_t *o, const int64_t rows[3], const npy_t *const data[6]) {
    char buf[4096];
    int len = snprintf(buf, sizeof buf, "%s|%s|", GC_TARGET, GC_MODEL_DESC);
    for (int k = 0; k < GC_NSTEPS; k++) len += snprintf(buf + len, sizeof buf - (size_t)len, "%s,", gc_steps[k].digest);
    len += snprintf(buf + len, sizeof buf - (size_t)len, "|%lld|%lld|%lld|%lld|%.17g|%.17g|%.17g|%.17g|%.17g|%.17g|%.17g|%d|%d|%lld|%.17g|",
                    (long long)o->epochs, (long long)o->batch, (long long)o->patience, (long long)o->seed, o->lr,
                    o->momentum, o->weight_decay, o->clip_grad_norm, o->l2, o->l1, o->min_delta, o->standardize,
                    o->schedule, (long long)o->step_every, o->step_gamma);
    for (int i = 0; i < GC_NKEEP; i++) len += snprintf(buf + len, sizeof buf - (size_t)len, "%.17g,", o->keep[i]);
    snprintf(buf + len, sizeof buf - (size_t)len, "|%lld|%lld|%lld", (long long)rows[0], (long long)rows[1],
             (long long)rows[2]);
    uint64_t h = fnv(1469598103934665603ULL, buf, strlen(buf));
    for (int k = 0; k < 6; k++) /* the data's contents: one file name and shape may hold other values on a rank */
        if (data[k] && data[k]->data) h = fnv(h, data[k]->data, (size_t)data[k]->count * (size_t)data[k]->itemsize);
    uint64_t *all = calloc((size_t)g_size, sizeof *all);
    waiting("comparing the model, options and data");
    checked(MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, g_comm), "comparing the model, options and data");
    char list[512] = "";
    size_t n = 0;
    for (int r = 1; r < g_size; r++)
        if (all[r] != all[0]) n += (size_t)snprintf(list + n, n < sizeof list ? sizeof list - n : 0, "%s%d", n ? ", " : "", r);
    free(all);
    if (n) {
        if (g_rank == 0)
            fprintf(stderr, "%s: error: ranks %s disagree with rank 0 on the model, options and data (a hash of the "
                            "binary's steps, the training options and the data's shape and contents); every rank must "
                            "run the same command (same binary, data and options)\n", prog, list);
        atomic_store(&g_done, 1);
        finish(EXIT_BAD);
    }
}

/* rank r's [lo, hi) of n rows over p ranks: contiguous, near-equal, the first n mod p ranks one row more */
static void share(int64_t n, int p, int r, int64_t *lo, int64_t *hi) {
    int64_t q = n / p, m = n % p;
    *lo = r * q + (r < m ? r : m);
    *hi = *lo + q + (r < m ? 1 : 0);
}

typedef struct {
    const gc_par_t *par;
    int shared, threads;
    int64_t slot_len, loss_at, pen_at, width;
    int64_t seg[GC_NPARAMS], lo[GC_NPARAMS], hi[GC_NPARAMS];
    float **slots, *mine, pen;
    uintptr_t *gtab, *utab, *ntab;
    int64_t *gdims, *udims, *ndims, key, off[16];
    void *gws, *uws, *nws, *xb, *yb;
    float weight, *gscal, *uscal, *nscal, sumsq;
    double step_buf;
    int64_t samples;
} par_t;

/* g[j] += s[j]: the vectorizer's form (no aliasing, whole blocks of 16, then the tail) */
static void add_into(float *restrict g, const float *restrict s, int64_t m) {
    int64_t j = 0;
    for (; j + 16 <= m; j += 16)
        for (int t = 0; t < 16; t++) g[j + t] += s[j + t];
    for (; j < m; j++) g[j] += s[j];
}

static void node_barrier(const char *what) {
    waiting(what);
    int rc = MPI_Win_sync(g_win);
    if (rc == MPI_SUCCESS) rc = MPI_Barrier(g_node);
    if (rc == MPI_SUCCESS) rc = MPI_Win_sync(g_win);
    checked(rc, what);
}

static void *arena_table(const gc_prog_t *g, uintptr_t **tab, int64_t **dims, int threads) {
    *tab = xalloc((size_t)g->nbuf * sizeof(uintptr_t));
    *dims = xalloc((size_t)g->nsym * 8);
    char *arena = xalloc((size_t)g->arena);
    for (const gc_place_t *p = g->temps; p->slot >= 0; p++) (*tab)[p->slot] = (uintptr_t)(arena + p->offset);
    for (const gc_place_t *p = g->consts; p->slot >= 0; p++) (*tab)[p->slot] = (uintptr_t)(gc_blob + p->offset);
    return xalloc((size_t)g->ws[threads]);
}

/* Set up the data-parallel step for step program S: the gradient slots (and, on one machine, the parameters and
 * optimizer state in MPI-3 shared memory), the programs' tables. params/state are re-pointed at shared memory. */
static void par_setup(par_t *q, const gc_step_t *S, float **params, float **state, float **bufs, int64_t batch,
                      int threads) {
    memset(q, 0, sizeof *q);
    q->par = &gc_par[S - gc_steps];
    q->threads = threads;
    const gc_par_t *G = q->par;
    int P = g_size, r = g_rank;
    int64_t off = 0, min_size = INT64_MAX;
    for (int i = 0; i < GC_NPARAMS; i++) {
        q->seg[i] = off;
        off += (gc_params[i].size + 15) / 16 * 16;
        if (gc_params[i].size < min_size) min_size = gc_params[i].size;
    }
    q->slot_len = off + 16; /* then the weighted data loss, the update's penalty share, the gradient's sum of squares
                             * over this rank's share (clipping) */
    q->loss_at = off;
    q->pen_at = off + 1;
    int local = 0;
    MPI_Comm_split_type(g_comm, MPI_COMM_TYPE_SHARED, r, MPI_INFO_NULL, &g_node);
    MPI_Comm_size(g_node, &local);
    const char *env = getenv("GRAPHC_MPI_SHARED");
    q->shared = !(env && !strcmp(env, "0")) && local == P && min_size >= P;
    q->slots = calloc((size_t)P, sizeof *q->slots);
    if (q->shared) {
        MPI_Comm_set_errhandler(g_node, MPI_ERRORS_RETURN);
        int64_t state_len = 0;
        for (int i = 0; i < GC_NPARAMS; i++) state_len += (gc_params[i].size + 15) / 16 * 16;
        for (int j = 0; j < GC_NSTATE; j++) state_len += (gc_state[j].size + 15) / 16 * 16;
        int64_t total = P * q->slot_len + state_len + 16;
        float *base = NULL;
        waiting("allocating shared memory");
        checked(MPI_Win_allocate_shared(r == 0 ? (MPI_Aint)(total * 4) : 0, 4, MPI_INFO_NULL, g_node, &base, &g_win),
                "allocating shared memory");
        MPI_Aint size;
        int disp;
        checked(MPI_Win_shared_query(g_win, 0, &size, &disp, &base), "allocating shared memory");
        MPI_Win_set_errhandler(g_win, MPI_ERRORS_RETURN);
        MPI_Win_lock_all(MPI_MODE_NOCHECK, g_win);
        float *raw = base + ((-(int64_t)((uintptr_t)base / 4)) & 15); /* 64-byte aligned */
        for (int k = 0; k < P; k++) q->slots[k] = raw + k * q->slot_len;
        float *at = raw + P * q->slot_len;
        for (int i = 0; i < GC_NPARAMS; i++) {
            if (r == 0) memcpy(at, params[i], (size_t)gc_params[i].size * 4); /* rank 0's initial values */
            params[i] = at;
            at += (gc_params[i].size + 15) / 16 * 16;
        }
        for (int j = 0; j < GC_NSTATE; j++) {
            if (r == 0) memcpy(at, state[j], (size_t)gc_state[j].size * 4);
            state[j] = at;
            at += (gc_state[j].size + 15) / 16 * 16;
        }
        for (int i = 0; i < GC_NPARAMS; i++) share(gc_params[i].size, P, r, &q->lo[i], &q->hi[i]);
        node_barrier("sharing the parameters");
    } else {
        q->slots[r] = xalloc((size_t)q->slot_len * 4);
        for (int i = 0; i < GC_NPARAMS; i++) {
            q->lo[i] = 0;
            q->hi[i] = gc_params[i].size;
        }
    }
    q->mine = q->slots[r];
    /* the gradient program: this rank's rows in, the weighted loss and the gradients into its slot */
    q->gws = arena_table(&G->g, &q->gtab, &q->gdims, threads);
    q->width = (batch + P - 1) / P;
    q->xb = xalloc((size_t)(q->width * GC_X_ROW_BYTES));
    q->yb = xalloc((size_t)(q->width * GC_Y_ROW_BYTES > 8 ? q->width * GC_Y_ROW_BYTES : 8));
    q->gtab[G->g_x] = (uintptr_t)q->xb;
    if (G->g_y >= 0) q->gtab[G->g_y] = (uintptr_t)q->yb;
    q->gtab[G->g_weight] = (uintptr_t)&q->weight;
    if (G->g_key >= 0) q->gtab[G->g_key] = (uintptr_t)&q->key;
    if (G->g_noff > 16) fail(EXIT_BAD, "internal: more than 16 dropout row sizes");
    for (int j = 0; j < G->g_noff; j++) q->gtab[G->g_off_slots[j]] = (uintptr_t)&q->off[j];
    q->gscal = xalloc((size_t)(G->g_nscalars + 1) * 4);
    for (int j = 0; j < G->g_nscalars; j++) q->gtab[G->g_scalars[j].slot] = (uintptr_t)&q->gscal[j];
    for (int i = 0; i < GC_NPARAMS; i++) {
        if (G->g_params[i] >= 0) q->gtab[G->g_params[i]] = (uintptr_t)params[i];
        q->gtab[G->g_grads[i]] = (uintptr_t)(q->mine + q->seg[i]);
    }
    q->gtab[G->g_loss] = (uintptr_t)(q->mine + q->loss_at);
    /* the layers' running statistics: each rank's own, from its share of the batch (not in shared memory) */
    for (int i = 0; i < GC_NBUFS; i++)
        if (G->g_bufs[i] >= 0) q->gtab[G->g_bufs[i]] = (uintptr_t)bufs[i];
    /* the update program: this rank's share of every parameter and its state, from the summed gradient */
    q->uws = arena_table(&G->u, &q->utab, &q->udims, threads);
    q->uscal = xalloc((size_t)(G->u_nscalars + 1) * 4);
    for (int j = 0; j < G->u_nscalars; j++) q->utab[G->u_scalars[j].slot] = (uintptr_t)&q->uscal[j];
    if (G->u_step >= 0) q->utab[G->u_step] = (uintptr_t)&q->step_buf;
    if (G->u_pen >= 0) q->utab[G->u_pen] = (uintptr_t)(q->shared ? q->mine + q->pen_at : &q->pen);
    for (int i = 0; i < GC_NPARAMS; i++) {
        int64_t lo = q->lo[i];
        if (G->u_params[i] >= 0) q->utab[G->u_params[i]] = (uintptr_t)(params[i] + lo);
        /* shared: the ranks' slots are summed into slot 0's copy of this rank's share (see par_exchange) */
        q->utab[G->u_grads[i]] = (uintptr_t)((q->shared ? q->slots[0] : q->mine) + q->seg[i] + lo);
        if (G->u_dims[i] >= 0) q->udims[G->u_dims[i]] = q->hi[i] - lo;
    }
    for (int j = 0; j < GC_NSTATE; j++)
        if (G->u_state[j] >= 0) q->utab[G->u_state[j]] = (uintptr_t)(state[j] + q->lo[G->u_state_param[j]]);
    if (!G->has_norm) return;
    /* clipping: the norm program reads what the update reads (this rank's share of the summed gradient and of the
     * parameters, for the penalties' gradients); its sum of squares goes to this rank's slot (shared: the ranks
     * add them up, par_exchange) or straight to the update's grad_sumsq input (every rank holds the whole sum) */
    q->nws = arena_table(&G->n, &q->ntab, &q->ndims, threads);
    q->nscal = xalloc((size_t)(G->n_nscalars + 1) * 4);
    for (int j = 0; j < G->n_nscalars; j++) q->ntab[G->n_scalars[j].slot] = (uintptr_t)&q->nscal[j];
    for (int i = 0; i < GC_NPARAMS; i++) {
        int64_t lo = q->lo[i];
        if (G->n_params[i] >= 0) q->ntab[G->n_params[i]] = (uintptr_t)(params[i] + lo);
        q->ntab[G->n_grads[i]] = (uintptr_t)((q->shared ? q->slots[0] : q->mine) + q->seg[i] + lo);
        if (G->n_dims[i] >= 0) q->ndims[G->n_dims[i]] = q->hi[i] - lo;
    }
    q->ntab[G->n_out] = (uintptr_t)(q->shared ? q->mine + q->pen_at + 1 : &q->sumsq);
    q->utab[G->u_sumsq] = (uintptr_t)&q->sumsq;
}

static void par_scalars(par_t *q, const opts_t *o) {
    const gc_par_t *G = q->par;
    for (int pass = 0; pass < 3; pass++) {
        const gc_scalar_t *sc = pass == 2 ? G->n_scalars : pass ? G->u_scalars : G->g_scalars;
        float *out = pass == 2 ? q->nscal : pass ? q->uscal : q->gscal;
        int count = pass == 2 ? (G->has_norm ? G->n_nscalars : 0) : pass ? G->u_nscalars : G->g_nscalars;
        for (int i = 0; i < count; i++) {
            double v;
            switch (sc[i].kind) {
            case GC_SCALAR_LR: v = o->lr_now; break;
            case GC_SCALAR_MOMENTUM: v = o->momentum; break;
            case GC_SCALAR_WEIGHT_DECAY: v = o->weight_decay; break;
            case GC_SCALAR_CLIP: v = o->clip_grad_norm; break;
            case GC_SCALAR_L2: v = o->l2; break;
            case GC_SCALAR_L1: v = o->l1; break;
            default: v = sc[i].index < GC_NKEEP ? o->keep[sc[i].index] : 1.0;
            }
            out[i] = (float)v;
        }
    }
}

/* Sum the ranks' gradients and apply the update; the step's loss (the same on every rank), as
 * graphc.distributed.SharedMemoryStep / DataParallelStep._reduce_and_update compute it. */
static double par_exchange(par_t *q) {
    const gc_par_t *G = q->par;
    double loss = 0.0;
    if (q->shared) {
        node_barrier("the gradient exchange");
        for (int k = 0; k < g_size; k++) loss += (double)q->slots[k][q->loss_at]; /* rank order */
        /* the slots summed in rank order over this rank's share, in place in slot 0 (between the two barriers
         * only this rank touches its share of any slot), where the update program reads it */
        for (int i = 0; i < GC_NPARAMS; i++)
            for (int k = 1; k < g_size; k++)
                add_into(q->slots[0] + q->seg[i] + q->lo[i], q->slots[k] + q->seg[i] + q->lo[i], q->hi[i] - q->lo[i]);
        if (G->has_norm) { /* the global norm before any rank changes a parameter, summed in rank order */
            G->n.run(q->ntab, q->ndims, q->nws, q->threads);
            node_barrier("the gradient norm");
            double total = 0.0;
            for (int k = 0; k < g_size; k++) total += (double)q->slots[k][q->pen_at + 1];
            q->sumsq = (float)total;
        }
        G->u.run(q->utab, q->udims, q->uws, q->threads);
        node_barrier("the update");
        if (G->u_pen >= 0)
            for (int k = 0; k < g_size; k++) loss += (double)q->slots[k][q->pen_at];
    } else {
        waiting("the gradient allreduce");
        checked(MPI_Allreduce(MPI_IN_PLACE, q->mine, (int)q->slot_len, MPI_FLOAT, MPI_SUM, g_comm),
                "the gradient allreduce");
        loss = (double)q->mine[q->loss_at];
        if (G->has_norm) G->n.run(q->ntab, q->ndims, q->nws, q->threads); /* the whole sum: the same on every rank */
        G->u.run(q->utab, q->udims, q->uws, q->threads);
        if (G->u_pen >= 0) loss += (double)q->pen;
    }
    return loss;
}

/* One epoch data-parallel, as graphc.distributed.DataParallelStep.run_epoch: the permutation of the step's own
 * epoch driver (a run of no steps), then per global batch this rank's contiguous share. Fills ctx's LOSS_SUM,
 * STEPS_DONE, STATUS and BAD_STEP as the epoch driver does. */
static void par_epoch(par_t *q, const gc_step_t *S, int64_t *ctx, const npy_t *X, const npy_t *Y) {
    const gc_par_t *G = q->par;
    int64_t n = ctx[GC_CTX_NSAMP], B = ctx[GC_CTX_BATCH], step0 = ctx[GC_CTX_STEP0];
    int64_t seed = ctx[GC_CTX_SEED];
    const int64_t *perm = (const int64_t *)(uintptr_t)ctx[GC_CTX_PERM];
    ctx[GC_CTX_MAXSTEPS] = 0;
    S->epoch(ctx, NULL, NULL, 1);
    int64_t nsteps = n / B + (n % B ? 1 : 0);
    double loss_sum = 0.0;
    int64_t done = 0, bad = -1;
    uint64_t own = G->g_offsets_ok ? 0 : (uint64_t)g_rank * GC_RANK_KEY;
    for (int64_t s = 0; s < nsteps; s++) {
        int64_t start = s * B, nb = n - start < B ? n - start : B, lo, hi;
        share(nb, g_size, g_rank, &lo, &hi);
        int64_t b = hi - lo;
        q->key = (int64_t)((uint64_t)seed * GC_KEY_MULT + (uint64_t)step0 + (uint64_t)s + own);
        for (int j = 0; j < G->g_noff; j++) q->off[j] = lo * G->g_off_sizes[j];
        q->step_buf = (double)(step0 + s + 1);
        if (!G->u_step_f64) {
            float f = (float)(step0 + s + 1);
            memcpy(&q->step_buf, &f, sizeof f);
        }
        if (b) {
            char *xb = q->xb, *yb = q->yb;
            for (int64_t i = 0; i < b; i++) {
                int64_t row = perm[start + lo + i];
                memcpy(xb + i * GC_X_ROW_BYTES, (const char *)X->data + row * GC_X_ROW_BYTES, GC_X_ROW_BYTES);
                memcpy(yb + i * GC_Y_ROW_BYTES, (const char *)Y->data + row * GC_Y_ROW_BYTES, GC_Y_ROW_BYTES);
            }
            q->weight = (float)((double)b / (double)nb);
            q->gdims[G->g_ndim] = b;
            G->g.run(q->gtab, q->gdims, q->gws, q->threads);
        } else { /* more ranks than rows in this (last) batch: this rank adds nothing */
            memset(q->mine, 0, (size_t)q->slot_len * 4);
        }
        q->samples += b;
        double loss = par_exchange(q);
        if (!isfinite(loss)) {
            bad = s;
            break;
        }
        loss_sum += loss * (double)nb;
        done = s + 1;
    }
    memcpy(&ctx[GC_CTX_LOSS_SUM], &loss_sum, sizeof loss_sum);
    ctx[GC_CTX_STEPS_DONE] = done;
    ctx[GC_CTX_STATUS] = bad >= 0;
    ctx[GC_CTX_BAD_STEP] = bad;
}

/* after an epoch, rank 0's running statistics on every rank (PyTorch DDP broadcasts rank 0's buffers), so that
 * every rank evaluates and keeps the same ones */
static void par_sync_state(float **bufs) {
    for (int i = 0; i < GC_NBUFS; i++) {
        waiting("the running statistics");
        checked(MPI_Bcast(bufs[i], (int)gc_bufs[i].size, MPI_FLOAT, 0, g_comm), "the running statistics");
    }
}

/* every rank must end an epoch with bitwise the same parameters: a hash compared with rank 0's */
static void par_check_replicas(float **params, int64_t epoch) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < GC_NPARAMS; i++) h = fnv(h, params[i], (size_t)gc_params[i].size * 4);
    uint64_t *all = calloc((size_t)g_size, sizeof *all);
    waiting("the parameter check");
    checked(MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, g_comm), "the parameter check");
    char list[512] = "";
    size_t n = 0;
    for (int r = 1; r < g_size; r++)
        if (all[r] != all[0]) n += (size_t)snprintf(list + n, n < sizeof list ? sizeof list - n : 0, "%s%d", n ? ", " : "", r);
    free(all);
    if (n) {
        char msg[800];
        snprintf(msg, sizeof msg, "after epoch %lld the parameters of rank(s) %s differ from rank 0's (a "
                                  "non-deterministic reduction or a corrupted rank)", (long long)epoch, list);
        lost(msg);
    }
}
#endif

int main(int argc, char **argv) {
    opts_t o;
    if (argc > 0 && argv[0] && *argv[0]) {
        const char *s = strrchr(argv[0], '/');
        prog = s ? s + 1 : argv[0];
    }
#ifdef GC_MPI
    mpi_start(&argc, &argv);
#endif
    catch_signals();
    parse_args(&o, argc, argv);
#ifdef GC_MPI
    if (g_rank != 0) o.quiet = 1; /* rank 0 alone reports */
#endif

    /* the CPU check comes before any LLVM code runs */
    __builtin_cpu_init();
    {
        char missing[512] = "";
        size_t len = 0;
        for (int i = 0; i < GC_NCPU; i++)
            if (!gc_cpu_has(i)) len += (size_t)snprintf(missing + len, len < sizeof missing ? sizeof missing - len : 0,
                                                        "%s%s", len ? ", " : "", gc_cpu_features[i]);
        if (len)
            fail(EXIT_CPU, "this CPU lacks %s, which this binary's code (target %s) needs; rebuild it with graphc build "
                           "--target x86-64-v2 (or another level this CPU supports)", missing, GC_TARGET);
    }

    /* data: everything is read and checked before anything is written */
    npy_t xtr, ytr, xva, yva, xte, yte;
    load_x(&xtr, "--x-train", o.x_train, "--lengths-train", o.len_train);
    load_y(&ytr, "--y-train", o.y_train, &xtr);
    if (o.x_val) {
        load_x(&xva, "--x-val", o.x_val, "--lengths-val", o.len_val);
        load_y(&yva, "--y-val", o.y_val, &xva);
    }
    if (o.x_test) {
        load_x(&xte, "--x-test", o.x_test, "--lengths-test", o.len_test);
        load_y(&yte, "--y-test", o.y_test, &xte);
    }
    if (o.standardize) {
        feature_stats(&xtr);
        standardize(&xtr, "--x-train");
        if (o.x_val) standardize(&xva, "--x-val");
        if (o.x_test) standardize(&xte, "--x-test");
    }
    const int64_t n = rows_of(&xtr);
    const int64_t batch = o.batch < n ? o.batch : n; /* as run_epoch: min(batch, n) */
    if (batch > GC_MAX_BATCH) {
        if (batch < o.batch) /* capped to the rows: say both, the user typed the other */
            fail(EXIT_BAD, "--batch-size %lld (%lld: the training rows) exceeds %d, the largest batch this binary was "
                           "built for (graphc build --max-batch)", (long long)o.batch, (long long)batch, GC_MAX_BATCH);
        fail(EXIT_BAD, "--batch-size %lld exceeds %d, the largest batch this binary was built for (graphc build "
                       "--max-batch)", (long long)batch, GC_MAX_BATCH);
    }
#ifdef GC_MPI
    check_batches("--batch-size", n, batch, g_size, GC_FEWEST_ROWS, GC_FEWEST_WHY);
#else
    check_batches("--batch-size", n, batch, 1, GC_FEWEST_ROWS, GC_FEWEST_WHY);
#endif
    /* a batch norm over (N, C) rows: a training batch of 1 row has one value per channel and no variance (its
     * running variance would become infinite), refused as Trainer._check_norm_batches refuses it */
    if (GC_ROW_NORM[0])
        check_batches("--batch-size", n, batch, 1, 2, GC_ROW_NORM " normalizes over the batch's rows alone: one row "
                      "gives one value per channel, and batch statistics need more; give a --batch-size of 2 or "
                      "more that leaves no last batch of 1 row");
    if (o.x_val) check_batches("--x-val", rows_of(&xva), GC_EVAL_BATCH, 1, GC_E_FEWEST_ROWS, GC_E_FEWEST_WHY);
    if (o.x_test) check_batches("--x-test", rows_of(&xte), GC_EVAL_BATCH, 1, GC_E_FEWEST_ROWS, GC_E_FEWEST_WHY);
    else if (!o.x_val) check_batches("--x-train", n, GC_EVAL_BATCH, 1, GC_E_FEWEST_ROWS, GC_E_FEWEST_WHY);
#ifdef GC_MPI
    int local_ranks = 0;
    for (int r = 0; r < g_size; r++) local_ranks += !strcmp(g_hosts[r], g_host);
    int cpus = auto_threads(INT64_MAX / 4); /* this process's CPUs (capped at --max-threads) */
    const int threads = o.threads ? (int)o.threads : (cpus / local_ranks > 1 ? cpus / local_ranks : 1);
    if (RANK0) {
        check_earlier_run(&o);
        mkdirs(o.out);
    }
    mpi_agree_ready(0);
    g_pre = 0;
    {
        int64_t rows[3] = {n, o.x_val ? rows_of(&xva) : -1, o.x_test ? rows_of(&xte) : -1};
        const npy_t *const data[6] = {&xtr, &ytr, o.x_val ? &xva : NULL, o.x_val ? &yva : NULL,
                                      o.x_test ? &xte : NULL, o.x_test ? &yte : NULL};
        mpi_agree_run(&o, rows, data);
    }
#else
    const int threads = o.threads ? (int)o.threads : auto_threads(o.batch);
    check_earlier_run(&o);
    mkdirs(o.out);
#endif

    /* state: parameters (initialized natively from the seed) and zeroed optimizer state */
    const gc_step_t *S = choose_step(&o);
    float *params[GC_NPARAMS], *state[GC_NSTATE + 1], *best_p[GC_NPARAMS], *best_s[GC_NSTATE + 1];
    uintptr_t *ttab = xalloc((size_t)S->nbuf * sizeof(uintptr_t));
    for (int i = 0; i < GC_NPARAMS; i++) {
        params[i] = xalloc((size_t)gc_params[i].size * 4);
        best_p[i] = o.patience ? xalloc((size_t)gc_params[i].size * 4) : NULL;
        ttab[S->param_slots[i]] = (uintptr_t)params[i];
    }
    for (int i = 0; i < GC_NSTATE; i++) {
        state[i] = xalloc((size_t)gc_state[i].size * 4);
        best_s[i] = o.patience ? xalloc((size_t)gc_state[i].size * 4) : NULL;
        if (S->state_slots[i] >= 0) ttab[S->state_slots[i]] = (uintptr_t)state[i];
    }
    /* the layers' state: its initial values (graphc.nn.init_state's), updated in place by every training step */
    float *bufs[GC_NBUFS + 1], *best_b[GC_NBUFS + 1];
    for (int i = 0; i < GC_NBUFS; i++) {
        bufs[i] = xalloc((size_t)gc_bufs[i].size * 4);
        memcpy(bufs[i], gc_blob + gc_bufs[i].blob, (size_t)gc_bufs[i].size * 4);
        best_b[i] = o.patience ? xalloc((size_t)gc_bufs[i].size * 4) : NULL;
        if (S->buf_slots[i] >= 0) ttab[S->buf_slots[i]] = (uintptr_t)bufs[i];
    }
    S->init(ttab, o.seed);
#ifdef GC_MPI
    par_t par;
    par_setup(&par, S, params, state, bufs, batch, threads); /* on one machine: params and state in shared memory */
    for (int i = 0; i < GC_NPARAMS; i++) ttab[S->param_slots[i]] = (uintptr_t)params[i];
    for (int i = 0; i < GC_NSTATE; i++)
        if (S->state_slots[i] >= 0) ttab[S->state_slots[i]] = (uintptr_t)state[i];
    if (RANK0 && g_size > 1 && !par.par->g_offsets_ok) /* as graphc.distributed.DataParallelStep warns */
        fprintf(stderr, "%s%d%s\n", GC_PAR_WARNING, g_size, GC_PAR_WARNING_END);
    if (RANK0 && !o.quiet) {
        printf("distributed: %d ranks x %d thread(s), global batch %lld, gradients summed %s; ranks", g_size, threads,
               (long long)batch, par.shared ? "in MPI-3 shared memory" : "with MPI_Allreduce");
        for (int r = 0; r < g_size; r++) printf("%s %d=pid %d on %s", r ? "," : "", r, g_pids[r], g_hosts[r]);
        printf("\n");
        fflush(stdout);
    }
#endif

    char *arena = xalloc((size_t)S->arena);
    void *ws = xalloc((size_t)S->ws[threads]);
    for (const gc_place_t *p = S->temps; p->slot >= 0; p++) ttab[p->slot] = (uintptr_t)(arena + p->offset);
    for (const gc_place_t *p = S->consts; p->slot >= 0; p++) ttab[p->slot] = (uintptr_t)(gc_blob + p->offset);
    void *xb = xalloc((size_t)(batch * GC_X_ROW_BYTES));
    void *yb = xalloc((size_t)(batch * GC_Y_ROW_BYTES > 8 ? batch * GC_Y_ROW_BYTES : 8));
    ttab[S->x] = (uintptr_t)xb;
    if (S->y >= 0) ttab[S->y] = (uintptr_t)yb;
    double step_buf[1] = {0.0}; /* a float32 or float64 `step`, as the step program declares it */
    int64_t key_buf[1] = {0};
    float loss_buf[1] = {0.0f};
    float *scal = xalloc((size_t)(S->nscalars + 1) * sizeof(float));
    if (S->step >= 0) ttab[S->step] = (uintptr_t)step_buf;
    if (S->key >= 0) ttab[S->key] = (uintptr_t)key_buf;
    for (int i = 0; i < S->nscalars; i++) ttab[S->scalars[i].slot] = (uintptr_t)&scal[i];
    ttab[S->loss] = (uintptr_t)loss_buf;
    int64_t *perm = xalloc((size_t)n * 8);
    int64_t *dims = xalloc((size_t)S->nsym * 8);
    dims[S->ndim] = batch;

    /* the evaluation program reads the same parameter arrays */
    char *earena = xalloc((size_t)GC_E_ARENA);
    ews = xalloc((size_t)gc_e_ws[threads]);
    for (const gc_place_t *p = gc_e_temps; p->slot >= 0; p++) etab[p->slot] = (uintptr_t)(earena + p->offset);
    for (const gc_place_t *p = gc_e_consts; p->slot >= 0; p++) etab[p->slot] = (uintptr_t)(gc_blob + p->offset);
    for (int i = 0; i < GC_NPARAMS; i++)
        if (gc_params[i].eval_slot >= 0) etab[gc_params[i].eval_slot] = (uintptr_t)params[i];
    for (int i = 0; i < GC_NBUFS; i++)
        if (gc_bufs[i].eval_slot >= 0) etab[gc_bufs[i].eval_slot] = (uintptr_t)bufs[i];
    ekey = o.seed;
    if (GC_E_KEY >= 0) etab[GC_E_KEY] = (uintptr_t)&ekey;
    int64_t emax = o.x_val ? rows_of(&xva) : 0;
    if (o.x_test && rows_of(&xte) > emax) emax = rows_of(&xte);
    if (n > emax) emax = n;
    float *eout = xalloc((size_t)(emax * GC_OUT_ROW * 4));

    /* epochs: Trainer.run's phase 1 */
    row_t *rows = calloc((size_t)o.epochs, sizeof(row_t));
    int64_t nrows = 0, step = 0, best_epoch = -1, wait = 0, samples_total = 0;
    double best_val = INFINITY, train_seconds = 0.0;
    int stopped_early = 0, have_best = 0;
    for (int64_t epoch = 0; epoch < o.epochs && !stopped_early; epoch++) {
        o.lr_now = epoch_lr(&o, epoch);
        for (int i = 0; i < S->nscalars; i++) {
            double v = 0.0;
            switch (S->scalars[i].kind) {
            case GC_SCALAR_LR: v = o.lr_now; break;
            case GC_SCALAR_MOMENTUM: v = o.momentum; break;
            case GC_SCALAR_WEIGHT_DECAY: v = o.weight_decay; break;
            case GC_SCALAR_CLIP: v = o.clip_grad_norm; break;
            case GC_SCALAR_L2: v = o.l2; break;
            case GC_SCALAR_L1: v = o.l1; break;
            default: v = S->scalars[i].index < GC_NKEEP ? o.keep[S->scalars[i].index] : 1.0;
            }
            scal[i] = (float)v;
        }
        int64_t ctx[GC_CTX_SLOTS];
        memset(ctx, 0, sizeof ctx);
        ctx[GC_CTX_TABLE] = (int64_t)(uintptr_t)ttab;
        ctx[GC_CTX_DIMS] = (int64_t)(uintptr_t)dims;
        ctx[GC_CTX_WS] = (int64_t)(uintptr_t)ws;
        ctx[GC_CTX_X] = (int64_t)(uintptr_t)xtr.data;
        ctx[GC_CTX_Y] = (int64_t)(uintptr_t)ytr.data;
        ctx[GC_CTX_NSAMP] = n;
        ctx[GC_CTX_BATCH] = batch;
        ctx[GC_CTX_EPOCH] = epoch;
        ctx[GC_CTX_SEED] = o.seed;
        ctx[GC_CTX_PERM] = (int64_t)(uintptr_t)perm;
        ctx[GC_CTX_STEP0] = step;
        ctx[GC_CTX_MAXSTEPS] = -1;
        ctx[GC_CTX_XB] = (int64_t)(uintptr_t)xb;
        ctx[GC_CTX_YB] = (int64_t)(uintptr_t)yb;
        ctx[GC_CTX_STEPBUF] = (int64_t)(uintptr_t)step_buf;
        ctx[GC_CTX_KEYBUF] = (int64_t)(uintptr_t)key_buf;
        ctx[GC_CTX_LOSSBUF] = (int64_t)(uintptr_t)loss_buf;
        ctx[GC_CTX_SHUFFLE] = 1;
        ctx[GC_CTX_DROP_LAST] = 0;
        double t0 = now();
#ifdef GC_MPI
        par_scalars(&par, &o);
        par_epoch(&par, S, ctx, &xtr, &ytr);
#else
        S->epoch(ctx, NULL, NULL, threads);
#endif
        double dt = now() - t0;
        int64_t steps = ctx[GC_CTX_STEPS_DONE];
        if (ctx[GC_CTX_STATUS] == GC_STATUS_CHECK) /* the data is checked when read: this is a defect */
            fail(EXIT_BAD, "a run-time check of the training step failed at epoch %lld, step %lld of the epoch (check "
                           "%lld: a label or token id out of range); no parameters were written.",
                 (long long)epoch + 1, (long long)ctx[GC_CTX_BAD_STEP] + 1, (long long)ctx[GC_CTX_CHECK]);
        if (ctx[GC_CTX_STATUS]) { /* nothing written, as graphc train: a rerun with sane options finds --out free */
            fail(EXIT_DIVERGED, "training diverged: the loss became non-finite at epoch %lld, step %lld of the epoch "
                                "(global step %lld); no parameters were written. Try a smaller learning rate (now %g) "
                                "or standardized inputs.", (long long)epoch + 1, (long long)ctx[GC_CTX_BAD_STEP] + 1,
                 (long long)(step + ctx[GC_CTX_BAD_STEP] + 1), o.lr_now);
        }
#ifdef GC_MPI
        par_sync_state(bufs); /* rank 0's running statistics on every rank, as DataParallelStep.check_replicas */
#endif
        {   /* the loss stayed finite, but an update may not have (an infinite gradient or lr x gradient): every state
             * array is checked after an epoch, as gc.fit does, before the replicas are compared (NaN equals nothing) */
            const char *bad = first_nonfinite(params, state, bufs);
            if (bad)
                fail(EXIT_DIVERGED, "training diverged: the loss stayed finite, but %s became non-finite in epoch %lld "
                                    "(by global step %lld: an update overflowed); no parameters were written. Try a "
                                    "smaller learning rate (now %g) or standardized inputs.", bad,
                     (long long)epoch + 1, (long long)(step + steps), o.lr_now);
        }
#ifdef GC_MPI
        par_check_replicas(params, epoch + 1);
#endif
        double loss_sum;
        memcpy(&loss_sum, &ctx[GC_CTX_LOSS_SUM], sizeof loss_sum);
        int64_t samples = steps * batch < n ? steps * batch : n;
        train_seconds += dt;
        samples_total += samples;
        step += steps;
        row_t *r = &rows[nrows++];
        r->epoch = epoch + 1;
        r->step = step;
        r->lr = o.lr_now;
        r->train_loss = loss_sum / (double)(samples > 0 ? samples : 1);
        r->rate = dt > 0 ? (double)samples / dt : 0.0;
        if (o.x_val) {
            r->has_val = 1;
#ifdef GC_MPI
            if (RANK0) { /* reduce, then decide: every rank takes rank 0's figure */
                r->val_loss = evaluate(xva.data, yva.data, rows_of(&xva), eout, threads);
                r->val_metric = metric(eout, yva.data, rows_of(&xva), &r->val_rmse);
            }
            waiting("the validation loss");
            checked(MPI_Bcast(&r->val_loss, 1, MPI_DOUBLE, 0, g_comm), "the validation loss");
#else
            r->val_loss = evaluate(xva.data, yva.data, rows_of(&xva), eout, threads);
            r->val_metric = metric(eout, yva.data, rows_of(&xva), &r->val_rmse);
#endif
            if (o.patience) {
                if (r->val_loss < best_val - o.min_delta) {
                    best_val = r->val_loss;
                    best_epoch = epoch + 1;
                    wait = 0;
                    have_best = 1;
                    for (int i = 0; i < GC_NPARAMS; i++) memcpy(best_p[i], params[i], (size_t)gc_params[i].size * 4);
                    for (int i = 0; i < GC_NSTATE; i++) memcpy(best_s[i], state[i], (size_t)gc_state[i].size * 4);
                    for (int i = 0; i < GC_NBUFS; i++) memcpy(best_b[i], bufs[i], (size_t)gc_bufs[i].size * 4);
                } else if (++wait >= o.patience) {
                    stopped_early = 1;
                }
            }
        }
        if (!o.quiet) {
            char rate[32], val[96] = "";
            rate_str(r->rate, rate, sizeof rate);
            if (r->has_val)
                snprintf(val, sizeof val, "val_loss %.4f  %s %.4f", r->val_loss,
                         GC_TASK == 2 ? "val_mse" : "val_accuracy", r->val_metric);
            printf("epoch %4lld/%lld  loss %.4f  %s  %s samples/s\n", (long long)r->epoch, (long long)o.epochs,
                   r->train_loss, val, rate);
            fflush(stdout);
        }
    }
#ifdef GC_MPI
    int64_t *samples_per_rank = calloc((size_t)g_size, 8);
    waiting("gathering the metrics");
    checked(MPI_Allgather(&par.samples, 1, MPI_INT64_T, samples_per_rank, 1, MPI_INT64_T, g_comm),
            "gathering the metrics");
    if (!RANK0) { /* rank 0 alone writes --out */
        checked(MPI_Barrier(g_comm), "finishing"); /* no time limit: rank 0 writes; the watchdog still watches */
        atomic_store(&g_done, 1);
        if (par.shared) {
            MPI_Win_unlock_all(g_win);
            MPI_Win_free(&g_win);
        }
        finish(0);
    }
#endif
    if (o.patience && have_best) { /* restore the best parameters */
        for (int i = 0; i < GC_NPARAMS; i++) memcpy(params[i], best_p[i], (size_t)gc_params[i].size * 4);
        for (int i = 0; i < GC_NSTATE; i++) memcpy(state[i], best_s[i], (size_t)gc_state[i].size * 4);
        for (int i = 0; i < GC_NBUFS; i++) memcpy(bufs[i], best_b[i], (size_t)gc_bufs[i].size * 4);
    }

    /* results */
    for (int i = 0; i < GC_NPARAMS; i++) write_npy(o.out, &gc_params[i], params[i]);
    for (int i = 0; i < GC_NBUFS; i++) write_npy(o.out, &gc_bufs[i], bufs[i]); /* as weights.npz holds them */
    write_history(o.out, rows, nrows, o.x_val != NULL);
    write_data_json(o.out, o.standardize, ekey);
    const char *split = o.x_test ? "test" : o.x_val ? "val" : "train";
    const npy_t *fx = o.x_test ? &xte : o.x_val ? &xva : &xtr, *fy = o.x_test ? &yte : o.x_val ? &yva : &ytr;
    double rmse = 0.0, floss = evaluate(fx->data, fy->data, rows_of(fx), eout, threads);
    double fmetric = metric(eout, fy->data, rows_of(fx), &rmse);
    double tput = train_seconds > 0 ? (double)samples_total / train_seconds : 0.0;
    {
        char tmp[4096], final[4096];
        FILE *f = open_out(o.out, "metrics.json", tmp, final);
        fprintf(f, "{\n  \"written_by\": \"graphc training binary\",\n  \"task\": \"%s\",\n  \"target\": \"%s\",\n"
                   "  \"split\": \"%s\",\n", GC_TASK_NAME, GC_TARGET, split);
        fprintf(f, "  \"weights\": [");
        for (int i = 0; i < GC_NPARAMS; i++) fprintf(f, "%s\"%s.npy\"", i ? ", " : "", gc_params[i].name);
        for (int i = 0; i < GC_NBUFS; i++) fprintf(f, ", \"%s.npy\"", gc_bufs[i].name);
        fprintf(f, "],\n");
        char key[64];
        snprintf(key, sizeof key, "%s_loss", split);
        json_num(f, key, floss, 0);
        snprintf(key, sizeof key, "%s_%s", split, GC_TASK == 2 ? "mse" : "accuracy");
        json_num(f, key, fmetric, 0);
        if (GC_TASK == 2) {
            snprintf(key, sizeof key, "%s_rmse", split);
            json_num(f, key, rmse, 0);
        }
        fprintf(f, "  \"epochs\": %lld,\n  \"steps\": %lld,\n  \"best_epoch\": %lld,\n  \"stopped_early\": %s,\n",
                (long long)nrows, (long long)step, (long long)(o.patience ? best_epoch : -1),
                stopped_early ? "true" : "false");
        fprintf(f, "  \"batch_size\": %lld,\n  \"threads\": %d,\n  \"seed\": %lld,\n  \"step\": \"%s\",\n",
                (long long)o.batch, threads, (long long)o.seed, S->label);
        json_num(f, "train_seconds", train_seconds, 0);
        fprintf(f, "  \"arena_bytes\": %lld,\n", (long long)(S->arena + GC_E_ARENA));
        json_num(f, "peak_rss_mb", peak_rss_mb(), 0);
#ifdef GC_MPI
        fprintf(f, "  \"ranks\": %d,\n  \"threads_per_rank\": %d,\n  \"samples_per_rank\": [", g_size, threads);
        for (int r = 0; r < g_size; r++) fprintf(f, r ? ", %lld" : "%lld", (long long)samples_per_rank[r]);
        fprintf(f, "],\n  \"gradient_exchange\": \"%s\",\n  \"mpi_library\": ",
                par.shared ? "shared memory" : "allreduce");
        {
            char lib[MPI_MAX_LIBRARY_VERSION_STRING];
            int len = 0;
            MPI_Get_library_version(lib, &len);
            lib[strcspn(lib, "\n")] = 0;
            json_string(f, lib);
        }
        fprintf(f, ",\n");
#endif
        json_num(f, "train_samples_per_second", tput, 1);
        fprintf(f, "}\n");
        close_out(f, tmp, final);
    }
    commit_outputs(o.out, o.overwrite);
    char metric_s[96];
    if (GC_TASK == 2) snprintf(metric_s, sizeof metric_s, "%s MSE %.4f (RMSE %.4f)", split, fmetric, rmse);
    else snprintf(metric_s, sizeof metric_s, "%s accuracy %.4f", split, fmetric);
    printf("%s; %.0f samples/s on %d thread(s); %lld epochs%s; results in %s\n", metric_s, tput, threads,
           (long long)nrows, stopped_early ? " (stopped early)" : "", o.out);
#ifdef GC_MPI
    checked(MPI_Barrier(g_comm), "finishing");
    atomic_store(&g_done, 1);
    if (par.shared) {
        MPI_Win_unlock_all(g_win);
        MPI_Win_free(&g_win);
    }
    finish(0);
#endif
    return 0;
}
