"""CNNs end to end: layers, a model that asks for images, the native epoch against the reference, the example
model file, and `graphc build` / `graphc export` of a CNN bitwise equal to in-process training / gc.evaluate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import data
from graphc.codegen.epoch import permutation
from graphc.fitting import fit, load_model_file
from graphc.nn.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cnn_digits.py"
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="graphc build links with the system C compiler")


def tiny_cnn(images, n_outputs):
    h = gc.nn.conv2d(images, 4, 3, name="c1")
    h = gc.nn.max_pool2d(h, 2)
    h = gc.nn.conv2d(h, 6, 3, stride=2, padding="valid", activation="tanh", name="c2")
    return gc.nn.dense(gc.nn.flatten(gc.nn.avg_pool2d(h, 1)), n_outputs, name="out")


def separable_cnn(images, n_outputs):
    """MobileNet's block on 8x8 digits: depthwise 3x3 (one filter a channel) then pointwise 1x1."""
    h = gc.nn.conv2d(images, 16, 3, name="stem")                        # (N, 8, 8, 16)
    h = gc.nn.conv2d(h, 16, 3, groups=16, name="dw1")                   # depthwise
    h = gc.nn.conv2d(h, 32, 1, name="pw1")                              # pointwise
    h = gc.nn.conv2d(h, 32, 3, stride=2, groups=32, name="dw2")         # (N, 4, 4, 32), depthwise, stride 2
    h = gc.nn.conv2d(h, 32, 1, name="pw2")
    return gc.nn.dense(gc.nn.flatten(gc.nn.max_pool2d(h, 2)), n_outputs, name="out")


def test_layers_name_their_parameters_and_init_from_the_filters_fan_in():
    x = gc.input("x", ("N", 8, 8, 3))
    y = gc.nn.conv2d(x, 16, (3, 5), name="c")
    assert y.shape == (gc.dim("N"), 8, 8, 16)
    params = {p.name: p for p in gc.nn.parameters(y)}
    assert params["c.W"].shape == (3, 5, 3, 16) and params["c.b"].shape == (16,)
    w = gc.nn.init_params(y, seed=0)["c.W"]
    assert w.std() == pytest.approx(np.sqrt(2.0 / (3 * 5 * 3)), rel=0.1)  # He normal from KH*KW*C
    assert gc.nn.flatten(gc.nn.max_pool2d(y, 2)).shape == (gc.dim("N"), 4 * 4 * 16)
    with pytest.raises(gc.GraphcError, match=r"4-D \(N, H, W, C\).*f32\[N,8,8\].*expand_dims"):
        gc.nn.conv2d(gc.input("g", ("N", 8, 8)), 4, 3)


def test_conv1d_and_1d_pools_as_layers_over_sequences():
    """gc.nn.conv1d / max_pool1d / avg_pool1d (Keras' Conv1D and its pools) over (N, T, C): W (K, C, F) from the
    fan-in K*C, the product's bias and activation, equal to the op with the same filter, compiled and
    differentiated."""
    x = gc.input("x", ("N", 12, 3), "float64")
    y = gc.nn.conv1d(x, 5, 3, name="c1", activation="tanh")
    assert y.shape == (gc.dim("N"), 12, 5)
    params = {p.name: p for p in gc.nn.parameters(y)}
    assert params["c1.W"].shape == (3, 3, 5) and params["c1.b"].shape == (5,)
    h = gc.nn.avg_pool1d(gc.nn.max_pool1d(gc.nn.conv1d(y, 4, 2, stride=2, padding=(1, 0), name="c2"), 2), 3)
    assert h.shape == (gc.dim("N"), 1, 4)
    vals = gc.nn.init_params([*params.values()], seed=0)
    assert vals["c1.W"].std() == pytest.approx(np.sqrt(6 / (9 + 15)) / np.sqrt(3), rel=0.25)  # Glorot for tanh
    v = dict(vals, x=np.random.default_rng(0).normal(size=(2, 12, 3)))
    want = np.tanh(gc.evaluate(gc.conv1d(x, params["c1.W"], padding="same"), v) + vals["c1.b"])
    np.testing.assert_allclose(gc.evaluate(y, v), want, rtol=1e-12)
    out = gc.sum(h * h)
    all_params = gc.nn.parameters(out)
    v = dict(gc.nn.init_params(all_params, seed=1), x=v["x"])
    v32 = {k: a.astype(np.float32) for k, a in v.items()}
    x32 = gc.input("x", ("N", 12, 3))
    with gc.nn.model_build():
        h32 = gc.nn.avg_pool1d(gc.nn.max_pool1d(gc.nn.conv1d(gc.nn.conv1d(x32, 5, 3, name="c1", activation="tanh"),
                                                              4, 2, stride=2, padding=(1, 0), name="c2"), 2), 3)
    np.testing.assert_allclose(gc.compile(h32)(v32), gc.evaluate(h, v), rtol=1e-4, atol=1e-5)
    gc.check_grad(out, all_params, v)
    with pytest.raises(gc.GraphcError, match=r"conv1d 'conv': input must be 3-D \(N, T, C\).*expand_dims"):
        gc.nn.conv1d(gc.input("s", ("N", 12)), 4, 3)


