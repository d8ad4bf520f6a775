"""A character-level language model on text that ships with Python itself: the standard library's help topics
(`pydoc_data.topics`, what `help("if")` prints). Next-character prediction with an LSTM:

    ids (N, T) -> embedding -> LSTM over every step (return_sequences) -> dense over the vocabulary, per step

trained with per-token cross-entropy and Adam, the whole epoch one native call (gc.EpochFunction: the driver
shuffles the windows, slices the batches and runs every step without returning to Python). It reports bits
per character on held-out text (the last tenth of the topics), against the unigram entropy (what a model that
knows only the characters' frequencies gets), and samples text from the model.

    python examples/char_lm.py                      # the small config: about 10 s on 2 cores
    python examples/char_lm.py --hidden 256 --epochs 10 --seq 100

Importable: `load_text`, `Vocab`, `windows`, `CharLM` (build, train, bits_per_char, sample), `unigram_bits`."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

import graphc as gc
from graphc.nn.optim import make


def load_text() -> str:
    """The help topics of this Python's standard library, in a fixed order (about 460,000 characters)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


class Vocab:
    """The characters of a text, each an id (in order of first code point)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def windows(ids: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of `steps` characters (inputs X) and the same shifted by one (targets Y): rows of
    (n, steps) int32 each."""
    n = (len(ids) - 1) // steps
    X = ids[:n * steps].reshape(n, steps)
    Y = ids[1:n * steps + 1].reshape(n, steps)
    return np.ascontiguousarray(X, np.int32), np.ascontiguousarray(Y, np.int32)


def unigram_bits(train: np.ndarray, test: np.ndarray, vocab: int) -> float:
    """Bits per character of `test` under the training characters' frequencies (add-one smoothed): the entropy
    a model must beat to have learned anything about sequences."""
    p = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
    return float(-np.log2(p[test]).mean())


@dataclass
class Config:
    hidden: int = 128
    embed: int = 32
    seq: int = 64  # characters per training window (backprop through time over these)
    batch: int = 32
    lr: float = 3e-3
    epochs: int = 3
    chars: int | None = None  # use only the first `chars` characters of the text (a quick run)
    seed: int = 0
    threads: int = 1  # each step's recurrent product ((batch, H) @ (H, 4H)) is too small to split over threads:
    # measured on 2 shared cores, 2 threads ran 3x slower than 1 (a barrier per kernel per step)


class CharLM:
    """The model, its compiled training epoch, evaluation and sampling, for a vocabulary of `vocab` ids."""

    def __init__(self, vocab: int, cfg: Config):
        self.V, self.cfg = vocab, cfg
        T, H = cfg.seq, cfg.hidden
        self.x = gc.input("x", ("N", T), "int32")  # windows of ids, batch-major as the data holds them
        self.y = gc.input("y", ("N", T), "int32")
        logits = self.logits(gc.transpose(self.x, (1, 0)))  # time-major (T, N, V)
        self.loss = gc.nn.softmax_cross_entropy(logits, gc.transpose(self.y, (1, 0)))  # mean over every token
        self.params = gc.nn.parameters(self.loss)
        grads = gc.grad(self.loss, self.params)
        self.opt = make("adam")
        state = self.opt.state_inputs(self.params)
        lr, t = gc.input("lr", (), "float32"), gc.input("step", (), "float32")
        updates = {}
        for p, g in zip(self.params, grads, strict=True):
            new_p, new_s = self.opt.step(p, g, state, t, lr)
            updates[p] = new_p
            updates.update({state[k]: v for k, v in new_s.items()})
        self.epoch = gc.EpochFunction(self.loss, updates, x=self.x, y=self.y, params=self.params,
                                      threads=cfg.threads)
        self.eval_loss = gc.compile(self.loss, threads=cfg.threads)
        self.state = self.epoch.aligned({p.name: np.zeros(p.shape, np.float32) for p in self.params})
        self.epoch.init_params(self.state, cfg.seed)
        self.state.update(self.opt.init_state(self.params))
        self._step = None
        del H

    def logits(self, tokens):
        """(T, N) ids -> (T, N, V) logits: embedding, an LSTM over every step, a dense layer over the vocabulary
        (one (T·N, H) @ (H, V) product)."""
        cfg, V = self.cfg, self.V
        e = gc.nn.embedding(tokens, V, cfg.embed, name="emb")  # (T, N, E)
        hs = gc.nn.lstm(e, cfg.hidden, return_sequences=True, name="lstm")  # (T, N, H)
        T, N = hs.shape[0], hs.shape[1]
        flat = gc.nn.dense(gc.reshape(hs, (T * N, cfg.hidden)), V, name="out")
        return gc.reshape(flat, (T, N, V))

    def train_epoch(self, X: np.ndarray, Y: np.ndarray, epoch: int) -> float:
        """One epoch over the windows (X, Y) in one native call; returns the mean training loss in bits/char."""
        stats = self.epoch.run_epoch(X, Y, self.state, batch=self.cfg.batch, epoch=epoch, seed=self.cfg.seed,
                                     scalars={"lr": self.cfg.lr})
        return stats.mean_loss / math.log(2)

    def params_only(self) -> dict[str, np.ndarray]:
        return {p.name: self.state[p.name] for p in self.params}

    def bits_per_char(self, X: np.ndarray, Y: np.ndarray, batch: int = 256) -> float:
        """Mean cross-entropy of the next character over the windows (X, Y), in bits (each window starts from
        a zero state)."""
        params = self.params_only()
        total = 0.0
        for i in range(0, len(X), batch):
            xb, yb = X[i:i + batch], Y[i:i + batch]
            total += float(self.eval_loss(dict(params, x=xb, y=yb))) * len(xb)
        return total / len(X) / math.log(2)

    def _compile_step(self):
        """One step of the same model for sampling: (id, h, c) -> (logits, h, c), the LSTM as a cell with the
        sequence layer's parameters (same names, same values)."""
        cfg = self.cfg
        tok = gc.input("tok", (1,), "int32")
        h = gc.input("h", (1, cfg.hidden))
        c = gc.input("c", (1, cfg.hidden))
        e = gc.nn.embedding(tok, self.V, cfg.embed, name="emb")
        h2, c2 = gc.nn.lstm_cell(e, (h, c), cfg.hidden, name="lstm")
        logits = gc.nn.dense(h2, self.V, name="out")
        return gc.compile([logits, h2, c2], threads=1)

    def sample(self, vocab: Vocab, prompt: str, length: int = 300, temperature: float = 0.8,
               seed: int = 0) -> str:
        """`length` characters after `prompt`, each drawn from the model's softmax at `temperature`."""
        if self._step is None:
            self._step = self._compile_step()
        rng = np.random.default_rng(seed)
        params = self.params_only()
        h = np.zeros((1, self.cfg.hidden), np.float32)
        c = np.zeros_like(h)
        out = []
        ids = list(vocab.encode(prompt)) or [0]
        for i in range(len(ids) + length - 1):
            cur = ids[i] if i < len(ids) else out[-1]
            logits, h, c = self._step(dict(params, tok=np.array([cur], np.int32), h=h, c=c))
            if i >= len(ids) - 1:
                z = logits[0].astype(np.float64) / temperature
                p = np.exp(z - z.max())
                out.append(int(rng.choice(self.V, p=p / p.sum())))
        return prompt + vocab.decode(out)


