"""The compile cache's bound: least recently used entries go once the directory outgrows $GRAPHC_CACHE_MAX_MB, a hit
counts as a use, only graphc's own files are ever removed, and `graphc cache [--clear]` shows or empties it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from graphc import cachedir, cli

KEY = "{:064x}".format


def _entry(d, i, size, age, kind="so"):
    """A fake cache entry KEY(i).so + .sum (or .bin) of `size` bytes, last used `age` seconds ago."""
    paths = [d / f"{KEY(i)}.{kind}"] + ([d / f"{KEY(i)}.sum"] if kind == "so" else [])
    for p in paths:
        p.write_bytes(b"x" * (size if p.suffix != ".sum" else 100))
        t = time.time() - age
        os.utime(p, (t, t))
    return paths


def _total(d):
    return sum(p.stat().st_size for p in d.iterdir() if cachedir.is_ours(p.name))


def test_prune_removes_least_recently_used_entries_whole_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's file")
    old = [_entry(tmp_path, i, 300_000, age=1000 - i) for i in range(6)]  # entry 0 least recently used
    blob = _entry(tmp_path, 99, 50_000, age=5000, kind="bin")
    host = tmp_path / "host-0123abcd.txt"
    host.write_text("cpu")
    os.utime(host, (0, 0))
    stale, fresh = tmp_path / ".tmp-dead", tmp_path / ".tmp-writing"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 2 * cachedir.STALE_TEMP_S,) * 2)
    limit = 1_000_000
    freed = cachedir.prune(keep=(KEY(0),), limit=limit)
    assert freed > 0 and _total(tmp_path) <= limit * 3 // 4 + 10
    assert all(p.exists() for p in old[0]), "the entry just stored (keep) stays even as the oldest"
    assert not any(p.exists() for p in blob), "the least recently used entry goes first"
    gone = [i for i in range(1, 6) if not old[i][0].exists()]
    assert gone == list(range(1, 1 + len(gone))) and len(gone) >= 3, gone  # in order of last use
    for i in range(1, 6):  # a shared object and its checksum go together
        assert old[i][0].exists() == old[i][1].exists()
    assert mine.read_text() == "the user's file" and host.exists() and fresh.exists() and not stale.exists()
    # within the bound: nothing goes
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cachedir.prune(limit=limit) == 0 and sorted(p.name for p in tmp_path.iterdir()) == before
    assert cachedir.prune(limit=None) == 0


@pytest.mark.parametrize("text, want", [("", 1024 << 20), ("2.5", int(2.5 * 2**20)), ("0", None), ("-3", None),
                                        ("  64 ", 64 << 20)])
def test_max_bytes_from_the_environment(monkeypatch, text, want):
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", text)
    assert cachedir.max_bytes() == want


def test_a_bound_that_is_not_a_number_is_reported_and_the_default_kept(monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", "1GB")
    with pytest.warns(UserWarning, match="GRAPHC_CACHE_MAX_MB='1GB' is not a number"):
        assert cachedir.max_bytes() == cachedir.DEFAULT_MAX_MB << 20


PROGRAM = textwrap.dedent("""
    import sys, numpy as np
    import graphc as gc
    width = int(sys.argv[1])
    x = gc.input("x", ("N", 5))
    fn = gc.compile([gc.tanh(x @ gc.constant(np.full((5, width), 0.1, np.float32))).sum()])
    print(fn.from_cache, float(fn({"x": np.ones((3, 5), np.float32)})[0]))
""")


def _compile(tmp_path, width, limit_mb):
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path), GRAPHC_CACHE_MAX_MB=str(limit_mb))
    p = subprocess.run([sys.executable, "-c", PROGRAM, str(width)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    hit, value = p.stdout.split()
    return hit == "True", float(value)


def _programs(tmp_path):
    return {p.stem for p in tmp_path.glob("*.so")} | {p.stem for p in tmp_path.glob("*.o")}


def test_programs_beyond_the_bound_are_evicted_least_recently_used_first(tmp_path):
    """Three programs fill the bound; a fourth evicts the least recently used, not the one a hit has just used."""
    import numpy as np

    assert _compile(tmp_path, 3, 1000) == (False, pytest.approx(9 * float(np.tanh(0.5)), rel=1e-6))
    a = _programs(tmp_path)
    _compile(tmp_path, 4, 1000)
    b = _programs(tmp_path) - a
    _compile(tmp_path, 6, 1000)
    limit_mb = _total(tmp_path) * 1.02 / 2**20  # the three fit; a fourth does not
    time.sleep(0.05)
    assert _compile(tmp_path, 3, limit_mb)[0] is True  # a hit: program a is used now, b is the oldest
    assert _compile(tmp_path, 5, limit_mb)[0] is False
    assert _total(tmp_path) <= limit_mb * 2**20
    left = _programs(tmp_path)
    assert a <= left and not (b & left), (a, b, left)
    # the evicted program compiles again, to the same result
    assert _compile(tmp_path, 4, 1000) == (False, pytest.approx(12 * float(np.tanh(0.5)), rel=1e-6))


def test_graphc_cache_shows_and_clears_only_graphcs_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAPHC_CACHE_MAX_MB", raising=False)
    _entry(tmp_path, 1, 2 * 2**20, age=10)
    _entry(tmp_path, 2, 1000, age=10, kind="bin")
    (tmp_path / "derivatives-abc123.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("keep me")
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "entries: 3, 2.0 MB" in out and "bound 1024 MB" in out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 4 files (2.0 MB)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert cli.main(["cache"]) == 0 and "entries: 0, 0.0 MB" in capsys.readouterr().out


def test_a_store_reads_the_directory_only_now_and_then(tmp_path, monkeypatch):
    """Reading a directory of thousands of entries costs tens of ms: a store prunes when the process has stored
    1/16 of the bound since it last did, or when nobody has pruned for an hour, not every time."""
    from graphc.runtime import cache

    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GRAPHC_CACHE_MAX_MB", "16")  # prune after 1 MB stored
    monkeypatch.setattr(cachedir, "_stored_since_prune", 0)
    scans = []
    real = cachedir.entries
    monkeypatch.setattr(cachedir, "entries", lambda *a: scans.append(1) or real(*a))
    cache.store_blob(KEY(1), b"x" * 1000)
    assert len(scans) == 1 and (tmp_path / cachedir.STAMP).exists()  # never pruned here: now
    for i in range(2, 12):
        cache.store_blob(KEY(i), b"x" * 1000)
    assert len(scans) == 1
    cache.store_blob(KEY(20), b"x" * (1 << 20))  # a sixteenth of the bound since the last prune
    assert len(scans) == 2
    old = time.time() - 2 * cachedir.PRUNE_EVERY_S
    os.utime(tmp_path / cachedir.STAMP, (old, old))  # nobody pruned for two hours
    cache.store_blob(KEY(21), b"x")
    assert len(scans) == 3
