"""A fuzzing harness for `graphc train` as a user meets it: hostile datasets, random model files built from the
DSL's public functions (valid and not), random option combinations, reused --out directories and corrupted
checkpoints. The property, every time: a clean error (exit 2, or 5 for a diverged run, with a `graphc: error:`
message) or a correct result — never a traceback, a crash, a half-written file or a mixed run.

Budget: GRAPHC_FUZZ_EXAMPLES examples per property (default 6, so the normal test run stays fast); for a long
search run e.g. `GRAPHC_FUZZ_EXAMPLES=300 GRAPHC_HYPOTHESIS=dev python -m pytest tests/fuzz` (dev: new random
cases each run instead of CI's fixed ones)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from graphc_cli import run_in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphc.nn import checkpoint as ckpt

EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "6"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
RUN_FILES = ("metrics.json", "history.csv", "weights.npz", "loss.png", "data.json")


def cli(*argv) -> tuple[int, str]:
    """Run `graphc` in this process; an exception escaping main() is a traceback a user would see, and a numpy
    RuntimeWarning printed before graphc's message is a defect too."""
    p = run_in_process(*argv, warnings_as_errors=True)
    return p.returncode, p.stderr


def check_outcome(rc: int, err: str, out: Path | None, epochs: int | None = None) -> None:
    assert rc in (0, 2, 5), (rc, err)
    assert "Traceback" not in err, err
    if rc:
        assert "graphc: error:" in err or err.startswith("usage:"), err
        lines = [line for line in err.splitlines() if line.startswith("graphc: error:")]
        assert all(len(line) < 4000 for line in lines), "an error message pages long"
    if out is None or not out.exists():
        return
    assert not list(out.glob(".tmp-*")) and not list(out.glob("checkpoints/.tmp-*")), "a half-written file"
    assert not (out / ".graphc-train.lock").exists(), "the lock file was left behind"
    if rc == 0:
        m = json.loads((out / "metrics.json").read_text())
        w = np.load(out / "weights.npz")
        assert w.files and all(np.isfinite(w[k]).all() for k in w.files)
        if epochs is not None:
            assert m["epochs"] == epochs
        assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
        json.loads((out / "data.json").read_text())
    fingerprints = set()
    for f in sorted((out / "checkpoints").glob("ckpt-*.gcp")) if (out / "checkpoints").is_dir() else []:
        with contextlib.suppress(ckpt.CheckpointError):
            meta, _ = ckpt.load(f)
            fingerprints.add(meta["fingerprint"])
    assert len(fingerprints) <= 1, "checkpoints of two runs in one --out"


@contextlib.contextmanager
def scratch():
    d = Path(tempfile.mkdtemp(prefix="graphc-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------- hostile datasets
CELLS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(repr), st.integers(-5, 5).map(str),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e308", "-1e300", "3e38", "x", " 2 ", "1,5", "∞", "0x10"]))
LABELS = st.one_of(st.integers(-2, 3).map(str), st.sampled_from(["cat", "dog", "", "1.5", "nan", "Ünï", "yes"]))


@st.composite
def csv_files(draw):
    n_cols = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(["a", "b", "label", "ä x", "a", "\ufeffb", "c,d", ""]), min_size=n_cols,
                          max_size=n_cols))
    header = names + ["label"]
    rows = draw(st.integers(0, 40))
    constant = draw(st.booleans())
    lines = [",".join(header)]
    for _ in range(rows):
        cells = [("1" if constant and c == 0 else draw(CELLS)) for c in range(n_cols)]
        lines.append(",".join(cells + [draw(LABELS)]))
    if draw(st.booleans()):  # a usual file: numbers and two classes, so training runs often
        lines = [",".join(header)] + [",".join([str(np.sin(r * (c + 1))) for c in range(n_cols)] + [str(r % 2)])
                                      for r in range(rows + 10)]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return bom + newline.join(lines) + newline


