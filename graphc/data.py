"""Datasets for training: the bundled defaults and the user's own files, split and standardized.

Bundled: digits (multiclass), breast_cancer (binary), diabetes (regression). They come from the data files
scikit-learn ships inside its package, so nothing is downloaded; scikit-learn is imported only here, only for
these three (it is the one place that ships them under a clear license, and graphc's benchmarks compare
against its MLPs anyway), and not for digits, whose file is read as scikit-learn reads it. User data: .npy (a
2-D array, the label in a column), .npz (arrays X and y, or named ones), .csv (a header row or none; the label
column named or numbered) or arrays (X, y) in memory. Features are standardized with statistics of the training
split only, and the split is a fixed, seeded shuffle."""

from __future__ import annotations

import csv
import os
import re
import zipfile
import zlib
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
    grid: tuple[int, ...] | None = None  # one example's (H, W, C) (or (T, C)) for data on a grid; rows hold it
    # flattened row-major (channels last), and a model that asks for images gets x as (N, *grid)
    tokens: bool = False  # rows are sequences of integer token ids (N, T), kept as they are (not standardized)
    vocab: int | None = None  # the vocabulary size a token dataset declares (its ids lie in [0, vocab))
    # split ("training", "validation", "test") -> the source row of each of its rows (errors name those)
    source_rows: dict = field(default_factory=dict)
    # sequences of different lengths, padded to T: each row's length (N,) per split (None: every row is T steps).
    # The padding past a row's length is zero in X, whatever the data held there
    lengths_train: np.ndarray | None = None
    lengths_val: np.ndarray | None = None
    lengths_test: np.ndarray | None = None

    @property
    def steps(self) -> int | None:
        """T, the steps of each row of sequences (token ids: one a column; sequences: the grid's first axis)."""
        if self.tokens:
            return self.n_features
        return int(self.grid[0]) if self.grid is not None else None

    @property
    def has_lengths(self) -> bool:
        return self.lengths_train is not None

    def rows(self, split: str) -> np.ndarray:
        """The rows a model is fed for a split ("train", "val", "test"): X, with each row's length appended as a
        last column when the data has lengths (a model that takes `lengths` splits it off in its graph, so the
        lengths travel with their rows through shuffling and batching)."""
        X, lengths = getattr(self, f"X_{split}"), getattr(self, f"lengths_{split}")
        return X if lengths is None else with_lengths(X, lengths)

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


