"""The training binary checks its .npy inputs in C before training: each bad file is refused with a message
naming the file, exit status 2, and nothing written to the output directory."""

import struct
import subprocess

import numpy as np
import pytest
from aot_helpers import needs_cc

pytestmark = needs_cc


def npy_bytes(arr: np.ndarray, version=(1, 0)) -> bytes:
    import io

    f = io.BytesIO()
    np.lib.format.write_array(f, arr, version=version)
    return f.getvalue()


def with_header(header: str, data: bytes, version: int = 1) -> bytes:
    """A .npy file with this header dict text (padded as numpy pads it) and these data bytes."""
    pre = 10 if version == 1 else 12
    h = header + " " * ((-(pre + len(header) + 1)) % 64) + "\n"
    size = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h.encode() + data


def _x(rows=20, cols=64):
    return np.random.default_rng(0).normal(size=(rows, cols)).astype(np.float32)


def _y(rows=20):
    return (np.arange(rows) % 10).astype(np.int32)


def truncated():
    b = npy_bytes(_x())
    return b[:-7]


def header_too_long():
    b = bytearray(npy_bytes(_x()))
    b[8:10] = struct.pack("<H", 60000)  # the header length field claims more than the file holds
    return bytes(b)


def shape_understates():
    x = _x()
    return with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 64), }", x.tobytes())


def nan_at(r, c):
    x = _x()
    x[r, c] = np.nan
    return npy_bytes(x)


