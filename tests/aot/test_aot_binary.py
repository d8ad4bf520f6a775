"""Standalone training binaries: the same training as in process (bitwise), no Python at run time, the CPU
check, a model file with another task, optimizer and target, and the `graphc build` command."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from aot_helpers import FEATURES, data_flags, flags, needs_cc

import graphc as gc

pytestmark = needs_cc


def test_help_and_info(digits_binary):
    p = subprocess.run([str(digits_binary.path), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ("--x-train", "--y-val", "--x-test", "--epochs", "--batch-size", "--lr", "--momentum", "--l2", "--l1",
                 "--dropout", "--early-stopping", "--seed", "--threads", "--out"):
        assert flag in p.stdout, flag
    p = subprocess.run([str(digits_binary.path), "--info"], capture_output=True, text=True)
    assert p.returncode == 0
    assert "mlp.0.W (64, 128)" in p.stdout and "task: multiclass" in p.stdout
    assert digits_binary.step_digest[:16] in p.stdout
    p = subprocess.run([str(digits_binary.path), "--seed", "-1", "--out", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "--seed: -1 is out of range [0, " in p.stderr, p.stderr  # as graphc train
    # an SGD binary has no decoupled decay: the flag is refused (naming the coupled --l2), not ignored
    p = subprocess.run([str(digits_binary.path), "--weight-decay", "0.1", "--out", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "optimizer (sgd) has no decoupled weight decay" in p.stderr and "--l2" in p.stderr
    # built without clipping: --clip-grad-norm is refused, naming the build flag that compiles it in
    assert "--clip-grad-norm MAX   scale" not in subprocess.run([str(digits_binary.path), "--help"],
                                                                capture_output=True, text=True).stdout
    p = subprocess.run([str(digits_binary.path), "--clip-grad-norm", "1", "--out", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "built without gradient clipping" in p.stderr and "graphc build --clip-grad-norm" \
        in p.stderr, p.stderr


def test_same_weights_as_in_process_training(digits_binary, digits_data, digits_run):
    """`graphc train` / gc.fit with momentum, L2, L1 and dropout set builds the same step as the binary (equal
    digests and compiled-step keys) and, on the same splits and seed, ends with bitwise the same weights,
    early stopping included."""
    from graphc.aot.build import step_digest
    from graphc.fitting import fit
    from graphc.nn.train import TrainConfig, Trainer

    ds, _ = digits_data
    trainer = Trainer(None, ds.task, ds.n_features, ds.n_outputs, TrainConfig(**FEATURES), log=lambda m: None)
    assert step_digest(trainer) == digits_binary.step_digest
    assert trainer.epoch_fn.cache_key == digits_binary.step_key
    result = fit(None, "digits", progress=False, checkpoint_every=0, **FEATURES)
    p, out = digits_run
    assert result.metrics["stopped_early"] == ("stopped early" in p.stdout)
    for name, value in result.params.items():
        got = np.load(out / f"{name}.npy")
        assert got.dtype == np.float32 and got.shape == value.shape
        assert np.array_equal(got.view(np.uint32), value.view(np.uint32)), name
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("phase,epoch,step,lr,train_loss,samples_per_second,val_loss")
    rows = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in result.history]
    assert [float(r["val_loss"]) for r in rows] == [h["val_loss"] for h in result.history]
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_accuracy"] == result.metrics["test_accuracy"] and m["step"] == "full"
    assert m["arena_bytes"] > 0 and 0 < m["peak_rss_mb"] < 100  # digits: small data, no interpreter
    assert f"test accuracy {result.metrics['test_accuracy']:.4f}" in p.stdout
    assert sum(line.startswith("epoch ") for line in p.stdout.splitlines()) == len(result.history)


def test_default_run_uses_the_plain_step_as_graphc_train_does(digits_binary, digits_data, tmp_path):
    """Without momentum, penalties or dropout the binary runs its plain step: the one `graphc train` compiles by
    default (equal digests and keys), with bitwise the same weights."""
    from graphc.aot.build import step_digest
    from graphc.fitting import fit
    from graphc.nn.train import TrainConfig, Trainer

    ds, paths = digits_data
    trainer = Trainer(None, ds.task, ds.n_features, ds.n_outputs, TrainConfig(), log=lambda m: None)
    assert step_digest(trainer) == digits_binary.plain_digest != digits_binary.step_digest
    assert trainer.epoch_fn.cache_key == digits_binary.plain_key
    result = fit(None, "digits", progress=False, checkpoint_every=0, epochs=3, seed=1)
    out = tmp_path / "out"
    p = subprocess.run([str(digits_binary.path), *data_flags(paths), "--epochs", "3", "--seed", "1", "--out",
                        str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "metrics.json").read_text())["step"] == "plain"
    for name, value in result.params.items():
        assert np.array_equal(np.load(out / f"{name}.npy").view(np.uint32), value.view(np.uint32)), name


def test_learning_rate_schedules_run_in_the_binary_as_gc_fit_runs_them(digits_binary, digits_data, tmp_path):
    """--schedule step (--step-every, --step-gamma) and cosine: the binary's rate per epoch is gc.fit's (history.csv's
    lr column, equal to the last bit) and so are the weights, bitwise; a model file's schedule is the binary's
    default. Step settings without the step schedule, or a bad one, exit 2 (a schedule was ignored with a note)."""
    from graphc.aot import build
    from graphc.fitting import fit

    def lrs(out):
        lines = (out / "history.csv").read_text().splitlines()
        col = lines[0].split(",").index("lr")
        return [float(r.split(",")[col]) for r in lines[1:]]

    paths = digits_data[1]
    for tag, extra, opts in (("step", ["--schedule", "step", "--step-every", "2", "--step-gamma", "0.5"],
                              {"schedule": "step", "step_every": 2, "step_gamma": 0.5}),
                             ("cosine", ["--schedule", "cosine"], {"schedule": "cosine"})):
        out = tmp_path / tag
        p = subprocess.run([str(digits_binary.path), *data_flags(paths), "--epochs", "5", "--seed", "2", *extra,
                            "--quiet", "--out", str(out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        ref = fit(None, "digits", progress=False, checkpoint_every=0, epochs=5, seed=2, **opts)
        assert lrs(out) == [h["lr"] for h in ref.history], tag
        assert len(set(lrs(out))) > 2
        for name, value in ref.params.items():
            assert np.array_equal(np.load(out / f"{name}.npy").view(np.uint32), value.view(np.uint32)), (tag, name)
    for extra, words in ((["--step-every", "2"], "the schedule is constant: add --schedule step"),
                         (["--schedule", "cosine", "--step-gamma", "0.5"], "the schedule is cosine"),
                         (["--schedule", "linear"], "--schedule: constant, step or cosine, got 'linear'"),
                         (["--schedule", "step", "--step-gamma", "0"], "--step-gamma: the rate's factor"),
                         (["--schedule", "step", "--step-every", "0"], "--step-every")):
        bad = tmp_path / "bad"
        p = subprocess.run([str(digits_binary.path), *data_flags(paths, ("train",)), *extra, "--out", str(bad)],
                           capture_output=True, text=True)
        assert p.returncode == 2 and words in p.stderr, (extra, p.stderr)
        assert not bad.exists()
    (tmp_path / "m.py").write_text("import graphc as gc\nOPTIONS = {'schedule': 'step', 'step_every': 1, "
                                   "'step_gamma': 0.25}\n\ndef model(x, n_outputs):\n"
                                   "    return gc.nn.dense(x, n_outputs, name='lin')\n")
    exe = build(tmp_path / "train-sched", model=tmp_path / "m.py", data="digits").path
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout
    assert "--schedule S" in help_text and "[step]" in help_text and "[0.25]" in help_text
    out = tmp_path / "file"
    p = subprocess.run([str(exe), *data_flags(paths, ("train",)), "--epochs", "3", "--quiet", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert lrs(out) == [0.1, 0.025, 0.00625]


def test_thread_counts_and_the_dropout_shorthand_agree(digits_binary, digits_data, tmp_path):
    runs = {}
    for name, extra in (("one", ["--threads", "1", "--dropout", "0.5"]), ("two", ["--threads", "2", "--dropout",
                                                                                  "0.8,0.5"])):
        p = subprocess.run([str(digits_binary.path), *data_flags(digits_data[1], ("train",)), "--epochs", "2",
                            "--seed", "3", *extra, "--quiet", "--out", str(tmp_path / name)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "epoch " not in p.stdout and "train accuracy" in p.stdout
        runs[name] = {f: np.load(tmp_path / name / f) for f in ("mlp.0.W.npy", "mlp.1.b.npy")}
    for f in runs["one"]:
        assert np.array_equal(runs["one"][f], runs["two"][f])


def test_runs_without_python(digits_binary, digits_data, tmp_path):
    """An empty environment (no PATH, no PYTHONPATH): the binary needs only libc, libm and libpthread."""
    blob = digits_binary.path.read_bytes()
    assert b"libpython" not in blob
    out = tmp_path / "out"
    t0 = time.perf_counter()
    p = subprocess.run(["env", "-i", "PATH=", str(digits_binary.path), *data_flags(digits_data[1]), "--epochs", "1",
                        "--out", str(out)], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    assert (out / "mlp.0.W.npy").exists() and (out / "history.csv").exists()
    assert "test accuracy" in p.stdout
    assert elapsed < 5  # seconds: one digits epoch plus start-up (in practice tens of milliseconds)


def test_an_out_holding_a_run_is_refused_unless_overwritten_and_runs_never_mix(digits_binary, digits_data, tmp_path):
    """The binary wrote into any existing --out (over another binary's run, or beside graphc train's weights.npz,
    which gc.load then ignored for its NAME.npy files): now an existing run is refused (exit 2, untouched) unless
    --overwrite, which removes what the new run does not write; graphc train --overwrite removes a binary's
    weights likewise; gc.load refuses a directory holding both kinds. An unknown last option is called unknown (it
    was "needs a value")."""
    from graphc.fitting import fit

    binary = [str(digits_binary.path), *data_flags(digits_data[1], ("train",)), "--epochs", "1", "--quiet"]
    out = tmp_path / "run"
    fit(data="digits", epochs=1, hidden=[128], progress=False, out=str(out))  # graphc train's run: weights.npz
    before = (out / "weights.npz").read_bytes()
    p = subprocess.run([*binary, "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "--overwrite" in p.stderr
    assert (out / "weights.npz").read_bytes() == before and not (out / "mlp.0.W.npy").exists()
    p = subprocess.run([*binary, "--out", str(out), "--overwrite"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (out / "mlp.0.W.npy").exists() and not (out / "weights.npz").exists()
    assert not (out / "checkpoints").exists() and not (out / "loss.png").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["written_by"] == "graphc training binary" and "mlp.0.W.npy" in m["weights"]
    np.testing.assert_array_equal(gc.load(out).params["mlp.0.W"], np.load(out / "mlp.0.W.npy"))
    fit(data="digits", epochs=1, hidden=[128], progress=False, out=str(out), overwrite=True)  # and back
    assert (out / "weights.npz").exists() and not list(out.glob("*.npy"))
    mixed = tmp_path / "mixed"
    assert subprocess.run([*binary, "--out", str(mixed)], capture_output=True).returncode == 0
    (mixed / "weights.npz").write_bytes((out / "weights.npz").read_bytes())
    with pytest.raises(gc.GraphcError, match="holds both weights.npz .* and mlp.0.W.npy"):
        gc.load(mixed)
    p = subprocess.run([str(digits_binary.path), "--quiet", "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown option '--bogus'" in p.stderr
    # a diverging run writes nothing (it left a history.csv, and the rerun was refused as "already holds a run")
    fresh = tmp_path / "diverged"
    p = subprocess.run([*binary, "--out", str(fresh), "--lr", "1e30"], capture_output=True, text=True)
    assert p.returncode == 5 and "no parameters were written" in p.stderr, p.stderr
    assert not fresh.exists() or not list(fresh.iterdir())
    assert subprocess.run([*binary, "--out", str(fresh)], capture_output=True).returncode == 0
    # a result that cannot be written (a full disk; here a directory where a temporary goes) fails with exit 4 and
    # leaves the earlier run as it was: each file was renamed into place as soon as written, so the new run's
    # weights stood beside the old data.json (whose standardization gc.load and graphc export then applied to them)
    before = {f.name: f.read_bytes() for f in fresh.iterdir()}
    (fresh / ".history.csv.tmp").mkdir()
    p = subprocess.run([*binary, "--out", str(fresh), "--overwrite", "--seed", "1"], capture_output=True, text=True)
    assert p.returncode == 4 and "cannot write" in p.stderr and ".history.csv.tmp" in p.stderr, p.stderr
    (fresh / ".history.csv.tmp").rmdir()
    assert {f.name: f.read_bytes() for f in fresh.iterdir()} == before  # no stray temporaries either
    blocked = tmp_path / "blocked"
    (blocked / "mlp.1.W.npy").mkdir(parents=True)  # found before anything is renamed
    p = subprocess.run([*binary, "--out", str(blocked), "--overwrite"], capture_output=True, text=True)
    assert p.returncode == 4 and "mlp.1.W.npy: a directory of that name is in the way" in p.stderr, p.stderr
    assert [f.name for f in blocked.iterdir()] == ["mlp.1.W.npy"]
    # Ctrl-C ends a run as the signal does (status -SIGINT) and, like a failure, leaves no --out it created behind
    # (it left an empty directory)
    import signal

    # SIGINT at its default in the child: a test run started in the background (`pytest &`) inherits it ignored, and
    # the binary rightly keeps an ignored SIGINT ignored, so the run never ended and trained on after the test
    long_run = subprocess.Popen([*binary, "--out", str(tmp_path / "interrupted"), "--epochs", "100000000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "interrupted").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        long_run.send_signal(signal.SIGINT)
        assert long_run.wait(timeout=30) == -signal.SIGINT
    finally:
        if long_run.poll() is None:  # never leave a 100,000,000-epoch run behind
            long_run.kill()
            long_run.wait()
    assert not (tmp_path / "interrupted").exists()
    # the loss stays finite but an epoch's last update overflows (one step of the whole set, whose L1 term times the
    # learning rate is past float32): gc.fit's check of every state array says so, and the binary, which checked
    # only the loss and wrote the infinite weights, now does the same: exit 5, nothing written, the array named
    full = {"lr": 3e38, "l1": 10.0, "batch_size": len(np.load(digits_data[1]["x_train"]))}
    with pytest.raises(gc.NumericalError, match="training diverged") as e:
        fit(data="digits", epochs=1, hidden=[128], progress=False, checkpoint_every=0, **full)
    # gc.fit said "the loss turned non-finite at step 2" of a one-step epoch whose loss never did
    assert "every loss of the epoch was finite" in str(e.value) and "turned non-finite" not in str(e.value), e.value
    over = tmp_path / "overflowed"
    p = subprocess.run([*binary, *flags(**full), "--out", str(over)], capture_output=True, text=True)
    assert p.returncode == 5 and "the loss stayed finite, but the parameter 'mlp.0.W'" in p.stderr, p.stderr
    assert "no parameters were written" in p.stderr and "(now 3e+38)" in p.stderr
    assert not over.exists() or not list(over.iterdir())


def test_refuses_a_cpu_without_its_features(digits_binary, digits_data, tmp_path):
    """Relinked with the CPU check told that every feature is missing: a clear refusal, exit 3, nothing run."""
    cmd = list(digits_binary.link_command)
    fake = tmp_path / "no-features"
    cmd[cmd.index("-o") + 1] = str(fake)
    subprocess.run([*cmd, "-DGC_CPU_SUPPORTS(f)=0"], check=True, capture_output=True)
    p = subprocess.run([str(fake), *data_flags(digits_data[1], ("train",)), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert p.returncode == 3
    assert "this CPU lacks" in p.stderr and "avx" in p.stderr and "--target" in p.stderr
    assert not (tmp_path / "out").exists()


def test_a_rebuild_of_the_same_model_takes_its_objects_from_the_cache(digits_binary, tmp_path, monkeypatch):
    """`graphc build` of a model built before (same program, target and graphc) links the object files it kept in
    the compile cache instead of emitting the IR and running LLVM again; the binary is the same, byte for byte."""
    import importlib

    from graphc.runtime.jit import CompiledFunction

    aot_build = importlib.import_module("graphc.aot.build")  # the module (graphc.aot.build is also the function)

    def no_llvm(*a, **k):
        raise AssertionError("emit_object called on a rebuild")

    monkeypatch.setattr(aot_build, "emit_object", no_llvm)
    # nor is the module's text emitted again: the object's key is the program's cache key, not its text
    monkeypatch.setattr(CompiledFunction, "llvm_ir", property(lambda self: no_llvm()))
    again = aot_build.build(tmp_path / "again", data="digits")
    assert again.path.read_bytes() == digits_binary.path.read_bytes()


MODEL = """
import graphc as gc

