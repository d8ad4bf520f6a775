"""Recurrent training steps: an LSTM (input 32, hidden 128, batch 64, many-to-one, T = 50 and 500) and a GRU,
forward + backward (loss and every parameter gradient), graphc against PyTorch's nn.LSTM/nn.GRU (eager) and
`jax.jit` of a `lax.scan` LSTM, in the same run, on 1 and 2 threads. graphc is measured twice for the LSTM:
`gc.nn.lstm` (fused NAME.Wx/Wh/b) and by hand with `gc.scan` and one weight matrix per gate. torch.compile
of the LSTM model is a peer too, and each row reports the share of the measured FMA peak (matrix-product
FLOPs of a step / time / peak) of graphc and the fastest peer. `--memory`: peak memory of the T=500 training;
`--embedding`: an SGD step on a 50,000 x 128 embedding table written as `p - lr*g` against PyTorch's
nn.Embedding with and without `sparse=True`. Also the compile time of the training step (graphc cold, without
the disk cache, against jax.jit's first call) at T = 10..1000.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_rnn.py            # 1 and 2 threads
    python benchmarks/bench_rnn.py --threads 1 --lengths 50                                 # one configuration
    python benchmarks/bench_rnn.py --memory                                                 # peak memory, T=500
    python benchmarks/bench_rnn.py --embedding                                              # sparse table update
    python benchmarks/bench_rnn.py --smoke      # tests: 1 thread, T=5, one short round (every code path, quickly)

Each thread count runs in its own process (XLA reads its thread count once). Figures are medians of repeats;
the machine may be shared: compare columns of one run, not runs of different days."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

F, H, N, CLASSES = 32, 128, 64, 10
SMOKE = False  # --smoke: one short round per contender, a short peak measurement


def _data(T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, N, F)).astype(np.float32), rng.integers(0, CLASSES, N).astype(np.int32)


def graphc_step(kind: str, T: int, threads: int, by_hand: bool = False, cache: bool = True,
                checkpoint: int | None = None):
    import graphc as gc

    xs = gc.input("xs", (T, "N", F))
    y = gc.input("y", ("N",), "int32")
    if by_hand:  # one weight matrix per gate, written with gc.scan
        Wx = {g: gc.param(f"hand.Wx_{g}", (F, H), init=gc.nn.Uniform(H ** -0.5)) for g in "ifgo"}
        Wh = {g: gc.param(f"hand.Wh_{g}", (H, H), init=gc.nn.Uniform(H ** -0.5)) for g in "ifgo"}
        b = {g: gc.param(f"hand.b_{g}", (H,), init=gc.nn.Uniform(H ** -0.5)) for g in "ifgo"}

        def step(carry, x):
            h, c = carry
            z = {g: x @ Wx[g] + h @ Wh[g] + b[g] for g in "ifgo"}
            c = gc.sigmoid(z["f"]) * c + gc.sigmoid(z["i"]) * gc.tanh(z["g"])
            h = gc.sigmoid(z["o"]) * gc.tanh(c)
            return (h, c), None

        h0 = gc.zeros(("N", H))
        (h, _), _ = gc.scan(step, (h0, h0), xs)
    else:
        h = getattr(gc.nn, kind)(xs, H, name=kind, checkpoint=checkpoint)
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(h, CLASSES, name="out"), y)
    params = gc.nn.parameters(loss)
    t0 = time.perf_counter()
    fn = gc.compile([loss, *gc.grad(loss, params)], threads=threads, cache=cache)
    compile_s = time.perf_counter() - t0
    values = gc.nn.init_params(params, seed=0)
    values["xs"], values["y"] = _data(T)
    run = lambda: fn(values)  # noqa: E731
    run.fn = fn
    return run, compile_s


def torch_step(kind: str, T: int, threads: int, compiled: bool = False):
    """PyTorch's nn.LSTM/nn.GRU and a linear head: loss, backward. compiled: the module (layer, head, loss) under
    torch.compile (mode default), its first call (the compile) made here. PyTorch 2.x's dynamo traces no graph of
    this model (torch._dynamo.explain: 0 graphs; it falls back on frames holding nn.LSTM/nn.GRU), so this is
    eager plus the guard checks: what a user gets from torch.compile on it."""
    import peers

    torch = peers._import_torch(threads)
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](F, H)
            self.head = torch.nn.Linear(H, CLASSES)

        def forward(self, x, y):
            out = self.layer(x)[1]
            h = out[0] if kind == "lstm" else out
            return torch.nn.functional.cross_entropy(self.head(h[0]), y)

    model = Model()
    step = torch.compile(model) if compiled else model
    x, y = (torch.from_numpy(a) for a in _data(T))
    y = y.long()

    def run():
        loss = step(x, y)
        model.zero_grad()
        loss.backward()

    if compiled:
        run()
    return run


def step_flops(kind: str, T: int) -> float:
    """The matrix products of one training step (what the FMA peak is a ceiling for): forward, the input
    projection and the recurrent product, 2·T·N·G·H·(F + H); backward, the recurrent product's two (dh, dWh) and
    the input projection's weight gradient (the xs need none), 2·T·N·G·H·(F + 2H). The head is negligible."""
    G = {"lstm": 4, "gru": 3}[kind]
    return 2.0 * T * N * G * H * (2 * F + 3 * H)


