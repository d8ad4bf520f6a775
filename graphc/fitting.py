"""`gc.fit`: train a model on a dataset and write the run's artifacts — what `graphc train` does.

Artifacts in `out`: metrics.json, history.csv (one row per epoch), weights.npz (one array per parameter, by
name), loss.png (learning curves) and checkpoints/ (for --resume)."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from graphc import data as datasets
from graphc.errors import GraphcError, InputError
from graphc.ir.node import Node
from graphc.nn.checkpoint import write_atomic
from graphc.nn.optim import OPTIMIZERS
from graphc.nn.train import FitResult, TrainConfig, Trainer, feature_rows, model_layout, takes_lengths

MODEL_CONTRACT = (
    "a model file is a Python file that defines `model(x, n_outputs)`: x is the input tensor of shape "
    "(N, features), or, when its first parameter is named `images` (`def model(images, n_outputs)`), the "
    "images (N, H, W, C) of a dataset on a grid (digits: (N, 8, 8, 1); a .npz whose X is 4-D); named "
    "`sequences`, time-major sequences (T, N, F) (digits: its 8 rows of 8 pixels; a .npz whose X is (N, T, F)); "
    "named `tokens`, time-major int32 token ids (T, N) (a .npz whose X is (N, T) integers); a parameter named "
    "`lengths` (`def model(tokens, lengths, n_outputs)`) gets each padded sequence's real steps, int32 (N,), "
    "from the data's array `lengths`; it returns "
    "the output tensor of shape (N, n_outputs) (logits for classification, "
    "predictions for regression), built with graphc's DSL (gc.nn.dense, gc.relu, ...). It may also define "
    "OPTIONS = {...} with default training options (command-line flags override them)."
)


def load_model_file(path: str) -> tuple[Callable[[Node, int], Node], dict]:
    p = Path(path)
    if not p.is_file():
        what = "a directory" if p.is_dir() else "not a regular file" if p.exists() else "no such file"
        raise GraphcError(f"--model {path}: {what}. {MODEL_CONTRACT}")
    # read as Python source whatever its name ends with (importlib finds no loader for a .txt or no suffix)
    name = f"graphc_user_model_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, str(p)))
    module = importlib.util.module_from_spec(spec)
    # registered while it runs, as an import would: dataclasses, typing and pickle look the module up by name
    sys.modules[name] = module
    try:
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(name, None)
            raise
    except GraphcError:
        raise
    except SyntaxError as e:
        raise GraphcError(f"--model {path}:{e.lineno}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # sys.exit() in the file too: a failing file, not an exit code
        tb = e.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(p):
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{path}:{line}" if line else path
        raise GraphcError(f"--model {where}: running the file failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, "model", None)
    if not callable(fn):
        raise GraphcError(f"--model {path}: the file defines no `model` function. {MODEL_CONTRACT}")
    options = getattr(module, "OPTIONS", {})
    if not isinstance(options, dict):
        raise GraphcError(f"--model {path}: OPTIONS must be a dict of training options")
    return fn, options


class Progress:
    """One line per epoch; on a terminal, a bar redrawn in place."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream or sys.stdout, enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, row: dict, s: dict) -> None:
        if not self.enabled:
            return
        metric = next((f"{k} {row[k]:.4f}" for k in ("val_accuracy", "val_mse") if k in row), "")
        vloss = f"val_loss {row['val_loss']:.4f}  " if "val_loss" in row else ""
        rate = row["samples_per_second"]
        rate_s = f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}k"
        phase = "refit " if row["phase"] == 2 else ""
        text = (f"{phase}epoch {row['epoch']:>4}/{self.total}  loss {row['train_loss']:.4f}  {vloss}{metric}  "
                f"{rate_s} samples/s")
        if self.tty:
            done = min(row["epoch"], self.total)
            bar = "#" * int(20 * done / max(self.total, 1))
            self.stream.write(f"\r[{bar:<20}] {text}\033[K")
            if done >= self.total or s.get("stopped_early"):
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# Defaults per bundled dataset where the generic ones do not suit it (the CLI's flags still override them).
DATASET_DEFAULTS = {
    "digits": {"lr": 0.1},
    "breast_cancer": {"lr": 0.05, "hidden": [64]},
    "diabetes": {"lr": 0.01, "hidden": [64], "epochs": 50},
}


# Defaults per optimizer where the generic learning rate does not suit it (Adam's steps are ~lr each: 0.1 is far
# too large; 0.001 is Kingma & Ba's default). They win over a dataset's default, tuned for SGD.
OPTIMIZER_DEFAULTS = {name: {"lr": lr} for name, (_, lr) in OPTIMIZERS.items() if lr is not None}

# options that shape the default MLP only: with a model of the user's own they would be silently ignored
MLP_OPTIONS = {"hidden": "--hidden", "dropout": "--dropout", "activation": "--activation", "init": "--init",
               "bias_init": "--bias-init"}
RUN_FILES = ("metrics.json", "history.csv", "weights.npz", "loss.png", "data.json")
HISTORY_COLUMNS = ("phase", "epoch", "step", "lr", "train_loss", "samples_per_second", "val_loss", "val_accuracy",
                   "val_mse", "val_rmse", "val_mse_original_units", "val_rmse_original_units")
LOCK_FILE = ".graphc-train.lock"


BINARY = "graphc training binary"  # metrics.json's written_by in a training binary's --out