OPTIONS = {"epochs": 3, "lr": 0.01}

def model(x, n_outputs):
    h = gc.nn.dense(x, 16, "tanh", name="first")
    return gc.nn.dense(h, n_outputs, name="out")
"""


def test_build_command_with_a_model_file_regression_adam_and_a_portable_target(tmp_path):
    from graphc import data

    (tmp_path / "m.py").write_text(MODEL)
    exe = tmp_path / "train-diabetes"
    p = subprocess.run([sys.executable, "-m", "graphc.cli", "build", "--model", str(tmp_path / "m.py"), "--dataset",
                        "diabetes", "--optimizer", "adam", "--target", "x86-64-v2", "--max-batch", "64", "-o",
                        str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"built {exe}" in p.stdout
    info = subprocess.run([str(exe), "--info"], capture_output=True, text=True).stdout
    assert "cpu features: sse3 ssse3 sse4.1 sse4.2 popcnt\n" in info and "first.W (10, 16)" in info
    ds = data.load("diabetes")
    args = []
    for split in ("train", "test"):
        for kind, arr in (("x", getattr(ds, f"X_{split}")), ("y", getattr(ds, f"y_{split}"))):
            np.save(tmp_path / f"{kind}_{split}.npy", arr)
            args += [f"--{kind}-{split}", str(tmp_path / f"{kind}_{split}.npy")]
    out = tmp_path / "out"
    run = subprocess.run([str(exe), *args, "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "test MSE" in run.stdout and " 3 epochs" in run.stdout  # the model file's OPTIONS are the defaults
    assert set(os.listdir(out)) >= {"first.W.npy", "first.b.npy", "out.W.npy", "out.b.npy", "history.csv"}
    bad = subprocess.run([str(exe), *args, "--momentum", "0.5", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "adam" in bad.stderr
    big = subprocess.run([str(exe), *args, "--batch-size", "65", "--out", str(out)], capture_output=True, text=True)
    assert big.returncode == 2 and "--batch-size 65 exceeds 64" in big.stderr and "--max-batch" in big.stderr
    huge = subprocess.run([str(exe), *args, "--batch-size", "100000", "--out", str(out)], capture_output=True,
                          text=True)  # capped to the rows first: the message says what was typed too
    assert huge.returncode == 2 and "--batch-size 100000 (" in huge.stderr, huge.stderr


ROLL_MODEL = """
import graphc as gc
OPTIONS = {"epochs": 1, "lr": 0.05, "batch_size": 8}

