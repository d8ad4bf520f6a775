"""Inference libraries: `graphc export` writes libNAME.so and NAME.h with the trained weights embedded; a C
program calls NAME_predict and gets what gc.evaluate computes, with error codes for bad arguments and
concurrent calls safe."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aot_helpers import needs_cc
from graphc_cli import run_in_process

pytestmark = needs_cc
HERE = Path(__file__).parent


def test_exported_library_matches_evaluate(digits_run, digits_data, tmp_path):
    import graphc as gc
    from graphc.nn.train import TrainConfig, default_model

    _, weights = digits_run
    lib = tmp_path / "lib" / "libgcmodel.so"
    p = subprocess.run([sys.executable, "-m", "graphc.cli", "export", "--weights", str(weights), "-o", str(lib)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    header = lib.parent / "gcmodel.h"
    assert lib.exists() and "int gcmodel_predict(const float *x, int64_t n, float *out);" in header.read_text()
    exe = tmp_path / "predict_test"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "predict_test.c"), f"-I{lib.parent}", f"-L{lib.parent}",
                    "-lgcmodel", f"-Wl,-rpath,{lib.parent}", "-lpthread"], check=True)
    ds, _ = digits_data
    X = np.ascontiguousarray(ds.X_test, dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(X.tobytes())  # as the binary trained: its data.json says no standardization
    run = subprocess.run([str(exe), str(tmp_path / "x.bin"), str(len(X)), str(tmp_path / "out.bin")],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32).reshape(len(X), 10)

    x = gc.input("x", ("N", 64))
    out = default_model(TrainConfig(), runtime_keeps=True)(x, 10)
    params = {p.name: np.load(weights / f"{p.name}.npy") for p in gc.nn.parameters(out)}
    keeps = {f"keep.{i}": np.float32(1.0) for i in range(2)}
    want = gc.evaluate(out, {**params, **keeps, "x": X})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.mean(got.argmax(1) == ds.y_test) > 0.9


def test_export_names_missing_weights(digits_run, tmp_path):
    from graphc.aot import AotError, export

    _, weights = digits_run
    partial = tmp_path / "w"
    partial.mkdir()
    shutil.copy(weights / "mlp.0.W.npy", partial)
    with pytest.raises(AotError, match=r"no values for parameter\(s\) \['mlp.0.b', 'mlp.1.W', 'mlp.1.b'\]"):
        export(tmp_path / "libx.so", partial)
    np.save(partial / "mlp.0.b.npy", np.zeros(7, np.float32))
    with pytest.raises(AotError, match="'mlp.0.b' must be float32 of shape \\(128,\\)"):
        export(tmp_path / "libx.so", partial)
    assert not os.path.exists(tmp_path / "libx.so")
    # an unwritable --header (here below a file) raised a bare OSError after the library was written, and an
    # unwritable -o was "the C compiler failed" with ld's message: now an AotError naming the option, nothing written
    (tmp_path / "afile").write_text("")
    with pytest.raises(AotError, match=r"--header .*afile/x\.h: cannot write it \(.*\); choose a writable path"):
        export(tmp_path / "libx.so", weights, header=tmp_path / "afile" / "x.h")
    with pytest.raises(AotError, match=r"-o .*afile/libx\.so: cannot write it"):
        export(tmp_path / "afile" / "libx.so", weights)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["afile", "w"]


def test_a_float64_parameter_trains_with_penalties_and_momentum_and_exports(tmp_path):
    """A model may keep a parameter in float64: fit with momentum and L2 (the float32 hyperparameters are cast
    to it; mixing used to fail), then export from the run's weights.npz (export required float32 weights)."""
    import ctypes

    from graphc.aot import export
    from graphc.fitting import fit

    model_file = tmp_path / "m64.py"
    model_file.write_text(
        "import graphc as gc\n"
        "def model(x, n):\n"
        "    h = gc.nn.dense(x, 16, 'relu', name='h')\n"
        "    w = gc.param('w64', (16, n), init='xavier_uniform', dtype='float64')\n"
        "    return gc.cast(gc.cast(h, 'float64') @ w, 'float32')\n")
    r = fit(str(model_file), data="digits", epochs=3, optimizer="momentum", l2=1e-4, l1=1e-5, progress=False,
            out=str(tmp_path / "run"))
    assert r.params["w64"].dtype == np.float64 and r.metrics["test_accuracy"] > 0.85
    lib = export(tmp_path / "libm64.so", tmp_path / "run", model=str(model_file), data="digits").path
    X = np.ascontiguousarray(r.dataset.X_test[:32], np.float32)
    out = np.zeros((32, 10), np.float32)
    rc = ctypes.CDLL(str(lib)).m64_predict_standardized(X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(32),
                                            out.ctypes.data_as(ctypes.c_void_p))
    assert rc == 0
    np.testing.assert_allclose(out, r.predict(X), rtol=1e-4, atol=1e-4)


