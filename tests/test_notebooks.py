"""The notebooks in notebooks/ run top to bottom in a real Jupyter kernel, and every notebook in the repository is
stored without outputs, so what is committed never goes stale.

Strip outputs after editing a notebook in Jupyter:  python tests/test_notebooks.py --strip"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; the slowest cell takes a few seconds with a warm compile cache
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SKIP_DIRS = {"build", "dist", "node_modules", "site-packages"}


def _dev_extra(module: str):
    """Import a package of the dev extra; without it, skip locally but fail in CI (which installs the extra)."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{module} is not installed: python -m pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A "python3" kernelspec that runs this interpreter (sys.executable), found first through JUPYTER_PATH: the
    kernelspec a machine already has may run another Python, and a fresh machine may have none."""
    _dev_extra("ipykernel")
    _dev_extra("jupyter_client")
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    data_dir = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(data_dir / "kernels" / "python3")  # its kernel.json runs sys.executable -m ipykernel_launcher
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(data_dir), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the debugger's warning about frozen modules
        spec = KernelSpecManager().get_kernel_spec("python3")
        assert spec.argv[0] == sys.executable, spec.argv
        yield


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_env, tmp_path: Path):
    nbformat = _dev_extra("nbformat")
    _dev_extra("nbclient")
    _dev_extra("matplotlib")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    # the kernel starts in tmp_path, so whatever a notebook writes lands there, not in the repository
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell and its traceback, without the terminal colour codes
        pytest.fail(f"{path.name}: {ANSI.sub('', str(e))}", pytrace=False)


def repository_notebooks() -> list[Path]:
    found = []
    for p in sorted(ROOT.rglob("*.ipynb")):
        parts = p.relative_to(ROOT).parts[:-1]
        if not any(d.startswith(".") or d in SKIP_DIRS for d in parts):
            found.append(p)
    return found


def stale_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell['execution_count']}")
    return problems


def test_notebooks_are_stored_without_outputs():
    stale = {str(p.relative_to(ROOT)): stale_cells(p) for p in repository_notebooks()}
    stale = {k: v for k, v in stale.items() if v}
    assert not stale, ("notebooks must be committed without outputs and execution counts; strip them with "
                       f"`python tests/test_notebooks.py --strip`: {stale}")


def strip(path: Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] != ["--strip"]:
        sys.exit("usage: python tests/test_notebooks.py --strip")
    for p in repository_notebooks():
        if strip(p):
            print(f"stripped {p.relative_to(ROOT)}")