GRIDS = {"digits": (8, 8, 1)}  # bundled image sets: each row is an 8x8 grey image, row-major


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """digits as `sklearn.datasets.load_digits` gives it, read from the file it reads (data/digits.csv.gz: 64
    pixels and the class a row) without importing scikit-learn: that import is ~1 s of CPU in every process that
    loads digits (each rank of an mpirun). None where the file is not there or not of that form."""
    import gzip
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")  # finds the package without running it
        where = list(spec.submodule_search_locations or []) if spec is not None else []
        if not where:
            return None
        with gzip.open(os.path.join(where[0], "datasets", "data", "digits.csv.gz"), "rt", encoding="utf-8") as f:
            data = np.loadtxt(f, delimiter=",")
    except (OSError, ValueError, ImportError, EOFError):
        return None
    if data.ndim != 2 or data.shape[1] != 65:
        return None
    return data[:, :-1], data[:, -1].astype(int), [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    found = _digits() if name == "digits" else None
    if found is not None:
        return found
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


def _check_label_and_features(path: str, label: str | None, features: list[str] | None) -> None:
    """--features names each column once and never the label's (that would train on the answer)."""
    if features:
        twice = sorted({f for f in features if features.count(f) > 1})
        if twice:
            raise DataError(f"{path}: --features names {', '.join(map(repr, twice))} more than once")
        if label is not None and label in features:
            raise DataError(f"{path}: --features includes the label {label!r} (--label): a model given its own "
                            "answer as a feature learns nothing; leave it out of --features")


def _read_file(path: str, label: str | None, features: list[str] | None, want_lengths: bool | None = None):
    if not path.strip():
        raise DataError(f"{path!r}: an empty dataset path; give a .npy/.npz/.csv file or a bundled dataset "
                        f"({', '.join(BUNDLED)})")
    ext = os.path.splitext(path)[1].lower()
    _check_label_and_features(path, label, features)
    if not os.path.exists(path):
        import difflib

        close = difflib.get_close_matches(path, list(BUNDLED), n=1, cutoff=0.6)
        hint = f"; did you mean the bundled dataset {close[0]!r}?" if close else ""
        raise DataError(f"{path}: no such file, and not a bundled dataset ({', '.join(BUNDLED)}){hint}")
    try:
        if ext == ".npy":
            # read a chunk of rows at a time by load() (file reads: the data passes through the page cache, not
            # this process's memory), never all copied at once
            arr = _NpyRows(path)
            if len(arr.shape) != 2 or arr.shape[1] < 2:
                raise DataError(f"{path}: a .npy dataset must be a 2-D array (rows x columns, the label in one "
                                f"column), got shape {arr.shape}")
            col = arr.shape[1] - 1 if label is None else _column_index(label, arr.shape[1], path) % arr.shape[1]
            cols = ([_column_index(f, arr.shape[1], path, "feature") % arr.shape[1] for f in features] if features else
                    [c for c in range(arr.shape[1]) if c != col])
            if col in cols or len(set(cols)) != len(cols):
                raise DataError(f"{path}: --features {','.join(features or [])} names a column twice or the label's "
                                f"(column {col}); give each feature column once, without the label's")
            y = np.concatenate([arr[i:j][:, col] for i, j in _chunks(arr.shape[0], arr.shape[1])]
                               or [np.zeros(0, arr.dtype)])
            X = _Columns(arr, cols)
            return X, y, [f"x{i}" for i in range(X.shape[1])], None
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                ykey = label or ("y" if "y" in keys else None)
                xkey = (features[0] if features else None) or ("X" if "X" in keys else ("x" if "x" in keys else None))
                if label is not None and label not in keys:
                    raise DataError(f"{path}: --label {label!r}: the file has no array of that name (arrays: "
                                    f"{', '.join(keys)})")
                if features and features[0] not in keys:
                    raise DataError(f"{path}: --features {features[0]!r}: the file has no array of that name "
                                    f"(arrays: {', '.join(keys)}); for a .npz give the features' array name")
                if ykey not in keys or xkey not in keys:
                    raise DataError(f"{path}: expected arrays 'X' and 'y' (or name them with --features/--label); "
                                    f"the file has {keys}")
                if features and len(features) > 1:
                    raise DataError(f"{path}: --features names one array of a .npz (its features), got "
                                    f"{','.join(features)}")
                if xkey == ykey:
                    raise DataError(f"{path}: the labels (--label {ykey}) and the features are the same array "
                                    f"{xkey!r}; name the labels' array with --label and the features' with --features")
                X, y = _array(z, xkey, path), _array(z, ykey, path)
                lengths = _npz_lengths(z, path, (xkey, ykey), want_lengths)
            if lengths is not None:
                X, lengths = _sequence_lengths(X, lengths, path, xkey, tokens=False)
            return (*_features_and_labels(X, y, path, xkey, ykey), lengths)
        if ext == ".csv":
            return (*_read_csv(path, label, features), None)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a damaged or foreign file
        raise DataError(f"{path}: cannot read it: {e}{_ragged_hint(e)}") from None
    raise DataError(f"{path}: unknown file type {ext!r}; use .npy, .npz or .csv")


def _array(z, key: str, path: str) -> np.ndarray:
    """One array of an open .npz; one numpy cannot read (Python objects: ragged sequences) named."""
    try:
        return z[key]
    except ValueError as e:
        raise DataError(f"{path}: array {key!r} cannot be read: {e}{_ragged_hint(e)}") from None


def _npz_lengths(z, path: str, taken: tuple, want: bool | None) -> np.ndarray | None:
    """A .npz's `lengths` array (None where it has none). `want` True: the model takes lengths, so the file must
    have them; False: it takes none, so lengths there (padding it would read as data) are refused; None: either."""
    have = LENGTHS in z.files and LENGTHS not in taken
    if want and not have:
        raise DataError(f"{path}: the model takes `lengths` (the real steps of padded sequences) but the file has no "
                        f"array `{LENGTHS}` (arrays: {', '.join(z.files)}); save each row's length as `{LENGTHS}` "
                        "(N,) beside X and y")
    if want is False and have:
        raise DataError(f"{path}: the file holds padded sequences' `{LENGTHS}`, but the model takes none: its padding "
                        "would be read as data. Give the model a parameter `lengths` (def model(tokens, lengths, "
                        "n_outputs)) and pass it on (gc.nn.lstm(xs, H, lengths=lengths))")
    return _array(z, LENGTHS, path) if have else None


def _ragged_hint(e: Exception) -> str:
    if "Object arrays" not in str(e):
        return ""
    return ("; an array of Python objects is what numpy saves for sequences of different lengths (ragged): pad "
            "them to one length T and save a numeric (N, T) or (N, T, F) array with each row's length in an "
            "array `lengths` (N,) (in memory: (X, y, lengths)); a model that takes `lengths` reads them")


MAX_TOKEN = 1 << 24  # ids travel in float32 rows, exact below 2^24
LENGTHS = "lengths"  # a .npz's array of each padded sequence's length


def with_lengths(X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows X (N, width) with the lengths (N,) as a last float32 column (exact: a length is at most T < 2^24)."""
    return np.concatenate([np.asarray(X, np.float32), np.asarray(lengths, np.float32).reshape(-1, 1)], axis=1)


def checked_lengths(lengths, n: int, steps: int, where: str, key: str = "lengths") -> np.ndarray:
    """`lengths` as int64 (N,): integers, one per row of the data, each in [0, steps] (0: an empty sequence, the
    recurrent layers give its initial state; PyTorch's pack_padded_sequence refuses 0, Keras' masking takes it),
    else a DataError naming `where`, `key`, the row and the value."""
    a = np.asarray(lengths) if not isinstance(lengths, str) else np.asarray(lengths, dtype=object)
    if a.dtype.kind not in "iu":
        what = "True/False" if a.dtype.kind == "b" else f"{a.dtype}"
        raise DataError(f"{where}: {key} hold {what} values, not integers: give each sequence's number of real "
                        f"steps as an integer ({key}.astype(np.int64))")
    if a.shape != (n,):
        raise DataError(f"{where}: {key} must be (N,) = ({n},), one length per sequence of X, got shape {a.shape}")
    bad = (a < 0) | (a > steps)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{where}: {key}[{r}] (row {r}) is {int(a[r])}, outside [0, {steps}]: a sequence padded "
                        f"to T = {steps} steps has between 0 and {steps} real ones")
    return a.astype(np.int64)


def zero_padding(X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """X (N, T, ...) with every step at or past its row's length set to 0: what the padding held (garbage, NaN,
    a pad id of -1) is never read, checked or standardized."""
    keep = np.arange(X.shape[1])[None, :] < np.asarray(lengths)[:, None]
    keep = keep.reshape(keep.shape + (1,) * (X.ndim - 2))
    return np.where(keep, X, np.zeros((), X.dtype))


def _sequence_lengths(X: np.ndarray, lengths, where: str, xkey: str = "X", key: str = "lengths", *,
                      tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """(X with its padding zeroed, lengths checked) for sequences X (N, T, F) or token ids (N, T)."""
    want = 2 if tokens else 3
    if X.ndim != want:
        raise DataError(f"{where}: {key} are the lengths of padded sequences, which go with "
                        + ("token ids (N, T)" if tokens else "sequences (N, T, F)")
                        + f"; {xkey} has shape {X.shape}")
    lengths = checked_lengths(lengths, len(X), X.shape[1], where, key)
    return zero_padding(X, lengths), lengths


def _features_and_labels(X: np.ndarray, y: np.ndarray, where: str, xkey: str = "X", ykey: str = "y"):
    """(X as rows, y, feature names) from features X — 2-D rows, 3-D (N, H, W) grey images or 4-D (N, H, W, C)
    images, kept flattened with their grid — and one label row per row of X."""
    if X.ndim not in (2, 3, 4):
        raise DataError(f"{where}: {xkey} must be 2-D (rows x features), 3-D (N, H, W) grey images or 4-D "
                        f"(N, H, W, C) images (channels last), got shape {X.shape}")
    if X.ndim > 2 and len(X) == 0:  # said before the grid is flattened: the shape the user saved or passed
        raise DataError(f"{where}: features must be a non-empty array, got {xkey} of shape {X.shape}: no examples "
                        f"(an empty first axis)")
    if y.ndim == 0 or len(X) != len(y):
        raise DataError(f"{where}: {xkey} has {len(X)} rows but {ykey} has "
                        f"{len(y) if y.ndim else 'none (a scalar)'}; give one label per row")
    if X.ndim > 2:  # images: rows are the images flattened row-major, the grid kept beside them
        grid = tuple(int(d) for d in X.shape[1:]) + ((1,) if X.ndim == 3 else ())
        if 0 in grid:
            raise DataError(f"{where}: {xkey} has an empty image shape {X.shape}")
        return _Grid(X.reshape(len(X), int(np.prod(grid))), grid), y, [f"x{i}" for i in range(int(np.prod(grid)))]
    return X, y, [f"x{i}" for i in range(X.shape[1])]


def _in_memory(source) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(X, y, lengths or None) given as arrays (or anything numpy turns into numeric arrays), checked like a
    .npz's: a pair (X, y), or a triple (X, y, lengths) for padded sequences."""
    if len(source) not in (2, 3):
        raise DataError(f"data given in memory must be a pair (X, y) of arrays, got a {type(source).__name__} of "
                        f"{len(source)} items (padded sequences: a triple (X, y, lengths))")
    out = []
    for a, what in zip(source, ("X", "y", "lengths")[:len(source)], strict=True):
        try:
            a = np.asarray(a)
        except ValueError as e:
            raise DataError(f"arrays: {what} cannot be made an array: {e}{_ragged_hint(e)}") from None
        if a.dtype.kind not in "fiubUS":
            raise DataError(f"arrays: {what} must hold numbers{' or class labels' if what == 'y' else ''}, got "
                            f"{a.dtype} values" + (" (ragged rows?)" if a.dtype.kind == "O" else ""))
        out.append(a)
    return out[0], out[1], (out[2] if len(out) == 3 else None)


def _read_tokens(path: str, label: str | None, features: list[str] | None, want_lengths: bool | None = None):
    """Token ids (N, T) and labels from a .npz (arrays X and y, or named; an optional scalar `vocab`), checked:
    integers, >= 0, below the declared vocabulary, one length T for all rows."""
    if os.path.splitext(path)[1].lower() != ".npz":
        raise DataError(f"{path}: a model that asks for tokens reads them from a .npz holding X (N, T) integer "
                        "token ids and y (and optionally a scalar `vocab`)")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    _check_label_and_features(path, label, features)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            xkey = (features[0] if features else None) or ("X" if "X" in keys else "x")
            ykey = label or "y"
            if xkey == ykey:
                raise DataError(f"{path}: the labels (--label {ykey}) and the token ids are the same array "
                                f"{xkey!r}; name the labels' array with --label and the ids' with --features")
            for k, flag in ((xkey, "--features"), (ykey, "--label")):
                if k not in keys:
                    raise DataError(f"{path}: no array {k!r} (arrays: {', '.join(keys)}); name the token ids X and "
                                    f"the labels y, or give their names with {flag}")
            X, y = _array(z, xkey, path), _array(z, ykey, path)
            vocab = z["vocab"] if "vocab" in keys else None
            lengths = _npz_lengths(z, path, (xkey, ykey), want_lengths)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a damaged or foreign file
        raise DataError(f"{path}: cannot read it: {e}{_ragged_hint(e)}") from None
    if lengths is not None:
        X, lengths = _sequence_lengths(X, lengths, path, xkey, tokens=True)
    return (*_checked_tokens(X, y, vocab, path, xkey, ykey), lengths)


def _checked_tokens(X: np.ndarray, y: np.ndarray, vocab, path: str, xkey: str = "X", ykey: str = "y",
                    in_memory: bool = False):
    """Token ids (N, T) as float32 (exact below 2^24), their labels and the vocabulary: integers, >= 0, below
    the declared vocabulary (`vocab`, a scalar array, or None), one row per label. `in_memory`: X was passed,
    not read from a file (the fix is then how it is passed, not how it is saved)."""
    if X.ndim != 2 or X.shape[1] < 1:
        raise DataError(f"{path}: token ids {xkey} must be (N, T), one row of T ids per sequence, got shape "
                        f"{X.shape}")
    if X.dtype.kind not in "iu":
        fix = "pass them as integers" if in_memory else "save them as int32 or int64"
        raise DataError(f"{path}: token ids {xkey} hold {X.dtype} values, not integers; {fix} "
                        f"({'e.g. ' if not in_memory else ''}{xkey}.astype(np.int32))")
    if y.ndim == 0 or len(X) != len(y):
        raise DataError(f"{path}: {xkey} has {len(X)} rows but {ykey} has {len(y) if y.ndim else 'none (a scalar)'}")
    if vocab is not None:
        if vocab.shape != () or vocab.dtype.kind not in "iu" or int(vocab) < 1:
            raise DataError(f"{path}: `vocab` must be a positive integer scalar (the number of token ids), got "
                            f"{vocab.dtype} {vocab.shape}")
        vocab = int(vocab)
    limit = vocab if vocab is not None else MAX_TOKEN
    bad = (X < 0) | (X >= limit)
    if bad.any():
        r, t = np.argwhere(bad)[0]
        v = int(X[r, t])
        if v < 0:
            why = "token ids are >= 0"
        elif vocab is not None:
            why = f"outside the vocabulary [0, {vocab}) the file declares (array `vocab`)"
        else:
            why = f"token ids must be below 2^24 = {MAX_TOKEN}"
        raise DataError(f"{path}: token id {v} in row {r}, step {t} of {xkey}: {why}")
    return X.astype(np.float32), y, vocab


class _Grid(np.ndarray):
    """Rows of flattened images that remember their grid (H, W, C)."""

    def __new__(cls, arr: np.ndarray, grid: tuple[int, ...]):
        obj = np.asarray(arr).view(cls)
        obj.grid = grid
        return obj


class _NpyRows:
    """A 2-D .npy file read by ranges of rows (`rows[i:j]`): C-order data with plain file reads, so that what
    was read is not held by this process; Fortran order through a memory map."""

    def __init__(self, path: str):
        self.path = path
        self._map = None
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                self.shape, fortran, self.dtype = read(f)
                self.offset = f.tell()
        except ValueError:  # a header version these readers do not know: numpy's own memory map
            fortran = True
        if fortran:
            self._map = np.load(path, mmap_mode="r", allow_pickle=False)
            self.shape, self.dtype = self._map.shape, self._map.dtype
        if self.dtype.hasobject:
            raise ValueError("the array holds Python objects (pickled); save numbers")

    def __getitem__(self, rows: slice) -> np.ndarray:
        i, j, _ = rows.indices(self.shape[0])
        if self._map is not None:
            return np.array(self._map[i:j])
        width = self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * width * self.dtype.itemsize)
            a = np.fromfile(f, dtype=self.dtype, count=max(j - i, 0) * width)
        if a.size != max(j - i, 0) * width:
            raise DataError(f"{self.path}: the file is truncated")
        return a.reshape(-1, width)