def binary_weights(path: Path) -> list[Path]:
    """The NAME.npy weights of a training binary's run in the directory (its metrics.json lists them; an older
    binary's, which has a step label and no configuration, wrote parameters' names: scope.name.npy)."""
    try:
        m = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(m, dict):
        return []
    if m.get("written_by") == BINARY and isinstance(m.get("weights"), list):
        names = [w for w in m["weights"] if isinstance(w, str) and w.endswith(".npy") and "/" not in w]
        return [path / w for w in names if (path / w).is_file()]
    if "step" in m and "config" not in m:
        return sorted(f for f in path.glob("*.npy") if "." in f.name[:-4])
    return []


class OutDir:
    """`--out DIR` for one run: locked against a second `graphc train` on it (flock, released when this
    process ends, even by SIGKILL); a directory holding an earlier run is refused unless the run is resumed
    or `overwrite` is given (then the earlier run's files are removed first: one run's files are never mixed
    with another's); a directory this run created is removed again if the run fails before writing anything."""

    def __init__(self, path: Path, *, resume: bool, overwrite: bool):
        self.path, self.resume, self.overwrite = path, resume, overwrite
        self.fd: int | None = None
        self.created = False

    def open(self) -> OutDir:
        import fcntl
        import os

        p = self.path
        if p.exists() and not p.is_dir():
            raise GraphcError(f"--out {p}: exists and is not a directory")
        self.created = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GraphcError(f"--out {p}: cannot create the directory ({e.strerror})") from None
        lock = p / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise GraphcError(f"--out {p}: cannot create its lock file ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise GraphcError(f"--out {p}: another graphc train (process {pid}) is writing there; wait for it "
                                  "to finish or choose another --out") from None
            try:  # the lock file may have been removed by the run that held it: lock the file now at that path
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            self._check_earlier_run()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def _earlier(self) -> tuple[list[Path], list[Path]]:
        ck = self.path / "checkpoints"
        files = [self.path / f for f in RUN_FILES if (self.path / f).exists()]
        files += binary_weights(self.path)
        ckpts = sorted(ck.glob("ckpt-*.gcp")) if ck.is_dir() else []
        return files, ckpts

    def _check_earlier_run(self) -> None:
        files, ckpts = self._earlier()
        ck = self.path / "checkpoints"
        if ck.is_dir():
            for tmp in ck.glob(".tmp-ckpt-*"):  # a write cut short by a kill; we hold the lock: nobody writes now
                tmp.unlink(missing_ok=True)
        if not files and not ckpts:
            return
        if self.overwrite:
            for f in [*files, *ckpts]:
                f.unlink(missing_ok=True)
            return
        if self.resume and ckpts:
            return
        held = ", ".join([f.name for f in files] + ([f"checkpoints/ ({len(ckpts)} files)"] if ckpts else []))
        if self.resume:
            raise GraphcError(f"--out {self.path}: holds an earlier run ({held}) but no checkpoint to continue from; "
                              "replace it with --overwrite, or choose another --out")
        raise GraphcError(f"--out {self.path}: already holds a run ({held}); continue it with --resume, replace it "
                          "with --overwrite, or choose another --out")

    def close(self, failed: bool = False) -> None:
        import os

        if self.fd is None:
            return
        lock = self.path / LOCK_FILE
        lock.unlink(missing_ok=True)  # still holding the lock: a waiting run re-checks the path (see open)
        if failed and self.created:  # nothing of this run to keep: leave no empty --out behind
            ck = self.path / "checkpoints"
            try:
                if ck.is_dir() and not any(ck.iterdir()):
                    ck.rmdir()
                if not any(self.path.iterdir()):
                    self.path.rmdir()
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None


# gc.fit's own keyword arguments (not TrainConfig options), and names users of other libraries reach for
FIT_ARGS = ("out", "resume", "overwrite", "progress", "label", "features", "task", "train_fraction", "split_seed",
            "log", "grid", "distributed")
_OTHER_NAMES = {"quiet": "progress=False", "silent": "progress=False", "verbose": "progress=True",
                "learning_rate": "lr", "n_epochs": "epochs", "num_epochs": "epochs", "batch": "batch_size",
                "hidden_sizes": "hidden", "hidden_layers": "hidden", "optim": "optimizer"}


