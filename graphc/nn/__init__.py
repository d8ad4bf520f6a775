"""Neural-network building blocks on the DSL: layers, losses, penalties, dropout, initialization; optimizers
(gc.nn.optim: SGD, Adam, AdamW, RMSprop, Adagrad and the learning-rate schedules)."""

from graphc.nn import optim
from graphc.nn.activations import (
    celu,
    elu,
    gelu,
    glu,
    hard_sigmoid,
    hard_silu,
    hard_swish,
    hard_tanh,
    leaky_relu,
    log_sigmoid,
    mish,
    relu6,
    selu,
    silu,
    soft_sign,
    softsign,
    standardize,
    swish,
)
from graphc.nn.layers import (
    ACTIVATIONS,
    avg_pool1d,
    avg_pool2d,
    batch_norm,
    conv1d,
    conv2d,
    dense,
    flatten,
    init_params,
    init_state,
    layer_norm,
    max_pool1d,
    max_pool2d,
    mlp,
    model_build,
    parameters,
    state_updates,
    training_switch,
)
from graphc.nn.losses import binary_cross_entropy, huber, l1, l2, mae, mse, softmax_cross_entropy
from graphc.nn.optim import clip_grad_norm
from graphc.nn.recurrent import embedding, gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell
from graphc.nn.sequence import last_step, sequence_mask
from graphc.ops import log_softmax, relu, sigmoid, softmax, softplus, tanh  # jax.nn's and torch.nn.functional's
from graphc.ops.init import Normal, Uniform
from graphc.ops.random import dropout

__all__ = [
    "ACTIVATIONS", "dense", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "flatten",
    "mlp", "model_build", "parameters", "layer_norm",
    "batch_norm", "state_updates", "init_state", "training_switch",
    "init_params", "Uniform", "Normal", "optim", "clip_grad_norm",
    "mse", "mae", "huber", "binary_cross_entropy", "softmax_cross_entropy", "l1", "l2", "dropout",
    "rnn", "gru", "lstm", "rnn_cell", "gru_cell", "lstm_cell", "embedding", "sequence_mask", "last_step",
    "relu", "sigmoid", "tanh", "softmax", "log_softmax", "softplus", "leaky_relu", "elu", "gelu", "silu",
    "log_sigmoid", "swish", "relu6", "hard_tanh", "hard_sigmoid", "hard_swish", "hard_silu", "selu", "celu", "mish",
    "softsign", "soft_sign", "glu", "standardize",
]