def reference_epoch(tr, state, X, y, *, seed, batch):
    state = {k: v.copy() for k, v in state.items()}
    scalars = tr.scalars(1)
    order = permutation(seed, 1, len(X))
    names = list(tr.updates)
    for s, lo in enumerate(range(0, len(X), batch)):
        idx = order[lo:lo + batch]
        vals = dict(state, x=X[idx], y=y[idx], step=np.float32(s + 1), **{k: np.float32(v) for k, v in scalars.items()})
        out = gc.evaluate([tr.updates[k] for k in names], vals, allow_unused=True)
        for k, v in zip(names, out, strict=True):
            state[k.name] = v.astype(np.float32)
    return state, scalars


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("net", [tiny_cnn, separable_cnn])
def test_native_cnn_epoch_matches_the_reference(threads, net):
    """The whole epoch of a CNN (conv, pools, strided valid conv, momentum; or depthwise-separable blocks) is one
    native call, equal to the reference stepped in Python, on 1 and 3 threads."""
    ds = data.load("digits")
    X, y = ds.X_train[:96], ds.y_train[:96]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="momentum", momentum=0.9, threads=threads)
    tr = Trainer(net, "multiclass", 64, 10, cfg, log=lambda m: None, grid=ds.grid)
    assert tr.x.shape[1] == 64  # the step still takes rows; the model saw (N, 8, 8, 1)
    state = tr.init_state(2)
    ref, scalars = reference_epoch(tr, state, X, y, seed=4, batch=32)
    tr.epoch_fn.run_epoch(X, y, state, batch=32, epoch=1, seed=4, step0=0, scalars=scalars)
    for k in ref:
        np.testing.assert_allclose(state[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_a_model_asks_for_images_and_bad_grids_are_named():
    ds = data.load("digits")
    assert ds.grid == (8, 8, 1)
    seen = []

    def model(images, n_outputs):
        seen.append(images.shape)
        return gc.nn.dense(gc.nn.flatten(images), n_outputs)

    Trainer(model, "multiclass", 64, 10, TrainConfig(), log=lambda m: None, grid=(8, 8, 1))
    assert seen[-1] == (gc.dim("N"), 8, 8, 1)
    Trainer(lambda x, n: gc.nn.dense(x, n), "multiclass", 64, 10, TrainConfig(), log=lambda m: None, grid=(8, 8, 1))
    with pytest.raises(gc.GraphcError, match=r"64 features.*cannot be reshaped to the grid \(7, 7, 1\).*\(N, 64\)"):
        fit(model, "digits", grid=(7, 7, 1), progress=False, epochs=1)
    with pytest.raises(gc.GraphcError, match="asks for images.*breast_cancer has no grid shape"):
        fit(model, "breast_cancer", progress=False, epochs=1)


def test_npz_with_image_arrays_trains_on_their_grid(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8, 7, 2)).astype(np.float32)
    y = (X[:, :3].mean((1, 2, 3)) > 0).astype(np.int64)
    np.savez(tmp_path / "img.npz", X=X, y=y)
    ds = data.load(str(tmp_path / "img.npz"))
    assert ds.grid == (8, 7, 2) and ds.X_train.shape[1] == 112
    np.savez(tmp_path / "grey.npz", X=X[..., 0], y=y)
    assert data.load(str(tmp_path / "grey.npz")).grid == (8, 7, 1)
    r = fit(tiny_cnn, str(tmp_path / "img.npz"), task="multiclass", progress=False, epochs=2)
    assert np.isfinite(r.metrics["test_loss"])
    np.savez(tmp_path / "bad.npz", X=X[:, :, :, :, None], y=y)
    with pytest.raises(data.DataError, match=r"2-D.*4-D \(N, H, W, C\).*\(60, 8, 7, 2, 1\)"):
        data.load(str(tmp_path / "bad.npz"))


def test_example_model_file_is_a_cnn_that_trains():
    model, options = load_model_file(str(EXAMPLE))
    r = fit(str(EXAMPLE), "digits", progress=False, epochs=3, checkpoint_every=0)
    assert r.metrics["test_accuracy"] > 0.9
    assert any(p.ndim == 4 for p in r.params.values())


def _digits_npy(tmp_path):
    ds = data.load("digits")
    paths = []
    for split in ("train", "val", "test"):
        for kind, arr in (("x", getattr(ds, f"X_{split}")), ("y", getattr(ds, f"y_{split}"))):
            p = tmp_path / f"{kind}_{split}.npy"
            np.save(p, arr)
            paths += [f"--{kind}-{split}", str(p)]
    return ds, paths


@needs_cc
def test_cnn_binary_and_library_are_bitwise_equal_to_in_process(tmp_path):
    """`graphc build --model examples/cnn_digits.py` trains to bitwise the weights gc.fit gets, and `graphc
    export` of those weights predicts what gc.evaluate computes, with the image layout in the header."""
    env_cmd = [sys.executable, "-m", "graphc.cli"]
    exe = tmp_path / "train-cnn"
    p = subprocess.run([*env_cmd, "build", "--model", str(EXAMPLE), "-o", str(exe)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ds, paths = _digits_npy(tmp_path)
    out = tmp_path / "run"
    p = subprocess.run([str(exe), *paths, "--epochs", "2", "--seed", "3", "--threads", "2", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    result = fit(str(EXAMPLE), "digits", progress=False, checkpoint_every=0, epochs=2, seed=3, threads=1)
    for name, value in result.params.items():
        got = np.load(out / f"{name}.npy")
        assert np.array_equal(got.view(np.uint32), value.view(np.uint32)), name
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == result.metrics["test_accuracy"]

    lib = tmp_path / "lib" / "libcnn.so"
    p = subprocess.run([*env_cmd, "export", "--model", str(EXAMPLE), "--weights", str(out), "-o", str(lib)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    header = (lib.parent / "cnn.h").read_text()
    assert "#define CNN_HEIGHT 8" in header and "channels last (NHWC)" in header
    src = tmp_path / "p.c"
    src.write_text('#include <stdio.h>\n#include <stdlib.h>\n#include "cnn.h"\nint main(int c, char **v) {\n'
                   '  long n = atol(v[2]); float *x = malloc(n * CNN_N_FEATURES * 4), *o = malloc(n * 40);\n'
                   '  FILE *f = fopen(v[1], "rb"); fread(x, 4, n * CNN_N_FEATURES, f); fclose(f);\n'
                   '  if (cnn_predict_threads(x, n, o, 2)) return 1;\n'
                   '  f = fopen(v[3], "wb"); fwrite(o, 4, n * CNN_N_OUTPUTS, f); fclose(f); return 0; }\n')
    prog = tmp_path / "p"
    subprocess.run(["cc", "-O2", "-o", str(prog), str(src), f"-I{lib.parent}", f"-L{lib.parent}", "-lcnn",
                    f"-Wl,-rpath,{lib.parent}", "-lpthread"], check=True)
    X = np.ascontiguousarray(ds.X_test, dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(X.tobytes())
    subprocess.run([str(prog), str(tmp_path / "x.bin"), str(len(X)), str(tmp_path / "o.bin")], check=True)
    got = np.frombuffer((tmp_path / "o.bin").read_bytes(), np.float32).reshape(len(X), 10)
    model, _ = load_model_file(str(EXAMPLE))
    x = gc.input("x", ("N", 64))
    y = model(gc.reshape(x, ("N", 8, 8, 1)), 10)
    params = {p.name: np.load(out / f"{p.name}.npy") for p in gc.nn.parameters(y)}
    want = gc.evaluate(y, {**params, "x": X})  # inference: dropout is off
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.mean(got.argmax(1) == ds.y_test) > 0.8  # two epochs


def test_rows_reaching_a_convolution_say_how_a_model_gets_images_and_integer_arrays_are_window_sizes():
    """A model file whose first parameter is `x` gets rows: conv2d's error now says to name it `images`; a window,
    stride or padding given as a 1-D integer numpy array (a list was accepted, an array refused) is accepted."""
    x = gc.input("x_rows", ("N", 64))
    for build in (lambda: gc.nn.conv2d(x, 4, 3, name="c_rows"), lambda: gc.max_pool2d(x, 2)):
        with pytest.raises(gc.GraphcError, match="first parameter is named `images`"):
            build()
    im = gc.input("im_rows", ("N", 8, 8, 1))
    a = gc.max_pool2d(im, np.array([2, 2]), stride=np.array([2, 1]), padding=np.array([0, 1]))
    assert a.shape == gc.max_pool2d(im, [2, 2], stride=[2, 1], padding=[0, 1]).shape


def test_grouped_and_depthwise_conv_layers():
    """gc.nn.conv2d/conv1d groups=: W (K.., C/groups, filters), He-normal from the group's fan-in, equal to the op
    with the same filter; groups dividing neither the channels nor the filters named at the layer."""
    x = gc.input("x", ("N", 8, 8, 12), "float64")
    y = gc.nn.conv2d(x, 24, 3, groups=4, name="g")
    d = gc.nn.conv2d(y, 48, (3, 1), groups=24, activation=None, name="dw")  # depthwise, 2 filters a channel
    params = {p.name: p for p in gc.nn.parameters(d)}
    assert params["g.W"].shape == (3, 3, 3, 24) and params["dw.W"].shape == (3, 1, 1, 48)
    vals = gc.nn.init_params(d, seed=0)
    assert vals["g.W"].std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 3)), rel=0.15)  # fan-in KH*KW*C/groups
    vals["g.b"][:] = np.random.default_rng(1).normal(size=24)
    vals["x"] = np.random.default_rng(0).normal(size=(2, 8, 8, 12))
    h = gc.relu(gc.conv2d(x, params["g.W"], padding="same", groups=4) + params["g.b"])
    want = gc.conv2d(h, params["dw.W"], padding="same", groups=24) + params["dw.b"]
    np.testing.assert_allclose(gc.evaluate(d, vals), gc.evaluate(want, vals), rtol=1e-12)
    s = gc.nn.conv1d(gc.input("s", ("N", 9, 6)), 3, 3, groups=3, name="c1")
    assert {p.name: p.shape for p in gc.nn.parameters(s)}["c1.W"] == (3, 2, 3)
    with pytest.raises(gc.GraphcError, match=r"conv2d 'bad': groups=5 must divide both the input's channels C = 12 "
                                             r".* and filters = 10.*test_cnn\.py:\d+"):
        gc.nn.conv2d(x, 10, 3, groups=5, name="bad")
    with pytest.raises(gc.GraphcError, match=r"conv1d 'bad1': groups must be an int >= 1, got 0"):
        gc.nn.conv1d(gc.input("s2", ("N", 9, 6)), 3, 3, groups=0, name="bad1")


def test_a_depthwise_separable_cnn_trains_on_digits():
    r = fit(separable_cnn, "digits", progress=False, epochs=10, checkpoint_every=0, optimizer="momentum",
            momentum=0.9, lr=0.02, seed=0)
    assert r.params["dw1.W"].shape == (3, 3, 1, 16)
    assert r.metrics["test_accuracy"] > 0.9, r.metrics  # 0.93-0.95 over seeds 0-2
