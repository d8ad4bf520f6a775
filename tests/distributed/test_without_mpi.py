"""Without the mpi extra graphc is unchanged, and asking for distributed training says how to install it."""

import sys

import pytest

from graphc.distributed import Distributed, launched_rank, launched_ranks, shares
from graphc.errors import GraphcError


def test_asking_for_distributed_training_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(GraphcError, match=r"pip install 'graphc\[mpi\]'.*mpirun -n P graphc train"):
        Distributed()
    from graphc import fit

    with pytest.raises(GraphcError, match=r"graphc\[mpi\]"):
        fit(None, "digits", epochs=1, progress=False, distributed=True)


def test_batch_shares_are_contiguous_near_equal_with_the_first_ranks_taking_the_remainder():
    assert shares(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert shares(2, 3) == [(0, 1), (1, 2), (2, 2)]  # a rank may get no row of a small last batch
    for n in range(0, 40):
        for p in range(1, 6):
            s = shares(n, p)
            sizes = [hi - lo for lo, hi in s]
            assert s[0][0] == 0 and s[-1][1] == n and all(a[1] == b[0] for a, b in zip(s, s[1:], strict=False))
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_the_launcher_environment_gives_the_rank_count(monkeypatch):
    for size, rank in (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        monkeypatch.delenv("PMI_SIZE", raising=False)
        monkeypatch.delenv("PMI_RANK", raising=False)
        monkeypatch.setenv(size, "3")
        monkeypatch.setenv(rank, "2")
        assert launched_ranks() == 3 and launched_rank() == 2
        monkeypatch.delenv(size)
        monkeypatch.delenv(rank)
    assert launched_ranks() == 1 and launched_rank() == 0


def test_graphc_build_mpi_without_an_mpicc_says_how_to_install_the_extra(monkeypatch, tmp_path, capsys):
    from graphc.cli import main

    monkeypatch.delenv("MPICC", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no mpich wheel beside this Python
    monkeypatch.setenv("PATH", str(tmp_path))  # and no mpicc on PATH
    assert main(["build", "--mpi", "--dataset", "digits", "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "graphc: error: graphc build --mpi links the binary with an MPI library through its mpicc" in err
    assert "pip install 'graphc[mpi]'" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()
    monkeypatch.setenv("MPICC", "no-such-mpicc")
    assert main(["build", "--mpi", "--dataset", "digits", "-o", str(tmp_path / "t")]) == 2
    assert "MPICC='no-such-mpicc' is not an executable on PATH" in capsys.readouterr().err


def test_random_draws_make_each_rank_key_its_own_numbers():
    """Dropout masks follow the global batch's rows across ranks (an index offset per row size); gc.random's draws
    follow no rows, so a loss with one keys every rank apart (independent noise) instead of giving every rank the
    same numbers for its own rows."""
    import graphc as gc
    from graphc.distributed import _with_row_offsets

    x = gc.input("x", ("N", 4))
    dropped = gc.sum(gc.dropout(x, 0.5))
    _, offsets = _with_row_offsets(dropped)
    assert offsets is not None and list(offsets) == [4]
    _, offsets = _with_row_offsets(dropped + gc.sum(x * gc.random.normal(like=x, salt="noise")))
    assert offsets is None
