"""Training: the three learning tasks of the lecture with SGD-family optimizers, L2/L1 penalties, dropout,
early stopping (and the refit phase), checkpoints and divergence diagnosis.

A training step is a graph (loss, gradients, the optimizer's in-place updates) compiled with a native epoch
driver; Python runs between epochs only: metrics, early stopping, progress, checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from graphc import ops
from graphc.autodiff.grad import grad
from graphc.codegen.epoch_abi import KEY_MULT
from graphc.errors import GraphcError, InputError, NumericalError
from graphc.ir.node import Node, SourceInfo, needs_training_mode, topo_order
from graphc.nn import checkpoint as ckpt
from graphc.nn.layers import init_params, init_state, mlp, model_build, parameters, state_updates
from graphc.nn.losses import binary_cross_entropy, l1, l2, mse, softmax_cross_entropy
from graphc.nn.optim import Schedule, clip_grad_norm, make
from graphc.runtime.buffers import aligned_empty
from graphc.runtime.epoch import EpochFunction
from graphc.runtime.jit import CompiledFunction, default_threads
from graphc.runtime.reference import evaluate, leaves_by_name

TASKS = ("multiclass", "binary", "regression")
EVAL_BATCH = 4096


@dataclass
class TrainConfig:
    """Every option of a training run (the CLI's flags map one to one)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    optimizer: str = "sgd"  # sgd (mini-batch; batch_size 1 is per-sample SGD, >= n is full-batch GD), momentum,
    momentum: float = 0.0  # nesterov, adam, adamw, rmsprop, adagrad
    # AdamW's decoupled decay θ ← θ(1 - lr·wd) of every parameter (None: its default, 0.01); the other optimizers
    # have none (their coupled form, PyTorch's Adam(weight_decay=), is the l2 penalty)
    weight_decay: float | None = None
    # torch.nn.utils.clip_grad_norm_'s max_norm: every step's gradients (penalties' included) scaled together to
    # a 2-norm of at most this before the optimizer reads them (None: no clipping)
    clip_grad_norm: float | None = None
    schedule: str = "constant"  # constant, step, cosine
    step_gamma: float = 0.1
    step_every: int = 10
    l2: float = 0.0
    l1: float = 0.0
    penalize: str | list[str] = "weights"  # "weights" (matrices), "all", or a list of parameter names
    dropout: list[float] | None = None  # keep probabilities: input first, then each hidden layer
    early_stopping: int | None = None  # patience in epochs
    min_delta: float = 0.0
    refit: bool = False
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 1
    drop_last: bool = False
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    init: str = "xavier_uniform"  # Glorot: on the bundled datasets as good as He for ReLU, and better on diabetes
    bias_init: str = "like_weights"  # biases from the weights' distribution (scikit-learn's MLP, PyTorch), or zeros

    def __post_init__(self) -> None:
        for f in fields(self):  # numpy scalars (np.int64(32), np.float32(0.1)) as Python's: checked, JSON-able
            v = getattr(self, f.name)
            if isinstance(v, np.generic):
                setattr(self, f.name, v.item())
            elif isinstance(v, (list, tuple)):
                setattr(self, f.name, type(v)(x.item() if isinstance(x, np.generic) else x for x in v))
        if isinstance(self.penalize, str) and self.penalize not in ("weights", "all"):
            self.penalize = [self.penalize]  # one parameter's name (a str is not split into characters)
        if isinstance(self.hidden, int) and not isinstance(self.hidden, bool):
            self.hidden = [self.hidden]  # one hidden layer of that size, as scikit-learn's hidden_layer_sizes=16
        d = self.dropout
        if isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(self.hidden, (list, tuple)):
            # one keep probability: the lecture's split, 0.8 on the inputs and it on hidden units
            self.dropout = [0.8] + [float(d)] * len(self.hidden)
        if self.optimizer in ("momentum", "nesterov") and self.momentum == 0.0:
            self.momentum = 0.9  # their default, recorded as the value that runs
        if self.optimizer == "adamw" and self.weight_decay is None:
            self.weight_decay = 0.01  # torch.optim.AdamW's default, recorded as the value that runs

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise GraphcError(f"training option: {msg}")

        def number(v) -> bool:  # compared below: a string or None would raise a TypeError there
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v) -> bool:  # True is an int to Python, not a count to a user
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("momentum", "l2", "l1"):
            need(number(getattr(self, name)), f"{name} must be a number, got {getattr(self, name)!r}")
        wd = self.weight_decay
        need(wd is None or (number(wd) and wd >= 0), f"weight_decay must be a number >= 0, got {wd!r}")
        need(not wd or self.optimizer == "adamw",
             f"weight_decay {wd} is AdamW's decoupled decay (θ ← θ(1 - lr·wd)), and {self.optimizer} has none: use "
             f"optimizer 'adamw' (--optimizer adamw), or for the coupled form (the gradient wd·w that PyTorch's "
             f"SGD/Adam(weight_decay=wd) adds) the L2 penalty l2={wd} (--l2 {wd}; on the weights, penalize= selects)")
        cg = self.clip_grad_norm
        need(cg is None or (number(cg) and cg > 0),
             f"clip_grad_norm must be a number > 0 (the largest 2-norm of each step's gradients, PyTorch's "
             f"clip_grad_norm_(max_norm)), or None for no clipping; got {cg!r}")
        for name in ("threads", "early_stopping"):
            v = getattr(self, name)
            need(v is None or integer(v), f"{name} must be an int, got {v!r}")
        need(integer(self.checkpoint_every), f"checkpoint_every must be an int, got {self.checkpoint_every!r}")
        need(isinstance(self.hidden, (list, tuple)) and all(integer(h) and h >= 1 for h in self.hidden),
             f"hidden sizes must be positive ints (a list, one per hidden layer, e.g. [256, 128]; one int is one "
             f"layer; [] for no hidden layer), got {self.hidden!r}")
        need(self.dropout is None or (isinstance(self.dropout, (list, tuple)) and all(number(k) for k in self.dropout)),
             f"dropout must be keep probabilities (a number, or a list: the input's, then each hidden layer's), got "
             f"{self.dropout!r}")

        need(integer(self.epochs) and self.epochs >= 1, f"epochs must be a positive int, got {self.epochs!r}")
        need(integer(self.batch_size) and self.batch_size >= 1,
             f"batch size must be a positive int, got {self.batch_size!r}")
        need(number(self.lr) and self.lr > 0,
             f"learning rate must be a positive number, got {self.lr!r}")
        # the step computes in float32: a rate it rounds to inf, or to 0 or a denormal (flushed to 0), is not one
        tiny, big = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
        need(tiny <= self.lr <= big, f"learning rate {self.lr!r} is outside float32's normal range [{tiny:.3g}, "
                                     f"{big:.3g}], in which the training step computes")
        need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.momentum == 0.0 or self.optimizer in ("sgd", "gd", "momentum", "nesterov"),
             f"momentum {self.momentum} is for the optimizers sgd, momentum and nesterov; {self.optimizer} takes "
             "none (graphc's RMSprop is PyTorch's without momentum): leave it out")
        need(self.l2 >= 0 and self.l1 >= 0, "penalties l2 and l1 must be >= 0")
        need(self.early_stopping is None or self.early_stopping >= 1, "early-stopping patience must be >= 1")
        need(not self.refit or self.early_stopping is not None, "--refit needs --early-stopping (it retrains for "
             "the best number of steps found by early stopping)")
        need(self.threads is None or self.threads >= 1, "threads must be >= 1")
        need(self.checkpoint_every >= 0, "checkpoint interval must be >= 0")
        for k in self.dropout or []:
            need(0.0 < k <= 1.0, f"dropout keep probabilities must be in (0, 1], got {k!r}")
        need(self.dropout is None or len(self.dropout) <= len(self.hidden) + 1,
             f"{len(self.dropout or [])} dropout keep probabilities given, but the MLP has {len(self.hidden) + 1} "
             f"dropout layers (its input and each of its {len(self.hidden)} hidden layers)")
        need(number(self.min_delta) and self.min_delta >= 0,
             f"min_delta (the smallest validation improvement that counts) must be a number >= 0, got "
             f"{self.min_delta!r}")
        need(integer(self.seed) and 0 <= self.seed < 2**63,
             f"seed must be an int in [0, 2**63), got {self.seed!r}")
        from graphc.ops.init import SCHEMES

        need(self.init in SCHEMES, f"init must be one of {', '.join(SCHEMES)}, got {self.init!r}")
        need(self.bias_init in ("like_weights", "zeros"),
             f"bias init must be 'like_weights' or 'zeros', got {self.bias_init!r}")
        for name in ("refit", "drop_last"):
            need(isinstance(getattr(self, name), bool), f"{name} must be True or False, got {getattr(self, name)!r}")
        need(integer(self.step_every) and self.step_every >= 1,
             f"step_every (epochs between learning-rate steps) must be an int >= 1, got {self.step_every!r}")
        need(number(self.step_gamma) and self.step_gamma > 0,
             f"step_gamma (the learning rate's factor at each step) must be a number > 0, got {self.step_gamma!r}")
        need(self.penalize in ("weights", "all") or (isinstance(self.penalize, (list, tuple)) and all(
            isinstance(n, str) for n in self.penalize)), f"penalize must be 'weights', 'all' or a list of parameter "
             f"names, got {self.penalize!r}")
        need(not (isinstance(self.penalize, (list, tuple)) and not self.penalize and (self.l2 or self.l1)),
             "penalize=[] penalizes nothing, yet l2/l1 is set: name the parameters to penalize, or leave penalize "
             "out (the weights)")
        make(self.optimizer, self.momentum, wd)
        Schedule(self.schedule, self.step_gamma, self.step_every, self.epochs)


