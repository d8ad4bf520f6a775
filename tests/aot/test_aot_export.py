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
    (tmp_path / "x.bin").write_bytes(X.tobytes())
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