def _config(options: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(options) - names
    if unknown:
        import difflib

        hints = []
        for k in sorted(unknown):
            if k in FIT_ARGS:
                hints.append(f"{k!r} is gc.fit's own argument (on the command line, a flag), not a training option")
                continue
            close = difflib.get_close_matches(k, [*names, *FIT_ARGS], n=1)
            like = _OTHER_NAMES.get(k) or (close[0] if close else None)
            if like:
                hints.append(f"{k!r}: did you mean {like}?")
        raise GraphcError(f"unknown training option(s) {sorted(unknown)}{''.join('; ' + h for h in hints)}; "
                          f"training options: {sorted(names)}; and gc.fit's own: {', '.join(FIT_ARGS)}")
    return TrainConfig(**options)


def other_optimizers_options(file_options: dict, given: dict, model_desc: str) -> tuple[dict, Callable | None]:
    """A model file's momentum, weight decay or learning rate set for its own optimizer, which the optimizer
    given replaces (given options override OPTIONS), left out where the new one takes none of it (a learning rate
    is one family's: SGD's 0.05 diverges Adam; kept between optimizers that default alike), not refused as if
    the caller gave it. Returns (the file's options kept, None or a function config -> the note saying so)."""
    opt = given.get("optimizer")
    own = file_options.get("optimizer", "sgd")
    if opt is None or opt == own:
        return file_options, None
    same_lr = OPTIMIZERS.get(opt, (None, None))[1] == OPTIMIZERS.get(own, (None, None))[1]
    takes = {"momentum": opt in ("sgd", "gd", "momentum", "nesterov"), "weight_decay": opt == "adamw",
             "lr": same_lr}
    dropped = {k: file_options[k] for k in takes
               if file_options.get(k) and given.get(k) is None and not takes[k]}
    if not dropped:
        return file_options, None

    def note(config) -> str:
        return (f"note: {', '.join(f'{k}={v!r}' for k, v in dropped.items())} in {model_desc}'s OPTIONS is for its "
                f"optimizer {own!r}; the optimizer given, {opt!r}, takes none: left out"
                + (f" (lr {config.lr:g}, {opt!r}'s default; --lr / lr= chooses)" if "lr" in dropped else ""))

    return {k: v for k, v in file_options.items() if k not in dropped}, note


def fit(model=None, data: str | Path | tuple | datasets.Dataset = "digits", *, out: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True, label: str | None = None,
        features: list[str] | None = None, task: str | None = None, train_fraction: float = 1.0, split_seed: int = 0,
        log: Callable[[str], None] | None = None, grid: tuple[int, ...] | None = None, distributed: bool = False,
        **options) -> FitResult:
    """Train `model` (None: the default MLP; a function `model(x, n_outputs)`; or a path to a model file) on
    `data` (a bundled dataset name, a .npy/.npz/.csv path, arrays (X, y) in memory — X as rows of features or
    (N, H, W[, C]) images, y the labels or targets; (X, y, lengths) for padded sequences — or a Dataset) with
    the options of TrainConfig
    (epochs, batch_size, lr, optimizer, momentum, weight_decay (AdamW's), schedule, l2, l1, dropout, early_stopping,
    refit, seed, threads, checkpoint_every, ...). With `out`, writes metrics.json, history.csv, weights.npz, loss.png
    and checkpoints (and data.json: the features' standardization, the class labels); `resume=True` continues from
    the last good checkpoint there; a directory holding another run is refused unless `overwrite=True`. A model
    whose first parameter is `images` gets x as (N, *grid): the dataset's grid (digits: (8, 8, 1)) unless `grid` is
    given.

    `distributed=True` (under `mpirun -n P`, with the `mpi` extra) trains data-parallel: rank 0 alone reports and
    writes `out`. graphc's errors are raised on every rank alike; a failure of one rank alone (a file it cannot
    write or read, memory, an interrupt) is said by that rank and aborts every rank at once (MPI_Abort)."""
    if out is not None and not str(out).strip():
        raise GraphcError("out (--out): an empty path; give the directory to write the run to, or leave it out")
    dist = None
    if distributed:
        from graphc.distributed import Distributed

        dist = Distributed()
        try:
            return _fit_everywhere(model, data, dist, out=out, resume=resume, overwrite=overwrite, progress=progress,
                                   label=label, features=features, task=task, train_fraction=train_fraction,
                                   split_seed=split_seed, log=log, grid=grid, **options)
        except GraphcError:  # decided on every rank together, or raised by each alike (a divergence)
            raise
        except (Exception, KeyboardInterrupt) as e:  # this rank's alone: the others would wait for the watchdog
            dist.abort(e)
            raise
        finally:  # its watchdog thread: left running after an error, it stopped the process when a peer left
            dist.close()
    return _fit_everywhere(model, data, None, out=out, resume=resume, overwrite=overwrite, progress=progress,
                           label=label, features=features, task=task, train_fraction=train_fraction,
                           split_seed=split_seed, log=log, grid=grid, **options)


def _fit_everywhere(model, data, dist, *, out, resume, overwrite, progress, label, features, task, train_fraction,
                    split_seed, log, grid, **options) -> FitResult:
    if dist is not None:
        if dist.rank != 0:
            progress, log, out = False, (lambda m: None), None
    if log is None:
        log = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    if dist is None:
        from graphc.distributed import launched_ranks

        if launched_ranks() > 1:  # said even with progress off: the run is not what an mpirun user expects
            print(f"graphc: note: this process is one of {launched_ranks()} that mpirun started, but gc.fit was "
                  "called without distributed=True: each trains the whole run alone (and all write `out`); pass "
                  "distributed=True for data-parallel training", file=sys.stderr)
    file_options: dict = {}
    model_desc = "default MLP"
    if isinstance(model, (str, Path)):
        model_desc = str(Path(model).absolute())  # recorded so: the run loads from any directory
        path = str(model)
        # on every rank at once: a file that fails on one rank must stop them all, not leave the others waiting
        model, file_options = (dist.run_everywhere("loading the model file", lambda: load_model_file(path))
                               if dist is not None else load_model_file(path))
    elif model is not None:
        if not callable(model):
            raise GraphcError(f"gc.fit: model must be None (the default MLP), a function model(x, n_outputs) or the "
                              f"path of a model file, got {type(model).__name__} {model!r:.60}")
        model_desc = getattr(model, "__name__", type(model).__name__)
    defaults = dict(DATASET_DEFAULTS.get(data, {})) if isinstance(data, str) else {}  # a copy: updated below
    if model is not None:
        for given, where in ((options, "given"), (file_options, f"in {model_desc}'s OPTIONS")):
            shaping = [MLP_OPTIONS[k] for k in MLP_OPTIONS if k in given]
            if shaping:
                raise GraphcError(f"{', '.join(shaping)} ({where}) shape(s) the default MLP only, and the model "
                                  f"{model_desc} defines its own layers: it would be ignored. Drop it, or build "
                                  "it into the model (e.g. gc.nn.dropout(h, keep), layer sizes in gc.nn.dense)")
        defaults = {k: v for k, v in defaults.items() if k not in MLP_OPTIONS}
    chosen = {**defaults, **file_options, **options}
    file_options, dropped_note = other_optimizers_options(file_options, options, model_desc)
    defaults.update(OPTIMIZER_DEFAULTS.get(chosen.get("optimizer", "sgd"), {}))
    config = _config({**defaults, **file_options, **options})
    config.validate()
    stray = [k for k in ("step_every", "step_gamma") if k in options]
    if stray and config.schedule != "step":
        raise GraphcError(f"{' and '.join(stray)} (--{stray[0].replace('_', '-')}) set(s) the step schedule's decay, "
                          f"but the schedule is {config.schedule!r}: add schedule='step' (--schedule step), or leave "
                          f"{' and '.join(stray)} out")
    if dropped_note:
        log(dropped_note(config))
    if config.optimizer == "adamw" and config.l2:
        log(f"note: l2={config.l2} with adamw adds the penalty l2/2·||w||² to the loss, whose gradient Adam then "
            f"rescales (PyTorch's Adam(weight_decay=)); AdamW's own decay, applied to the weights directly, is "
            f"weight_decay={config.weight_decay} (--weight-decay)")
    low = [k for k in (config.dropout or [])[1:] if k < 0.5]
    if low:  # graphc's dropout is the lecture's keep probability; PyTorch's nn.Dropout(p) takes the drop one
        log(f"note: dropout keeps {low[0]:g} of the hidden units (a keep probability, the lecture's: {1 - low[0]:g} "
            f"are dropped); PyTorch's nn.Dropout(p={low[0]:g}) drops {low[0]:g}: for that give dropout="
            f"{1 - low[0]:g} (--dropout {1 - low[0]:g})")
    # the split is fixed (split_seed), so runs with different training seeds are compared on the same test set
    tokens = model_layout(model) == "tokens"

    def load():
        return data if isinstance(data, datasets.Dataset) else datasets.load(
            data, label=label, features=features, task=task, seed=split_seed, train_fraction=train_fraction,
            tokens=tokens, lengths=takes_lengths(model))

    ds = load() if dist is None else dist.run_everywhere("reading the data", load)
    if config.optimizer == "gd":  # the lecture's gradient descent: every step on the whole training set
        rows = len(ds.X_train) + (len(ds.X_val) if config.refit and ds.X_val is not None else 0)
        if "batch_size" not in {**file_options, **options}:
            config = replace(config, batch_size=rows)  # recorded as it ran
        elif config.batch_size < rows:
            log(f"note: optimizer gd with batch_size {config.batch_size}, under the {rows} training rows, is "
                f"mini-batch SGD ({math.ceil(rows / config.batch_size)} steps an epoch); leave the batch size out "
                "for full-batch gradient descent")
    if task is None and not isinstance(data, datasets.Dataset) and not (isinstance(data, str)
                                                                       and data in datasets.BUNDLED):
        what = (f"{ds.n_outputs} classes" if ds.task == "multiclass" else "two classes" if ds.task == "binary"
                else "numeric targets")
        log(f"{ds.name}: task {ds.task} ({what}), inferred from the labels; --task (task=) overrides")
    if grid is not None:  # a wrong grid is refused before anything is compiled or written
        grid = tuple(grid)
        cells = math.prod(grid) if all(isinstance(d, int) and d >= 1 for d in grid) else None
        if cells != ds.n_features:
            raise GraphcError(f"rows of {ds.n_features} features of {ds.name} cannot be reshaped to the grid {grid}"
                              + (f" ({cells} cells)" if cells else "") + f": the rows' shape (N, {ds.n_features}) "
                              f"and the grid (N, {', '.join(map(str, grid))}) must hold the same number of values")
    model_fn = model  # None: the trainer builds the default MLP
    out_dir = Path(out) if out is not None else None

    def open_out():
        return OutDir(out_dir, resume=resume, overwrite=overwrite).open() if out_dir is not None else None

    # under ranks, a refused --out on rank 0 stops every rank
    lock = open_out() if dist is None else dist.run_everywhere("preparing --out", open_out)
    if lock is None:
        return _fit(model_fn, model_desc, ds, config, None, resume, progress, log, grid, dist)
    failed = True
    try:
        result = _fit(model_fn, model_desc, ds, config, out_dir, resume, progress, log, grid, dist)
        failed = False
        return result
    finally:
        lock.close(failed=failed)


def _fit(model_fn, model_desc: str, ds: datasets.Dataset, config: TrainConfig, out_dir: Path | None, resume: bool,
         progress: bool, log: Callable[[str], None], grid: tuple[int, ...] | None = None, dist=None) -> FitResult:
    check_layout(model_fn, ds, model_desc)
    trainer = Trainer(model_fn, ds.task, ds.n_features, ds.n_outputs, config,
                      y_shape=tuple(ds.y_train.shape[1:]) if ds.task != "multiclass" else (), log=log,
                      grid=grid if grid is not None else ds.grid, data=ds.name, distributed=dist,
                      vocab=ds.vocab)
    if dist is not None:
        dist.start_training(trainer, ds, out_dir)
    _check_outputs(trainer, ds, model_desc)
    trainer.source_rows = dict(ds.source_rows)
    if "training" in ds.source_rows and "validation" in ds.source_rows:
        trainer.source_rows["refit"] = np.concatenate([ds.source_rows["training"], ds.source_rows["validation"]])
    if ds.X_test is not None and len(ds.X_test):  # refused now, not after the training it would end with an error
        trainer.check_data(ds.rows("test"), ds.y_test, "test")
    bar = Progress(config.epochs, enabled=progress)
    phase2 = None
    if config.refit:
        phase2 = (np.concatenate([ds.rows("train"), ds.rows("val")]), np.concatenate([ds.y_train, ds.y_val]))
    t0 = time.perf_counter()
    run = trainer.run(ds.rows("train"), ds.y_train, ds.rows("val"), ds.y_val, out_dir=out_dir, resume=resume,
                      progress=bar, y_std=ds.y_std, phase_data=phase2)
    bar.finish()
    state = run["state"]
    params = trainer.param_values(state)
    test_loss, test_out = trainer.evaluate(state, ds.rows("test"), ds.y_test)
    test = _labelled(trainer.metrics(test_out, ds.y_test, ds.y_std), ds)
    train_loss, train_out = trainer.evaluate(state, ds.rows("train"), ds.y_train)  # inference mode: no dropout
    train = {"train_loss": train_loss, **{f"train_{k}": v for k, v in trainer.metrics(train_out, ds.y_train,
                                                                                       ds.y_std).items()
                                          if isinstance(v, float)}}
    val: dict = {}
    refitted = run["phase"] == 2
    if refitted:  # the refit trained on the validation rows: measured there, it would say nothing
        val = {"val_note": "no validation metrics after --refit: it trains on the validation rows too; "
                           "history.csv has them for the epochs before the refit"}
    elif len(ds.X_val):
        vloss, vout = trainer.evaluate(state, ds.rows("val"), ds.y_val)
        val = {"val_loss": vloss, **{f"val_{k}": v for k, v in trainer.metrics(vout, ds.y_val, ds.y_std).items()
                                     if isinstance(v, float)}}
    metrics = {
        "dataset": ds.name, "task": ds.task, "test_loss": test_loss,
        **{f"test_{k}": v for k, v in test.items()},
        **train,
        **val,
        "epochs": run["phase1_epochs"] or run["epoch"], "refit_epochs": run["epoch"] if run["phase"] == 2 else 0,
        "steps": run["step"], "best_epoch": run["best_epoch"] if config.early_stopping else None,
        "best_step": run["best_step"] if config.early_stopping else None,
        "stopped_early": run["stopped_early"],
        "train_samples_per_second": run["samples"] / run["train_seconds"] if run["train_seconds"] else 0.0,
        "train_seconds": run["train_seconds"], "compile_seconds": trainer.compile_seconds,
        "wall_seconds": time.perf_counter() - t0, "threads": trainer.threads, "seed": config.seed,
        "arena_bytes": trainer.epoch_fn.memory_plan.arena_bytes, "peak_rss_mb": peak_rss_mb(),
        "parameters": int(sum(int(np.prod(p.shape)) for p in trainer.params)),
        "model": model_desc,
        "config": _ran(config, model_fn is None),
        "grid": list(trainer.grid) if trainer.grid is not None else None,
    }
    if ds.classes:
        metrics["classes"] = [_plain(c) for c in ds.classes]
    if dist is not None:
        metrics.update(dist.run_metrics(trainer))
        dist.close()  # its watchdog thread
    result = FitResult(params, run["history"], metrics, config,
                       _predictor(trainer, state, ds.grid, key=config.seed), ds)
    if out_dir is not None:
        try:
            write_artifacts(out_dir, result)
        except OSError as e:  # a full disk, a lost permission: each file is whole or absent (written atomically)
            good = sorted((out_dir / "checkpoints").glob("ckpt-*.gcp"))
            last = (f"the last checkpoint, {good[-1].name}, holds the trained state (run again with --resume to write "
                    "the results)" if good else "no checkpoint holds the trained state")
            raise GraphcError(f"writing the results into {out_dir} failed: {e.strerror or e}"
                              f"{f' ({e.filename})' if e.filename else ''}; {last}") from None
    return result


def check_layout(model_fn, ds: datasets.Dataset, model_desc: str) -> None:
    """Token ids go to a model that asks for `tokens`, and only there: ids are labels of symbols, not
    measurements (an MLP on them, or an embedding of standardized features, would train on nonsense)."""
    tokens = model_layout(model_fn) == "tokens"
    if ds.tokens and not tokens:
        raise GraphcError(f"{ds.name} holds token ids (integers, kept unstandardized) but {model_desc} does not "
                          "ask for tokens: name its first parameter `tokens` (time-major int32 ids (T, N)) and "
                          "embed them (gc.nn.embedding)")
    if tokens and not ds.tokens:
        raise GraphcError(f"{model_desc} asks for tokens (its first parameter is `tokens`) but {ds.name} holds "
                          "features; load token ids with gc.data.load(path, tokens=True) (a .npz with X (N, T) "
                          "integer ids and y)")
    lengths = takes_lengths(model_fn)
    if ds.has_lengths and not lengths:
        raise GraphcError(f"{ds.name} holds padded sequences with their lengths (`lengths`) but {model_desc} does "
                          "not take them: its padding would be read as data. Give the model a parameter `lengths` "
                          "(def model(tokens, lengths, n_outputs)) and pass it on (gc.nn.lstm(xs, H, "
                          "lengths=lengths))")
    if lengths and not ds.has_lengths:
        raise GraphcError(f"{model_desc} takes `lengths` (the real steps of padded sequences) but {ds.name} gives "
                          f"none: save them as an array `lengths` (N,) beside X and y in the .npz, or pass "
                          f"(X, y, lengths) in memory")


def _ran(config: TrainConfig, default_mlp: bool) -> dict:
    """The configuration that ran: without the default MLP's options when the model is the user's own."""
    cfg = asdict(config)
    if not default_mlp:
        for k in MLP_OPTIONS:
            cfg.pop(k, None)
    return cfg


def _plain(v):
    """A class label as JSON and messages should show it: 2.5, not np.float32(2.5); 3, not 3.0."""
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _labelled(m: dict, ds: datasets.Dataset) -> dict:
    """Per-class metrics keyed by the dataset's own class labels (the model sees indices 0..K-1)."""
    if "per_class" in m and ds.classes:
        m = dict(m)
        m["per_class"] = {str(_plain(ds.classes[int(i)])): v for i, v in m["per_class"].items()}
        m["confusion_labels"] = [_plain(c) for c in ds.classes]
    return m


def _check_outputs(trainer: Trainer, ds: datasets.Dataset, model_desc: str = "the model") -> None:
    out = trainer.out
    shape = out.shape
    want = ds.n_outputs
    where = f" (the model {model_desc}; its output is made at {out.source.where()})"
    if ds.task == "multiclass" and (len(shape) != 2 or shape[1] != want):
        raise GraphcError(f"the model returns {out.type_str} but {ds.name} has {want} classes: expected "
                          f"(N, {want}) logits{where}")
    if ds.task != "multiclass":
        y_shape = tuple(ds.y_train.shape[1:])
        ok = tuple(shape[1:]) in (y_shape, (*y_shape, 1)) if y_shape == () else tuple(shape[1:]) == y_shape
        if len(shape) < 1 or not ok:
            raise GraphcError(f"the model returns {out.type_str} but the {ds.task} targets of {ds.name} have "
                              f"{want} value(s) per row: expected (N, {want}) outputs{where}")


def _predictor(trainer: Trainer, state: dict, grid=None, *, key: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """`predict` of a trained model. A model that draws gc.random numbers draws them in inference too, keyed by
    `key`, the run's evaluation key (its seed, as Trainer.evaluate keys validation): its predictions are
    deterministic, and the same in process, from gc.load and from graphc export's library."""
    params = {k: v.copy() for k, v in trainer.param_values(state).items()}
    fn = trainer.eval_fn
    if any(leaf.name == "rng_key" for leaf in fn.signature.inputs):
        params["rng_key"] = np.int64(key)

    width = trainer.n_features
    takes = trainer.lengths

    tokens = trainer.layout == "tokens"
    vocab = trainer.vocab if tokens else None
    id_limit = vocab if vocab is not None else 2**31  # ids the model's int32 cast keeps
    f32_max = float(np.finfo(np.float32).max)

    def predict(X: np.ndarray, lengths=None) -> np.ndarray:
        """The model's outputs for standardized features X (rows x features, or examples on the data's grid);
        no rows give no outputs. A token model's X holds token ids: integers in [0, vocab). A model that takes
        `lengths` needs each row's real steps (N,): what its padding holds is never read."""
        a = feature_rows(X, width, "predict", grid)
        if takes:
            if lengths is None:
                raise InputError("predict: the model takes `lengths` (it was trained on padded sequences): give "
                                 "each row's real steps, predict(X, lengths=...) (graphc predict: an array "
                                 "`lengths` in the .npz); a row of all T steps has length T")
            lengths = datasets.checked_lengths(lengths, len(a), trainer.steps, "predict")
            a = datasets.zero_padding(a.reshape(len(a), trainer.steps, -1), lengths).reshape(len(a), width)
        elif lengths is not None:
            raise InputError("predict: lengths= given, but the model takes no `lengths` (it reads every step of "
                             "every row)")
        bad = ~np.isfinite(a)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"predict: feature {c} of row {r} is {a[r, c]}; features must be finite")
        if tokens:  # the model casts them to int32: 2.5 would be read as 2, -1 or 10**9 wrap
            bad = (a != np.round(a)) | (a < 0) | (a >= id_limit)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InputError(f"predict: token id {a[r, c]:g} at row {r}, step {c} is not an integer in [0, "
                                 f"{id_limit}){' (the vocabulary)' if vocab else ''}")
        big = np.abs(a) > f32_max
        if big.any():
            r, c = np.argwhere(big)[0]
            raise InputError(f"predict: feature {c} of row {r} is {a[r, c]:.6g} (standardized, as the model sees "
                             "it): beyond float32's range, which the model computes in; rescale or clip it")
        X = np.ascontiguousarray(datasets.with_lengths(a, lengths) if takes else a, dtype=np.float32)
        y = np.zeros((len(X), *trainer.y.shape[1:]), trainer.y.dtype)
        return fn(dict(params, x=X, y=y))[1]  # no rows: the compiled call returns empty outputs itself

    return predict


def write_artifacts(out: Path, result: FitResult) -> None:
    from graphc.viz.plot import learning_curves

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    metrics = {k: clean(v) for k, v in result.metrics.items()}
    write_atomic(out / "metrics.json", (json.dumps(metrics, indent=2, default=str) + "\n").encode())
    rows = result.history
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    # one column order whatever the rows' key order (a resumed run's history comes back from its checkpoint)
    cols.sort(key=lambda c: HISTORY_COLUMNS.index(c) if c in HISTORY_COLUMNS else len(HISTORY_COLUMNS))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols, lineterminator="\n")  # not csv's default \r\n: Unix tools see a \r
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_atomic(out / "history.csv", text.getvalue().encode())
    buf = io.BytesIO()
    np.savez(buf, **result.params)
    write_atomic(out / "weights.npz", buf.getvalue())
    if result.dataset is not None:
        # with the key gc.random's draws take in inference, so gc.load and graphc export predict as this run did
        d = {**data_description(result.dataset), "eval_key": int(result.config.seed)}
        write_atomic(out / "data.json", (json.dumps(d, indent=2) + "\n").encode())
    write_atomic(out / "loss.png", learning_curves(curve_series(rows, result.config), xlabel="epoch", ylabel="loss",
                                              title=f"{result.metrics['dataset']}: learning curves"))