def default_model(config: TrainConfig, runtime_keeps: bool = False) -> Callable[[Node, int], Node]:
    """An MLP with config.hidden layers (config.init for the weights, config.bias_init for the biases), dropout
    with config.dropout keep probabilities. With `runtime_keeps`, every layer's input gets a dropout whose keep
    probability is a scalar input `keep.<layer>` (the trainer feeds config.dropout, 1.0 where unset)."""

    def model(x: Node, n_outputs: int) -> Node:
        keeps = config.dropout
        if runtime_keeps:
            keeps = [ops.input(f"keep.{i}", (), "float32") for i in range(len(config.hidden) + 1)]
        return mlp(x, [*config.hidden, n_outputs], activation=config.activation, name="mlp", dropout_keep=keeps,
                   init=config.init, bias_init=config.bias_init)

    return model


def grid_shapes(grid) -> list[tuple[int, ...]]:
    """The shapes one example on `grid` may come in: the grid, or without a trailing channel axis of 1 ((8, 8, 1)
    or (8, 8) for digits)."""
    return [tuple(grid)] + ([tuple(grid[:-1])] if len(grid) > 1 and grid[-1] == 1 else [])


def feature_rows(X, width: int, what: str, grid: tuple[int, ...] | None = None) -> np.ndarray:
    """X as a numeric array of rows x `width` features (any number of rows, none included), else an InputError
    naming `what`. Data on a grid may come as examples of that shape too ((N, 8, 8, 1) or (N, 8, 8) for digits),
    flattened row-major as the dataset holds them."""
    a = np.asarray(X) if not isinstance(X, str) else np.asarray(X, dtype=object)
    if a.dtype.kind not in "fiub":
        raise InputError(f"{what}: features must be numbers, got {a.dtype} values")
    shapes = []
    if grid:
        shapes = grid_shapes(grid)
        if a.ndim >= 2 and tuple(a.shape[1:]) in shapes:
            a = a.reshape(len(a), width)
    if a.ndim != 2 or a.shape[1] != width:
        also = "".join(f" or (N, {', '.join(map(str, g))})" for g in shapes)
        raise InputError(f"{what}: X must be rows x {width} features{also}, got shape {a.shape}")
    return a


LAYOUTS = {"images": "images", "sequences": "sequences", "tokens": "tokens"}  # first parameter -> layout


def model_layout(model: Callable | None) -> str:
    """How a model asks for its input, by the name of its first parameter: `images` (N, H, W, C) on the data's
    grid, `sequences` time-major (T, N, F) (each row a sequence of T steps of F features), `tokens` time-major
    int32 ids (T, N) (each row a sequence of T token ids); any other name: "rows", the rows x features as they
    are."""
    if model is None:
        return "rows"
    import inspect

    try:
        params = list(inspect.signature(model).parameters)
    except (TypeError, ValueError):
        return "rows"
    return LAYOUTS.get(params[0], "rows") if params else "rows"


def takes_lengths(model: Callable | None) -> bool:
    """Whether a model asks for its sequences' lengths: a parameter named `lengths` (after the input's), as in
    `def model(tokens, lengths, n_outputs)`. It then gets an int32 (N,) tensor of each row's real steps."""
    if model is None:
        return False
    import inspect

    try:
        params = list(inspect.signature(model).parameters)
    except (TypeError, ValueError):
        return False
    return "lengths" in params[1:]


def model_output(model: Callable, x: Node, n_features: int, n_outputs: int, grid: tuple[int, ...] | None,
                 data: str = "the dataset") -> tuple[Node, Node]:
    """(the model's output for rows x, the part of x that holds the features). A model that takes `lengths` reads
    rows of n_features + 1 values: the features, then the row's length (a float32 column, exact: lengths travel
    with their rows through every shuffle, batch and split, in process as in a binary or a library); the graph
    splits it off and gives it to the model as int32 (N,)."""
    if not takes_lengths(model):
        return _call_model(model, model_input(model, x, grid, data), n_outputs), x
    if model_layout(model) not in ("sequences", "tokens"):
        raise GraphcError("the model takes `lengths` (the real steps of padded sequences), but its first parameter "
                          "asks for no sequences: name it `sequences` (time-major (T, N, F)) or `tokens` "
                          "(time-major int32 ids (T, N))")
    features = x[:, :n_features]
    lengths = ops.cast(x[:, n_features], "int32")
    return _call_model(model, model_input(model, features, grid, data), n_outputs, lengths), features


def wants_images(model: Callable | None) -> bool:
    """Whether a model asks for its input on the data's grid: its first parameter is named `images`."""
    return model_layout(model) == "images"


