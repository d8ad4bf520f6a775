"""An LSTM that reads each 8x8 digit as a sequence of its 8 rows (8 features per step) and classifies it from
its last hidden state. Train it with the CLI:

    graphc train --model examples/lstm_digits_rows.py --dataset digits

Its first parameter is named `sequences`, so graphc passes the data as time-major sequences (T, N, F) on the
dataset's grid: the digits' 8 rows of 8 pixels, (8, N, 8) (a .npz whose X is (N, T, F) works the same way).
The whole epoch stays one native call: the loop over the rows is a gc.scan that compiles to a loop around its
body's kernels (no unrolling), and its gradient is one reverse loop."""

import graphc as gc

OPTIONS = {"epochs": 30, "batch_size": 32, "optimizer": "adam", "lr": 0.01}


def model(sequences, n_outputs):
    h = gc.nn.lstm(sequences, 64, name="lstm")  # (8 rows, N, 8 pixels) -> the last hidden state (N, 64)
    return gc.nn.dense(h, n_outputs, name="out")