def curve_series(rows: list[dict], config: TrainConfig) -> dict[str, list[float]]:
    """loss.png's curves by legend name. The train curve is the objective trained, penalties added and dropout
    on, while the validation curve is the data loss in inference: where they differ the legend says so, or the
    penalty alone reads as a train loss above the validation loss."""
    phase1 = [r for r in rows if r["phase"] == 1]
    refit = [r for r in rows if r["phase"] == 2]
    extra = [f"+ {k.upper()} penalty" for k in ("l2", "l1") if getattr(config, k)]
    if any(k < 1 for k in config.dropout or []):
        extra.append("dropout on")
    train = "train loss" + (f" ({', '.join(extra)})" if extra else "")
    series = {train: [r["train_loss"] for r in phase1]}
    if any("val_loss" in r for r in rows):
        series["validation loss"] = [r.get("val_loss", float("nan")) for r in phase1]
    if refit:  # the refit phase after phase 1's epochs, on train+validation from new starting values
        series[f"refit {train} (train+validation)"] = [float("nan")] * len(phase1) + [r["train_loss"]
                                                                                     for r in refit]
    return series


def data_description(ds: datasets.Dataset) -> dict:
    """What travels with the weights (data.json in --out; embedded by graphc export): the features in order,
    the training split's standardization (the model takes (x - x_mean) / x_std), the task, the class labels in
    output order, and for regression the targets' standardization (predictions * y_std + y_mean)."""
    d = {"dataset": ds.name, "task": ds.task, "features": list(ds.feature_names),
         "x_mean": None if ds.x_mean is None else [float(v) for v in ds.x_mean],
         "x_std": None if ds.x_std is None else [float(v) for v in ds.x_std]}
    if ds.classes:
        d["classes"] = [_plain(c) for c in ds.classes]
    if ds.task == "regression":
        d.update(y_mean=float(ds.y_mean), y_std=float(ds.y_std))
    d.update(n_outputs=ds.n_outputs, grid=list(ds.grid) if ds.grid is not None else None, tokens=ds.tokens,
             vocab=ds.vocab, y_shape=list(ds.y_train.shape[1:]), lengths=ds.has_lengths)
    return d


