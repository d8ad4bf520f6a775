"""The `graphc` command: `graphc train` (the main job), `graphc predict` (a trained run on new rows), `graphc
build` (a standalone training binary), `graphc export` (an inference library), `graphc demo` (print a graph and
its gradient)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graphc.errors import GraphcError, NumericalError
from graphc.nn.layers import ACTIVATIONS


def _cache(args) -> int:
    """Show the compile cache (where, how many entries, how large, its bound), or empty it (--clear)."""
    from graphc import cachedir

    d = cachedir.directory()
    if args.clear:
        n, size = cachedir.clear()
        print(f"removed {n} files ({size / 2**20:.1f} MB) from {d}")
        return 0
    found = [e for e in cachedir.entries() if not e[0].startswith((".", "pruned"))]
    limit = cachedir.max_bytes()
    bound = "none" if limit is None else f"{limit / 2**20:.0f} MB"
    print(f"compile cache: {d}\nentries: {len(found)}, {sum(e[2] for e in found) / 2**20:.1f} MB "
          f"(bound {bound}: $GRAPHC_CACHE_MAX_MB; least recently used entries go first)")
    return 0


def _demo(args) -> int:
    """Print a small MLP's loss graph and its gradient graph."""
    import graphc as gc

    x = gc.input("x", ("N", 4))
    labels = gc.input("labels", ("N",), "int32")
    logits = gc.nn.mlp(x, [8, 3], activation="relu")
    loss = gc.nn.softmax_cross_entropy(logits, labels)
    params = gc.nn.parameters(loss)
    grads = gc.grad(loss, params)
    print("# forward: a 4-8-3 ReLU MLP with softmax cross-entropy")
    print(gc.to_text(loss, sources=False))
    print("\n# loss and its gradients (one backward sweep; forward values are reused)")
    print(gc.to_text([loss, *grads], sources=False))
    return 0


def _floats(text: str, what: str) -> list[float]:
    parts = text.split(",")
    try:
        if any(not v.strip() for v in parts):
            raise ValueError
        return [float(v) for v in parts]
    except ValueError:
        raise GraphcError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _output_file(path: str, what: str) -> None:
    """-o must name a file to write (checked before minutes of compiling, not by the linker after)."""
    p = Path(path)
    if p.is_dir():
        raise GraphcError(f"-o {path}: a directory; give the path of the {what} to write in it, e.g. "
                          f"{p / ('libmodel.so' if what == 'shared library' else 'train')}")


def _ints(text: str, what: str) -> list[int]:
    vals = _floats(text, what)
    if any(v != int(v) for v in vals):
        raise GraphcError(f"{what}: expected comma-separated integers, got {text!r}")
    return [int(v) for v in vals]


def _hidden(text: str) -> list[int]:
    """--hidden: comma-separated layer sizes, or `none` for no hidden layer (a linear model: logistic or softmax
    regression, least squares)."""
    return [] if text.strip().lower() == "none" else _ints(text, "--hidden")