def test_a_max_batch_beyond_64_bit_sizes_is_refused(digits_run, tmp_path):
    from graphc.aot import AotError, export

    _, weights = digits_run
    with pytest.raises(AotError, match=r"--max-batch 100000000000000000: a call that large needs .* bytes"):
        export(tmp_path / "libx.so", weights, max_batch=10**17)
    assert not (tmp_path / "libx.so").exists()


def _predict(lib, fn: str, X: np.ndarray, width: int) -> np.ndarray:
    import ctypes

    X = np.ascontiguousarray(X, np.float32)
    out = np.zeros((len(X), width), np.float32)
    rc = getattr(ctypes.CDLL(str(lib)), fn)(X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(X)),
                                            out.ctypes.data_as(ctypes.c_void_p))
    assert rc == 0
    return out


@pytest.mark.parametrize("dataset", ["breast_cancer", "diabetes"])
def test_exported_library_takes_raw_features_and_carries_the_labels(tmp_path, dataset):
    """Issue 15, item 3: the export of a graphc train run standardizes raw features inside predict (it used to
    expect standardized ones silently: accuracy 0.80 instead of 0.97 on digits), returns regression predictions
    in the target's units, and its header carries the statistics and the class labels."""
    from graphc.aot import export
    from graphc.fitting import fit

    r = fit(data=dataset, epochs=3, hidden=[16], progress=False, out=str(tmp_path / "run"))
    lib = export(tmp_path / "libm.so", tmp_path / "run", data=dataset, hidden=[16]).path
    ds = r.dataset
    raw = ds.X_test.astype(np.float64) * ds.x_std + ds.x_mean
    got = _predict(lib, "m_predict", raw, 1)  # the C library writes N x 1 values
    # predict_raw has the target's shape: (N,) for diabetes' 1-D y (so `pred - y` cannot broadcast to N x N)
    assert r.predict_raw(raw).shape == ((len(raw),) if dataset == "diabetes" else (len(raw), 1))
    np.testing.assert_allclose(got, r.predict_raw(raw).reshape(got.shape), rtol=1e-4, atol=1e-4)
    if dataset == "diabetes":  # back to the target's units in double and rounded once, in both (1 ulp apart before)
        raw32 = raw.astype(np.float32)  # what the library reads
        np.testing.assert_array_equal(_predict(lib, "m_predict", raw32, 1),
                                      np.asarray(r.predict_raw(raw32)).reshape(got.shape))
    np.testing.assert_array_equal(_predict(lib, "m_predict_standardized", ds.X_test, 1), r.predict(ds.X_test))
    header = (tmp_path / "m.h").read_text()
    assert "M_X_MEAN[" in header and "int m_predict_standardized(" in header
    if dataset == "breast_cancer":
        assert 'M_CLASS_LABELS[2] = {"0", "1"}' in header
        assert np.mean((got[:, 0] > 0) == ds.y_test) > 0.9
    else:
        assert "#define M_Y_STD" in header
        assert np.sqrt(np.mean((got[:, 0] - (ds.y_test * ds.y_std + ds.y_mean)) ** 2)) < 2 * ds.y_std


def test_a_binary_standardizes_and_its_export_takes_raw_features(digits_binary, digits_data, tmp_path):
    """Issue 15, item 3 for `graphc build`: --standardize makes the binary standardize with the training rows'
    statistics and write them (and the class labels) to data.json; graphc export embeds them."""
    import json

    from graphc.aot import export

    ds, paths = digits_data
    raw = {}
    for split in ("train", "test"):
        X = getattr(ds, f"X_{split}").astype(np.float64) * ds.x_std + ds.x_mean
        raw[split] = X
        np.save(tmp_path / f"x_{split}.npy", X.astype(np.float32))
    out = tmp_path / "run"
    p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x_train.npy"), "--y-train",
                        str(paths["y_train"]), "--epochs", "5", "--standardize", "--quiet", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    d = json.loads((out / "data.json").read_text())
    np.testing.assert_allclose(d["x_mean"], ds.x_mean, rtol=1e-5, atol=1e-5)
    assert d["classes"] == list(range(10))  # as gc.fit writes them (they were strings)
    lib = export(tmp_path / "libdig.so", out).path
    got = _predict(lib, "dig_predict", raw["test"], 10)
    assert np.mean(got.argmax(1) == ds.y_test) > 0.9
    p = subprocess.run([str(digits_binary.path), *[str(a) for a in ("--x-train", paths["x_train"], "--y-train",
                        paths["y_train"], "--epochs", "1", "--quiet", "--out", tmp_path / "plain")]],
                       capture_output=True, text=True)
    assert p.returncode == 0 and json.loads((tmp_path / "plain" / "data.json").read_text())["x_mean"] is None


