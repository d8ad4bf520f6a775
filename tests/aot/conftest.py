"""Shared, built once per test session: the digits splits as .npy files, a training binary for digits (the
default MLP with every run-time feature) and its trained weights."""

import subprocess

import numpy as np
import pytest
from aot_helpers import FEATURES, data_flags, flags


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    from graphc import data

    d = tmp_path_factory.mktemp("digits-data")
    ds = data.load("digits")
    paths = {}
    for split in ("train", "val", "test"):
        for kind, arr in (("x", getattr(ds, f"X_{split}")), ("y", getattr(ds, f"y_{split}"))):
            p = d / f"{kind}_{split}.npy"
            np.save(p, arr)
            paths[f"{kind}_{split}"] = p
    return ds, paths


@pytest.fixture(scope="session")
def digits_binary(tmp_path_factory):
    from graphc.aot import build

    d = tmp_path_factory.mktemp("digits-binary")
    return build(d / "train-digits", data="digits", keep=d / "work")


@pytest.fixture(scope="session")
def digits_run(digits_binary, digits_data, tmp_path_factory):
    """The binary trained with every feature on: (completed process, output dir)."""
    out = tmp_path_factory.mktemp("digits-run") / "out"
    p = subprocess.run([str(digits_binary.path), *data_flags(digits_data[1]), *flags(**FEATURES), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p, out