@FUZZ
@given(text=csv_files(), task=st.sampled_from([None, "multiclass", "binary", "regression"]))
def test_hostile_csv_datasets(text, task):
    with scratch() as d:
        (d / "data.csv").write_text(text, encoding="utf-8")
        args = ["train", "--dataset", d / "data.csv", "--label", "label", "--epochs", "1", "--hidden", "4",
                "--quiet", "--out", d / "out"]
        if task:
            args += ["--task", task]
        rc, err = cli(*args)
        check_outcome(rc, err, d / "out", epochs=1)


@FUZZ
@given(rows=st.integers(1, 30), cols=st.integers(1, 4), kind=st.sampled_from(["f8", "f4", "i8", "u1", "bool"]),
       special=st.sampled_from([None, np.nan, np.inf, 1e300, -1e39]), dup=st.booleans(), classes=st.integers(1, 4),
       fmt=st.sampled_from(["npy", "npz"]))
def test_hostile_array_datasets(rows, cols, kind, special, dup, classes, fmt):
    rng = np.random.default_rng(rows * 7 + cols)
    X = rng.normal(size=(rows, cols)) * 3
    if dup and cols > 1:
        X[:, 1] = X[:, 0]
    X = X.astype(kind)
    if special is not None and kind in ("f8", "f4"):
        with np.errstate(over="ignore"):
            X[rows // 2, 0] = special
    y = np.arange(rows) % classes
    with scratch() as d:
        if fmt == "npy":
            np.save(d / "d.npy", np.column_stack([X.astype(np.float64), y]))
            path = d / "d.npy"
        else:
            np.savez(d / "d.npz", X=X, y=y)
            path = d / "d.npz"
        rc, err = cli("train", "--dataset", path, "--epochs", "1", "--hidden", "3", "--quiet", "--out", d / "o")
        check_outcome(rc, err, d / "o", epochs=1)


# ------------------------------------------------------------------------------------------- random model files
UNARY = ["gc.relu", "gc.tanh", "gc.sigmoid", "gc.exp", "gc.log", "gc.sqrt", "gc.abs", "gc.softplus", "gc.square",
         "-"]
BROKEN = [
    "    return 3\n",
    "    return gc.cast(h, 'int32')\n",
    "    return gc.nn.dense(h, n_outputs + 2)\n",
    "    return undefined_name\n",
    "    raise RuntimeError('boom')\n",
    "    return gc.nn.dense(h, n_outputs, name='dense')\n",
    "    return h @ h\n",
    "    return gc.nn.dense(h, 0)\n",
    "    return gc.reshape(h, (3, -1))\n",
]


@st.composite
def model_files(draw):
    lines = ["import graphc as gc\n", "\n", "def model(x, n_outputs):\n", "    h = x\n"]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(UNARY + ["dense", "scalar", "dropout"]))
        if op == "dense":
            lines.append(f"    h = gc.nn.dense(h, {draw(st.integers(1, 12))})\n")
        elif op == "scalar":
            init = draw(st.sampled_from([0.0, 1.0, -1.0]))
            lines.append(f"    h = h * gc.param('s{len(lines)}', (), init={init})\n")
        elif op == "dropout":
            lines.append(f"    h = gc.nn.dropout(h, {draw(st.sampled_from([0.5, 0.9, 1.0]))})\n")
        else:
            lines.append(f"    h = {op}(h)\n")
    if draw(st.integers(0, 4)) == 0:
        lines.append(draw(st.sampled_from(BROKEN)))
    else:
        lines.append("    return gc.nn.dense(h, n_outputs)\n")
    if draw(st.booleans()):
        options = draw(st.sampled_from(["{}", '{"epochs": 1}', '{"hidden": [3]}', "[1]"]))
        lines.append(f"\nOPTIONS = {options}\n")
    return "".join(lines)


@FUZZ
@given(source=model_files(), dataset=st.sampled_from(["breast_cancer", "diabetes", "digits"]))
def test_random_model_files(source, dataset):
    with scratch() as d:
        (d / "m.py").write_text(source)
        rc, err = cli("train", "--model", d / "m.py", "--dataset", dataset, "--epochs", "1", "--quiet", "--out",
                      d / "o")
        check_outcome(rc, err, d / "o")
        if rc == 5:
            assert "first produced by" in err or "already in" in err or "could not be located" in err, err


