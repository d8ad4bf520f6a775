"""digits, the default dataset, is read from scikit-learn's data file without importing scikit-learn (~1 s of
CPU in each process that loads it: every rank of an mpirun), and is exactly what scikit-learn's loader gives."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from graphc import data


def test_digits_without_sklearn_are_sklearns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y, names = data._digits()
    d = datasets.load_digits()
    assert X.dtype == np.float64 and y.dtype == np.asarray(d.target).dtype
    np.testing.assert_array_equal(X, d.data)
    np.testing.assert_array_equal(y, d.target)
    assert names == [str(f) for f in d.feature_names]


def test_loading_digits_imports_no_sklearn_and_falls_back_to_it(monkeypatch):
    pytest.importorskip("sklearn")
    code = "import sys; from graphc import data; data.load('digits'); print('sklearn' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    fast = data.load("digits")
    monkeypatch.setattr(data, "_digits", lambda: None)  # the file moved or changed form: scikit-learn loads it
    slow = data.load("digits")
    for f in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "x_mean", "x_std"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(slow, f))
    assert (fast.classes, fast.feature_names, fast.task) == (slow.classes, slow.feature_names, slow.task)
