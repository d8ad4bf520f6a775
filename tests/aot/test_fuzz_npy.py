"""Fuzzing the training binary's .npy reader (issue 15): random headers, versions, sizes and data for --x-train
and --y-train. The property: exit 0 with the weights written, or exit 2 with a message naming the file and
nothing written — never a crash (a signal), a hang, another status or a half-written output directory.
Budget: GRAPHC_FUZZ_EXAMPLES (default 6 here x 5 files per example; see tests/fuzz)."""

import os
import struct
import subprocess

import numpy as np
from aot_helpers import needs_cc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = needs_cc
EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "6"))

DESCR = st.sampled_from(["<f4", "<f8", ">f4", "<i4", "<i8", "|u1", "<f2", "|b1", "<c8", "|O", "<U3", "f4", "<f4 ",
                         "'<f4'", ""])
SHAPE = st.one_of(
    st.tuples(st.integers(-2, 40), st.sampled_from([64, 63, 65, 0, 1])).map(lambda t: f"({t[0]}, {t[1]})"),
    st.integers(-1, 40).map(lambda n: f"({n},)"),
    st.sampled_from(["()", "(20, 64, 1)", "(20,64)", "(2**62, 64)", "(99999999999999999999, 64)", "[20, 64]",
                     "(20, 64", "(0x14, 64)", "(20 64)", "(1e1, 64)"]))
FORTRAN = st.sampled_from(["False", "True", "0", "None", "false"])


@st.composite
def npy_files(draw):
    descr, shape, fortran = draw(DESCR), draw(SHAPE), draw(FORTRAN)
    order = draw(st.permutations(["descr", "fortran_order", "shape"]))
    values = {"descr": f"'{descr}'", "fortran_order": fortran, "shape": shape}
    keys = [k for k in order if draw(st.integers(0, 9)) > 0]  # sometimes a key is missing
    extra = draw(st.sampled_from(["", "'extra': 1, ", "'descr': '<f4', "]))
    header = "{" + extra + ", ".join(f"'{k}': {values[k]}" for k in keys) + ", }"
    version = draw(st.sampled_from([1, 2, 3, 1, 1, 4, 0]))
    pre = 10 if version == 1 else 12
    pad = draw(st.sampled_from(["numpy", "none", "tab"]))
    h = header + (" " * ((-(pre + len(header) + 1)) % 64) if pad == "numpy" else "\t" if pad == "tab" else "") + "\n"
    size = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    if draw(st.booleans()):
        size = bytes(reversed(size))
    nbytes = draw(st.sampled_from([20 * 64 * 4, 20 * 64 * 8, 20 * 4, 0, 7, 20 * 64 * 4 + 3]))
    data = np.random.default_rng(nbytes).normal(size=nbytes // 4 + 1).astype(np.float32).tobytes()[:nbytes]
    if draw(st.booleans()):
        data = data.replace(data[:4], struct.pack("<f", float("nan")), 1)
    magic = draw(st.sampled_from([b"\x93NUMPY", b"\x93NUMPY", b"\x93NUMPX", b"NUMPY\x93"]))
    return magic + bytes([version, 0]) + size + h.encode("latin-1") + data


@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=list(HealthCheck))
@given(blob=npy_files(), which=st.sampled_from(["x", "y"]))
def test_random_npy_files_for_the_binary(digits_binary, tmp_path_factory, blob, which):
    d = tmp_path_factory.mktemp("npy")
    good_x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    np.save(d / "x.npy", good_x)
    np.save(d / "y.npy", (np.arange(20) % 10).astype(np.int32))
    (d / f"{which}.npy").write_bytes(blob)
    out = d / "out"
    p = subprocess.run([str(digits_binary.path), "--x-train", str(d / "x.npy"), "--y-train", str(d / "y.npy"),
                        "--epochs", "1", "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode in (0, 2), (p.returncode, p.stderr, blob[:120])
    if p.returncode == 2:
        assert f"{which}.npy" in p.stderr or "--" in p.stderr, p.stderr
        assert not out.exists() or not any(out.iterdir()), "something was written for refused data"
    else:
        assert {f.name for f in out.iterdir()} >= {"mlp.0.W.npy", "metrics.json", "history.csv", "data.json"}
        assert not [f for f in out.iterdir() if f.name.startswith(".")], "a temporary file was left"
