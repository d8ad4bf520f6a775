"""A token classifier on sentences of different lengths: an embedding and a GRU read each padded sequence only
up to its own length (packed semantics: the last real step's state, as PyTorch's pack_padded_sequence gives),
and a dense layer classifies it. Make the data, then train, predict and build with the CLI:

    python examples/token_lengths.py seq.npz         # writes X (N, T) ids padded with -1, y and lengths
    graphc train --model examples/token_lengths.py --dataset seq.npz --out run
    graphc predict --run run --data seq.npz          # reads X and lengths from the .npz
    graphc build -o train-seq --model examples/token_lengths.py --dataset seq.npz   # --lengths-train F ...

The model asks for the lengths by naming a parameter `lengths`: graphc gives it each row's real steps (int32
(N,)), carried beside its row through every shuffle, batch and split. What the padding holds is never read."""

import sys

import numpy as np

import graphc as gc

VOCAB, STEPS = 12, 20
OPTIONS = {"epochs": 15, "batch_size": 32, "optimizer": "adam", "lr": 0.01}


def model(tokens, lengths, n_outputs):
    e = gc.nn.embedding(tokens, VOCAB, 16, name="emb")  # (T, N) ids -> (T, N, 16)
    h = gc.nn.gru(e, 32, lengths=lengths, name="gru")  # each sequence's state at its own last step
    return gc.nn.dense(h, n_outputs, name="out")


def make(n: int = 1200, seed: int = 0) -> dict:
    """Sentences of 3..STEPS tokens; the label: does token 1 come before token 2 somewhere in the real steps?
    (order matters, so a bag of words cannot solve it; the padding holds -1, which no model may read)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, STEPS + 1, n)
    X = rng.integers(0, VOCAB, (n, STEPS))
    y = np.zeros(n, np.int64)
    for i, n_i in enumerate(lengths):
        seq = X[i, :n_i]
        ones, twos = np.flatnonzero(seq == 1), np.flatnonzero(seq == 2)
        y[i] = int(len(ones) > 0 and len(twos) > 0 and ones[0] < twos[-1])
        X[i, n_i:] = -1
    return {"X": X, "y": y, "lengths": lengths}


if __name__ == "__main__":
    np.savez(sys.argv[1] if len(sys.argv) > 1 else "seq.npz", **make())