def load(run: str | Path, model=None, *, threads: int | None = None) -> FitResult:
    """A finished run back from the directory `graphc train --out`, `gc.fit(out=...)` or a training binary's
    --out wrote: the model rebuilt (the default MLP from the configuration metrics.json records; else `model`, the
    model file or function it trained, or the model file the run names, when it is where it was), its weights
    (weights.npz, or a binary's NAME.npy files), the features' standardization and the class labels (data.json).
    `predict`, `predict_raw`, `predict_labels` and `predict_proba` then give what they gave after training."""
    from graphc.aot.build import AotError, _load_weights

    run = Path(run)
    where = f"gc.load({str(run)!r})"
    if run.is_file():
        parent = f": {run.parent}" if (run.parent / "data.json").is_file() else ""
        raise GraphcError(f"{where}: a file, not a directory: pass the --out directory of the run (the one that holds "
                          f"data.json and weights.npz{parent})")
    try:
        d = json.loads((run / "data.json").read_text())
    except FileNotFoundError:
        raise GraphcError(f"{where}: no data.json there: not the --out directory of a finished graphc run") from None
    except (ValueError, OSError) as e:
        raise GraphcError(f"{where}: data.json is not readable JSON ({e})") from None
    if not isinstance(d, dict) or d.get("task") not in datasets.TASKS:
        raise GraphcError(f"{where}: data.json does not describe a graphc run (no task {', '.join(datasets.TASKS)} "
                          "in it): not the --out directory of a finished graphc run")
    try:
        m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    except ValueError as e:
        raise GraphcError(f"{where}: metrics.json is not readable JSON ({e})") from None
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: (tuple(v) if isinstance(v, list) and k == "hidden" else v)
                            for k, v in (m.get("config") or d.get("config") or {}).items() if k in known})
    recorded = m.get("model") or d.get("model") or "default MLP"
    desc = recorded
    if model is None and recorded not in ("default MLP", None) and not str(recorded).startswith("the default MLP"):
        if not Path(recorded).is_file():
            raise GraphcError(f"{where}: the run trained the model {recorded!r}, which is not there now: pass "
                              "model= (its model file or function; graphc predict --model FILE)")
        model = recorded
    if isinstance(model, (str, Path)):
        desc = str(model)
        model, _ = load_model_file(str(model))
    task, classes = d["task"], d.get("classes") or []
    n_features, n_outputs, grid = recorded_sizes(d, m)
    if not n_features:
        raise GraphcError(f"{where}: data.json does not say how many features the model takes (a run written by an "
                          "older graphc): rebuild it with graphc export --weights instead")
    check_standardization(d, n_features, f"{where}: data.json")
    key = eval_key(d, m, f"{where}: data.json")
    grid = grid or datasets.GRIDS.get(d.get("dataset"))
    y_shape = (n_outputs,) if task != "multiclass" and n_outputs > 1 else ()
    if task == "regression" and isinstance(d.get("y_shape"), list) and d["y_shape"] in ([], [n_outputs]):
        y_shape = tuple(d["y_shape"])  # a single target given as (N, 1) stays (N, 1) in predict_raw
    empty = np.zeros((0, n_features), np.float32)
    ds = datasets.Dataset(d.get("dataset", str(run)), task, empty, np.zeros((0, *y_shape)), empty,
                          np.zeros((0, *y_shape)), empty, np.zeros((0, *y_shape)), classes=classes,
                          feature_names=list(d.get("features") or []),
                          x_mean=None if d.get("x_mean") is None else np.asarray(d["x_mean"]),
                          x_std=None if d.get("x_std") is None else np.asarray(d["x_std"]),
                          y_mean=d.get("y_mean", 0.0), y_std=d.get("y_std", 1.0),
                          grid=tuple(grid) if grid else None, vocab=d.get("vocab"),
                          # a training binary's data.json does not say; the model's first parameter does
                          tokens=bool(d.get("tokens")) or model_layout(model) == "tokens",
                          lengths_train=np.zeros(0, np.int64) if d.get("lengths") else None)
    if threads is not None:
        config.threads = threads
    if bool(d.get("lengths")) != takes_lengths(model):
        raise GraphcError(f"{where}: the run trained on padded sequences with their lengths, but the model {desc} "
                          "takes no `lengths`" if d.get("lengths") else
                          f"{where}: the model {desc} takes `lengths` but the run trained on data without them")
    trainer = Trainer(model, task, n_features, n_outputs, config, y_shape=y_shape, log=lambda msg: None,
                      grid=ds.grid, data=ds.name, vocab=ds.vocab)
    try:
        params = _load_weights(run, [*trainer.params, *trainer.buffers])
    except AotError as e:
        raise GraphcError(f"{where}: {e} (the model: {desc})") from None
    history = []
    if (run / "history.csv").is_file():
        with open(run / "history.csv", newline="") as f:
            history = [{k: _number_or_text(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return FitResult(params, history, m, config, _predictor(trainer, params, ds.grid, key=key), ds)


def eval_key(d: dict, m: dict, where: str = "data.json") -> int:
    """The key a run's gc.random draws take in inference (evaluation, predict, an exported library), from its
    data.json `d` and metrics.json `m`: data.json's `eval_key` (the run's seed; gc.fit(out=) and a training binary
    write it); for a run written before graphc recorded it, the seed in metrics.json (its `config`, else the
    top-level `seed` a training binary writes); else 0 (TrainConfig's default seed). A damaged `eval_key` is a
    GraphcError naming `where`."""
    def good(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63

    if "eval_key" in d and not good(d["eval_key"]):
        raise GraphcError(f"{where}: eval_key is {d['eval_key']!r}: it must be an int in [0, 2**63) (the run's seed, "
                          "the key of its gc.random draws in inference); it is written by graphc train with the "
                          "weights: use that run's own data.json")
    for v in (d.get("eval_key"), (m.get("config") or {}).get("seed"), m.get("seed")):
        if good(v):
            return v
    return 0


def recorded_sizes(d: dict, m: dict) -> tuple[int | None, int, tuple | None]:
    """(features, outputs, grid) a run recorded in its data.json `d` and metrics.json `m` (features None when an
    older run did not say)."""
    n_features = d.get("n_features") or len(d.get("features") or d.get("x_mean") or []) or None
    n_outputs = d.get("n_outputs") or (len(d.get("classes") or []) if d.get("task") == "multiclass" else 1)
    grid = m.get("grid") or d.get("grid")
    return n_features, n_outputs, tuple(grid) if grid else None


def check_standardization(d: dict, n_features: int, where: str) -> None:
    """A GraphcError naming `where` (a data.json) when its standardization cannot be what graphc train wrote:
    x_mean and x_std both given or both absent, n_features finite numbers each, every x_std > 0; y_mean and
    y_std finite, y_std > 0. (A predictor built from a damaged one divides by zero, or by missing entries.)"""
    problem = None
    have = [d.get(k) is not None for k in ("x_mean", "x_std")]
    if have[0] != have[1]:
        problem = "has x_mean without x_std" if have[0] else "has x_std without x_mean"
    elif have[0]:
        for k in ("x_mean", "x_std"):
            v = d[k]
            if not isinstance(v, list) or len(v) != n_features:
                problem = (f"{k} has {len(v) if isinstance(v, list) else 'no list of'} values, the model takes "
                           f"{n_features} features")
            elif not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v):
                problem = f"{k} holds a value that is not a finite number"
            elif k == "x_std" and min(v) <= 0:
                problem = f"x_std[{int(np.argmin(v))}] is {min(v)}: every x_std must be > 0"
            if problem:
                break
    for k, low in (("y_mean", None), ("y_std", 0.0)):
        v = d.get(k)
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        if problem is None and v is not None and not (number and (low is None or v > low)):
            problem = f"{k} is {v!r}: it must be a finite number" + (" > 0" if low is not None else "")
    if problem:
        raise GraphcError(f"{where}: {problem}; it is written by graphc train with the weights: use that run's own "
                          "data.json")


def _number_or_text(v: str):
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, MB (Linux's VmHWM; None where /proc does not say)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