# ------------------------------------------------------------------------------------------- option combinations
OPTIONS = {
    "--epochs": ["1", "2", "0", "-1", "x"], "--batch-size": ["1", "7", "100000", "0"],
    "--lr": ["0.01", "1e9", "-1", "nan", "inf"],
    "--optimizer": ["sgd", "gd", "momentum", "nesterov", "adam", "rms", "adamw"],
    "--momentum": ["0.5", "1", "-0.1"], "--weight-decay": ["0.01", "0", "-1", "nan"],
    "--schedule": ["constant", "step", "cosine"], "--l2": ["0", "1e-3", "-1"],
    "--l1": ["1e-4", "nan"], "--dropout": ["0.5", "0.9,0.5", "0", "1,1,1,1", "x"], "--early-stopping": ["1", "0"],
    "--min-delta": ["0.1", "-1"], "--seed": ["0", "-3", "99999999999999999999"], "--threads": ["1", "2", "0"],
    "--checkpoint-every": ["0", "1", "5", "-1"], "--hidden": ["3", "4,2", "0", "", "a"],
    "--activation": ["tanh", "linear", "nope"], "--init": ["he_normal", "bad"], "--bias-init": ["zeros"],
    "--task": ["regression", "binary", "multiclass"], "--label": ["0", "99", "nosuch"], "--features": ["a,b"],
}
FLAGS = ["--refit", "--quiet", "--json", "--resume", "--overwrite"]


@FUZZ
@given(opts=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.integers(0, 6), max_size=4),  # 7 optimizers
       flags=st.lists(st.sampled_from(FLAGS), max_size=2, unique=True),
       dataset=st.sampled_from(["breast_cancer", "diabetes", "digit", "nosuch.csv"]))
def test_random_option_combinations(opts, flags, dataset):
    with scratch() as d:
        args = ["train", "--dataset", dataset, "--hidden", "4", "--epochs", "1"]
        for k, i in opts.items():
            args += [k, OPTIONS[k][i % len(OPTIONS[k])]]
        args += flags + ["--out", d / "o"]
        rc, err = cli(*args)
        check_outcome(rc, err, d / "o")


# ------------------------------------------------------------------------------------------- reused --out dirs
ACTIONS = st.sampled_from(["train", "resume", "overwrite", "corrupt", "truncate", "drop-metrics", "drop-ckpts",
                           "stray-file"])


@FUZZ
@given(actions=st.lists(st.tuples(ACTIONS, st.integers(1, 3)), min_size=2, max_size=5))
def test_reused_out_directories(actions):
    """Any sequence of runs and damage on one --out: each run is refused cleanly or ends with the epochs it was
    asked for, and the checkpoints there always belong to one run."""
    with scratch() as d:
        out = d / "o"
        base = ["train", "--dataset", "breast_cancer", "--hidden", "3", "--quiet", "--out", out]
        for action, k in actions:
            ck = sorted((out / "checkpoints").glob("ckpt-*.gcp")) if (out / "checkpoints").is_dir() else []
            if action in ("train", "resume", "overwrite"):
                extra = {"train": [], "resume": ["--resume"], "overwrite": ["--overwrite"]}[action]
                rc, err = cli(*base, "--epochs", k + 1, *extra)
                check_outcome(rc, err, out, epochs=k + 1)
                if action == "overwrite":
                    assert rc == 0, err
            elif action in ("corrupt", "truncate") and ck:
                f = ck[k % len(ck)]
                data = bytearray(f.read_bytes())
                if action == "corrupt":
                    data[(k * 7919) % len(data)] ^= 0x5A
                else:
                    data = data[:(k * 97) % len(data)]
                f.write_bytes(bytes(data))
            elif action == "drop-metrics" and (out / "metrics.json").exists():
                (out / "metrics.json").unlink()
            elif action == "drop-ckpts" and ck:
                for f in ck:
                    f.unlink()
            elif action == "stray-file" and out.exists():
                (out / "notes.txt").write_text("mine")
        if (out / "notes.txt").exists():
            assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes graphc's files only


