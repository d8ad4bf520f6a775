"""An LSTM that reads each 8x8 digit as a sequence of its 8 rows (8 features per step) and classifies it from
its last hidden state. Train it with the CLI:

    graphc train --model examples/lstm_digits_rows.py --dataset digits

The whole epoch stays one native call: the loop over the rows is a gc.scan that compiles to a loop around its
body's kernels (no unrolling), and its gradient is one reverse loop."""

import graphc as gc

OPTIONS = {"epochs": 30, "batch_size": 32, "optimizer": "adam", "lr": 0.01}


def model(x, n_outputs):
    rows = gc.reshape(x, (x.shape[0], 8, 8))
    xs = gc.transpose(rows, (1, 0, 2))  # time-major: (8 rows, N, 8 pixels)
    h = gc.nn.lstm(xs, 64, name="lstm")
    return gc.nn.dense(h, n_outputs, name="out")