class _Columns:
    """Some columns of a 2-D array or .npy file, read by ranges of rows: `X[i:j]` gives those rows' columns."""

    def __init__(self, arr, cols: list[int]):
        self.arr, self.cols = arr, np.asarray(cols)
        self.shape = (arr.shape[0], len(cols))
        self.dtype = arr.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.arr[rows])[:, self.cols]


CHUNK_ELEMENTS = 1 << 21  # rows are checked, measured and standardized this many values at a time


def _chunks(n: int, width: int):
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for i in range(0, n, step):
        yield i, min(n, i + step)


def _column_index(label: str, ncols: int, path: str, what: str = "label") -> int:
    try:
        k = int(label)
    except ValueError:
        raise DataError(f"{path}: a .npy file has no column names; give the {what} as a column number") from None
    if not -ncols <= k < ncols:
        raise DataError(f"{path}: {what} column {k} is out of range for {ncols} columns")
    return k


# a number as a CSV writes one: ASCII digits, a point, an exponent, inf or nan. Python's float() also reads
# "1_000" (1000) and other scripts' digits ("١٢", 12), which a data file means as text, not as numbers.
_NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|nan)\s*", re.ASCII | re.IGNORECASE)


def _float(cell: str) -> float:
    """float(cell) for a cell that is a number as written in a data file; ValueError otherwise."""
    if not _NUMBER.fullmatch(cell):
        raise ValueError(f"not a number: {cell!r}")
    return float(cell)


