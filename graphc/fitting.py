"""`gc.fit`: train a model on a dataset and write the run's artifacts — what `graphc train` does.

Artifacts in `out`: metrics.json, history.csv (one row per epoch), weights.npz (one array per parameter, by
name), loss.png (learning curves) and checkpoints/ (for --resume)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from graphc import data as datasets
from graphc.errors import GraphcError, InputError
from graphc.ir.node import Node
from graphc.nn.train import FitResult, TrainConfig, Trainer, feature_rows

MODEL_CONTRACT = (
    "a model file is a Python file that defines `model(x, n_outputs)`: x is the input tensor of shape "
    "(N, features), or, when its first parameter is named `images` (`def model(images, n_outputs)`), the "
    "images (N, H, W, C) of a dataset on a grid (digits: (N, 8, 8, 1); a .npz whose X is 4-D); it returns "
    "the output tensor of shape (N, n_outputs) (logits for classification, "
    "predictions for regression), built with graphc's DSL (gc.nn.dense, gc.relu, ...). It may also define "
    "OPTIONS = {...} with default training options (command-line flags override them)."
)


def load_model_file(path: str) -> tuple[Callable[[Node, int], Node], dict]:
    p = Path(path)
    if not p.is_file():
        raise GraphcError(f"--model {path}: no such file. {MODEL_CONTRACT}")
    spec = importlib.util.spec_from_file_location(f"graphc_user_model_{abs(hash(str(p.resolve())))}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except GraphcError:
        raise
    except SyntaxError as e:
        raise GraphcError(f"--model {path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
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


def _config(options: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(options) - names
    if unknown:
        raise GraphcError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(names)}")
    return TrainConfig(**options)


def fit(model=None, data: str | datasets.Dataset = "digits", *, out: str | Path | None = None, resume: bool = False,
        progress: bool = True, label: str | None = None, features: list[str] | None = None, task: str | None = None,
        train_fraction: float = 1.0, split_seed: int = 0, log: Callable[[str], None] | None = None,
        grid: tuple[int, ...] | None = None, **options) -> FitResult:
    """Train `model` (None: the default MLP; a function `model(x, n_outputs)`; or a path to a model file) on
    `data` (a bundled dataset name, a .npy/.npz/.csv path, or a Dataset) with the options of TrainConfig
    (epochs, batch_size, lr, optimizer, momentum, schedule, l2, l1, dropout, early_stopping, refit, seed,
    threads, checkpoint_every, ...). A model whose first parameter is `images` gets x as (N, *grid): the
    dataset's grid (digits: (8, 8, 1)) unless `grid` is given. With `out`, writes metrics.json, history.csv,
    weights.npz, loss.png and checkpoints; `resume=True` continues from the last good checkpoint there."""
    if log is None:
        log = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    file_options: dict = {}
    if isinstance(model, (str, Path)):
        model, file_options = load_model_file(str(model))
    defaults = DATASET_DEFAULTS.get(data, {}) if isinstance(data, str) else {}
    config = _config({**defaults, **file_options, **options})
    config.validate()
    # the split is fixed (split_seed), so runs with different training seeds are compared on the same test set
    ds = data if isinstance(data, datasets.Dataset) else datasets.load(
        str(data), label=label, features=features, task=task, seed=split_seed, train_fraction=train_fraction)
    model_fn = model  # None: the trainer builds the default MLP
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise GraphcError(f"--out {out}: exists and is not a directory")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GraphcError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    trainer = Trainer(model_fn, ds.task, ds.n_features, ds.n_outputs, config,
                      y_shape=tuple(ds.y_train.shape[1:]) if ds.task != "multiclass" else (), log=log,
                      grid=grid if grid is not None else ds.grid, data=ds.name)
    _check_outputs(trainer, ds)
    bar = Progress(config.epochs, enabled=progress)
    phase2 = None
    if config.refit:
        phase2 = (np.concatenate([ds.X_train, ds.X_val]), np.concatenate([ds.y_train, ds.y_val]))
    t0 = time.perf_counter()
    run = trainer.run(ds.X_train, ds.y_train, ds.X_val, ds.y_val, out_dir=out_dir, resume=resume, progress=bar,
                      y_std=ds.y_std, phase_data=phase2)
    bar.finish()
    state = run["state"]
    params = trainer.param_values(state)
    test_loss, test_out = trainer.evaluate(state, ds.X_test, ds.y_test)
    test = trainer.metrics(test_out, ds.y_test, ds.y_std)
    train_loss, train_out = trainer.evaluate(state, ds.X_train, ds.y_train)  # inference mode: no dropout
    train = {"train_loss": train_loss, **{f"train_{k}": v for k, v in trainer.metrics(train_out, ds.y_train,
                                                                                       ds.y_std).items()
                                          if isinstance(v, float)}}
    val = {}
    if len(ds.X_val):
        vloss, vout = trainer.evaluate(state, ds.X_val, ds.y_val)
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
        "parameters": int(sum(v.size for v in params.values())),
        "config": asdict(config),
    }
    result = FitResult(params, run["history"], metrics, config, _predictor(trainer, state), ds)
    if out_dir is not None:
        write_artifacts(out_dir, result)
    return result


def _check_outputs(trainer: Trainer, ds: datasets.Dataset) -> None:
    shape = trainer.out.shape
    want = ds.n_outputs
    if ds.task == "multiclass" and (len(shape) != 2 or shape[1] != want):
        raise GraphcError(f"the model returns {trainer.out.type_str} but {ds.name} has {want} classes: expected "
                          f"(N, {want}) logits")


def _predictor(trainer: Trainer, state: dict) -> Callable[[np.ndarray], np.ndarray]:
    params = {k: v.copy() for k, v in trainer.param_values(state).items()}
    fn = trainer.eval_fn

    width = trainer.x.shape[1]

    def predict(X: np.ndarray) -> np.ndarray:
        """The model's outputs for standardized features X (rows x features)."""
        a = feature_rows(X, width, "predict")
        bad = ~np.isfinite(a)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"predict: feature {c} of row {r} is {a[r, c]}; features must be finite")
        X = np.ascontiguousarray(a, dtype=np.float32)
        y = np.zeros((len(X), *trainer.y.shape[1:]), trainer.y.dtype)
        return fn(dict(params, x=X, y=y))[1]

    return predict


def write_artifacts(out: Path, result: FitResult) -> None:
    from graphc.viz.plot import learning_curves

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    metrics = {k: clean(v) for k, v in result.metrics.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    rows = result.history
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    np.savez(out / "weights.npz", **result.params)
    series = {"train loss": [r["train_loss"] for r in rows if r["phase"] == 1]}
    if any("val_loss" in r for r in rows):
        series["validation loss"] = [r.get("val_loss", float("nan")) for r in rows if r["phase"] == 1]
    (out / "loss.png").write_bytes(learning_curves(series, xlabel="epoch", ylabel="loss",
                                                   title=f"{result.metrics['dataset']}: learning curves"))


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
