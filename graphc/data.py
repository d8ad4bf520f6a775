"""Datasets for training: the bundled defaults and the user's own files, split and standardized.

Bundled: digits (multiclass), breast_cancer (binary), diabetes (regression). They come from the data files
scikit-learn ships inside its package, so nothing is downloaded; scikit-learn is imported only here, only for
these three (it is the one place that ships them under a clear license, and graphc's benchmarks compare
against its MLPs anyway). User data: .npy (a 2-D array, the label in a column), .npz (arrays X and y, or named
ones) or .csv (a header row; the label column named). Features are standardized with statistics of the
training split only, and the split is a fixed, seeded shuffle."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from graphc.errors import GraphcError

BUNDLED = {"digits": "multiclass", "breast_cancer": "binary", "diabetes": "regression"}
TASKS = ("multiclass", "binary", "regression")


class DataError(GraphcError, ValueError):
    """A dataset could not be read or does not fit the task."""


@dataclass
class Dataset:
    name: str
    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: list = field(default_factory=list)  # class labels for classification, in index order
    feature_names: list[str] = field(default_factory=list)
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: float = 0.0  # regression targets are standardized too; predictions * y_std + y_mean undo it
    y_std: float = 1.0

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        if self.task == "multiclass":
            return len(self.classes)
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])

    def summary(self) -> str:
        return (f"{self.name}: {self.task}, {self.n_features} features, {len(self.X_train)}/{len(self.X_val)}/"
                f"{len(self.X_test)} train/val/test rows" + (f", {len(self.classes)} classes" if self.classes else ""))


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from sklearn import datasets
    except ImportError:
        raise DataError(f"the bundled dataset {name!r} comes from scikit-learn's package data; "
                        "install it with: python -m pip install scikit-learn") from None
    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "diabetes": datasets.load_diabetes}[name]
    d = loader()
    names = [str(f) for f in getattr(d, "feature_names", [])] or [f"x{i}" for i in range(d.data.shape[1])]
    return np.asarray(d.data, dtype=np.float64), np.asarray(d.target), names


def _read_file(path: str, label: str | None, features: list[str] | None):
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        if ext == ".npy":
            # memory-mapped: the rows are read a chunk at a time by load(), never all copied at once
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] < 2:
                raise DataError(f"{path}: a .npy dataset must be a 2-D array (rows x columns, the label in one "
                                f"column), got shape {arr.shape}")
            col = arr.shape[1] - 1 if label is None else _column_index(label, arr.shape[1], path) % arr.shape[1]
            y = np.array(arr[:, col])
            X = _Columns(arr, [c for c in range(arr.shape[1]) if c != col])
            return X, y, [f"x{i}" for i in range(X.shape[1])]
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                ykey = label or ("y" if "y" in keys else None)
                xkey = (features[0] if features else None) or ("X" if "X" in keys else ("x" if "x" in keys else None))
                if ykey not in keys or xkey not in keys:
                    raise DataError(f"{path}: expected arrays 'X' and 'y' (or name them with --features/--label); "
                                    f"the file has {keys}")
                X, y = z[xkey], z[ykey]
            if X.ndim != 2:
                raise DataError(f"{path}: {xkey} must be 2-D (rows x features), got shape {X.shape}")
            if len(X) != len(y):
                raise DataError(f"{path}: {xkey} has {len(X)} rows but {ykey} has {len(y)}")
            return X, y, [f"x{i}" for i in range(X.shape[1])]
        if ext == ".csv":
            return _read_csv(path, label, features)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it: {e}") from None
    raise DataError(f"{path}: unknown file type {ext!r}; use .npy, .npz or .csv")


class _Columns:
    """Some columns of a 2-D array (a memory map), read by rows: `X[rows]` gives those rows' columns."""

    def __init__(self, arr: np.ndarray, cols: list[int]):
        self.arr, self.cols = arr, np.asarray(cols)
        self.shape = (arr.shape[0], len(cols))
        self.dtype = arr.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.arr[rows])[:, self.cols]


CHUNK_ELEMENTS = 1 << 21  # rows are checked, measured and standardized this many values at a time


def _chunks(n: int, width: int):
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for i in range(0, n, step):
        yield i, min(n, i + step)


def _column_index(label: str, ncols: int, path: str) -> int:
    try:
        k = int(label)
    except ValueError:
        raise DataError(f"{path}: a .npy file has no column names; give the label as a column number") from None
    if not -ncols <= k < ncols:
        raise DataError(f"{path}: label column {k} is out of range for {ncols} columns")
    return k