CASES = {  # name: (which file, its bytes or None for a missing file, expected message part)
    "missing file": ("x", None, "no such file"),
    "truncated data": ("x", truncated(), "truncated"),
    "header length lies": ("x", header_too_long(), "truncated: the header claims 60000 bytes"),
    "shape understates the data": ("x", shape_understates(), "the header does not describe the data"),
    "shape overstates the data": ("x", with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (40, 64), }",
                                                   _x().tobytes()), "truncated"),
    "not an npy file": ("x", b"x,y\n1,2\n" * 10, "not a .npy file"),
    "unsupported version": ("x", b"\x93NUMPY\x04\x00" + npy_bytes(_x())[8:], "unsupported .npy format version 4.0"),
    "features float64": ("x", npy_bytes(_x().astype(np.float64)), "dtype float64: features must be float32"),
    "features wrong width": ("x", npy_bytes(_x(cols=63)), "rows have 63 features but the model takes 64"),
    "features 1-D": ("x", npy_bytes(_x().ravel()), "must be a 2-D array"),
    "big-endian features": ("x", npy_bytes(_x().astype(">f4")), "big-endian"),
    "fortran order": ("x", npy_bytes(np.asfortranarray(_x())), "Fortran-order"),
    "nan feature": ("x", nan_at(3, 5), "non-finite value nan at row 3, column 5"),
    "inf feature": ("x", npy_bytes(np.where(np.arange(64) == 2, np.inf, _x()).astype(np.float32)),
                    "non-finite value inf at row 0, column 2"),
    "unknown header key": ("x", with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (20, 64), 'x': 1, }",
                                            _x().tobytes()), "unexpected key 'x'"),
    "structured dtype": ("x", with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (20, 64), }",
                                          _x().tobytes()), "structured"),
    "labels float32": ("y", npy_bytes(_y().astype(np.float32)), "labels must be int32 or int64"),
    "labels 2-D": ("y", npy_bytes(_y().reshape(20, 1)), "labels must be a 1-D array"),
    "label out of range": ("y", npy_bytes(np.where(np.arange(20) == 7, 10, _y()).astype(np.int64)),
                           "label 10 at row 7 is out of range"),
    "negative label": ("y", npy_bytes(np.where(np.arange(20) == 1, -1, _y()).astype(np.int32)),
                       "label -1 at row 1 is out of range"),
    "rows differ": ("y", npy_bytes(_y(19)), "has 19 rows but --x-train"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_training(case, digits_binary, tmp_path):
    which, content, message = CASES[case]
    files = {"x": tmp_path / "x.npy", "y": tmp_path / "y.npy"}
    files["x"].write_bytes(npy_bytes(_x()))
    files["y"].write_bytes(npy_bytes(_y()))
    if content is None:
        files[which].unlink()
    else:
        files[which].write_bytes(content)
    out = tmp_path / "out"
    p = subprocess.run([str(digits_binary.path), "--x-train", str(files["x"]), "--y-train", str(files["y"]),
                        "--epochs", "1", "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2, (case, p.stdout, p.stderr)
    assert message in p.stderr, (case, p.stderr)
    flag = "--x-train" if which == "x" else "--y-train"
    assert f"{flag} {files[which]}:" in p.stderr  # names the file
    assert not out.exists()


def test_bad_validation_file_is_refused_before_anything_is_written(digits_binary, tmp_path):
    np.save(tmp_path / "x.npy", _x())
    np.save(tmp_path / "y.npy", _y())
    x_val = _x(5)
    x_val[4, 0] = np.nan
    np.save(tmp_path / "xv.npy", x_val)
    np.save(tmp_path / "yv.npy", _y(5))
    out = tmp_path / "out"
    p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x.npy"), "--y-train",
                        str(tmp_path / "y.npy"), "--x-val", str(tmp_path / "xv.npy"), "--y-val",
                        str(tmp_path / "yv.npy"), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and f"--x-val {tmp_path / 'xv.npy'}: non-finite value nan at row 4" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs: 0 is out of range"),
    (["--lr", "nan"], "--lr: expected a finite number"),
    (["--dropout", "0.8,0.5,0.5"], "3 keep probabilities given, but the model has 2"),
    (["--dropout", "1.5"], "keep probabilities must be in (0, 1]"),
    (["--early-stopping", "3"], "--early-stopping needs a validation split"),
    (["--threads", "0"], "--threads: 0 is out of range"),
    (["--bogus", "1"], "unknown option '--bogus'"),
])
def test_bad_options(args, message, digits_binary, tmp_path):
    np.save(tmp_path / "x.npy", _x())
    np.save(tmp_path / "y.npy", _y())
    out = tmp_path / "out"
    p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x.npy"), "--y-train",
                        str(tmp_path / "y.npy"), *args, "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not out.exists()


def test_npy_versions_and_int64_labels_are_accepted(digits_binary, tmp_path):
    x, y = _x(), _y().astype(np.int64)
    for version in ((2, 0), (3, 0)):
        (tmp_path / "x.npy").write_bytes(npy_bytes(x, version))
        (tmp_path / "y.npy").write_bytes(npy_bytes(y, version))
        out = tmp_path / f"out{version[0]}"
        p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x.npy"), "--y-train",
                            str(tmp_path / "y.npy"), "--epochs", "1", "--quiet", "--out", str(out)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        w = np.load(out / "mlp.0.W.npy")  # and numpy reads what the binary writes
        assert w.dtype == np.float32 and w.shape == (64, 128)


def _spellings(dtype) -> list[str]:
    """Every descr numpy itself reads as this native dtype: one-letter codes and kind+size codes, each bare or after
    a byte-order mark, and the type names ('float32', 'single', 'int', 'long' ...)."""
    import string
    import warnings

    codes = [*string.ascii_letters, "?"] + [f"{k}{n}" for k in "fiub" for n in (1, 2, 4, 8)]
    names = [k for k in np.sctypeDict if isinstance(k, str) and len(k) > 1]
    found = []
    for s in [p + c for p in ("", "<", "=", "|", ">") for c in codes] + names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 'a', a code numpy 2 deprecates
                dt = np.dtype(s)
        except TypeError:
            continue
        if dt == dtype and (dt.isnative or dt.itemsize == 1):
            found.append(s)
    return found


def test_every_descr_numpy_reads_as_the_same_bytes_is_accepted_and_big_endian_is_refused(digits_binary, tmp_path):
    """A header written by hand or by another tool ('f4', '|f4', 'float32', 'l' without numpy's '<'): the bytes are
    what numpy reads, and the binary trains on them; '>f4' and '>i8' are refused by name. Each spelling is checked
    to be one np.load reads as the same array."""
    x, y = _x(), _y()
    xs, ys = _spellings(np.float32), _spellings(np.int32) + _spellings(np.int64)
    assert {"f4", "|f4", "=f4", "f", "float32", "single"} <= set(xs) and {"i8", "l", "int", "int64"} <= set(ys)

    def header(descr, arr):
        return with_header(f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {arr.shape}, }}", arr.tobytes())

    n = max(len(xs), len(ys))
    for k in range(n):
        dx, dy = xs[k % len(xs)], ys[k % len(ys)]
        yk = y.astype(np.dtype(dy))
        (tmp_path / "x.npy").write_bytes(header(dx, x))
        (tmp_path / "y.npy").write_bytes(header(dy, yk))
        np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)  # numpy reads these bytes so
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), y)
        out = tmp_path / f"out{k}"
        p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x.npy"), "--y-train",
                            str(tmp_path / "y.npy"), "--epochs", "1", "--quiet", "--out", str(out)],
                           capture_output=True, text=True)
        assert p.returncode == 0, (dx, dy, p.stderr)
    for which, descr, arr, message in [
            ("x", ">f4", x.astype(">f4"), "big-endian data ('>f4') is not supported: save it little-endian "
             "(x.astype('<f4'))"),
            ("y", ">i8", y.astype(">i8"), "big-endian data ('>i8')"),
            ("x", "double", x.astype(np.float64), "dtype float64: features must be float32"),
            ("x", ">i1", x.astype(np.int8), "dtype int8: features must be float32"),  # one byte: no byte order
            ("x", "<float32", x, "unsupported dtype '<float32'")]:  # numpy refuses a name after a mark too
        (tmp_path / "x.npy").write_bytes(header("f4", x))
        (tmp_path / "y.npy").write_bytes(header("<i4", y))
        (tmp_path / f"{which}.npy").write_bytes(header(descr, arr))
        p = subprocess.run([str(digits_binary.path), "--x-train", str(tmp_path / "x.npy"), "--y-train",
                            str(tmp_path / "y.npy"), "--epochs", "1", "--out", str(tmp_path / "bad")],
                           capture_output=True, text=True)
        assert p.returncode == 2 and message in p.stderr, (descr, p.stderr)
        assert not (tmp_path / "bad").exists()