def _train(args) -> int:
    from graphc.fitting import fit

    options: dict = {}
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer", "l2", "l1", "seed", "threads",
                 "clip_grad_norm", "schedule", "step_every", "step_gamma", "min_delta", "checkpoint_every", "init",
                 "bias_init", "activation"):
        v = getattr(args, name)
        if v is not None:
            options[name] = v
    if args.early_stopping is not None:
        options["early_stopping"] = args.early_stopping
    if args.refit:
        options["refit"] = True
    if args.drop_last:
        options["drop_last"] = True
    if args.hidden is not None:
        options["hidden"] = _hidden(args.hidden)
    if args.penalize is not None:
        which = [n.strip() for n in args.penalize.split(",") if n.strip()]
        if not which:
            raise GraphcError("--penalize: expected weights, all, or comma-separated parameter names, got "
                              f"{args.penalize!r}")
        options["penalize"] = which[0] if len(which) == 1 and which[0] in ("weights", "all") else which
    if args.dropout is not None:
        keeps = _floats(args.dropout, "--dropout")
        # one number: the lecture's split (TrainConfig's, as for gc.fit): 0.8 on inputs and it on hidden units
        options["dropout"] = keeps[0] if len(keeps) == 1 else keeps
    features = args.features.split(",") if args.features else None
    if args.grid is not None:
        grid = tuple(_ints(args.grid, "--grid"))
        if not grid or any(d < 1 for d in grid):
            raise GraphcError(f"--grid must be positive sizes such as 28,28,1 (H,W,C) or 100,3 (T,C), got "
                              f"{args.grid!r}")
        options["grid"] = grid
    from graphc.distributed import launched_rank, launched_ranks

    ranks = launched_ranks()  # under `mpirun -n P` (P > 1): data-parallel over the ranks
    result = fit(args.model, args.dataset, out=args.out, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.quiet,
                 label=args.label, features=features, task=args.task,
                 log=lambda m: print(m, file=sys.stderr), distributed=ranks > 1,
                 **options)  # --quiet hides progress, not notices
    if launched_rank() != 0:
        return 0  # rank 0 alone reports
    m = result.metrics
    if "test_accuracy" in m:
        summary = f"test accuracy {m['test_accuracy']:.4f}"
    else:
        mse = m["test_mse"]
        summary = f"test MSE {mse:.4f}" if abs(mse) < 1e6 else f"test MSE {mse:.4g}"
        summary += f" (RMSE {m['test_rmse_original_units']:.4g} in target units)"
    print(f"{m['dataset']}: {summary}; {m['train_samples_per_second']:,.0f} samples/s on {m['threads']} "
          f"thread(s){f' x {ranks} ranks' if ranks > 1 else ''}; compile {m['compile_seconds']:.2f} s; "
          f"{m['epochs']} epoch{'' if m['epochs'] == 1 else 's'}"
          + (f"; results in {args.out}" if args.out else ""))
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, (dict, list))}, default=str))
    return 0