def sequence_grid(grid: tuple[int, ...] | None, data: str) -> tuple[int, int]:
    """(T, F) of a dataset whose rows are sequences: its grid (T, F) or (T, F, 1) (a 3-D .npz X (N, T, F); the
    digits' 8 rows of 8 pixels)."""
    if grid is None:
        raise GraphcError(f"the model asks for sequences (its first parameter is `sequences`) but {data} has no "
                          "grid shape: its rows are plain features (give the grid, e.g. grid=(8, 8) or graphc train "
                          "--grid 8,8 for 8 steps of 8 features, or load sequences from a .npz whose X is (N, T, F))")
    g = tuple(grid)
    if len(g) == 3 and g[2] == 1:
        g = g[:2]
    if len(g) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in g):
        raise GraphcError(f"the model asks for sequences (T, N, F) but {data} is on the grid {tuple(grid)}: a "
                          "sequence grid is (T, F) (steps, features per step) or (T, F, 1); images with channels "
                          "go to a model that asks for `images`")
    return g


def model_input(model: Callable | None, x: Node, grid: tuple[int, ...] | None, data: str = "the dataset") -> Node:
    """The tensor a model receives: x (N, features) itself, or, by the model's first parameter (model_layout):
    `images`, x viewed as (N, *grid) (rows hold each example flattened row-major, channels last); `sequences`,
    x viewed as (N, T, F) and made time-major (T, N, F); `tokens`, the rows of ids (N, T) (float32 rows hold
    them exactly) as int32, time-major (T, N). The compiled step, the binaries and the libraries all keep taking
    rows; the view is a reshape (and transpose, cast) inside the graph."""
    layout = model_layout(model)
    if layout == "rows":
        return x
    width = x.shape[1]
    if layout == "tokens":
        return ops.transpose(ops.cast(x, "int32"), (1, 0))
    if layout == "sequences":
        T, F = sequence_grid(grid, data)
        if T * F != width:
            raise GraphcError(f"rows of {width} features of {data} cannot be viewed as sequences of {T} steps of "
                              f"{F} features ({T * F} values)")
        return ops.transpose(ops.reshape(x, (x.shape[0], T, F)), (1, 0, 2))
    if grid is None:
        raise GraphcError(f"the model asks for images (its first parameter is `images`) but {data} has no grid "
                          f"shape: its rows are {width} plain features (give the grid, e.g. grid=(8, 8, 1) or graphc "
                          "train --grid 8,8,1, or load images from a .npz whose X is (N, H, W, C))")
    grid = tuple(grid)
    if not grid or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in grid):
        raise GraphcError(f"grid must be positive ints, e.g. (8, 8, 1), got {grid!r}")
    if int(np.prod(grid)) != width:
        raise GraphcError(f"rows of {width} features of {data} cannot be reshaped to the grid {grid} "
                          f"({int(np.prod(grid))} cells): the rows' shape (N, {width}) and the grid (N, "
                          f"{', '.join(map(str, grid))}) must hold the same number of values")
    return ops.reshape(x, (x.shape[0], *grid))


def token_tables(x: Node, out: Node) -> list[Node]:
    """The gathers (gc.nn.embedding, gc.take) that index a table with the token ids of x (or ids computed from
    them): each one's table size on the gathered axis is a vocabulary the ids must fit."""
    derived = {id(x)}
    found = []
    for n in topo_order(out):
        if any(id(i) in derived for i in n.inputs) and n.dtype in ("int32", "int64"):
            derived.add(id(n))
        if n.op.name == "take" and id(n.inputs[1]) in derived:
            found.append(n)
    return found


def _call_model(model: Callable, x: Node, n_outputs: int, lengths: Node | None = None):
    """model(x, n_outputs) (with `lengths` given, model(x, lengths=..., <its other parameter>=n_outputs), in
    whichever order it names them); an exception other than graphc's (which name the line already) is a
    GraphcError naming the innermost line of the model's own code."""
    args: tuple = (x, n_outputs)
    kwargs: dict = {}
    if lengths is not None:
        import inspect

        rest = [p for p in list(inspect.signature(model).parameters.values())[1:] if p.name != "lengths"]
        if len(rest) != 1 or rest[0].kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY):
            raise GraphcError(f"a model that takes lengths is defined as model(tokens or sequences, lengths, "
                              f"n_outputs), got {getattr(model, '__name__', 'model')}{inspect.signature(model)}")
        args, kwargs = (x,), {"lengths": lengths, rest[0].name: n_outputs}
    try:
        with model_build():  # unnamed layers: dense, dense_1, ... the same names every build
            return model(*args, **kwargs)
    except GraphcError:
        raise
    except (Exception, SystemExit) as e:  # a model calling sys.exit() fails like any other, not as an exit code
        skip = (str(Path(__file__).resolve().parents[1]), sys.base_prefix, sys.prefix)  # graphc, Python, libraries
        where = None
        tb = e.__traceback__
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if not str(Path(f).resolve()).startswith(skip) and "site-packages" not in f:
                where = f"{f}:{tb.tb_lineno}"  # the innermost line of the user's own code
            tb = tb.tb_next
        raise GraphcError(f"the model raised {type(e).__name__}: {e}" + (f" (at {where})" if where else "")) from e


@dataclass
class FitResult:
    """A finished run. `predict(X)` takes features as the dataset holds them (standardized) and returns the
    model's outputs (logits, or standardized predictions); `predict_raw(X)` takes raw features and returns
    regression predictions in the target's own units."""

    params: dict[str, np.ndarray]
    history: list[dict]
    metrics: dict
    config: TrainConfig
    predict: Callable[[np.ndarray], np.ndarray]
    dataset: object = None

    def predict_raw(self, X: np.ndarray, lengths=None) -> np.ndarray:
        """Regression predictions come in the target's units and its shape: one value per row (N,) for a 1-D
        target, as scikit-learn's predict (the model's own (N, 1) output would broadcast silently against a
        1-D y in `pred - y`), (N, k) for k targets a row. `lengths`: each row's real steps, for a model that
        takes them (padded sequences)."""
        ds = self.dataset
        kw = {} if lengths is None else {"lengths": lengths}
        if ds is None or ds.x_mean is None:
            out = self.predict(X, **kw)
        else:
            a = feature_rows(X, len(ds.x_mean), "predict_raw", ds.grid)
            with np.errstate(invalid="ignore", over="ignore"):  # the padding of sequences: never read
                out = self.predict((a.astype(np.float64) - ds.x_mean) / ds.x_std, **kw)
        if ds is None or ds.task != "regression":
            return out
        # back to the target's units in double, rounded once (as the exported library does: bitwise its values)
        if ds.y_mean != 0.0 or ds.y_std != 1.0:
            out = (np.asarray(out, np.float64) * ds.y_std + ds.y_mean).astype(out.dtype)
        return out.reshape(len(out), *ds.y_train.shape[1:])

    def predict_labels(self, X: np.ndarray, lengths=None) -> np.ndarray:
        """Classification: the predicted class labels (the dataset's own: 'cat', -1, ...) for raw features X."""
        ds = self.dataset
        if ds is None or not ds.classes:
            raise GraphcError("predict_labels: this run is not a classification with known class labels")
        out = self.predict_raw(X, lengths)
        idx = np.argmax(out, axis=1) if ds.task == "multiclass" else (out.reshape(-1) > 0).astype(np.int64)
        return np.asarray(ds.classes)[idx]

    def predict_proba(self, X: np.ndarray, lengths=None) -> np.ndarray:
        """Classification: each class's probability for raw features X, one column per class in the order of the
        dataset's labels (`dataset.classes`; a binary task's two columns are P(classes[0]), P(classes[1])), from
        the model's logits by a softmax or sigmoid computed stably in float64."""
        ds = self.dataset
        if ds is None or ds.task not in ("binary", "multiclass"):
            raise GraphcError("predict_proba: this run is not a classification")
        z = np.asarray(self.predict_raw(X, lengths), np.float64)
        if ds.task == "binary":
            z = z.reshape(-1)
            p = np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items() if isinstance(v, float))
        return f"<FitResult {keys}>"


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    b = aligned_empty(a.shape, a.dtype)
    b[...] = a
    return b