def _number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


def _csv_table(path: str):
    """(header, data rows, the line number of the first data row): a header row names the columns (without one,
    a first row of numbers: the columns are numbered from 0); the delimiter is sniffed (',' ';' tab '|', as
    spreadsheets export them); a UTF-8 byte-order mark is skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    try:
        dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if r]
    if rows and all(_number(c) for c in rows[0]):
        return [str(k) for k in range(len(rows[0]))], rows, 1
    if len(rows) < 2:
        raise DataError(f"{path}: a .csv dataset needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    seen: set[str] = set()
    twice = [h for h in header if h in seen or seen.add(h)]
    if twice:  # columns are found by name (the label, --features, a run's features when predicting)
        raise DataError(f"{path}:1: the header names column(s) {', '.join(map(repr, dict.fromkeys(twice)))} more "
                        "than once; give every column its own name")
    return header, rows[1:], 2


def _csv_column(path: str, header: list[str], name: str, what: str) -> int:
    """A column by name, or by number (negative from the end) where no column has that name."""
    if name in header:
        return header.index(name)
    try:
        k = int(name)
    except ValueError:
        k = None
    if k is not None and -len(header) <= k < len(header):
        return k % len(header)
    import difflib

    close = difflib.get_close_matches(name, header, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(f"{path}: no {what} column named {name!r} (columns: {', '.join(header)}){hint}")


def _csv_floats(path: str, header: list[str], data: list, first: int, idx: list[int]) -> np.ndarray:
    X = np.empty((len(data), len(idx)))
    for r, row in enumerate(data, start=first):
        if len(row) != len(header):
            raise DataError(f"{path}:{r}: expected {len(header)} fields, got {len(row)}")
        for c, k in enumerate(idx):
            try:
                X[r - first, c] = _float(row[k])
            except ValueError:
                why = ("is empty (a missing value): fill it in or drop the row; graphc does not impute"
                       if not row[k].strip() else
                       f"holds {row[k]!r}, not a number: encode it as numbers (or, when training, leave the "
                       "column out with --features)")
                raise DataError(f"{path}:{r}: column {header[k]!r} {why}") from None
    return X


def read_features(path: str | os.PathLike, names: list[str], n_features: int,
                  grid: tuple[int, ...] | None = None) -> np.ndarray:
    """The feature rows of a file to predict on (float64, (rows, n_features)): a .csv's columns `names` by name
    (other columns, such as the label, are left out), or all its columns when it has no header; a .npy's rows
    (examples on the run's `grid` flattened: (N, 8, 8, 1) or (N, 8, 8) for digits); a .npz's X; a
    bundled dataset's rows, by its name (`digits`). The count must be the model's; examples of another shape are
    refused, not reinterpreted."""
    return _rows_to_predict(path, names, n_features, grid, None)[0]


def read_sequences(path: str | os.PathLike, n_features: int, grid: tuple[int, ...] | None,
                   steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, lengths) of padded sequences to predict on, from a .npz with X and `lengths` (as graphc train reads
    them): the padding zeroed before anything is checked (it is never read)."""
    return _rows_to_predict(path, [], n_features, grid, steps)


def _rows_to_predict(path, names: list[str], n_features: int, grid, steps: int | None):
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    lengths = None
    if steps is not None and ext != ".npz":
        raise DataError(f"{path}: the model takes the lengths of padded sequences: give a .npz holding X and an "
                        f"array `{LENGTHS}` (N,) of each row's real steps")
    try:
        if path in BUNDLED and not os.path.exists(path):  # a bundled dataset's name: its feature rows, as loaded
            X = _bundled(path)[0]
        elif ext == ".csv":
            header, data, first = _csv_table(path)
            if first == 2 and names and all(n in header for n in names):
                idx = [header.index(n) for n in names]
            elif first == 2 and names:
                missing = [n for n in names if n not in header]
                raise DataError(f"{path}: the model's feature column(s) {missing[:5]} are not there (columns: "
                                f"{', '.join(header)})")
            else:
                idx = list(range(len(header)))
            X = _csv_floats(path, header, data, first, idx)
        elif ext in (".npy", ".npz"):
            if ext == ".npy":
                X = np.load(path, allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as z:
                    key = "X" if "X" in z.files else "x" if "x" in z.files else None
                    if key is None:
                        raise DataError(f"{path}: expected an array 'X' of features (the file has {z.files})")
                    X = z[key]
                    if steps is not None and LENGTHS not in z.files:
                        raise DataError(f"{path}: the model takes the lengths of padded sequences, and the file "
                                        f"has no array `{LENGTHS}` (arrays: {', '.join(z.files)}); save each row's "
                                        f"real steps as `{LENGTHS}` (N,) beside X (a full row's length is T)")
                    if steps is None and LENGTHS in z.files:
                        raise DataError(f"{path}: the file has padded sequences' `{LENGTHS}`, but the model takes "
                                        "none (it reads every step of every row, padding included)")
                    if steps is not None:
                        lengths = z[LENGTHS]
            if X.ndim < 2 or X.dtype.kind not in "biuf":
                raise DataError(f"{path}: expected rows of numbers (2-D, or images N x H x W x C), got {X.dtype} "
                                f"{X.shape}")
            if len(X) == 0:
                raise DataError(f"{path}: no rows to predict (X has shape {X.shape})")
            if X.ndim > 2 and grid:
                from graphc.nn.train import grid_shapes

                shapes = grid_shapes(grid)
                if tuple(X.shape[1:]) not in shapes:
                    raise DataError(f"{path}: examples of shape {tuple(X.shape[1:])}, but the model reads "
                                    f"{' or '.join(map(str, shapes))} (rows of {n_features} values): the values "
                                    "would be read on the wrong grid")
            X = X.reshape(len(X), -1).astype(np.float64)
            if lengths is not None and X.shape[1] == n_features:
                lengths = checked_lengths(lengths, len(X), steps, path)
                X = zero_padding(X.reshape(len(X), steps, -1), lengths).reshape(len(X), -1)
        else:
            raise DataError(f"{path}: unknown file type {ext!r}; use a .npy, .npz or .csv file, or a bundled "
                            f"dataset's name ({', '.join(BUNDLED)})")
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a damaged or foreign file
        raise DataError(f"{path}: cannot read it: {e}") from None
    if X.shape[1] != n_features:
        raise DataError(f"{path}: rows of {X.shape[1]} values, the model takes {n_features} features"
                        + (" (drop the label column)" if X.shape[1] == n_features + 1 else ""))
    bad = np.argwhere(~np.isfinite(X))
    if len(bad):
        raise DataError(f"{path}: row {bad[0][0]}, feature {bad[0][1]} is {X[tuple(bad[0])]}; features must be "
                        "finite")
    return X, lengths


def _standardized_sequences(X: np.ndarray, lengths: np.ndarray, steps: int, tr: np.ndarray, parts,
                            name: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Padded sequences (rows of T x F values) standardized per feature with the mean and standard deviation of
    the training rows' real steps (the padding would drag them towards 0, and a late step that few rows reach
    would get statistics of its own from a handful of values), tiled over the T steps as x_mean and x_std; the
    padding stays 0. Returns the float32 rows of each index set in `parts`, x_mean and x_std."""
    n = len(X)
    seq = np.asarray(X, np.float64).reshape(n, steps, -1)
    keep = np.arange(steps)[None, :] < lengths[:, None]
    real = seq[tr][keep[tr]]  # (real training steps, F)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = real.mean(0) if len(real) else np.zeros(seq.shape[2])
        std = real.std(0) if len(real) else np.ones(seq.shape[2])
        z = (seq - mean) / np.where(std == 0, 1.0, std)
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        raise DataError(f"{name}: feature {int(np.argmax(bad))} of the sequences' steps has values too large to "
                        "standardize (its variance overflows float64); rescale, clip or drop them")
    std[std == 0] = 1.0
    z[~keep] = 0.0
    big = np.abs(z) > float(np.finfo(np.float32).max)
    if big.any():
        r, t, f = np.argwhere(big)[0]
        raise DataError(f"{name}: example {r} (counted from 0), step {t}, feature {f} is {seq[r, t, f]:.6g}, "
                        f"{z[r, t, f]:.3g} standard deviations from the training steps' mean: beyond float32 (the "
                        "model trains in float32); rescale, clip or drop that value")
    z = z.reshape(n, -1).astype(np.float32)
    return [z[idx] for idx in parts], np.tile(mean, steps), np.tile(std, steps)


def _read_csv(path: str, label: str | None, features: list[str] | None):
    """A labelled .csv (see _csv_table): the label and feature columns named, or numbered (negative from the end)
    where no column has that name."""
    header, data, first = _csv_table(path)
    shown = ", ".join(header)

    def column(name: str, what: str) -> int:
        return _csv_column(path, header, name, what)

    if label is None:
        raise DataError(f"{path}: name the label column with --label (gc.fit's label=); a .csv has no default "
                        f"label column (columns: {shown})")
    li = column(str(label), "label")
    idx = [column(str(h), "feature") for h in features] if features else [k for k in range(len(header)) if k != li]
    feats = [header[k] for k in idx]
    X = _csv_floats(path, header, data, first, idx)
    ys = []
    for r, row in enumerate(data, start=first):
        cell = row[li].strip()
        if not cell:
            raise DataError(f"{path}:{r}: the label column {header[li]!r} is empty; every row needs a label (drop the "
                            "row or fill it in)")
        ys.append(cell)
    try:
        y = np.array([_float(v) for v in ys])
    except ValueError:
        y = np.array(ys)  # class names
    return X, y, feats


def _show(v) -> str:
    """A value as the user wrote it: 2.5, 'cat' — not np.float32(2.5) or np.str_('cat')."""
    v = v.item() if hasattr(v, "item") else v
    return repr(v) if isinstance(v, str) else str(v)


def _infer_task(y: np.ndarray) -> str:
    """Text labels are classes; numbers are classes only when they look like class codes: whole numbers, two
    distinct (binary), or at most 50 that are dense (spanning fewer than twice as many integers as there are
    values: 0..K-1, 1..K, a few gaps) with two rows per class on average. Other whole numbers (prices that
    float32 holds whole above 2**24, counts, sparse ids) are regression targets; `task=` overrides."""
    if y.dtype.kind in "USO":
        return "binary" if len(np.unique(y)) == 2 else "multiclass"
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        vals = np.unique(y)
        k = len(vals)
        if k == 2:
            return "binary"
        if k == 0 or k <= 50 and 2 * k <= len(y) and float(vals[-1]) - float(vals[0]) < 2 * k:
            return "multiclass"
    return "regression"


def _target_stats(y: np.ndarray, tr: np.ndarray, task: str) -> tuple[float, float]:
    """Regression targets' training mean and standard deviation (predictions * y_std + y_mean undo them)."""
    if task != "regression":
        return 0.0, 1.0
    return float(y[tr].mean()), float(y[tr].std()) or 1.0


def split_indices(n: int, seed: int, val: float, test: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test)))
    n_val = max(1, int(round(n * val))) if val > 0 else 0
    if n - n_test - n_val < 1:
        raise DataError(f"{n} rows are too few to split into train/validation/test")
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def load(source: str | os.PathLike | tuple = "digits", *, label: str | None = None, features: list[str] | None = None,
         task: str | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
         train_fraction: float = 1.0, tokens: bool = False, lengths: bool | None = None) -> Dataset:
    """A bundled dataset by name, a .npy/.npz/.csv file, or arrays (X, y) in memory (X as a .npz's: rows,
    or (N, H, W[, C]) images), split into train/validation/test with a fixed
    seed and standardized with the training split's statistics. `train_fraction` < 1 keeps only that share
    of the training rows (for overfitting studies). `tokens=True` reads integer token ids (N, T) from a .npz
    (for a model that asks for `tokens`): checked, and kept as they are (not standardized). Padded sequences
    carry each row's real steps: a .npz's array `lengths` (N,), or (X, y, lengths) in memory; `lengths=True`
    (a model that takes them) requires them, False refuses them, None takes what is there."""
    want_lengths = lengths
    grid = None
    vocab = None
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or \
            not 0.0 < train_fraction <= 1.0:
        raise DataError(f"train_fraction must be a number in (0, 1] (the share of the training rows kept), got "
                        f"{train_fraction!r}")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, (str, tuple, list)):
        raise DataError(f"data must be a bundled dataset's name ({', '.join(BUNDLED)}), a .npy/.npz/.csv path or "
                        f"a pair (X, y) of arrays, got {type(source).__name__}"
                        + (" (give the labels too: (X, y))" if isinstance(source, np.ndarray) else ""))
    if isinstance(source, (tuple, list)):  # (X, y) in memory
        if label is not None or features is not None:
            raise DataError("label= and features= name a file's columns or arrays; with arrays (X, y) in memory, "
                            "select the columns yourself")
        X, y, lengths = _in_memory(source)
        name = "arrays"
        if want_lengths is not None and want_lengths != (lengths is not None):
            raise DataError("arrays: the model takes `lengths` (the real steps of padded sequences): pass (X, y, "
                            "lengths)" if want_lengths else
                            "arrays: (X, y, lengths) gives padded sequences' lengths, but the model takes none: its "
                            "padding would be read as data. Give the model a parameter `lengths` (def model(tokens, "
                            "lengths, n_outputs)) and pass it on (gc.nn.lstm(xs, H, lengths=lengths))")
        if lengths is not None:
            X, lengths = _sequence_lengths(X, lengths, name, tokens=tokens)
        if tokens:
            X, y, vocab = _checked_tokens(X, y, None, name, in_memory=True)
            names = [f"t{i}" for i in range(X.shape[1])]
        else:
            X, y, names = _features_and_labels(X, y, name)
        task = task or _infer_task(np.asarray(y))
    elif tokens:
        if source in BUNDLED:
            raise DataError(f"the model asks for tokens (integer ids) but {source!r} is a bundled dataset of "
                            "features; give a .npz with X (N, T) integer token ids and y")
        X, y, vocab, lengths = _read_tokens(source, label, features, want_lengths)
        task = task or _infer_task(np.asarray(y))
        name = os.path.basename(source)
        names = [f"t{i}" for i in range(X.shape[1])]
    elif source in BUNDLED:
        if label is not None or features is not None:
            raise DataError(f"label= and features= (--label, --features) name a file's columns; the bundled "
                            f"dataset {source!r} has its own label and uses all its features")
        if want_lengths:
            raise DataError(f"the model takes `lengths` (padded sequences) but the bundled dataset {source!r} has "
                            "none; give a .npz with X, y and lengths")
        X, y, names = _bundled(source)
        lengths = None
        grid = GRIDS.get(source)
        task = task or BUNDLED[source]
        name = source
    else:
        X, y, names, lengths = _read_file(source, label, features, want_lengths)
        task = task or _infer_task(np.asarray(y))
        name = os.path.basename(source)
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if isinstance(X, _Grid):
        grid = X.grid
    if not isinstance(X, _Columns):
        X = np.asarray(X)  # in memory already (bundled, .npz, .csv)
    if X.ndim != 2 or len(X) == 0:
        raise DataError(f"{name}: features must be a non-empty 2-D array, got shape {X.shape}")
    if X.shape[1] == 0:
        raise DataError(f"{name}: no feature columns (shape {X.shape}): the file holds only the label; a model "
                        "needs at least one feature")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{name}: features must be numbers, got {X.dtype} values")
    n, width = X.shape

    def rows(i: int, j: int) -> np.ndarray:  # rows i..j-1 as float64: every pass reads the data in order
        return np.asarray(X[i:j], dtype=np.float64)

    for i, j in _chunks(n, width):
        bad = ~np.isfinite(rows(i, j))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            if grid is not None:  # an example on a grid (an image, a sequence): its element, not a column
                g = tuple(grid[:-1]) if tuple(grid[-1:]) == (1,) else tuple(grid)
                at = tuple(int(v) for v in np.unravel_index(int(c), g))
                raise DataError(f"{name}: example {i + r} (counted from 0) has a non-finite value at {at} of its "
                                f"{g} grid")
            raise DataError(f"{name}: feature {names[c] if c < len(names) else c!r} is not finite in row {i + r} "
                            "(rows counted from 0, the header not counted)")
    y = np.asarray(y)
    classes: list = []
    if task in ("multiclass", "binary") and y.ndim != 1:
        if y.ndim == 2 and y.shape[1] > 1 and len(y) and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
            raise DataError(f"{name}: the labels are one-hot rows (shape {y.shape}); graphc takes one class index "
                            "per row: pass y.argmax(axis=1)")
        raise DataError(f"{name}: class labels must be one per row (shape (N,)), got shape {y.shape}")
    if task in ("multiclass", "binary"):
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                r = int(np.argmax(bad))
                raise DataError(f"{name}: label {_show(y[r])} in row {r} is not an integer; a {task} task needs "
                                "integer (or text) class labels — use --task regression for numeric targets")
        classes_arr, y_idx = np.unique(y, return_inverse=True)
        classes = classes_arr.tolist()
        if task == "binary" and len(classes) != 2:
            raise DataError(f"{name}: a binary task needs exactly 2 label values, found {len(classes)}")
        if len(classes) < 2:
            raise DataError(f"{name}: a classification task needs at least 2 classes")
        y = y_idx.astype(np.int32) if task == "multiclass" else y_idx.astype(np.float32)
    else:
        if y.dtype.kind not in "fiub":
            first = _show(y.reshape(-1)[0]) if y.size else ""
            raise DataError(f"{name}: regression targets must be numbers; the labels are "
                            f"{'text' if y.dtype.kind in 'US' else y.dtype.name} values "
                            f"(the first: {first}): with text labels use --task multiclass or binary (task=)")
        bad = ~np.isfinite(y.astype(np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            raise DataError(f"{name}: regression targets must be finite numbers; target {i} (counted from 0) is "
                            f"{y.reshape(-1)[i]}")
        y = y.astype(np.float64)
    tr, va, te = split_indices(len(X), seed, val_fraction, test_fraction)
    if train_fraction < 1.0:
        tr = tr[:max(2, int(round(len(tr) * train_fraction)))]
    # training statistics (two passes, float64) and the standardized float32 splits, reading the rows in order a
    # chunk at a time and scattering them to their split: peak memory is the splits plus one chunk
    which = np.full(n, -1, np.int8)  # split of each row (-1: a training row left out by train_fraction)
    where = np.zeros(n, np.int64)  # its position in the split
    for k, idx in enumerate((tr, va, te)):
        which[idx] = k
        where[idx] = np.arange(len(idx))
    split_lengths = {} if lengths is None else {f"lengths_{k}": lengths[idx] for k, idx in
                                                 (("train", tr), ("val", va), ("test", te))}
    if tokens:  # ids stay ids: no statistics, no standardization
        y_mean, y_std = _target_stats(y, tr, task)
        y = ((y - y_mean) / y_std).astype(np.float32) if task == "regression" else y
        return Dataset(name, task, X[tr], y[tr], X[va], y[va], X[te], y[te], classes, names, None, None,
                       y_mean, y_std, tokens=True, vocab=vocab,
                       source_rows={"training": tr, "validation": va, "test": te}, **split_lengths)
    if lengths is not None:  # padded sequences: statistics of the real steps only, padding left at 0
        splits, mean, std = _standardized_sequences(X, lengths, grid[0], tr, (tr, va, te), name)
        y_mean, y_std = _target_stats(y, tr, task)
        if task == "regression":
            y = ((y - y_mean) / y_std).astype(np.float32)
        return Dataset(name, task, splits[0], y[tr], splits[1], y[va], splits[2], y[te], classes, names, mean, std,
                       y_mean, y_std, grid, source_rows={"training": tr, "validation": va, "test": te},
                       **split_lengths)
    total = np.zeros(width)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, naming the feature
        for i, j in _chunks(n, width):
            total += rows(i, j)[which[i:j] == 0].sum(0)
        mean = total / len(tr)
        sq = np.zeros(width)
        for i, j in _chunks(n, width):
            sq += ((rows(i, j)[which[i:j] == 0] - mean) ** 2).sum(0)
        std = np.sqrt(sq / len(tr))
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        c = int(np.argmax(bad))
        raise DataError(f"{name}: feature {names[c] if c < len(names) else c!r} has values too large to standardize "
                        f"(its variance over the training rows overflows float64, e.g. values near 1e300); "
                        "rescale, clip or drop them")
    std[std == 0] = 1.0
    splits = [np.empty((len(idx), width), np.float32) for idx in (tr, va, te)]
    f32_max = float(np.finfo(np.float32).max)
    for i, j in _chunks(n, width):
        raw = rows(i, j)
        z = (raw - mean) / std
        big = np.abs(z) > f32_max  # finite in the file, but not once standardized in float32
        if big.any():
            r, c = np.argwhere(big)[0]
            raise DataError(f"{name}: feature {names[c] if c < len(names) else c!r} in row {i + r} is {raw[r, c]:.6g}, "
                            f"{z[r, c]:.3g} standard deviations from the training rows' mean: beyond float32 (the "
                            "model trains in float32); rescale, clip or drop that value")
        for k, out in enumerate(splits):
            m = which[i:j] == k
            out[where[i:j][m]] = z[m]

    y_mean, y_std = _target_stats(y, tr, task)
    if task == "regression":
        y = ((y - y_mean) / y_std).astype(np.float32)
    return Dataset(name, task, splits[0], y[tr], splits[1], y[va], splits[2], y[te], classes, names, mean, std,
                   y_mean, y_std, grid, source_rows={"training": tr, "validation": va, "test": te})