def jax_step(T: int, threads: int):
    import peers

    jax = peers._import_jax(threads)
    if jax is None:
        return None, None
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    s = H ** -0.5
    p = {"Wx": rng.uniform(-s, s, (F, 4 * H)), "Wh": rng.uniform(-s, s, (H, 4 * H)), "b": rng.uniform(-s, s, 4 * H),
         "Wo": rng.normal(0, 0.1, (H, CLASSES)), "bo": np.zeros(CLASSES)}
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    x, y = (jnp.asarray(a) for a in _data(T))

    def loss_fn(p, x, y):
        xp = x @ p["Wx"] + p["b"]

        def step(carry, xt):
            h, c = carry
            z = xt + h @ p["Wh"]
            i, f, g, o = jnp.split(z, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        h0 = jnp.zeros((N, H), jnp.float32)
        (h, _), _ = jax.lax.scan(step, (h0, h0), xp)
        logits = h @ p["Wo"] + p["bo"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(N), y])

    g = jax.jit(jax.value_and_grad(loss_fn))
    t0 = time.perf_counter()
    jax.block_until_ready(g(p, x, y))
    compile_s = time.perf_counter() - t0

    def run():
        jax.block_until_ready(g(p, x, y))

    return run, compile_s


def median_seconds(fn, repeats=7):
    import peers

    return peers._median_seconds(lambda n: [fn() for _ in range(n)], min_sample=0.2, repeats=repeats)


def _made(label: str, make, notes: list[str]):
    """make(), or None (noted) where the peer it needs is not installed (peers.PeerUnavailable)."""
    try:
        return make()
    except ImportError as e:
        notes.append(f"{label}: {e}")
        return None


def one_config(threads: int, lengths: list[int], compile_lengths: list[int]) -> dict:
    import peers

    out: dict = {"threads": threads, "rows": [], "compile": [], "notes": [],
                 "peak_gflops_1core": peers.fma_peak(0.05 if SMOKE else 0.2)}
    for T in lengths:
        contenders = {
            "graphc lstm": lambda T=T: graphc_step("lstm", T, threads)[0],
            "graphc lstm by hand": lambda T=T: graphc_step("lstm", T, threads, by_hand=True)[0],
            "torch lstm": lambda T=T: torch_step("lstm", T, threads),
            "torch.compile lstm": lambda T=T: torch_step("lstm", T, threads, compiled=True),
            "jax lstm": lambda T=T: jax_step(T, threads)[0],
            "graphc gru": lambda T=T: graphc_step("gru", T, threads)[0],
            "torch gru": lambda T=T: torch_step("gru", T, threads),
        }
        made = ((label, _made(label, make, out["notes"])) for label, make in contenders.items())
        runs = {label: fn for label, fn in made if fn is not None}
        # every contender sampled once per round, in turn: the VM's speed drifts by tens of percent within
        # minutes, and measuring each in its own minute turned that drift into the ratios
        med, samples = peers.interleaved_medians(runs, **(dict(min_sample=0.001, rounds=1, warmup=1) if SMOKE else {}))
        row = {"T": T, **{label: N / med[label] if label in med else None for label in contenders}}
        lstm_peers = [k for k in ("torch lstm", "torch.compile lstm", "jax lstm") if k in samples]
        row["round ratios"] = sorted(min(samples[k][r] for k in lstm_peers) / samples["graphc lstm"][r]
                                     for r in range(len(samples["graphc lstm"]))) if lstm_peers else []
        out["rows"].append(row)
    for T in compile_lengths:
        _, cold = graphc_step("lstm", T, threads, cache=False)
        try:
            _, jc = jax_step(T, threads)
        except ImportError as e:
            out["notes"].append(f"jax.jit compile: {e}")
            jc = None
        out["compile"].append({"T": T, "graphc cold s": cold, "jax.jit first call s": jc})
    return out