class Trainer:
    """Builds the step graph for a model and a task, compiles it with the epoch driver, and runs epochs."""

    def __init__(self, model: Callable[[Node, int], Node] | None, task: str, n_features: int, n_outputs: int,
                 config: TrainConfig, *, y_shape: tuple = (), log: Callable[[str], None] = print,
                 all_features: bool = False, grid: tuple[int, ...] | None = None, data: str = "the dataset",
                 distributed=None, vocab: int | None = None):
        """`all_features` builds momentum, L2 and L1 into the step whatever their configured values (a
        standalone binary takes those values on its command line). A model whose first parameter is named
        `images` gets x viewed as (N, *grid), one named `sequences` gets it as time-major (T, N, F) sequences on
        the grid (T, F), one named `tokens` gets the rows' token ids as time-major int32 (T, N) (`data` names the
        dataset in errors; `vocab`, the data's vocabulary size if it declares one, must fit the model's
        embeddings). `distributed` (a
        graphc.distributed.Distributed) trains data-parallel over its ranks: there every rank says whether its
        build worked before any waits in the step's collectives (a model failing on one rank stops them all)."""
        try:
            self._build(model, task, n_features, n_outputs, config, y_shape, log, all_features, grid, data,
                        distributed, vocab)
        except Exception as e:
            if distributed is None:
                raise
            distributed.all_ok("building the model and its step", e)
            raise
        self.dist_step = None
        if distributed is not None:
            from graphc.distributed import make_step

            distributed.all_ok("building the model and its step", None)
            self.dist_step = make_step(self, distributed)
        self.compile_seconds = time.perf_counter() - self._compile_start  # the compiles, not the model's build

    def _build(self, model, task: str, n_features: int, n_outputs: int, config: TrainConfig, y_shape: tuple, log,
               all_features: bool, grid, data: str, distributed, vocab) -> None:
        config.validate()
        if task not in TASKS:
            raise GraphcError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        self.config, self.task, self.log = config, task, log
        # split -> the row of the user's data each of its rows came from (gc.fit's shuffled split), for errors
        self.source_rows: dict[str, np.ndarray] = {}
        if model is None:  # the default MLP; its dropout keep probabilities are inputs, as in a standalone binary
            model = default_model(config, runtime_keeps=all_features or bool(config.dropout))
        self.lengths = takes_lengths(model)
        self.n_features = n_features  # the rows' features; with lengths, x has one more column (the length)
        self.x = ops.input("x", ("N", n_features + self.lengths))
        if task == "multiclass":
            self.y = ops.input("y", ("N",), "int32")
        else:
            self.y = ops.input("y", ("N", *y_shape), "float32")
        self.grid = tuple(grid) if grid is not None else None
        self.layout = model_layout(model)
        out, features = model_output(model, self.x, n_features, n_outputs, self.grid, data)
        if not isinstance(out, Node):
            raise GraphcError(f"the model must return a tensor, got {type(out).__name__}")
        # the gather that limits the token ids (the smallest table): the data's ids are checked against it
        self.vocab_take = None
        if self.layout == "tokens":
            takes = token_tables(features, out)
            if takes:
                self.vocab_take = min(takes, key=lambda n: n.inputs[0].shape[n.attrs["axis"]])
                if vocab is not None and vocab > self.vocab:
                    raise GraphcError(f"{data} declares a vocabulary of {vocab} token ids but the model's "
                                      f"{self._table_desc()} has {self.vocab} rows: give the embedding "
                                      f"vocab >= {vocab}")
        if out.dtype not in ("float32", "float64"):
            raise GraphcError(f"the model returns {out.type_str}: its outputs must be floats (logits or predictions; "
                              "an integer or bool result has no gradient to train on)")
        self.out = out
        leaves_by_name(topo_order(out))  # parameters are stored, checkpointed and exported by name
        if out.ndim > 2 or (task == "multiclass" and out.ndim != 2):
            flat = " (flatten the feature maps before the last dense layer: gc.nn.flatten(h))" if out.ndim > 2 else ""
            raise GraphcError(f"the model returns {out.type_str} (made at {out.source.where()}): a {task} model "
                              f"returns (N, {n_outputs}) {'logits' if task == 'multiclass' else 'outputs'}{flat}")
        self.data_loss = self._task_loss(out)
        self.params = parameters(out)
        if not self.params:
            raise GraphcError("the model has no parameters to train")
        # non-trainable state the layers update each step (batch norm's running statistics): inputs updated in
        # place like the optimizer's state, kept, checkpointed and saved with the parameters
        self.layer_updates = state_updates(out)
        self.buffers = list(self.layer_updates)
        self.row_norms = _row_norms(out)
        loss = self.data_loss
        penalized = self._penalized()
        if (config.l2 or config.l1) and not penalized:
            # a model whose weights are all 1-D (the lecture's ridge regression f(x) = x·w) trained as if the
            # penalty were not there; the standalone binary refuses --l2 for such a model likewise
            given = self._penalties_given()
            names = [p.name for p in self.params]
            raise GraphcError(f"{given} penalizes the model's weights, and it has none: penalize='weights' (the "
                              f"default) takes the parameters of 2 or more dimensions (weight matrices, filters, "
                              f"embeddings), not 1-D ones (biases, norm scales, a weight vector such as x @ w); this "
                              f"model's parameters are {names}: name those to penalize, penalize={names[:1]!r} "
                              f"(gc.fit, or a model file's OPTIONS), or penalize='all'")
        self.penalized_names = {p.name for p in penalized}
        if (config.l2 or config.l1) and config.penalize == "weights":
            self._say_unpenalized_weight_vectors(out, penalized)
        # hyperparameter values are scalar inputs, set every epoch: the same compiled step serves any value
        self.hyper: dict[str, Node] = {}
        self.penalty = None  # the penalty terms alone (the data-parallel update adds their gradients)
        if (config.l2 or all_features) and penalized:
            self.hyper["l2"] = ops.input("l2", (), "float32")
            term = l2(penalized, self.hyper["l2"])
            loss = loss + term
            self.penalty = term
        if (config.l1 or all_features) and penalized:
            self.hyper["l1"] = ops.input("l1", (), "float32")
            term = l1(penalized, self.hyper["l1"])
            loss = loss + term
            self.penalty = term if self.penalty is None else self.penalty + term
        self.loss = loss
        self.grads = grad(loss, self.params)
        if config.clip_grad_norm is not None:
            # max_norm is an input, as the other hyperparameters: a standalone binary takes it on its command line.
            # Data-parallel training clips in its update phase (graphc.distributed), from the summed gradient
            self.hyper["clip_grad_norm"] = ops.input("clip_grad_norm", (), "float32")
            self.grads, _ = clip_grad_norm(self.grads, self.hyper["clip_grad_norm"])
        name = "momentum" if all_features and config.optimizer in ("sgd", "gd") else config.optimizer
        self.opt = make(name, config.momentum, config.weight_decay)
        if getattr(self.opt, "momentum", 0.0):
            self.hyper["momentum"] = ops.input("momentum", (), "float32")
        if self.opt.name == "adamw":  # decays every parameter, by the lr of the step (a schedule's)
            self.hyper["weight_decay"] = ops.input("weight_decay", (), "float32")
        self.lr = ops.input("lr", (), "float32")
        self.t = ops.input("step", (), "float32")
        self.state_inputs = self.opt.state_inputs(self.params)
        updates = {}
        for p, g in zip(self.params, self.grads, strict=True):
            new_p, new_state = self.opt.step(p, g, self.state_inputs, self.t, self.lr, self.hyper)
            updates[p] = new_p
            for name, v in new_state.items():
                updates[self.state_inputs[name]] = v
        updates.update(self.layer_updates)
        self.updates = updates
        # gc.random's draws read the key too, in any mode: training feeds a fresh key per step as for dropout
        self.training_mode = needs_training_mode(topo_order(loss))
        self.schedule = Schedule(config.schedule, config.step_gamma, config.step_every, config.epochs)
        self._compile_start = time.perf_counter()
        self.dist = distributed
        threads = config.threads or (distributed.default_threads() if distributed else self._auto_threads())
        self.threads = threads
        self.native_init = all(_native_init(p) for p in self.params)
        self.epoch_fn = EpochFunction(loss, updates, x=self.x, y=self.y, training=self.training_mode,
                                      threads=threads, params=self.params if self.native_init else ())
        self.eval_fn = CompiledFunction([self.data_loss, out], threads=threads)
        # a model drawing gc.random numbers is evaluated with one fixed key (the seed's): the same noise at every
        # evaluation, so that validation losses compare across epochs
        reads_key = any(leaf.name == "rng_key" for leaf in self.eval_fn.signature.inputs)
        self._eval_key = {"rng_key": np.int64(config.seed)} if reads_key else {}

    @property
    def steps(self) -> int:
        """T, the steps of a sequence model's rows (token ids: one per feature; sequences: the grid's first)."""
        if self.layout == "tokens":
            return self.n_features
        return sequence_grid(self.grid, "the dataset")[0]

    @property
    def vocab(self) -> int | None:
        """The token ids a `tokens` model takes: [0, vocab) (None: no gather limits them)."""
        t = self.vocab_take
        return None if t is None else int(t.inputs[0].shape[t.attrs["axis"]])

    def _table_desc(self) -> str:
        t = self.vocab_take
        table = t.inputs[0]
        return f"embedding {table.name or table.op.name!r} (made at {t.source.where()})"

    # -- graph pieces
    def _task_loss(self, out: Node) -> Node:
        if self.task == "multiclass":
            return softmax_cross_entropy(out, self.y)
        if self.task == "binary":
            return binary_cross_entropy(out, self.y)
        return mse(out, self.y)

    def _penalties_given(self) -> str:
        """The penalties set, as said in messages: "l2=0.01", "l2=0.01 and l1=0.001"."""
        return " and ".join(f"{k}={getattr(self.config, k)}" for k in ("l2", "l1") if getattr(self.config, k))

    def _say_unpenalized_weight_vectors(self, out: Node, penalized: list[Node]) -> None:
        """Log the 1-D parameters that a matrix product reads (a weight vector, x @ w) beside the weight matrices
        penalize='weights' takes: they train unpenalized, which a lecture's linear model beside an MLP would not
        expect (biases and norm scales, added or multiplied, are left out silently, as PyTorch users expect)."""
        taken = {id(p) for p in penalized}
        vectors = {id(p): p for p in self.params if p.ndim == 1 and id(p) not in taken}
        read: list[str] = []
        for n in topo_order(out):
            if n.op.name != "matmul":
                continue
            for i in n.inputs:
                src = i.inputs[0] if i.op.name == "reshape" and i.inputs else i
                if id(src) in vectors and src.name not in read:
                    read.append(src.name)
        if read:
            given = self._penalties_given()
            self.log(f"note: {given} leaves out the 1-D weight(s) {read} that a matrix product reads (penalize="
                     f"'weights' takes the parameters of 2 or more dimensions); name them with penalize= "
                     f"(e.g. penalize={sorted({p.name for p in penalized} | set(read))!r}) to penalize them too")

    def _penalized(self) -> list[Node]:
        sel = self.config.penalize
        if sel == "weights":
            return [p for p in self.params if p.ndim >= 2]
        if sel == "all":
            return list(self.params)
        names = set(sel)
        unknown = names - {p.name for p in self.params}
        if unknown:
            raise GraphcError(f"penalize: unknown parameter(s) {sorted(unknown)}; the model has "
                              f"{[p.name for p in self.params]}")
        return [p for p in self.params if p.name in names]

    def _auto_threads(self) -> int:
        """One thread for steps too small to split (barriers would cost more than they save)."""
        flops = 0
        b = self.config.batch_size
        for n in topo_order(self.loss):
            if n.op.name == "matmul":  # out dims (batch dims, m, n) times the inner dim k
                k = n.inputs[0].shape[-2 if n.attrs["ta"] else -1]
                dims = [d if isinstance(d, int) else b for d in (*n.shape, k)]
                flops += 2 * int(np.prod(dims))
        return 1 if flops * 3 < 4e6 else default_threads()

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the step graph and the options that shape the run."""
        h = hashlib.sha256(self.loss.digest().encode())
        skip = {"threads", "checkpoint_every"}
        if self.config.clip_grad_norm is None:
            skip.add("clip_grad_norm")  # the runs from before the option resume as they did
        if self.config.weight_decay is None:
            skip.add("weight_decay")  # not AdamW: the fingerprints of runs from before the option still match
        if self.config.schedule != "cosine":
            skip.add("epochs")  # resuming may extend a run; only a cosine schedule depends on its length
        cfg = {k: v for k, v in asdict(self.config).items() if k not in skip}
        h.update(json.dumps(cfg, sort_keys=True).encode())
        return h.hexdigest()[:32]

    # -- state
    def init_state(self, seed: int) -> dict[str, np.ndarray]:
        """Fresh parameters (natively initialized, as a standalone binary would, when every initializer is a
        named scheme or a number) and zeroed optimizer state."""
        if self.native_init:
            state = {p.name: aligned_empty(p.shape, np.float32) for p in self.params}
            self.epoch_fn.init_params(state, seed)
        else:
            state = init_params(self.params, seed=seed)
        state.update(self.opt.init_state(self.params))  # all 64-byte aligned, as run_epoch wants them
        state.update(init_state(self.out))
        return state

    def scalars(self, epoch: int) -> dict[str, float]:
        """The scalar inputs of the step for this epoch: the scheduled learning rate and the hyperparameters."""
        cfg = self.config
        # "momentum"/"nesterov" without a value mean the optimizer's default (0.9); plain SGD built with a momentum
        # input (a binary's all-features step) runs it at the configured value, 0
        mu = cfg.momentum if cfg.optimizer in ("sgd", "gd") else (cfg.momentum or getattr(self.opt, "momentum", 0.0))
        values = {"lr": self.schedule.lr(cfg.lr, epoch), "l2": cfg.l2, "l1": cfg.l1, "momentum": mu,
                  "weight_decay": getattr(self.opt, "weight_decay", 0.0) if cfg.weight_decay is None
                  else cfg.weight_decay, "clip_grad_norm": cfg.clip_grad_norm}
        out = {k: v for k, v in values.items() if k == "lr" or k in self.hyper}
        keeps = list(cfg.dropout or [])
        for n in topo_order(self.loss):
            if n.op.name == "input" and n.name.startswith("keep."):
                i = int(n.name.split(".")[1])
                out[n.name] = keeps[i] if i < len(keeps) else 1.0
        return out

    def param_values(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's arrays: its parameters and the state its layers keep (batch norm's running statistics)."""
        return {p.name: state[p.name] for p in (*self.params, *self.buffers)}

    # -- evaluation
    def evaluate(self, state: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean data loss and the model's outputs over (X, Y), in inference mode."""
        params = self.param_values(state)
        total = 0.0
        outs = []
        for lo in range(0, len(X), EVAL_BATCH):
            xb, yb = X[lo:lo + EVAL_BATCH], Y[lo:lo + EVAL_BATCH]
            loss, out = self.eval_fn(dict(params, x=xb, y=yb, **self._eval_key))
            total += float(loss) * len(xb)
            outs.append(out)
        return total / max(len(X), 1), np.concatenate(outs) if outs else np.zeros((0,))

    def metrics(self, out: np.ndarray, Y: np.ndarray, y_std: float = 1.0) -> dict:
        if self.task == "regression":
            # in float64: a float32 model's outputs near its range (a test row standardized to 1e38) square past
            # float32's
            pred = out.reshape(Y.shape).astype(np.float64)
            err = float(np.mean((pred - np.asarray(Y, np.float64)) ** 2))
            return {"mse": err, "rmse": math.sqrt(err), "mse_original_units": err * y_std**2,
                    "rmse_original_units": math.sqrt(err) * y_std}
        pred = np.argmax(out, axis=1) if self.task == "multiclass" else (out.reshape(-1) > 0).astype(np.int64)
        true = Y.astype(np.int64)
        k = out.shape[1] if self.task == "multiclass" else 2
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (true, pred), 1)
        per_class = {str(c): {"n": int(confusion[c].sum()), "correct": int(confusion[c, c])} for c in range(k)}
        return {"accuracy": float(np.mean(pred == true)), "per_class": per_class, "confusion": confusion.tolist()}

    # -- a run
    def run(self, X: np.ndarray, Y: np.ndarray, X_val: np.ndarray | None, Y_val: np.ndarray | None, *,
            out_dir: Path | None = None, resume: bool = False, progress=None, y_std: float = 1.0,
            phase_data: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """Train (phase 1, with early stopping if asked, then the refit phase if asked). Returns a summary with
        the final state, history and timing."""
        cfg = self.config
        self.check_data(X, Y, "training")
        if X_val is not None and len(X_val):
            self.check_data(X_val, Y_val, "validation")
        if phase_data is not None:
            self.check_data(*phase_data, "refit")
        for rows, what in ((X, "training"), *(((phase_data[0], "refit"),) if phase_data is not None else ())):
            self._check_norm_batches(len(rows), what)
        ck_dir = out_dir / "checkpoints" if out_dir is not None else None
        s = {"phase": 1, "epoch": 0, "step": 0, "history": [], "best_val": math.inf, "best_epoch": -1,
             "best_step": 0, "wait": 0, "train_seconds": 0.0, "samples": 0, "stopped_early": False,
             "phase1_epochs": 0}
        state = self.init_state(cfg.seed)
        best: dict[str, np.ndarray] | None = None

        def read_checkpoint():
            nonlocal state, best
            if resume and ck_dir is not None:
                found, refused = ckpt.latest(ck_dir)
                for msg in refused:
                    self.log(f"refusing checkpoint: {msg}")
                if found is not None:
                    path, meta, arrays = found
                    if meta.get("fingerprint") != self.fingerprint():
                        raise ckpt.CheckpointError(f"{path}: this checkpoint belongs to a different model, dataset or "
                                                   "options; resume with the same command line, or start afresh")
                    s.update(meta["run"])
                    if s["phase"] == 1 and s["epoch"] > cfg.epochs:
                        raise ckpt.CheckpointError(f"{path}: this run has done {s['epoch']} epochs already, more than "
                                                   f"--epochs {cfg.epochs}; give --epochs {s['epoch']} or more to "
                                                   "continue it, or --overwrite to start afresh")
                    loaded = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
                    state = _restore(state, loaded, path)
                    saved_best = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")}
                    best = _restore({k: v.copy() for k, v in state.items()}, saved_best, path) if saved_best else None
                    self.log(f"resuming from {path.name}: phase {s['phase']}, {s['epoch']} epochs done")
                elif refused:
                    raise ckpt.CheckpointError(f"{ck_dir}: no checkpoint there could be loaded ({len(refused)} "
                                               "refused, above); start afresh with --overwrite instead of --resume")
                else:
                    self.log("no checkpoint to resume from; starting afresh")
        if self.dist is None:
            read_checkpoint()
        elif resume:
            # rank 0 alone reads the checkpoint; one it refuses must stop every rank at once, not leave the
            # others waiting for its broadcast until the watchdog's timeout
            self.dist.run_everywhere("resuming from the last checkpoint", read_checkpoint)
        if self.dist is not None and resume:  # rank 0 read the checkpoint (if any): every rank starts from it
            s, state, best = self.dist.bcast((s, state, best) if self.dist.rank == 0 else None, "resuming")
            state = {k: _aligned_copy(v) for k, v in state.items()}  # unpickled arrays: as run_epoch wants them
        use_es = cfg.early_stopping is not None and X_val is not None and len(X_val) > 0
        while True:
            if s["phase"] == 1:
                done = s["epoch"] >= cfg.epochs or s["stopped_early"]
                data = (X, Y)
                budget = None
            else:
                done = s["step"] >= s["best_step"]
                data = phase_data
                budget = s["best_step"] - s["step"]
            if done:
                if s["phase"] == 1 and use_es and best is not None:
                    state = {k: v.copy() for k, v in best.items()}  # restore the best parameters
                if s["phase"] == 1 and cfg.refit and use_es and phase_data is not None:
                    s.update(phase=2, epoch=0, step=0, phase1_epochs=s["epoch"])
                    state = self.init_state(cfg.seed + 1)  # new starting values
                    self.log(f"refit: retraining on train+validation for {s['best_step']} steps")
                    continue
                break
            epoch = s["epoch"]
            scal = self.scalars(epoch)
            lr = scal["lr"]
            start_state = {k: v.copy() for k, v in state.items()}
            Xd, Yd = data
            t0 = time.perf_counter()
            run_epoch = self.dist_step.run_epoch if self.dist_step is not None else self.epoch_fn.run_epoch
            stats = run_epoch(Xd, Yd, state, batch=cfg.batch_size, epoch=epoch + 1000 * (s["phase"] - 1),
                                            seed=cfg.seed, step0=s["step"], scalars=scal,
                                            drop_last=cfg.drop_last, max_steps=-1 if budget is None else budget,
                                            threads=self.threads, on_nonfinite="stop")
            dt = time.perf_counter() - t0
            if stats.nonfinite_step is not None:
                raise self.diagnose(start_state, Xd, Yd, epoch, s, stats.nonfinite_step, scal, ck_dir)
            if not all(np.isfinite(v).all() for v in state.values()):
                # the loss stayed finite, but the last step's update was not (e.g. an infinite gradient)
                raise self.diagnose(start_state, Xd, Yd, epoch, s, stats.steps, scal, ck_dir, loss_stayed_finite=True)
            if self.dist_step is not None:
                self.dist_step.check_replicas(state, s["epoch"] + 1)
            s["train_seconds"] += dt
            s["samples"] += stats.samples
            s["step"] += stats.steps
            s["epoch"] += 1
            row = {"phase": s["phase"], "epoch": s["epoch"], "step": s["step"], "lr": lr,
                   "train_loss": stats.mean_loss, "samples_per_second": stats.samples / dt if dt > 0 else 0.0}
            if s["phase"] == 1 and X_val is not None and len(X_val) > 0:
                vloss, vout = self.evaluate(state, X_val, Y_val)
                if self.dist is not None:  # reduce, then decide: every rank takes rank 0's figure
                    vloss = self.dist.bcast(vloss, "the validation loss")
                row["val_loss"] = vloss
                vm = self.metrics(vout, Y_val, y_std)
                row.update({f"val_{k}": v for k, v in vm.items() if isinstance(v, float)})
                if use_es:
                    if vloss < s["best_val"] - cfg.min_delta:
                        s.update(best_val=vloss, best_epoch=s["epoch"], best_step=s["step"], wait=0)
                        best = {k: v.copy() for k, v in state.items()}
                    else:
                        s["wait"] += 1
                        if s["wait"] >= cfg.early_stopping:
                            s["stopped_early"] = True
            s["history"].append(row)
            if progress is not None:
                progress(row, s)
            if ck_dir is not None and cfg.checkpoint_every and s["epoch"] % cfg.checkpoint_every == 0:
                self.save_checkpoint(ck_dir, s, state, best)
        s["state"] = state
        return s

    def _check_norm_batches(self, n: int, what: str) -> None:
        """A batch norm over (N, C) rows needs 2 rows in every training batch (one row is one value per channel:
        no variance; PyTorch refuses it too): a batch of 1, or a last partial batch of 1, is refused up front."""
        if not self.row_norms:
            return
        b = self.config.batch_size
        if min(b, n) == 1 or (n % b == 1 and not self.config.drop_last and n > b):
            layer = self.row_norms[0]
            raise GraphcError(f"{layer}: a {what} batch of 1 row gives it one value per channel, and batch "
                              f"statistics need more ({n} rows in batches of {b}"
                              f"{'' if b == 1 or n == 1 else ' leave a last batch of 1'}); give a batch size of 2 "
                              "or more that leaves no batch of 1 row, or drop the last partial batch (drop_last=True, "
                              "--drop-last)")

    def check_data(self, X: np.ndarray, Y: np.ndarray, what: str) -> None:
        """Before any native code: rows, feature count, finiteness and the labels' type and range."""
        from graphc.errors import InputError

        source = self.source_rows.get(what)

        def row(r) -> str:  # as the user numbers it: in their data, not in the shuffled split
            return f"row {r}" if source is None else f"row {int(source[r])} of the data ({what} split row {r})"

        if not isinstance(X, np.ndarray) or X.ndim != 2 or len(X) == 0:
            raise InputError(f"{what} data: features must be a non-empty 2-D array, got "
                             f"{getattr(X, 'shape', type(X).__name__)}")
        if X.shape[1] != self.x.shape[1]:
            raise InputError(f"{what} data has {X.shape[1]} features, the model takes {self.x.shape[1]}")
        if Y is None or len(Y) != len(X):
            raise InputError(f"{what} data: {len(X)} rows of features but {0 if Y is None else len(Y)} targets")
        bad = ~np.isfinite(X)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"{what} data: feature {c} is not finite in {row(r)}")
        if self.lengths:
            lengths, X = X[:, -1], X[:, :-1]
            bad = (lengths != np.round(lengths)) | (lengths < 0) | (lengths > self.steps)
            if bad.any():
                r = int(np.argmax(bad))
                raise InputError(f"{what} data: the length of {row(r)} is {lengths[r]:g}, not an integer in [0, "
                                 f"{self.steps}] (steps of a sequence padded to T = {self.steps})")
        if self.layout == "tokens":
            bad = (X != np.round(X)) | (X < 0)
            if bad.any():
                r, t = np.argwhere(bad)[0]
                raise InputError(f"{what} data: {row(r)}, step {t} holds {X[r, t]:g}, not a token id (ids are "
                                 "integers >= 0)")
            if self.vocab is not None:
                bad = X >= self.vocab
                if bad.any():
                    r, t = np.argwhere(bad)[0]
                    raise InputError(f"{what} data: token id {int(X[r, t])} in {row(r)}, step {t} is outside the "
                                     f"vocabulary [0, {self.vocab}) of the model's {self._table_desc()}")
        if self.task == "multiclass":
            if Y.dtype.kind not in "iu":
                raise InputError(f"{what} data: class labels must be integers, got {Y.dtype}")
            k = self.out.shape[1]
            out = (Y < 0) | (Y >= k)
            if out.any():
                r = int(np.argmax(out))
                raise InputError(f"{what} data: label {int(Y[r])} in {row(r)} is outside [0, {k})")
        elif self.task == "binary":
            out = (Y != 0) & (Y != 1)
            if out.any():
                r = int(np.argmax(out))
                raise InputError(f"{what} data: binary label {Y[r].item()} in {row(r)} is not 0 or 1")
        elif not np.all(np.isfinite(Y)):
            raise InputError(f"{what} data: regression targets must be finite")

    def save_checkpoint(self, directory: Path, s: dict, state: dict, best: dict | None) -> Path:
        arrays = {f"state/{k}": v for k, v in state.items()}
        if best:
            arrays.update({f"best/{k}": v for k, v in best.items()})
        run = {k: v for k, v in s.items() if k != "state"}
        path = directory / f"ckpt-{s['phase']}-{s['epoch']:06d}.gcp"
        try:
            ckpt.save(path, {"fingerprint": self.fingerprint(), "run": run}, arrays)
        except OSError as e:  # a full disk, a lost permission: the temporary file is gone, older checkpoints stay
            good = sorted(directory.glob("ckpt-*.gcp"))
            last = (f"the last good checkpoint is {good[-1]} (continue from it with --resume)" if good
                    else "no checkpoint was written before")
            raise GraphcError(f"writing the checkpoint {path} failed: {e.strerror or e}; {last}") from None
        # keep this one and the one before; a checkpoint named after this one is stale (refused at resume, or
        # left by a run this one replaced): it must not be taken for this run's newest
        names = sorted(directory.glob("ckpt-*.gcp"))
        for old in [f for f in names if f.name > path.name] + [f for f in names if f.name <= path.name][:-2]:
            old.unlink(missing_ok=True)
        return path

    # -- divergence
    def _replay(self, start_state: dict, X: np.ndarray, Y: np.ndarray, epoch: int, s: dict, steps: int,
                scal: dict):
        """The state after the first `steps` steps of this epoch, from its starting state (deterministic)."""
        cfg = self.config
        replay = {k: _aligned_copy(v) for k, v in start_state.items()}  # as the epoch trains them: no warning
        stats = self.epoch_fn.run_epoch(X, Y, replay, batch=cfg.batch_size, epoch=epoch + 1000 * (s["phase"] - 1),
                                        seed=cfg.seed, step0=s["step"], scalars=scal, drop_last=cfg.drop_last,
                                        max_steps=steps, threads=self.threads, on_nonfinite="stop")
        return replay, stats

    def diagnose(self, start_state: dict, X: np.ndarray, Y: np.ndarray, epoch: int, s: dict, bad: int,
                 scal: dict, ck_dir: Path | None = None, loss_stayed_finite: bool = False) -> NumericalError:
        """Find the step of the epoch that first made a non-finite value — the one whose loss was not finite
        (`bad`; with `loss_stayed_finite`, the epoch's step count: an update made the state non-finite while every
        loss was finite), or an earlier one whose update was (an infinite gradient shows in the loss one step later) —
        by replaying the epoch from its starting state (deterministic, a bisection), then run that step's batch
        through the reference evaluator and name the first node, in the step graph's topological order, that
        produced a non-finite value: forward pass, gradient or update."""
        cfg = self.config

        def finite(state: dict) -> bool:
            return all(np.isfinite(v).all() for v in state.values())

        lo, hi = 0, bad  # the state after `lo` steps is finite; find the last such count up to `bad`
        replay, stats = self._replay(start_state, X, Y, epoch, s, bad, scal)
        if finite(replay):
            lo = bad
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                r, _ = self._replay(start_state, X, Y, epoch, s, mid, scal)
                lo, hi = (mid, hi) if finite(r) else (lo, mid)
            replay, stats = self._replay(start_state, X, Y, epoch, s, lo, scal)
        step = lo  # this step (0-based in the epoch) started finite and made the first non-finite value
        lr = scal["lr"]
        batch = min(cfg.batch_size, len(X))
        idx = stats.permutation[step * batch:(step + 1) * batch]
        key = (cfg.seed * KEY_MULT + s["step"] + step) & (2**64 - 1)
        values = dict(replay, x=X[idx], y=Y[idx], step=np.float32(s["step"] + step + 1),
                      **{k: np.float32(v) for k, v in scal.items()},
                      rng_key=np.int64(key - 2**64 if key >= 2**63 else key))
        nodes = topo_order([self.loss, *self.updates.values()])
        forward = {id(n) for n in topo_order(self.loss)}
        where = "could not be located (the reference evaluator stayed finite on that batch)"
        try:
            with np.errstate(all="ignore"):  # the overflow is what we are looking for: no numpy warnings
                results = evaluate(nodes, values, training=self.training_mode, allow_unused=True)
            pos = {id(n): k for k, n in enumerate(nodes)}
            # infinities on purpose: a max-pool pads with -inf (and views of that padding carry it on) so that
            # the padding never wins a window; they are not where a divergence starts
            meant: set[int] = set()
            for n, v in zip(nodes, results, strict=True):
                if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
                    if ((n.op.name == "pad" and not np.isfinite(n.attrs["value"]))
                            or getattr(n.op, "kind", None) == "movement") and all(
                                id(i) in meant or np.all(np.isfinite(results[pos[id(i)]])) for i in n.inputs):
                        meant.add(id(n))
                        continue
                    label = n.name or n.op.name
                    if n.op.name in ("input", "param"):
                        where = f"was already in {n.op.name} {label!r} ({n.type_str})"
                    else:
                        src = n.source
                        if src.is_gradient:
                            kind = f"the backward pass ({src.made_by})"
                        elif id(n) in forward:
                            kind = "the forward pass" + (f" ({src.made_by})" if src.made_by else "")
                        else:
                            kind = "the optimizer's update"
                        loc = SourceInfo(src.file, src.line, src.function, src.scope).where()
                        where = f"was first produced by {label} ({n.type_str}) in {kind}, at {loc}"
                    break
        except GraphcError as e:
            where = f"could not be located ({e})"
        global_step = s["step"] + step + 1
        if loss_stayed_finite:
            late = " (every loss of the epoch was finite: that step's update made the state non-finite)"
        else:
            late = "" if step == bad else (f" (the loss turned non-finite at step {bad + 1}; the value that caused "
                                           f"it was made one or more steps before)")
        good = sorted(ck_dir.glob("ckpt-*.gcp")) if ck_dir is not None and ck_dir.is_dir() else []
        kept = (f"The last good checkpoint, {good[-1]}, is kept (--resume continues from it)." if good
                else "No checkpoint had been written.")
        err = NumericalError(
            f"training diverged: a non-finite value appeared at epoch {epoch + 1}, step {step + 1} of the epoch "
            f"(global step {global_step}){late}; the first non-finite value {where}. {kept} "
            f"Try a smaller learning rate (now {lr:g}) or standardized inputs.")
        # data-parallel, every rank sees the same reduced loss diverge: rank 0 (which keeps the checkpoints) says it
        err.on_every_rank = self.dist is not None
        # the epochs before it, as FitResult.history would have held them: the curve of a learning rate too large
        err.history = list(s["history"])
        return err


