"""examples/char_lm.py: a tiny config trains in a few seconds, held-out bits per character fall every epoch
and below the unigram entropy, sampling gives text of the vocabulary, and the sampling cell (the LSTM as a
cell with the sequence layer's parameters) computes what the sequence model computes."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

import graphc as gc

PATH = Path(__file__).resolve().parents[2] / "examples" / "char_lm.py"


def _module():
    spec = importlib.util.spec_from_file_location("char_lm_example", PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def test_tiny_char_lm_learns_below_the_unigram_entropy():
    lm_mod = _module()
    cfg = lm_mod.Config(hidden=48, embed=16, seq=32, batch=16, lr=1e-2, epochs=3, chars=60_000, threads=1)
    lines = []
    r = lm_mod.run(cfg, log=lines.append)
    bits = r["held_out_bits"]
    assert bits[0] > math.log2(len(r["vocab"])) - 0.5  # untrained: about uniform over the vocabulary
    assert all(b < a for a, b in zip(bits, bits[1:], strict=False)), bits
    assert bits[-1] < r["unigram_bits"] - 0.3, (bits, r["unigram_bits"])
    sample = r["sample"]
    assert sample.startswith("The ") and len(sample) == 4 + 300 and set(sample) <= set(r["vocab"].chars)
    assert any("unigram entropy" in m for m in lines) and any("held-out" in m for m in lines)


def test_the_sampling_cell_is_the_sequence_model():
    lm_mod = _module()
    cfg = lm_mod.Config(hidden=8, embed=4, seq=5, batch=2, threads=1)
    V = 11
    lm = lm_mod.CharLM(V, cfg)
    params = lm.params_only()
    ids = np.random.default_rng(0).integers(0, V, size=(1, 5)).astype(np.int32)
    seq_logits = gc.evaluate(lm.logits(gc.transpose(lm.x, (1, 0))), dict(params, x=ids))[:, 0]  # (T, V)
    step = lm._compile_step()
    h = np.zeros((1, 8), np.float32)
    c = np.zeros_like(h)
    for t in range(5):
        logits, h, c = step(dict(params, tok=ids[:, t], h=h, c=c))
        np.testing.assert_allclose(logits[0], seq_logits[t], rtol=1e-4, atol=1e-5)


def test_windows_shift_the_targets_by_one():
    lm_mod = _module()
    X, Y = lm_mod.windows(np.arange(11, dtype=np.int32), 3)
    np.testing.assert_array_equal(X, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(Y, X + 1)
    assert lm_mod.unigram_bits(np.array([0, 0, 1, 1]), np.array([0, 1]), 2) == 1.0


def test_too_little_text_for_a_held_out_window_is_said_in_words():
    """--chars 10 was a ZeroDivisionError in bits_per_char (no held-out window)."""
    import pytest

    m = _module()
    with pytest.raises(SystemExit, match="leaves 1 held-out characters, fewer than one window"):
        m.prepare(m.Config(chars=10))