def _read_csv(path: str, label: str | None, features: list[str] | None):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path}: a .csv dataset needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label is None:
        raise DataError(f"{path}: name the label column with --label (columns: {', '.join(header)})")
    if label not in header:
        raise DataError(f"{path}: no column named {label!r} (columns: {', '.join(header)})")
    feats = features or [h for h in header if h != label]
    missing = [h for h in feats if h not in header]
    if missing:
        raise DataError(f"{path}: no column(s) named {missing} (columns: {', '.join(header)})")
    idx = [header.index(h) for h in feats]
    li = header.index(label)
    X = np.empty((len(rows) - 1, len(idx)))
    ys = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{r}: expected {len(header)} fields, got {len(row)}")
        for c, k in enumerate(idx):
            try:
                X[r - 2, c] = float(row[k])
            except ValueError:
                raise DataError(f"{path}:{r}: column {feats[c]!r} holds {row[k]!r}, not a number") from None
        ys.append(row[li].strip())
    try:
        y = np.array([float(v) for v in ys])
    except ValueError:
        y = np.array(ys)  # class names
    return X, y, feats


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind in "USO":
        return "binary" if len(np.unique(y)) == 2 else "multiclass"
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        k = len(np.unique(y))
        if k == 2:
            return "binary"
        if k <= 50:
            return "multiclass"
    return "regression"


def split_indices(n: int, seed: int, val: float, test: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test)))
    n_val = max(1, int(round(n * val))) if val > 0 else 0
    if n - n_test - n_val < 1:
        raise DataError(f"{n} rows are too few to split into train/validation/test")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def load(source: str = "digits", *, label: str | None = None, features: list[str] | None = None,
         task: str | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
         train_fraction: float = 1.0) -> Dataset:
    """A bundled dataset by name, or a .npy/.npz/.csv file, split into train/validation/test with a fixed
    seed and standardized with the training split's statistics. `train_fraction` < 1 keeps only that share
    of the training rows (for overfitting studies)."""
    if source in BUNDLED:
        X, y, names = _bundled(source)
        task = task or BUNDLED[source]
        name = source
    else:
        X, y, names = _read_file(source, label, features)
        task = task or _infer_task(np.asarray(y))
        name = os.path.basename(source)
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if not isinstance(X, _Columns):
        X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise DataError(f"{name}: features must be a non-empty 2-D array, got shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{name}: features must be numbers, got {X.dtype} values")
    n, width = X.shape

    def rows(idx) -> np.ndarray:  # float64 rows (a slice or an index array), a chunk at a time
        return np.asarray(X[idx], dtype=np.float64)

    for i, j in _chunks(n, width):
        bad = ~np.isfinite(rows(slice(i, j)))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{name}: feature {names[c] if c < len(names) else c!r} is not finite in row {i + r}")
    y = np.asarray(y)
    classes: list = []
    if task in ("multiclass", "binary"):
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                r = int(np.argmax(bad))
                raise DataError(f"{name}: label {y[r]!r} in row {r} is not an integer; a {task} task needs integer "
                                "(or text) class labels — use --task regression for numeric targets")
        classes_arr, y_idx = np.unique(y, return_inverse=True)
        classes = classes_arr.tolist()
        if task == "binary" and len(classes) != 2:
            raise DataError(f"{name}: a binary task needs exactly 2 label values, found {len(classes)}")
        if len(classes) < 2:
            raise DataError(f"{name}: a classification task needs at least 2 classes")
        y = y_idx.astype(np.int32) if task == "multiclass" else y_idx.astype(np.float32)
    else:
        if y.dtype.kind not in "fiu" or not np.all(np.isfinite(y.astype(np.float64))):
            raise DataError(f"{name}: regression targets must be finite numbers")
        y = y.astype(np.float64)
    tr, va, te = split_indices(len(X), seed, val_fraction, test_fraction)
    if train_fraction < 1.0:
        tr = tr[:max(2, int(round(len(tr) * train_fraction)))]
    # training statistics (two passes, float64) and the standardized float32 splits, a chunk of rows at a time:
    # peak memory is the splits plus one chunk, not several float64 copies of the data
    total = np.zeros(width)
    for i, j in _chunks(len(tr), width):
        total += rows(tr[i:j]).sum(0)
    mean = total / len(tr)
    sq = np.zeros(width)
    for i, j in _chunks(len(tr), width):
        sq += ((rows(tr[i:j]) - mean) ** 2).sum(0)
    std = np.sqrt(sq / len(tr))
    std[std == 0] = 1.0

    def standardized(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), width), np.float32)
        for i, j in _chunks(len(idx), width):
            out[i:j] = (rows(idx[i:j]) - mean) / std
        return out

    y_mean, y_std = 0.0, 1.0
    if task == "regression":
        y_mean = float(y[tr].mean())
        y_std = float(y[tr].std()) or 1.0
        y = ((y - y_mean) / y_std).astype(np.float32)
    return Dataset(name, task, standardized(tr), y[tr], standardized(va), y[va], standardized(te), y[te], classes,
                   names, mean, std, y_mean, y_std)