def model(x, n_outputs):  # each row mixed with the rows 2 and 3 ahead (a roll over the batch): 4 rows a batch
    x = x + 0.5 * gc.concatenate([x[2:], x[:2]], axis=0) + 0.25 * gc.concatenate([x[3:], x[:3]], axis=0)
    return gc.nn.dense(gc.nn.dense(x, 16, "tanh", name="h"), n_outputs, name="out")
"""


def test_a_model_that_slices_its_batch_axis_checks_every_batch_in_the_binary_and_the_library(tmp_path):
    """x[3:] of a batch needs 4 rows: in process a shorter batch is a ShapeError; the binary (which once read
    past the batch, silently) refuses a run whose last batch, or a share of it, or an evaluation chunk, is too
    short, with exit 2 before writing anything; the exported library returns ERR_N below its MIN_BATCH."""
    import ctypes

    import graphc as gc
    from graphc import data
    from graphc.aot import build, export
    from graphc.fitting import fit

    (tmp_path / "roll.py").write_text(ROLL_MODEL)
    exe = build(tmp_path / "train-roll", str(tmp_path / "roll.py"), "digits").path
    ds = data.load("digits")
    paths = {}
    for name, arr in (("x801", ds.X_train[:801]), ("y801", ds.y_train[:801]), ("x800", ds.X_train[:800]),
                      ("y800", ds.y_train[:800]), ("x3", ds.X_test[:3]), ("y3", ds.y_test[:3])):
        np.save(tmp_path / f"{name}.npy", arr)
        paths[name] = str(tmp_path / f"{name}.npy")
    out = tmp_path / "out"
    for args, words in ((["--x-train", paths["x801"], "--y-train", paths["y801"]], "--batch-size: a batch of 1 row"),
                        (["--x-train", paths["x800"], "--y-train", paths["y800"], "--x-test", paths["x3"], "--y-test",
                          paths["y3"]], "--x-test: a batch of 3 row")):
        p = subprocess.run([str(exe), *args, "--out", str(out)], capture_output=True, text=True)
        assert p.returncode == 2 and words in p.stderr and "needs at least 4 rows in a batch" in p.stderr, p.stderr
        assert not out.exists()
    p = subprocess.run([str(exe), "--x-train", paths["x800"], "--y-train", paths["y800"], "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    back = gc.load(out)  # the binary's data.json names its model file: the run loads back in Python
    assert back.params["h.W"].shape == (64, 16) and back.predict_labels(ds.X_test[:4]).shape == (4,)
    # the classes as gc.fit writes them: digits' labels were written "0".."9", so the loaded run's labels (strings)
    # never equalled the int labels (accuracy 0 against y)
    assert json.loads((out / "data.json").read_text())["classes"] == list(range(10))
    labels = back.predict_labels(ds.X_test)
    assert labels.dtype.kind == "i" and np.mean(labels == ds.y_test) > 0.5
    r = fit(str(tmp_path / "roll.py"), data="digits", batch_size=12, progress=False, out=str(tmp_path / "run"))
    lib = export(tmp_path / "libroll.so", tmp_path / "run", model=str(tmp_path / "roll.py"), data="digits").path
    assert "#define ROLL_MIN_BATCH 4" in (tmp_path / "roll.h").read_text()
    fn = ctypes.CDLL(str(lib)).roll_predict_standardized
    X = np.ascontiguousarray(r.dataset.X_test[:5], np.float32)
    outs = np.zeros((5, 10), np.float32)
    for n, rc in ((3, 2), (4, 0), (5, 0)):
        assert fn(X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n), outs.ctypes.data_as(ctypes.c_void_p)) == rc
    np.testing.assert_allclose(outs, r.predict(X), rtol=1e-4, atol=1e-4)


def test_an_adamw_binary_takes_its_weight_decay_at_run_time_and_trains_as_gc_fit(tmp_path):
    """A binary built with optimizer adamw (weight_decay 0.2 its default) trains with --weight-decay 0.3 bitwise as
    gc.fit(optimizer="adamw", weight_decay=0.3) does; without the flag it runs the built value. Built with
    clip_grad_norm=0.5 it clips as gc.fit(clip_grad_norm=) does, and --clip-grad-norm is a run-time value too."""
    from graphc import data
    from graphc.aot import build
    from graphc.fitting import fit

    (tmp_path / "m.py").write_text(MODEL)
    exe = build(tmp_path / "train-adamw", model=tmp_path / "m.py", data="diabetes", optimizer="adamw",
                weight_decay=0.2, clip_grad_norm=0.5, max_batch=64).path
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--weight-decay WD" in p.stdout and "[0.2]" in p.stdout, p.stdout
    assert "--clip-grad-norm MAX" in p.stdout and "[0.5]" in p.stdout and "inf: no" in p.stdout
    info = subprocess.run([str(exe), "--info"], capture_output=True, text=True).stdout
    assert "optimizer: adamw" in info and " weight_decay" in info
    ds = data.load("diabetes")
    args = []
    for kind, arr in (("x", ds.X_train), ("y", ds.y_train)):
        np.save(tmp_path / f"{kind}.npy", arr)
        args += [f"--{kind}-train", str(tmp_path / f"{kind}.npy")]
    weights = {}
    for tag, flag in (("flag", ["--weight-decay", "0.3"]), ("built", []), ("same", ["--weight-decay", "0.2"]),
                      ("clip", ["--weight-decay", "0.3", "--clip-grad-norm", "0.05"]),
                      ("noclip", ["--weight-decay", "0.3", "--clip-grad-norm", "inf"])):
        r = subprocess.run([str(exe), *args, "--epochs", "2", *flag, "--quiet", "--out", str(tmp_path / tag)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        weights[tag] = {n: np.load(tmp_path / tag / f"{n}.npy") for n in ("first.W", "first.b", "out.W", "out.b")}
    ref = fit(str(tmp_path / "m.py"), "diabetes", optimizer="adamw", weight_decay=0.3, clip_grad_norm=0.5, epochs=2,
              progress=False)
    clipped = fit(str(tmp_path / "m.py"), "diabetes", optimizer="adamw", weight_decay=0.3, clip_grad_norm=0.05,
                  epochs=2, progress=False)
    # inf: clipping off. The factor min(1, inf / (norm + eps)) is exactly 1, as gc.fit's with a MAX no norm reaches,
    # bit for bit; against gc.fit without clipping AdamW agrees to rounding: there the update fuses into the
    # gradient's matmul and LLVM contracts the multiply-add of its second moment on the other product (SGD and
    # momentum, whose updates have one product to contract, agree bitwise: tests/nn/test_train.py)
    one = fit(str(tmp_path / "m.py"), "diabetes", optimizer="adamw", weight_decay=0.3, clip_grad_norm=1e30, epochs=2,
              progress=False)
    unclipped = fit(str(tmp_path / "m.py"), "diabetes", optimizer="adamw", weight_decay=0.3, epochs=2, progress=False)
    for name, value in ref.params.items():
        assert np.array_equal(weights["flag"][name].view(np.uint32), value.view(np.uint32)), name
        assert np.array_equal(weights["clip"][name].view(np.uint32), clipped.params[name].view(np.uint32)), name
        assert np.array_equal(weights["noclip"][name].view(np.uint32), one.params[name].view(np.uint32)), name
        np.testing.assert_allclose(weights["noclip"][name], unclipped.params[name], rtol=1e-6, atol=1e-7)
        assert not np.array_equal(weights["noclip"][name], weights["flag"][name])  # 0.5 clips these steps
        assert np.array_equal(weights["built"][name], weights["same"][name])
        assert not np.array_equal(weights["built"][name], weights["flag"][name])
        assert not np.array_equal(weights["clip"][name], weights["flag"][name])
    bad = subprocess.run([str(exe), *args, "--weight-decay", "-1", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--weight-decay: must be >= 0" in bad.stderr and not (tmp_path / "bad").exists()
    for value in ("nan", "-inf", "0", "1e999", "infx"):
        bad = subprocess.run([str(exe), *args, "--clip-grad-norm", value, "--out", str(tmp_path / "bad")],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and "or inf for no clipping, got" in bad.stderr and not (tmp_path / "bad").exists()


BN_MODEL = """
import graphc as gc
OPTIONS = {"epochs": 3, "batch_size": 32, "lr": 0.1}