# ------------------------------------------------------------------------------------------- corrupt checkpoints
_whole: dict = {}


def _uninterrupted() -> dict:
    """The weights of an uninterrupted 3-epoch run (trained once per process, kept in memory; its files in a
    scratch directory removed at once)."""
    if not _whole:
        with scratch() as tmp:
            rc, err = cli("train", "--dataset", "breast_cancer", "--hidden", "5", "--epochs", "3", "--quiet",
                          "--out", tmp / "whole")
            assert rc == 0, err
            with np.load(tmp / "whole" / "weights.npz") as w:
                _whole.update({k: w[k] for k in w.files})
    return _whole


@FUZZ
@given(which=st.integers(0, 1), how=st.sampled_from(["flip", "truncate", "zero", "append", "header", "empty"]),
       where=st.integers(0, 10**6))
def test_corrupted_checkpoints_resume_to_the_same_weights(which, how, where):
    """Damage one of the two checkpoints of a 2-epoch run, resume to 3 epochs: a damaged checkpoint is
    refused and the run continues from the other one — ending bitwise equal to an uninterrupted run — or,
    when nothing loads, it is a clean error."""
    with scratch() as d:
        whole = _uninterrupted()
        base = ["train", "--dataset", "breast_cancer", "--hidden", "5", "--quiet", "--out", d / "o"]
        rc, err = cli(*base, "--epochs", "2")
        assert rc == 0, err
        f = sorted((d / "o" / "checkpoints").glob("ckpt-*.gcp"))[which]
        data = bytearray(f.read_bytes())
        if how == "flip":
            data[where % len(data)] ^= 1 << (where % 8)
        elif how == "truncate":
            data = data[:where % len(data)]
        elif how == "zero":
            data[where % len(data):] = bytes(len(data) - where % len(data))
        elif how == "append":
            data += b"\0" * (1 + where % 100)
        elif how == "header":
            data[12:20] = (where * 1000003).to_bytes(8, "little")
        else:
            data = bytearray()
        f.write_bytes(bytes(data))
        rc, err = cli(*base, "--epochs", "3", "--resume")
        check_outcome(rc, err, d / "o", epochs=3)
        assert rc == 0, err  # one checkpoint of the two is always intact
        w = np.load(d / "o" / "weights.npz")
        for k, v in whole.items():
            np.testing.assert_array_equal(w[k], v)


# ------------------------------------------------------------------------------------------- kill points
@FUZZ
@given(kill_epoch=st.integers(1, 3), during_write=st.booleans(), cut=st.integers(0, 10**6))
def test_kill_points_then_resume_end_bitwise_equal(kill_epoch, during_write, cut):
    """Stop a 3-epoch run at a random point — after an epoch, before its checkpoint, or in the middle of writing
    one (a temporary file left half-written) — then --resume: the same weights as a run never stopped."""
    from unittest import mock

    from graphc import fitting

    real_save = ckpt.save
    calls = []

    def dying_save(path, meta, arrays):
        calls.append(path)
        if len(calls) == kill_epoch:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            (Path(path).parent / ".tmp-ckpt-cut").write_bytes(b"GRAPHCKP1\n" + bytes(cut % 5000))
            raise KeyboardInterrupt
        real_save(path, meta, arrays)

    def dying_progress(self, row, s):
        if row["epoch"] == kill_epoch:
            raise KeyboardInterrupt

    with scratch() as d:
        whole = _uninterrupted()
        base = ["train", "--dataset", "breast_cancer", "--hidden", "5", "--epochs", "3", "--quiet", "--out", d / "o"]
        patch = (mock.patch.object(ckpt, "save", dying_save) if during_write
                 else mock.patch.object(fitting.Progress, "__call__", dying_progress))
        with patch:
            rc, err = cli(*base)
        assert rc == 130 and "interrupted" in err, (rc, err)
        rc, err = cli(*base, "--resume")
        check_outcome(rc, err, d / "o", epochs=3)
        assert rc == 0, err
        w = np.load(d / "o" / "weights.npz")
        for k, v in whole.items():
            np.testing.assert_array_equal(w[k], v)