def prepare(cfg: Config):
    """The text, its vocabulary, and train/held-out windows (the last tenth of the text is held out)."""
    text = load_text()
    vocab = Vocab(text)
    if cfg.chars:
        text = text[:cfg.chars]
    ids = vocab.encode(text)
    cut = int(len(ids) * 0.9)
    train, test = ids[:cut], ids[cut:]
    if len(test) <= cfg.seq:  # a window is seq characters and the one after each
        what = f"--chars {cfg.chars} leaves" if cfg.chars else "the text has"
        fix = f"use --chars >= {10 * (cfg.seq + 2)}" if cfg.chars and 10 * (cfg.seq + 2) <= len(text) else \
            f"use --seq < {len(test)}"
        raise SystemExit(f"char_lm: {what} {len(test)} held-out characters, fewer than one window of --seq "
                         f"{cfg.seq} and its next character: {fix}")
    return vocab, train, test, windows(train, cfg.seq), windows(test, cfg.seq)


def run(cfg: Config, log=print) -> dict:
    """Train for cfg.epochs and report: held-out bits per character after each epoch, the unigram entropy, a
    sample. Returns the figures."""
    vocab, train, test, (X, Y), (Xt, Yt) = prepare(cfg)
    unigram = unigram_bits(train, test, len(vocab))
    t0 = time.perf_counter()
    lm = CharLM(len(vocab), cfg)
    log(f"{len(train):,} training / {len(test):,} held-out characters, vocabulary {len(vocab)}; unigram entropy "
        f"{unigram:.3f} bits/char; compiled in {time.perf_counter() - t0:.1f} s")
    history = [lm.bits_per_char(Xt, Yt)]
    log(f"epoch 0: held-out {history[0]:.3f} bits/char")
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        tr = lm.train_epoch(X, Y, epoch)
        dt = time.perf_counter() - t0
        history.append(lm.bits_per_char(Xt, Yt))
        log(f"epoch {epoch + 1}: train {tr:.3f}, held-out {history[-1]:.3f} bits/char "
            f"({len(X) * cfg.seq / dt:,.0f} chars/s)")
    sample = lm.sample(vocab, "The ", 300)
    log("sample:\n" + sample)
    return {"unigram_bits": unigram, "held_out_bits": history, "sample": sample, "model": lm, "vocab": vocab}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in ("hidden", "embed", "seq", "batch", "epochs", "chars", "seed", "threads"):
        ap.add_argument(f"--{f}", type=int, default=getattr(Config, f))
    ap.add_argument("--lr", type=float, default=Config.lr)
    args = ap.parse_args(argv)
    for f in ("hidden", "embed", "seq", "batch", "epochs", "threads"):
        if getattr(args, f) < 1:
            ap.error(f"--{f} must be at least 1, got {getattr(args, f)}")
    if args.chars is not None and args.chars < 1:
        ap.error(f"--chars must be at least 1, got {args.chars}")
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    if not (0 < args.lr < float("inf")):
        ap.error(f"--lr must be a positive finite learning rate, got {args.lr}")
    try:
        run(Config(**vars(args)))
    except gc.GraphcError as e:
        raise SystemExit(f"char_lm: {e}") from None


if __name__ == "__main__":
    main()