def _row_norms(out: Node) -> list[str]:
    """The batch norms whose statistics are over the batch axis alone ((N, C) rows): "batch_norm 'NAME' (made
    at FILE:LINE)" for each."""
    from graphc.ops.control import WITH_UPDATES

    found = []
    for n in topo_order(out):
        if n.op is WITH_UPDATES:
            leaf = n.inputs[1]
            static = math.prod(d for d in n.shape if isinstance(d, int))
            if static // max(math.prod(leaf.shape), 1) < 2:
                name = leaf.name.rsplit(".", 1)[0]
                found.append(f"batch_norm {name!r} (at {n.where()})")
    return found


def _restore(template: dict[str, np.ndarray], loaded: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's arrays copied into `template` (fresh, aligned state arrays of the right shapes).
    Checkpoints written before 0-d arrays were kept 0-d hold them as shape (1,): same values, reshaped."""
    missing = sorted(set(template) - set(loaded))
    if missing:
        raise ckpt.CheckpointError(f"{path}: the checkpoint has no values for {missing}; resume with the same "
                                   "command line, or start afresh")
    for k, t in template.items():
        a = loaded[k]
        if a.dtype != t.dtype or a.size != t.size:
            raise ckpt.CheckpointError(f"{path}: {k!r} is {a.dtype} {a.shape} in the checkpoint, the model has "
                                       f"{t.dtype} {t.shape}")
        t[...] = a.reshape(t.shape)
    return template


def _native_init(p: Node) -> bool:
    from graphc.ops.init import distribution

    return p.dtype == "float32" and distribution(p.meta.get("init", "zeros"), 1, 1) is not None


def train_arrays(model, task: str, X: np.ndarray, Y: np.ndarray, X_val=None, Y_val=None, *,
                 config: TrainConfig | None = None, **overrides) -> tuple[Trainer, dict]:
    """Train on arrays (no files written): returns the trainer and its run summary."""
    config = config or TrainConfig(**overrides)
    n_out = int(Y.max()) + 1 if task == "multiclass" else (1 if Y.ndim == 1 else Y.shape[1])
    trainer = Trainer(model, task, X.shape[1], n_out, config,
                      y_shape=tuple(Y.shape[1:]) if task != "multiclass" else (), log=lambda m: None)
    return trainer, trainer.run(X, Y, X_val, Y_val)