def model(x, n_outputs):
    h = gc.relu(gc.nn.batch_norm(gc.nn.dense(x, 16, name="fc"), name="bn"))
    return gc.nn.dense(h, n_outputs, name="out")
"""


def _same_run(out, result, names):
    """The binary's run in `out` against gc.fit's `result`: bitwise the same arrays and the same history."""
    for name in names:
        got, want = np.load(out / f"{name}.npy"), result.params[name]
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    lines = (out / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), r.split(","), strict=True)) for r in lines[1:]]
    assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in result.history]
    assert [float(r["val_loss"]) for r in rows] == [h["val_loss"] for h in result.history]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == result.metrics["test_accuracy"]


def test_a_batch_norm_binary_carries_the_running_statistics_as_gc_fit_does(digits_data, tmp_path):
    """The running statistics start at 0 and 1, are updated by every training step, used by the evaluation and
    saved beside the parameters (restored with the best epoch): bitwise gc.fit's, with momentum, L2 and early
    stopping; gc.load and graphc export read the binary's run as a gc.fit run. A training batch of 1 row is
    refused, as gc.fit refuses it."""
    import ctypes

    from graphc.aot import build, export
    from graphc.fitting import fit

    ds, paths = digits_data
    model = tmp_path / "bn_mlp.py"
    model.write_text(BN_MODEL)
    exe = build(tmp_path / "train-bn", str(model), "digits").path
    info = subprocess.run([str(exe), "--info"], capture_output=True, text=True).stdout
    assert "running statistics" in info and "bn.running_mean (16,)" in info and "bn.running_var (16,)" in info
    kw = dict(epochs=4, batch_size=32, lr=0.3, momentum=0.9, l2=1e-3, early_stopping=1, seed=2)
    out = tmp_path / "out"
    p = subprocess.run([str(exe), *data_flags(paths), *flags(**kw), "--quiet", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    result = fit(str(model), "digits", progress=False, checkpoint_every=0, **kw)
    assert result.metrics["stopped_early"] and "stopped early" in p.stdout  # the best epoch's statistics restored
    names = ["fc.W", "fc.b", "bn.gamma", "bn.beta", "out.W", "out.b", "bn.running_mean", "bn.running_var"]
    assert sorted(result.params) == sorted(names)
    assert not np.allclose(result.params["bn.running_var"], 1.0)  # the statistics did move
    _same_run(out, result, names)
    assert "bn.running_var.npy" in json.loads((out / "metrics.json").read_text())["weights"]
    back = gc.load(out)  # inference with the binary's running statistics
    X = np.ascontiguousarray(ds.X_test[:20], np.float32)
    assert np.array_equal(back.predict(X), result.predict(X))
    lib = export(tmp_path / "libbn.so", out).path
    got = np.zeros((20, 10), np.float32)
    rc = ctypes.CDLL(str(lib)).bn_predict_standardized(X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(20),
                                                       got.ctypes.data_as(ctypes.c_void_p))
    assert rc == 0
    np.testing.assert_allclose(got, result.predict(X), rtol=1e-5, atol=1e-5)
    # 33 rows in batches of 32 leave a batch of 1 row: no variance, refused before anything is written
    for name, arr in (("x33", ds.X_train[:33]), ("y33", ds.y_train[:33])):
        np.save(tmp_path / f"{name}.npy", arr)
    p = subprocess.run([str(exe), "--x-train", str(tmp_path / "x33.npy"), "--y-train", str(tmp_path / "y33.npy"),
                        "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert p.returncode == 2 and "a batch of 1 row" in p.stderr and "batch_norm 'bn'" in p.stderr, p.stderr
    assert not (tmp_path / "one").exists()


NOISY_MODEL = """
import graphc as gc
OPTIONS = {"epochs": 3, "batch_size": 32, "lr": 0.05}