def _aot_options(args) -> dict:
    """The model-shaping options `graphc build` and `graphc export` share."""
    options: dict = {}
    if args.hidden is not None:
        options["hidden"] = _hidden(args.hidden)
    for name in ("init", "bias_init", "activation"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    features = args.features.split(",") if args.features else None
    return dict(model=args.model, data=args.dataset, target=args.target, max_batch=args.max_batch,
                max_threads=args.max_threads, label=args.label, features=features, task=args.task, **options)


def _build(args) -> int:
    from graphc.aot import build

    options = _aot_options(args)
    if args.optimizer is not None:
        options["optimizer"] = args.optimizer
    if args.clip_grad_norm is not None:
        options["clip_grad_norm"] = args.clip_grad_norm
    if options["data"] is None:
        options["data"] = "digits"
    _output_file(args.output, "executable")
    r = build(args.output, log=lambda m: print(f"graphc: note: {m}", file=sys.stderr), mpi=args.mpi, **options)
    size = r.path.stat().st_size
    run = f"mpirun -n P {r.path}" if args.mpi else str(r.path)
    print(f"built {r.path} ({size / 1024:.0f} KiB, target {r.target}{', MPI' if args.mpi else ''}) in "
          f"{r.seconds:.1f} s: trains a {r.task} model, {r.n_features} features -> {r.n_outputs} outputs; step "
          f"{r.step_digest[:16]}. Run {run} --help")
    return 0


def _export(args) -> int:
    from graphc.aot import export

    _output_file(args.output, "shared library")
    r = export(args.output, args.weights, header=args.header, **_aot_options(args))
    size = r.path.stat().st_size
    print(f"exported {r.path} ({size / 1024:.0f} KiB) and {r.header} in {r.seconds:.1f} s: "
          f"int {r.name}_predict(const float *x, int64_t n, float *out), {r.row} -> {r.n_outputs} floats "
          f"per row{' (the features, then the row length)' if r.row > r.n_features else ''}, n <= {r.max_batch}; "
          f"it takes raw features when the header defines {r.name.upper()}_X_MEAN "
          f"(else, and with {r.name}_predict_standardized, standardized ones)")
    return 0


def _predict(args) -> int:
    """A finished run's predictions for the rows of a file, as CSV: the label (classification) or the prediction
    in the target's units (regression), one row per input row, in order; --proba adds each class's probability."""
    import csv as csv_mod

    import numpy as np

    from graphc import data as datasets
    from graphc.fitting import load

    run = load(args.run, model=args.model)
    ds = run.dataset
    lengths = None
    if ds.has_lengths:  # padded sequences: their lengths come from the .npz beside X
        X, lengths = datasets.read_sequences(args.data, ds.n_features, ds.grid, ds.steps)
    else:
        X = datasets.read_features(args.data, ds.feature_names, ds.n_features, ds.grid)
    classify = ds.task in ("binary", "multiclass")
    if args.proba and not classify:
        raise GraphcError("--proba: the run is a regression; it has no class probabilities")
    # every prediction first: a bad row is refused before -o is opened (nothing half-written)
    if classify:
        labels = run.predict_labels(X, lengths)
        proba = run.predict_proba(X, lengths) if args.proba else None
        header = ["label", *([f"p({c})" for c in ds.classes] if args.proba else [])]
        rows = [[lab.item() if hasattr(lab, "item") else lab,
                 *([f"{p:.6g}" for p in proba[k]] if proba is not None else [])] for k, lab in enumerate(labels)]
    else:
        pred = np.asarray(run.predict_raw(X, lengths)).reshape(len(X), -1)
        header = ["prediction"] if pred.shape[1] == 1 else [f"prediction_{j}" for j in range(pred.shape[1])]
        rows = [[f"{v:.9g}" for v in row] for row in pred]
    try:
        out = open(args.output, "w", newline="") if args.output else sys.stdout
        try:
            w = csv_mod.writer(out, lineterminator="\n")  # as pandas and Unix tools write (csv's default: \r\n)
            w.writerow(header)
            w.writerows(rows)
            out.flush()  # here, not at exit: a reader that has gone (`| head`) is then seen by main()
        finally:
            if out is not sys.stdout:
                out.close()
    except BrokenPipeError:  # stdout's reader stopped reading: main() stops quietly, as Python advises
        raise
    except OSError as e:
        where = f"-o {args.output}" if args.output else "standard output"
        raise GraphcError(f"{where}: cannot write the predictions ({e.strerror or e})") from None
    if args.output:
        print(f"wrote {len(X)} predictions to {args.output}", file=sys.stderr)
    return 0


def _data_and_model_arguments(p: argparse.ArgumentParser) -> None:
    """What `train`, `build` and `export` share: which columns are data, the task, and the default MLP's shape."""
    p.add_argument("--label", help="label column (CSV name, .npy column number, or .npz array name)")
    p.add_argument("--features", help="comma-separated feature columns (default: all but the label)")
    p.add_argument("--task", choices=["multiclass", "binary", "regression"], help="override the inferred task")
    p.add_argument("--hidden", help="hidden layer sizes of the default MLP, e.g. 128 or 256,128; none: no hidden "
                   "layer (a linear model)")
    p.add_argument("--activation", choices=[k for k in ACTIVATIONS if k],
                   help="hidden units of the default MLP (default: relu)")
    p.add_argument("--init", choices=["xavier_uniform", "xavier_normal", "he_normal", "he_uniform"],
                   help="weight initialization of the default MLP")
    p.add_argument("--bias-init", choices=["like_weights", "zeros"],
                   help="bias initialization of the default MLP: drawn like the weights (default, as "
                        "scikit-learn does) or zeros")


def _aot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="FILE", help="a Python file defining model(x, n_outputs) (see README: the "
                   "model-file contract); default: an MLP")
    p.add_argument("--dataset", metavar="NAME|PATH", help="only to learn the task, the feature count and the "
                   "classes: digits, breast_cancer, diabetes, or a .npy/.npz/.csv file (default: digits; export "
                   "from a graphc train --out directory: what the run recorded)")
    _data_and_model_arguments(p)
    p.add_argument("--target", default="native", choices=["native", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"],
                   help="the CPU the code is for: this machine's, or a portable x86-64 level")
    p.add_argument("--max-batch", type=int, default=4096, help="the largest batch the code's memory plan holds")
    p.add_argument("--max-threads", type=int, default=16, help="the most threads a run may use")


class _Help(argparse.HelpFormatter):
    """Shows an option's default where it has one (argparse's ArgumentDefaultsHelpFormatter also prints
    "(default: None)" for every option whose default is decided later)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS) \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _train_defaults() -> tuple[dict, str]:
    from dataclasses import asdict

    from graphc.fitting import DATASET_DEFAULTS, OPTIMIZER_DEFAULTS
    from graphc.nn.train import TrainConfig

    def show(opts: dict) -> str:
        return ", ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in opts.items())

    epilog = ("defaults that depend on the dataset or the optimizer (an option you give always wins): " +
              "; ".join(f"{name}: {show(o)}" for name, o in DATASET_DEFAULTS.items()) + "; " +
              "; ".join(f"--optimizer {name}: {show(o)}" for name, o in OPTIMIZER_DEFAULTS.items()) +
              ". Exit status: 0 trained; 2 a usage, data or model error (a message says what and where); "
              "5 training diverged (a non-finite value, named with its source line); 130 interrupted.")
    return asdict(TrainConfig()), epilog


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphc", description="graphc: a graph compiler that trains neural "
                                     "networks natively on the CPU")
    from graphc import __version__

    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="print a small MLP's graph and its gradient graph")
    demo.set_defaults(fn=_demo)
    ca = sub.add_parser("cache", help="show the compile cache ($GRAPHC_CACHE_DIR, default ~/.cache/graphc), or "
                        "empty it")
    ca.set_defaults(fn=_cache)
    ca.add_argument("--clear", action="store_true", help="remove every file graphc wrote there (compiled programs, "
                    "derivatives); other files stay")
    defaults, epilog = _train_defaults()
    t = sub.add_parser("train", help="train a model (default: an MLP on the bundled digits data)",
                       formatter_class=_Help, epilog=epilog)
    t.set_defaults(fn=_train)
    t.add_argument("--model", metavar="FILE", help="a Python file defining model(x, n_outputs) -> outputs "
                   "(see README: the model-file contract); default: an MLP")
    t.add_argument("--dataset", default="digits", metavar="NAME|PATH",
                   help="digits, breast_cancer, diabetes, or a .npy/.npz/.csv file")
    _data_and_model_arguments(t)
    t.add_argument("--grid", metavar="H,W,C", help="the grid of each row of a flat dataset (.npy/.csv rows of "
                   "H*W*C values, row-major, channels last) for a model that asks for images; default: the "
                   "dataset's own (digits: 8,8,1; a 4-D .npz X)")
    t.add_argument("--epochs", type=int, metavar="N", help=f"passes over the training data (default: "
                   f"{defaults['epochs']}, or the dataset's: below)")
    t.add_argument("--batch-size", type=int, metavar="B", help=f"mini-batch size (1: per-sample SGD; >= the data: "
                   f"full GD) (default: {defaults['batch_size']})")
    t.add_argument("--lr", type=float, help=f"learning rate (default: {defaults['lr']}, or the dataset's or the "
                   "optimizer's: below)")
    from graphc.nn.optim import OPTIMIZERS

    t.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help=f"sgd: mini-batch SGD; gd: full-batch gradient descent (every step on all the training "
                   f"rows, unless --batch-size); "
                   f"momentum and nesterov (--momentum, default 0.9); adam, adamw (--weight-decay), rmsprop and "
                   f"adagrad as PyTorch's (default: {defaults['optimizer']})")
    t.add_argument("--momentum", type=float, metavar="M", help="momentum in [0, 1) for --optimizer momentum or "
                   "nesterov (default: 0.9 there)")
    t.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW's decoupled weight decay, w <- w(1 - "
                   "lr*WD) each step on every parameter, biases included, as torch.optim.AdamW (default: 0.01 with "
                   "--optimizer adamw; the other optimizers refuse it: their coupled weight decay, PyTorch's "
                   "Adam(weight_decay=) for instance, is --l2)")
    t.add_argument("--clip-grad-norm", type=float, metavar="MAX", help="scale each step's gradients together to a "
                   "2-norm of at most MAX before the optimizer reads them, as torch.nn.utils.clip_grad_norm_ (the "
                   "usual guard against exploding gradients in recurrent models) (default: no clipping)")
    t.add_argument("--schedule", choices=["constant", "step", "cosine"], help=f"learning-rate schedule per epoch: "
                   f"step multiplies the rate by --step-gamma every --step-every epochs (torch's StepLR); cosine "
                   f"anneals it to 0 over the epochs (default: {defaults['schedule']})")
    t.add_argument("--step-every", type=int, metavar="EPOCHS", help=f"--schedule step: epochs between the rate's "
                   f"steps (StepLR's step_size) (default: {defaults['step_every']})")
    t.add_argument("--step-gamma", type=float, metavar="G", help=f"--schedule step: the rate's factor at each step "
                   f"(StepLR's gamma) (default: {defaults['step_gamma']})")
    t.add_argument("--l2", type=float, metavar="NU", help="L2 penalty nu/2 ||w||^2 on weights, added to the loss "
                   "(default: 0; with adamw you likely want --weight-decay instead)")
    t.add_argument("--l1", type=float, metavar="NU", help="L1 penalty nu ||w||_1 on weights (default: 0)")
    t.add_argument("--penalize", metavar="WHICH", help="the parameters --l2/--l1 penalize: weights (the "
                   "matrices and filters, not biases or norm scales), all, or comma-separated parameter names "
                   "(default: weights)")
    t.add_argument("--dropout", help="keep probabilities: one number for hidden units (inputs keep 0.8), or "
                   "a list: input first, then each hidden layer")
    t.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without "
                   "validation improvement, restoring the best parameters")
    t.add_argument("--min-delta", type=float, help="the smallest validation improvement that counts")
    t.add_argument("--drop-last", action="store_true", help="leave out each epoch's last batch when it is short "
                   "(for a model that needs whole batches)")
    t.add_argument("--refit", action="store_true", help="after early stopping, retrain on train+validation "
                   "from new starting values for the best number of steps")
    t.add_argument("--seed", type=int, metavar="S", help=f"initialization, shuffling and dropout masks (the "
                   f"same seed gives the same run) (default: {defaults['seed']})")
    t.add_argument("--threads", type=int, metavar="T", help="threads of the compiled step (default: 1 for small "
                   "steps, else the CPUs this process may use; results are the same for any count)")
    t.add_argument("--checkpoint-every", type=int, metavar="EPOCHS", help=f"write a checkpoint every EPOCHS "
                   f"epochs into --out, 0: never (default: {defaults['checkpoint_every']})")
    t.add_argument("--out", metavar="DIR", help="write metrics.json, history.csv, weights.npz, data.json (the "
                   "standardization and class labels), loss.png and checkpoints here; a DIR holding a run is "
                   "refused unless --resume or --overwrite")
    t.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out (its results and "
                   "checkpoints are removed first)")
    t.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    t.add_argument("--json", action="store_true", help="also print the metrics as one JSON line")
    pr = sub.add_parser("predict", help="a trained run's predictions for the rows of a file, as CSV",
                        formatter_class=_Help)
    pr.set_defaults(fn=_predict)
    pr.add_argument("--run", required=True, metavar="DIR", help="the --out directory of graphc train (or of a "
                    "training binary)")
    pr.add_argument("--data", required=True, metavar="PATH", help="rows to predict: a .csv (the run's feature "
                    "columns by name; other columns, such as a label, are left out; without a header, every "
                    "column), a .npy of rows or images, a .npz with X, or a bundled dataset's name (its rows); raw "
                    "features, as the run was trained on")
    pr.add_argument("--model", metavar="FILE", help="the model file the run trained (default: the one it "
                    "recorded, or the default MLP)")
    pr.add_argument("--proba", action="store_true", help="classification: each class's probability too")
    pr.add_argument("-o", "--output", metavar="PATH", help="the CSV to write (default: standard output)")
    b = sub.add_parser("build", help="build a standalone native executable that trains a model",
                       formatter_class=_Help)
    b.set_defaults(fn=_build)
    _aot_arguments(b)
    b.add_argument("--optimizer", choices=[n for n in OPTIMIZERS if n != "gd"], help="sgd and momentum build "
                   "the same step (momentum is a run-time value, 0 for plain SGD); adamw's weight decay is a "
                   "run-time value too (the binary's --weight-decay)")
    b.add_argument("--clip-grad-norm", type=float, metavar="MAX", help="build gradient-norm clipping into the "
                   "step (torch.nn.utils.clip_grad_norm_, as graphc train --clip-grad-norm); MAX is the binary's "
                   "default, its --clip-grad-norm changes it at run time (default: no clipping, or a model file's "
                   "OPTIONS)")
    b.add_argument("--mpi", action="store_true", help="link with the MPI library of the mpi extra (its mpicc): "
                   "`mpirun -n P PATH ...` trains data-parallel, with the same weights as `mpirun -n P graphc train`")
    b.add_argument("-o", "--output", required=True, metavar="PATH", help="the executable to write")
    e = sub.add_parser("export", help="export a trained model as a shared library with a C header",
                       formatter_class=_Help)
    e.set_defaults(fn=_export)
    _aot_arguments(e)
    e.add_argument("--weights", required=True, metavar="DIR", help="trained parameters: DIR/<name>.npy (as a "
                   "training binary writes them) or DIR/weights.npz (graphc train)")
    e.add_argument("-o", "--output", required=True, metavar="libNAME.so", help="the shared library to write")
    e.add_argument("--header", metavar="PATH", help="where to write the C header (default: NAME.h beside the "
                   "library)")
    parser._graphc_subparsers = {"demo": demo, "cache": ca, "train": t, "predict": pr, "build": b, "export": e}  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's usage, not graphc's, for an option it does not know
        sub = parser._graphc_subparsers.get(getattr(args, "command", None), parser)  # type: ignore[attr-defined]
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    fn = getattr(args, "fn", None)
    if fn is None:
        parser.print_help()
        return 0
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        print("graphc: error: --resume continues the run in --out and --overwrite replaces it: give one of them",
              file=sys.stderr)
        return 2
    if getattr(args, "resume", False) and not args.out:
        print("graphc: error: --resume needs --out DIR (where the checkpoints are)", file=sys.stderr)
        return 2
    try:
        return fn(args)
    except GraphcError as e:  # NumericalError: training diverged, the status a training binary gives for it
        # one that every rank of a data-parallel run raised alike is said once, by rank 0
        if not getattr(e, "on_every_rank", False) or _rank() == 0:
            print(f"graphc: error: {e}", file=sys.stderr)
        return 5 if isinstance(e, NumericalError) else 2
    except BrokenPipeError:  # `graphc predict ... | head`: the reader has gone; stop quietly (Python's advice)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # the file system said no (a full disk, a permission): no traceback for that
        print(f"graphc: error: {e}", file=sys.stderr)
        return _stop_other_ranks(e)  # rank 0 alone writes --out: a failed checkpoint is this rank's alone
    except MemoryError as e:  # --hidden 100000000: the parameters alone do not fit
        print(f"graphc: error: out of memory ({e or 'an allocation failed'}): the model or the data is too large "
              "for this machine; use smaller layers (--hidden), batches (--batch-size) or data", file=sys.stderr)
        return _stop_other_ranks(e)
    except KeyboardInterrupt as e:
        print("graphc: interrupted", file=sys.stderr)
        return _stop_other_ranks(e)


def _stop_other_ranks(error: BaseException) -> int:
    """The exit status for this rank's own failure (graphc.distributed.rank_failure: the one gc.fit's ranks give).
    Under mpirun, a failure of this rank alone (a checkpoint rank 0 could not write, Ctrl-C): the other ranks
    would wait for this one in their next collective until the watchdog's timeout (120 s) and then blame a rank
    that 'stopped answering'; MPI_Abort stops them at once with this status. (Not for graphc's errors: those a
    rank can raise alone are decided on every rank together, and the others each rank raises with its own
    message, which an abort would cut short.)"""
    from graphc.distributed import rank_failure

    code = rank_failure(error)[1]
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(code)
    return code


def _rank() -> int:
    from graphc.distributed import launched_rank

    return launched_rank()


if __name__ == "__main__":
    sys.exit(main())
