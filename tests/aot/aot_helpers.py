"""Helpers shared by the aot tests (conftest.py holds the fixtures)."""

import shutil

import pytest

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="graphc build links with the system C compiler (cc)")

# the in-process runs these binaries are compared with (tests/aot/test_aot_binary.py)
FEATURES = dict(epochs=4, batch_size=32, lr=0.05, momentum=0.9, l2=1e-4, l1=1e-5, dropout=[0.8, 0.5],
                early_stopping=2, seed=7)


def flags(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        name = "--" + ("early-stopping" if k == "early_stopping" else k.replace("_", "-"))
        out += [name, ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return out


def data_flags(paths, splits=("train", "val", "test")) -> list[str]:
    out = []
    for s in splits:
        out += [f"--x-{s}", str(paths[f"x_{s}"]), f"--y-{s}", str(paths[f"y_{s}"])]
    return out
