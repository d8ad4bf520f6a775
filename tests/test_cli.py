import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_forward_and_gradient_graphs():
    out = subprocess.run([sys.executable, "-m", "graphc.cli", "demo"], capture_output=True, text=True, check=True)
    assert "matmul x mlp.0.W" in out.stdout
    assert "matmul[ta]" in out.stdout  # x^T . delta for the first layer's weight gradient


def test_python_dash_m_graphc_is_the_graphc_command():
    """`python -m graphc train ...` (as `python -m pip`) failed: 'graphc' is a package and cannot be directly
    executed."""
    out = subprocess.run([sys.executable, "-m", "graphc", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: graphc train") and "--l2 NU" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "graphc", "train", "--epochs", "0"], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "epochs must be a positive int" in bad.stderr


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    proc = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "grad of matmul" in proc.stdout or "matmul[ta]" in proc.stdout