EMBED = dict(vocab=50_000, dim=128, T=16, N=32)  # --embedding: a bag-of-embeddings classifier's SGD step


def embedding_runs(vocab: int, dim: int, T: int, N: int, threads: int, notes: list[str]) -> dict:
    """One SGD step (forward, backward, update) of mean(embedding(ids)) -> dense -> softmax cross-entropy:
    graphc with the update written as a user writes it, `p - lr * g` (which graphc keeps sparse: only the rows
    the batch used move), against PyTorch's nn.Embedding with `sparse=True` (SGD on a sparse gradient) and
    without (a dense vocab x dim gradient)."""
    import graphc as gc

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (N, T)).astype(np.int32)
    labels = rng.integers(0, CLASSES, N).astype(np.int32)
    tok = gc.input("tok", ("N", T), "int32")
    y = gc.input("y", ("N",), "int32")
    rows = gc.nn.embedding(tok, vocab, dim, name="emb")
    loss = gc.nn.softmax_cross_entropy(gc.nn.dense(gc.mean(rows, axis=1), CLASSES, name="out"), y)
    params = gc.nn.parameters(loss)
    lr = 0.01
    fn = gc.compile(loss, updates={p: p - lr * g for p, g in zip(params, gc.grad(loss, params), strict=True)},
                    threads=threads)
    values = {**gc.nn.init_params(params, seed=0), "tok": ids, "y": labels}
    runs = {"graphc p - lr*g": fn.bind(values)}
    try:
        import peers

        torch = peers._import_torch(threads)
    except ImportError as e:
        notes.append(f"torch embedding: {e}")
        return runs
    ti, ty = torch.from_numpy(ids).long(), torch.from_numpy(labels).long()
    for sparse in (True, False):
        emb, head = torch.nn.Embedding(vocab, dim, sparse=sparse), torch.nn.Linear(dim, CLASSES)
        opt = torch.optim.SGD([*emb.parameters(), *head.parameters()], lr=lr)

        def run(emb=emb, head=head, opt=opt):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(head(emb(ti).mean(1)), ty).backward()
            opt.step()

        runs[f"torch sparse={sparse}"] = run
    return runs


def embedding_config(threads: int) -> dict:
    import peers

    size = dict(vocab=1000, dim=16, T=4, N=8) if SMOKE else EMBED
    notes: list[str] = []
    runs = embedding_runs(**size, threads=threads, notes=notes)
    med, _ = peers.interleaved_medians(runs, **(dict(min_sample=0.001, rounds=1, warmup=1) if SMOKE else {}))
    return {"threads": threads, "size": size, "ms": {k: 1e3 * v for k, v in med.items()}, "notes": notes}


MEMORY_RUNS = {"graphc lstm": None, "graphc lstm checkpoint=10": 10, "torch lstm": "torch"}