def test_export_of_a_run_directory_rebuilds_what_the_run_trained(tmp_path):
    """`graphc export --weights RUN` built for digits and the default --hidden unless they were repeated (a
    breast_cancer run: 'must be float32 of shape (64, 128), got (30, 64)'); a run trained with a relative
    --model recorded it relative to where it trained, so gc.load / graphc predict elsewhere could not find it.
    Now both come from the run's record."""
    from graphc.fitting import load

    cli = [sys.executable, "-m", "graphc.cli"]
    p = subprocess.run([*cli, "train", "--dataset", "breast_cancer", "--hidden", "12", "--epochs", "2", "--quiet",
                        "--out", str(tmp_path / "bc")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*cli, "export", "--weights", str(tmp_path / "bc"), "-o", str(tmp_path / "libbc.so"),
                        "--max-batch", "64", "--hidden", "12", "--activation", "relu"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # an option repeated as the run had it is fine; another value would build another network around the run's
    # weights (--activation gelu on a relu run exported a gelu net, logits 0.44 off, exit 0): refused
    for flag, value in (("--activation", "gelu"), ("--hidden", "13"), ("--init", "he_uniform")):
        q = run_in_process("export", "--weights", tmp_path / "bc", "-o", tmp_path / "libx.so", flag, value)
        assert q.returncode == 2 and f"the run trained the default MLP with {flag} " in q.stderr, q.stderr
        assert not (tmp_path / "libx.so").exists()
    r = load(tmp_path / "bc")
    raw = r.dataset.x_mean + np.random.default_rng(0).normal(size=(9, 30)) * r.dataset.x_std
    np.testing.assert_allclose(_predict(tmp_path / "libbc.so", "bc_predict", raw, 1), r.predict_raw(raw),
                               rtol=1e-5, atol=1e-5)
    # a model file given by a relative path, trained in one directory and used from another
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "cnn.py").write_text(
        "import graphc as gc\n\n\ndef model(images, n_outputs):\n"
        "    h = gc.nn.relu(gc.nn.conv2d(images, 4, 3, name='c'))\n"
        "    return gc.nn.dense(gc.nn.flatten(h), n_outputs, name='out')\n")
    p = subprocess.run([*cli, "train", "--model", "cnn.py", "--epochs", "1", "--quiet", "--out", "run"],
                       capture_output=True, text=True, cwd=tmp_path / "work")
    assert p.returncode == 0, p.stderr
    (tmp_path / "elsewhere").mkdir()
    X = np.random.default_rng(1).uniform(0, 16, size=(5, 64))
    np.save(tmp_path / "x.npy", X)
    p = subprocess.run([*cli, "predict", "--run", "../work/run", "--data", "../x.npy"], capture_output=True,
                       text=True, cwd=tmp_path / "elsewhere")
    assert p.returncode == 0, p.stderr
    from graphc.aot import export

    export(tmp_path / "libcnn.so", tmp_path / "work" / "run", max_batch=16)
    want = load(tmp_path / "work" / "run").predict_raw(X)
    np.testing.assert_allclose(_predict(tmp_path / "libcnn.so", "cnn_predict", X, 10), want, rtol=1e-5, atol=1e-5)


DAMAGES = [
    (lambda d: d.update(x_std=d["x_std"][:10]), "x_std has 10 values, the model takes 30 features"),
    (lambda d: d["x_std"].__setitem__(5, 0.0), "x_std[5] is 0.0: every x_std must be > 0"),
    (lambda d: d.update(x_mean=None), "has x_std without x_mean"),
    (lambda d: d["x_mean"].__setitem__(2, "nan"), "x_mean holds a value that is not a finite number"),
]


def test_a_damaged_data_json_is_refused_by_export_and_predict(tmp_path):
    """A data.json whose standardization lost entries or holds a 0 std: export built a library that returned
    NaN with success, predict failed with a numpy broadcast error or blamed the input."""
    import json
    import shutil

    cli = [sys.executable, "-m", "graphc.cli"]
    good = tmp_path / "bc"
    p = subprocess.run([*cli, "train", "--dataset", "breast_cancer", "--hidden", "8", "--epochs", "1", "--quiet",
                        "--out", str(good)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    np.save(tmp_path / "x.npy", np.zeros((3, 30), np.float32))
    for k, (damage, words) in enumerate(DAMAGES):
        run = tmp_path / f"bad{k}"
        shutil.copytree(good, run)
        d = json.loads((run / "data.json").read_text())
        damage(d)
        (run / "data.json").write_text(json.dumps(d))
        for cmd in (["export", "--weights", str(run), "-o", str(tmp_path / "lib.so")],
                    ["predict", "--run", str(run), "--data", str(tmp_path / "x.npy")]):
            p = run_in_process(*cmd)  # refused before anything compiles: no Python to start for it
            assert p.returncode == 2 and words in p.stderr and "data.json" in p.stderr, p.stderr
            assert "Traceback" not in p.stderr and not (tmp_path / "lib.so").exists()


NOISY_MLP = """
import graphc as gc


def model(x, n_outputs):  # gaussian noise on the input, drawn in inference too
    h = gc.nn.dense(x + 0.3 * gc.random.normal_like(x, salt="input noise"), 8, "tanh", name="h")
    return gc.nn.dense(h, n_outputs, name="out")
"""


def test_a_model_drawing_random_numbers_predicts_with_the_runs_key_everywhere(tmp_path):
    """A model with a gc.random draw reads rng_key in inference too: FitResult.predict and gc.load(run).predict
    failed ('missing value(s) for input rng_key'), graphc export refused the input. Now all of them, graphc
    predict included, predict with the run's evaluation key (its seed, recorded in data.json as eval_key): the
    same numbers in process, from the run, on the command line and (within 1e-5) from the exported library."""
    import json

    from graphc.aot import export
    from graphc.fitting import fit, load

    model = tmp_path / "noisy.py"
    model.write_text(NOISY_MLP)
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(80, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=80)
    r = fit(str(model), (X, y), epochs=2, batch_size=16, seed=11, progress=False, out=str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "data.json").read_text())["eval_key"] == 11
    Xs = (X[:20] - r.dataset.x_mean) / r.dataset.x_std
    want = r.predict(Xs)
    assert np.array_equal(r.predict(Xs), want)  # deterministic: the same key at every call
    run = load(tmp_path / "run")
    assert np.array_equal(run.predict(Xs), want)
    np.save(tmp_path / "x.npy", X[:20])
    cli = [sys.executable, "-m", "graphc.cli"]
    p = subprocess.run([*cli, "predict", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "x.npy")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["prediction", *(f"{v:.9g}" for v in run.predict_raw(X[:20]).reshape(-1))]
    lib = export(tmp_path / "libnoisy.so", tmp_path / "run", max_batch=64)
    assert "#define NOISY_RNG_KEY 11" in lib.header.read_text()
    np.testing.assert_allclose(_predict(lib.path, "noisy_predict", X[:20], 1), run.predict_raw(X[:20]).reshape(-1, 1),
                               rtol=1e-5, atol=1e-5)
    # the key matters (another one draws other noise), and a damaged one is refused, naming data.json
    d = json.loads((tmp_path / "run" / "data.json").read_text())
    d["eval_key"] = 12
    (tmp_path / "run" / "data.json").write_text(json.dumps(d))
    assert not np.allclose(load(tmp_path / "run").predict(Xs), want, atol=1e-3)
    d["eval_key"] = "eleven"
    (tmp_path / "run" / "data.json").write_text(json.dumps(d))
    p = run_in_process("export", "--weights", tmp_path / "run", "-o", tmp_path / "libx.so")
    assert p.returncode == 2 and "data.json: eval_key is 'eleven'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "libx.so").exists()


COMPUTED_INDEX = """
import graphc as gc


def model(x, n_outputs):  # an embedding of an id computed from a feature: a run-time check in the library
    ids = gc.cast(gc.floor(x[:, 0] + 2.0), "int32")
    return gc.nn.dense(gc.concatenate([x, gc.nn.embedding(ids, 4, 3, name="emb")], axis=1), n_outputs, name="out")
"""

RACE_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "idx.h"
enum { N = 8, REPS = 400 };
static float good[N * IDX_N_FEATURES], bad[N * IDX_N_FEATURES], ref[N * IDX_N_OUTPUTS];
static int wrong;
static void *run(void *arg) {
    const float *x = arg ? bad : good;
    float out[N * IDX_N_OUTPUTS];
    for (int i = 0; i < REPS; i++) {
        int rc = idx_predict(x, N, out);
        if (arg ? rc != IDX_ERR_CHECK : rc != IDX_OK || memcmp(out, ref, sizeof ref) != 0)
            __atomic_add_fetch(&wrong, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}
int main(void) {
    for (int i = 0; i < N * IDX_N_FEATURES; i++) good[i] = bad[i] = (float)((i * 37) % 100) / 100.0f;
    bad[(N - 1) * IDX_N_FEATURES] = 100.0f; /* the last row's id is far out of range */
    if (idx_predict(good, N, ref) != IDX_OK || idx_predict(bad, N, ref + 0) != IDX_ERR_CHECK) return 3;
    if (idx_predict(good, N, ref) != IDX_OK) return 4;
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, run, (void *)(i % 2));
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("%d wrong\n", wrong);
    return wrong != 0;
}
"""


def test_concurrent_calls_of_a_model_with_run_time_checks_each_get_their_own_result(tmp_path):
    """A failed run-time check (an embedding id the model computes from x, out of range) reports into the program's
    one error word: concurrent calls read and cleared each other's, so a call on good rows returned ERR_CHECK and the
    call whose id was out of range returned OK with wrong outputs. Such a model's calls now run one at a time (the
    header says so); every call gets its own result."""
    from graphc.aot import export
    from graphc.fitting import fit

    model = tmp_path / "idx.py"
    model.write_text(COMPUTED_INDEX)
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, size=(64, 3))  # standardized, the first feature stays within (-2, 2): ids 0..3
    fit(str(model), (X, X.sum(axis=1)), epochs=1, batch_size=16, progress=False, out=str(tmp_path / "run"))
    lib = export(tmp_path / "libidx.so", tmp_path / "run", max_batch=64)
    assert "its calls run one at a time" in lib.header.read_text()
    (tmp_path / "race.c").write_text(RACE_C)
    exe = tmp_path / "race"
    subprocess.run([os.environ.get("CC", "cc"), "-O1", str(tmp_path / "race.c"), f"-I{tmp_path}", f"-L{tmp_path}",
                    "-lidx", f"-Wl,-rpath,{tmp_path}", "-lpthread", "-o", str(exe)], check=True)
    p = subprocess.run([str(exe)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "0 wrong\n", (p.returncode, p.stdout)


def test_a_row_holding_nan_or_inf_stays_in_that_row_as_the_header_says(digits_run, digits_data, tmp_path):
    """The header says what a non-finite feature does (nothing checks them): it stays in its row. A call with NaN in
    one row and inf in another gives the other rows bitwise what a clean call gives, over one thread and several,
    in every batch size the library was laid out for (1, 16 and beyond)."""
    from graphc.aot import export

    _, weights = digits_run
    r = export(tmp_path / "libnanrow.so", weights, max_batch=300)
    assert "a row holding NaN or inf stays in that row" in r.header.read_text()
    assert r.row == r.n_features == 64  # a row is the features alone (no lengths)
    X = np.ascontiguousarray(np.concatenate([digits_data[0].X_test] * 2)[:300], np.float32)
    bad = X.copy()
    bad[3, 10] = np.nan
    bad[7, 0] = np.inf
    bad[250, 63] = -np.inf
    for n in (1, 9, 16, 300):
        for fn in ("nanrow_predict", "nanrow_predict_standardized"):
            clean, dirty = _predict(r.path, fn, X[:n], 10), _predict(r.path, fn, bad[:n], 10)
            rows = np.isin(np.arange(n), [3, 7, 250], invert=True)
            assert np.array_equal(dirty[rows].view(np.uint32), clean[rows].view(np.uint32)), (n, fn)
            assert not np.isfinite(dirty[~rows]).all(axis=1).any(), (n, fn)
    import ctypes

    out = np.zeros((300, 10), np.float32)
    rc = ctypes.CDLL(str(r.path)).nanrow_predict_threads(bad.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(300),
                                                          out.ctypes.data_as(ctypes.c_void_p), 2)
    assert rc == 0 and np.array_equal(out.view(np.uint32), _predict(r.path, "nanrow_predict", bad, 10).view(np.uint32))