def model(x, n_outputs):  # gaussian noise on the input: a fresh draw each step, the seed's in evaluation
    h = gc.nn.dense(x + gc.random.normal_like(x, std=0.3, salt="input"), 16, "tanh", name="fc")
    return gc.nn.dense(h, n_outputs, name="out")
"""


def test_a_binary_keys_a_models_random_draws_as_gc_fit_does(digits_data, tmp_path):
    """A model drawing gc.random numbers: the binary feeds the step's key as it does dropout's (a fresh one per
    step) and evaluates with the seed as the key, as gc.fit does: bitwise the same weights and losses (the
    validation losses too), with the full and with the plain step. Its data.json records that key (eval_key), so
    gc.load of the binary's run predicts as gc.fit's result does (it failed: no rng_key); a data.json written
    before eval_key falls back to metrics.json's seed."""
    from graphc.aot import build
    from graphc.fitting import fit, load

    ds, paths = digits_data
    model = tmp_path / "noisy.py"
    model.write_text(NOISY_MODEL)
    exe = build(tmp_path / "train-noisy", str(model), "digits").path
    X = ds.X_test[:40]
    for tag, kw in (("full", dict(epochs=2, momentum=0.5, seed=4)), ("plain", dict(epochs=2, seed=5))):
        out = tmp_path / tag
        p = subprocess.run([str(exe), *data_flags(paths), *flags(**kw), "--quiet", "--out", str(out)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert json.loads((out / "metrics.json").read_text())["step"] == tag
        result = fit(str(model), "digits", progress=False, checkpoint_every=0, **kw)
        _same_run(out, result, ["fc.W", "fc.b", "out.W", "out.b"])
        d = json.loads((out / "data.json").read_text())
        assert d["eval_key"] == kw["seed"]
        want = result.predict(X)
        assert np.array_equal(load(out).predict(X), want)
        d["eval_key"] = kw["seed"] + 1  # the key matters: another one draws other noise
        (out / "data.json").write_text(json.dumps(d))
        assert not np.allclose(load(out).predict(X), want, atol=1e-3)
        del d["eval_key"]  # an older binary's run: the seed its metrics.json records
        (out / "data.json").write_text(json.dumps(d))
        assert np.array_equal(load(out).predict(X), want)