def memory_child(which: str, T: int, steps: int = 3) -> dict:
    """In a fresh process: the baseline after imports and data, then `steps` LSTM training steps at length T
    (graph, compile from the cache, run for graphc; module, forward, backward for PyTorch), then the peak."""
    import peers

    ck = MEMORY_RUNS[which]
    if ck == "torch":
        peers._import_torch(1)
    else:
        import graphc  # noqa: F401 - the measured run finds its program cached: it imports no sympy, no LLVM
    _data(T)  # the data (each step function makes its own copy from the same seed: counted in both)
    base = peers.memory_marks()
    out: dict = {}
    if ck == "torch":
        run = torch_step("lstm", T, 1)
    else:
        run, _ = graphc_step("lstm", T, 1, checkpoint=ck)
    for _ in range(steps):
        run()
    if ck != "torch":
        plan = run.fn.memory_plan
        out["note"] = (f"graphc arena {plan.arena_bytes / 2**20:.1f} MB for {len(plan.offsets)} temporaries "
                       f"({plan.unshared_bytes / 2**20:.1f} MB unshared), GEMM workspace "
                       f"{plan.workspace_bytes / 2**20:.2f} MB")
        out["arena_mb"] = plan.arena_bytes / 2**20
    return {"baseline": base, "after": peers.memory_marks(), **out}


def memory(T: int) -> None:
    """Peak memory of the LSTM training at length T, each run in a fresh process on 1 thread: graphc (default
    scan, and checkpoint=10) from a warm compile cache, and PyTorch nn.LSTM eager."""
    import peers

    env = {**os.environ, **peers._thread_env(1)}
    rows = {}
    for which in MEMORY_RUNS:
        cmd = [sys.executable, __file__, "--memory-child", which, "--lengths", str(T)]
        if which.startswith("graphc"):
            peers.memory_child(cmd, env)  # fills the compile cache: the measured run loads the program
        rows[which] = peers.memory_child(cmd, env)
    print(f"# bench_rnn --memory: LSTM training step, input {F}, hidden {H}, batch {N}, T={T}, 1 thread, fresh "
          f"process each; CPU {peers._cpu_model()}")
    peers.print_memory_rows(rows)
    g, ck, t = (rows[k] for k in MEMORY_RUNS)
    print("What decides: the training's own memory (peak - post-import baseline; torch's import alone is "
          f"{t['baseline']['rss_mb']:.0f} MB, "
          f"graphc's {g['baseline']['rss_mb']:.0f} MB)")
    r1 = g["train_mb"] / t["train_mb"]
    print(f"  graphc / PyTorch: {r1:.2f}x  -> {'met' if r1 <= 1 else 'short'} (goal <= 1); "
          f"by peak RSS {g['after']['peak_rss_mb'] / t['after']['peak_rss_mb']:.2f}x")
    r2 = ck["train_mb"] / g["train_mb"]
    print(f"  checkpoint=10 / default: {r2:.2f}x  -> {'met' if r2 < 1 / 3 else 'short'} (goal < 0.33); "
          f"by peak RSS {ck['after']['peak_rss_mb'] / g['after']['peak_rss_mb']:.2f}x, by arena "
          f"{ck['arena_mb'] / g['arena_mb']:.2f}x")


