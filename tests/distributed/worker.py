"""Run under mpirun by the tests: train data-parallel with a Trainer and save what the tests compare.

argv: OUT.npz DATASET EPOCHS BATCH [JSON options]. Rank 0 writes the parameters and every rank's parameter digest
and processed-sample count."""

import json
import sys

import numpy as np

from graphc.distributed import Distributed, params_digest
from graphc.nn.train import TrainConfig, Trainer


def dataset(name: str):
    if name == "digits":
        from graphc import data

        ds = data.load("digits")
        return ds.X_train, ds.y_train.astype(np.int32), 10
    rng = np.random.default_rng(7)  # the 784-256-128-10 synthetic set
    X = rng.standard_normal((600, 784)).astype(np.float32)
    y = (np.abs(X[:, :10]).argmax(axis=1)).astype(np.int32)
    return X, y, 10


def main() -> None:
    out, name, epochs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    opts = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    X, y, k = dataset(name)
    if name != "digits":
        opts.setdefault("hidden", [256, 128])
    cfg = TrainConfig(epochs=epochs, batch_size=batch, threads=1, **opts)
    dist = Distributed()
    tr = Trainer(None, "multiclass", X.shape[1], k, cfg, log=lambda m: None, distributed=dist)
    run = tr.run(X, y, None, None)
    names = sorted(p.name for p in tr.params)
    digests = dist.allgather(params_digest(run["state"], names))
    samples = dist.allgather(tr.dist_step.samples)
    if dist.rank == 0:
        np.savez(out, digests=np.array(digests), samples=np.array(samples),
                 loss=np.array([r["train_loss"] for r in run["history"]]),
                 **{f"param/{n}": run["state"][n] for n in names})


if __name__ == "__main__":
    main()
