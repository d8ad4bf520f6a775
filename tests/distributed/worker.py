"""Run under mpirun by the tests: train data-parallel with a Trainer and save what the tests compare.

argv: OUT_PREFIX JOBS_JSON, a list of {"data": "digits" | "synthetic", "epochs", "batch", "opts"}. For job i rank 0
writes OUT_PREFIX-i.npz: the parameters, every rank's parameter digest and processed-sample count, the losses."""

import json
import sys

import numpy as np

from graphc.distributed import Distributed, params_digest
from graphc.nn.train import TrainConfig, Trainer


def dataset(name: str):
    if name == "digits":
        from graphc import data

        ds = data.load("digits")
        return ds.X_train, ds.y_train.astype(np.int32)
    rng = np.random.default_rng(7)  # a 784-feature synthetic set for the 784-256-128-10 net
    X = rng.standard_normal((600, 784)).astype(np.float32)
    return X, np.abs(X[:, :10]).argmax(axis=1).astype(np.int32)


def config(job: dict) -> TrainConfig:
    opts = dict(job.get("opts", {}))
    if job["data"] != "digits":
        opts.setdefault("hidden", [256, 128])
    return TrainConfig(epochs=job["epochs"], batch_size=job["batch"], threads=1, **opts)


def main() -> None:
    prefix, jobs = sys.argv[1], json.loads(sys.argv[2])
    dist = Distributed()
    for i, job in enumerate(jobs):
        X, y = dataset(job["data"])
        tr = Trainer(None, "multiclass", X.shape[1], 10, config(job), log=lambda m: None, distributed=dist)
        run = tr.run(X, y, None, None)
        names = sorted(p.name for p in tr.params)
        digests = dist.allgather(params_digest(run["state"], names))
        samples = dist.allgather(tr.dist_step.samples)
        if dist.rank == 0:
            np.savez(f"{prefix}-{i}.npz", digests=np.array(digests), samples=np.array(samples),
                     loss=np.array([r["train_loss"] for r in run["history"]]),
                     **{f"param/{n}": run["state"][n] for n in names})


if __name__ == "__main__":
    main()