def print_embedding(threads_list, smoke: bool, cpu: str) -> None:
    size = ", ".join(f"{k} {v:,}" for k, v in (dict(vocab=1000, dim=16, T=4, N=8) if smoke else EMBED).items())
    print(f"# bench_rnn --embedding: SGD step of mean(embedding) -> dense -> cross-entropy ({size}); CPU {cpu}")
    for threads in threads_list:
        cmd = [sys.executable, __file__, "--threads", str(threads), "--embedding"] + ["--smoke"] * smoke
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        ms = res["ms"]
        for note in res["notes"]:
            print(f"  (not measured: {note})")
        cells = "  ".join(f"{k}: {v:.3f} ms" for k, v in ms.items())
        line = f"{threads} thread(s), median ms a step: {cells}"
        if "torch sparse=True" in ms:
            line += f"\n  graphc / torch sparse=True = {ms['graphc p - lr*g'] / ms['torch sparse=True']:.2f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="one thread count, in this process")
    ap.add_argument("--lengths", default="50,500")
    ap.add_argument("--compile-lengths", default="10,100,1000")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", action="store_true",
                    help="only: peak memory of the T=500 LSTM training (graphc, checkpoint=10, PyTorch)")
    ap.add_argument("--memory-child", choices=list(MEMORY_RUNS), help=argparse.SUPPRESS)
    ap.add_argument("--embedding", action="store_true",
                    help="only: an SGD step on a large embedding table (V 50,000 x 128), graphc's `p - lr*g` "
                         "against PyTorch's sparse and dense nn.Embedding")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick run of every code path (tests): 1 thread, T=5, one short round")
    a = ap.parse_args()
    threads_list = (1, 2)
    if a.smoke:
        import tempfile

        global SMOKE
        SMOKE = True
        if not os.environ.get("GRAPHC_CACHE_DIR"):  # a cache of its own, not ~/.cache/graphc
            os.environ["GRAPHC_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphc-smoke-")
        a.lengths, a.compile_lengths, threads_list = "5", "5", (1,)
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, int(a.lengths.split(",")[-1]))))
        return
    if a.memory:
        memory(int(a.lengths.split(",")[-1]) if a.lengths != "50,500" else 500)
        return
    lengths = [int(t) for t in a.lengths.split(",") if t]
    clen = [int(t) for t in a.compile_lengths.split(",") if t]
    if a.embedding and a.threads is not None:
        print(json.dumps(embedding_config(a.threads)))
        return
    if a.threads is not None:
        res = one_config(a.threads, lengths, clen)
        print(json.dumps(res) if a.json else res)
        return
    import peers

    cpu = peers._cpu_model()
    if a.embedding:
        print_embedding(threads_list, a.smoke, cpu)
        return
    print(f"# bench_rnn: LSTM/GRU training step (forward + backward), input {F}, hidden {H}, batch {N}; CPU {cpu}")
    for threads in threads_list:
        cmd = [sys.executable, __file__, "--threads", str(threads), "--lengths", a.lengths,
               "--compile-lengths", a.compile_lengths, "--json"] + ["--smoke"] * a.smoke
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        peak = res["peak_gflops_1core"] * threads
        print(f"\n## {threads} thread(s): samples/s (median); FP32 FMA peak {peak:.0f} GFLOP/s measured")
        for note in dict.fromkeys(res.get("notes", [])):
            print(f"  (not measured: {note})")
        for row in res["rows"]:
            lstm_peers = {k: v for k, v in row.items() if k.startswith(("torch lstm", "torch.compile lstm", "jax"))
                          and v}
            share = lambda sps, T=row["T"], peak=peak: 100 * step_flops("lstm", T) * sps / N / 1e9 / peak  # noqa: E731
            cells = "  ".join(f"{k}: {v:,.0f}" for k, v in row.items() if k not in ("T", "round ratios") and v)
            print(f"T={row['T']}: {cells}\n  share of the FMA peak: graphc {share(row['graphc lstm']):.0f}%, by hand "
                  f"{share(row['graphc lstm by hand']):.0f}%")
            if lstm_peers:
                best = max(lstm_peers, key=lstm_peers.get)
                ratio = row["graphc lstm"] / lstm_peers[best]
                print(f"  gc.nn.lstm / fastest LSTM peer ({best}) = {ratio:.3f} -> "
                      f"{'met' if ratio >= 1.25 else 'short'} (goal >= 1.25); by hand / fastest "
                      f"{row['graphc lstm by hand'] / lstm_peers[best]:.2f}; {best}'s share of the FMA peak "
                      f"{share(lstm_peers[best]):.0f}%\n  gc.nn.lstm / fastest peer of the same round, "
                      f"sorted: {', '.join(f'{r:.2f}' for r in row['round ratios'])}")
            if row.get("torch gru"):
                print(f"  GRU graphc / torch {row['graphc gru'] / row['torch gru']:.2f}")
        for c in res["compile"]:
            jc = c["jax.jit first call s"]
            print(f"compile T={c['T']}: graphc cold {c['graphc cold s']:.2f} s, jax.jit first call "
                  + (f"{jc:.2f} s" if jc is not None else "not measured"))
    if a.smoke:  # the embedding workload's code paths too
        print_embedding(threads_list, True, cpu)


if __name__ == "__main__":
    main()
