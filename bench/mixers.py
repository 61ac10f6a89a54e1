"""Transformer, Mamba, hybrid, LSTM and gated conv at about equal parameters, on this machine.

    python bench/mixers.py > mixers.json                 # all sections, plot to mixers.png
    python bench/mixers.py --sections train,decode --plot out.png
    python bench/mixers.py --quick                        # a smoke run (tiny settings, ~2 min)

Models (byte vocabulary 256, d_model 128, float32, the lmjax defaults otherwise; ~0.8M
parameters each, `params` in the JSON):
    transformer  4 attention blocks with MLPs, RoPE
    mamba        7 Mamba blocks without MLPs (the paper's block), no position embedding
    hybrid       6 blocks "MMMMMA": five Mamba blocks (no MLP), then attention + MLP
    lstm         3 LSTM blocks (state 128) with MLPs
    conv         3 gated causal conv blocks (width 4: 10 positions seen) with MLPs

Sections (each prints progress on stderr; one JSON object on stdout at the end):
- scan: Mamba's training scan (forward + backward of one layer's scan, batch 8, d_inner 256,
  d_state 16) three ways at 256..4096 positions: seconds and XLA's temporary bytes.
  This is the measurement behind `model.ssm_scan="auto"` (lmjax/model/mamba.py).
- train: training tokens/s (AdamW step, lmjax.train.steps.make_train_step) at sequence
  lengths 256..4096, 8192 tokens per step at every length; median of --steps timed steps.
- decode: milliseconds per new token of the compiled sampler (greedy, one prompt) as the
  context grows to 4096: 129 new tokens after a prompt of context - 136 tokens (so they
  see contexts from context - 136 to context - 7; the JSON keeps `mean_context`), timed
  between the sampler's per-token host callbacks (`on_token`), median over the tokens,
  best of --reps calls. Attention reads a cache as long as the context
  (grown by doubling spans), the recurrent mixers a fixed-size state.
- quality: validation bits per byte on tinyshakespeare (last 10% of the bytes, all of
  it) after the same number of training tokens for every model (--quality_steps x 16 x 256),
  the same AdamW recipe (lr 2e-3, warmup 50, cosine to 2e-4, b2 0.99, weight decay 0.1).

The plot (--plot) has one panel per section. Timings on a shared machine move with other
tenants' load: compare numbers within one run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from _machine import machine  # bench/, beside this script
from lmjax.config import default_config
from lmjax.model import ModelConfig, Transformer
from lmjax.model.mamba import readout, scan_chunked, scan_states
from lmjax.sample import generate
from lmjax.model.accounting import count_params
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import init_params, make_eval_step, make_train_step

COMMON = dict(vocab_size=256, d_model=128, n_head=4, max_len=4096)
MODELS = {
    "transformer": dict(mixer="attention", n_layer=4, pos_embedding="rope"),
    "mamba": dict(mixer="mamba", n_layer=7, mamba_mlp=False, pos_embedding="none"),
    "hybrid": dict(layer_pattern="MMMMMA", n_layer=6, mamba_mlp=False, pos_embedding="none"),
    "lstm": dict(mixer="lstm", n_layer=3, pos_embedding="none"),
    "conv": dict(mixer="conv", n_layer=3, conv_width=4, pos_embedding="none"),
}
SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "tinyshakespeare", "input.txt")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def model_config(name: str, max_len: int | None = None) -> ModelConfig:
    return ModelConfig(**{**COMMON, **MODELS[name], **({"max_len": max_len} if max_len else {})})


def optimizer_settings(steps: int):
    opt = default_config().optimizer
    opt.update(dict(lr=2e-3, end_lr=2e-4, warmup_steps=min(50, steps // 4), b2=0.99, weight_decay=0.1))
    return opt


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------ sections


def bench_scan(lengths, reps: int) -> dict:
    """One layer's selective scan, forward + backward, three ways."""
    b, d, n = 8, 256, 16
    A = -jnp.broadcast_to(jnp.arange(1.0, n + 1), (d, n))  # the init's A
    ways = {
        "associative": lambda x, dl, B, C: readout(scan_states(x, dl, A, B), C),
        "chunked_128": lambda x, dl, B, C: scan_chunked(x, dl, A, B, C, None, 128, "associative")[0],
        "sequential_16": lambda x, dl, B, C: scan_chunked(x, dl, A, B, C, None, 16, "sequential")[0],
    }
    out = {}
    for t in lengths:
        keys = jax.random.split(jax.random.key(t), 4)
        args = (jax.random.normal(keys[0], (b, t, d)), jax.nn.softplus(jax.random.normal(keys[1], (b, t, d)) - 3),
                jax.random.normal(keys[2], (b, t, n)), jax.random.normal(keys[3], (b, t, n)))
        for name, f in ways.items():
            grad = jax.jit(jax.grad(lambda *a, f=f: f(*a).sum(), argnums=(0, 1, 2, 3)))
            compiled = grad.lower(*args).compile()
            jax.block_until_ready(compiled(*args))
            best = min(timed(lambda: jax.block_until_ready(compiled(*args))) for _ in range(reps))
            temp = compiled.memory_analysis().temp_size_in_bytes
            out.setdefault(name, {})[t] = {"seconds": best, "temp_MiB": temp / 2**20}
            log(f"scan {name:14s} t={t:5d}: {best * 1e3:8.1f} ms, temporaries {temp / 2**20:8.1f} MiB")
    return out


def bench_train(names, lengths, tokens_per_step: int, steps: int) -> dict:
    out = {}
    for name in names:
        cfg = model_config(name)
        model = Transformer(cfg)
        optimizer = make_optimizer(optimizer_settings(100), 100)
        for t in lengths:
            batch = max(1, tokens_per_step // t)
            params = init_params(model, jax.random.key(0))
            state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
            step = make_train_step(model, optimizer)
            rng = np.random.RandomState(t)
            data = {"inputs": jnp.asarray(rng.randint(0, 256, (batch, t)), jnp.int32),
                    "targets": jnp.asarray(rng.randint(0, 256, (batch, t)), jnp.int32)}
            t0 = time.perf_counter()
            state, m = step(state, data)
            float(m["loss"])
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(steps + 1):
                t0 = time.perf_counter()
                state, m = step(state, data)
                float(m["loss"])
                times.append(time.perf_counter() - t0)
            median = statistics.median(times[1:])
            out.setdefault(name, {})[t] = {"tokens_per_s": batch * t / median, "step_s": median, "batch": batch,
                                           "first_step_s": compile_s}
            log(f"train {name:11s} seq {t:5d} batch {batch:3d}: {batch * t / median:9.0f} tokens/s "
                f"(step {median:.3f} s, first {compile_s:.1f} s)")
    return out


def bench_decode(names, contexts, reps: int, new_tokens: int = 129) -> dict:
    """Per-token decoding time, from the sampler's own per-token callback (`on_token`, which
    the sampler calls on the host after every decoding step): the median interval between
    consecutive tokens, so that the prefill (seconds for attention at 4096) is not in it."""
    out = {}
    for name in names:
        cfg = model_config(name, max_len=max(contexts))
        model = Transformer(cfg)
        params = init_params(model, jax.random.key(0))
        for ctx in contexts:
            prompt = np.random.RandomState(ctx).randint(0, 256, ctx - new_tokens - 7).tolist()
            medians = []
            for r in range(reps + 1):  # the first call compiles
                stamps = []
                t0 = time.perf_counter()
                generate(model, params, [prompt], max_new_tokens=new_tokens, temperature=0.0,
                         on_token=lambda tokens, done: stamps.append(time.perf_counter()))
                total = time.perf_counter() - t0
                if r > 0:
                    medians.append(statistics.median(np.diff(stamps)))
            per_token = min(medians)
            out.setdefault(name, {})[ctx] = {"ms_per_token": per_token * 1e3, "call_s": total,
                                             "prompt_len": len(prompt), "mean_context": len(prompt) + new_tokens // 2}
            log(f"decode {name:11s} context {ctx:5d}: {per_token * 1e3:7.3f} ms/token (whole call {total:.2f} s)")
    return out


def bench_quality(names, steps: int, batch: int = 16, seq: int = 256, path: str = SHAKESPEARE) -> dict:
    data = np.frombuffer(open(path, "rb").read(), np.uint8).astype(np.int32)
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]
    out = {}
    for name in names:
        cfg = model_config(name, max_len=seq)
        model = Transformer(cfg)
        optimizer = make_optimizer(optimizer_settings(steps), steps)
        params = init_params(model, jax.random.key(0))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
        step = make_train_step(model, optimizer)
        rng = np.random.RandomState(0)
        t0 = time.perf_counter()
        for i in range(steps):
            starts = rng.randint(0, len(train) - seq - 1, batch)
            windows = np.stack([train[s:s + seq + 1] for s in starts])
            state, m = step(state, {"inputs": windows[:, :-1], "targets": windows[:, 1:]})
            if i % 100 == 0 or i == steps - 1:
                log(f"quality {name:11s} step {i:4d} loss {float(m['loss']):.3f}")
        train_s = time.perf_counter() - t0
        evaluate = make_eval_step(model)
        total, count = 0.0, 0.0
        n_windows = (len(val) - 1) // seq
        for k in range(0, n_windows, batch):
            rows = range(k, min(k + batch, n_windows))
            windows = np.stack([val[r * seq:r * seq + seq + 1] for r in rows])
            e = evaluate(state["params"], {"inputs": windows[:, :-1], "targets": windows[:, 1:]})
            total, count = total + float(e["loss_sum"]), count + float(e["tokens"])
        bpb = total / count / math.log(2)
        out[name] = {"val_bits_per_byte": bpb, "train_tokens": steps * batch * seq, "train_seconds": train_s,
                     "val_tokens": int(count)}
        log(f"quality {name:11s}: val {bpb:.3f} bits/byte after {steps * batch * seq:,} tokens ({train_s:.0f} s)")
    return out


# ------------------------------------------------------------------ plot


def _series(rows: dict, key: str, x_key: str | None = None):
    """(xs, ys) in order of the row keys (ints here, strings after a JSON round trip)."""
    items = sorted(rows.items(), key=lambda kv: int(kv[0]))
    xs = [row[x_key] if x_key else int(k) for k, row in items]
    return xs, [row[key] for _, row in items]


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("scan", "train", "decode", "quality") if k in result]
    cols = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        data = result[key]
        if key == "scan":
            for name, rows in data.items():
                xs, ys = _series(rows, "seconds")
                ax.plot(xs, ys, "o-", label=name)
            ax.set(yscale="log", xlabel="positions", ylabel="seconds (fwd + bwd)",
                   title="Mamba scan, one layer (b 8, d_inner 256)")
        elif key == "train":
            for name, rows in data.items():
                xs, ys = _series(rows, "tokens_per_s")
                ax.plot(xs, ys, "o-", label=name)
            ax.set(xlabel="sequence length", ylabel="training tokens/s", title="Training throughput (8192 tokens/step)")
        elif key == "decode":
            for name, rows in data.items():
                xs, ys = _series(rows, "ms_per_token", x_key="mean_context")
                ax.plot(xs, ys, "o-", label=name)
            ax.set(xlabel="context (tokens)", ylabel="ms per new token", title="Decoding, one prompt, greedy")
            ax.set_ylim(bottom=0)
        else:
            names = list(data)
            bars = ax.bar(names, [data[n]["val_bits_per_byte"] for n in names], color=[f"C{i}" for i in range(len(names))])
            ax.bar_label(bars, [f"{data[n]['val_bits_per_byte']:.2f}\n{data[n]['train_seconds']:.0f} s" for n in names],
                         fontsize=8)
            tokens = next(iter(data.values()))["train_tokens"]
            ax.set(ylabel="val bits per byte", title=f"tinyshakespeare after {tokens / 1e6:.1f}M tokens")
            lo = min(data[n]["val_bits_per_byte"] for n in names)
            ax.set_ylim(max(0, lo - 0.5), None)
        if key != "quality":
            ax.set_xscale("log", base=2)
            ticks = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
            ax.minorticks_off()
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="scan,train,decode,quality")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--lengths", default="256,512,1024,2048,4096", help="training sequence lengths")
    p.add_argument("--contexts", default="256,512,1024,2048,4096", help="decoding contexts")
    p.add_argument("--tokens_per_step", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per length")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quality_steps", type=int, default=200)
    p.add_argument("--data", default=SHAKESPEARE)
    p.add_argument("--plot", default="mixers.png")
    p.add_argument("--reuse", default="", help="a previous run's JSON: sections not run now are taken from it")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the script")
    a = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]
    if a.quick:
        a.lengths, a.contexts, a.tokens_per_step, a.steps, a.reps, a.quality_steps = "256,512", "256,512", 1024, 1, 1, 5
    names = [n for n in a.models.split(",") if n]
    sections = set(a.sections.split(","))
    result = {
        "machine": machine(backend=jax.default_backend(), device=str(jax.devices()[0])),
        "params": {n: count_params(init_params(Transformer(model_config(n, 256)), jax.random.key(0))) for n in names},
        "models": {n: MODELS[n] for n in names},
        "common": COMMON,
    }
    log("parameters:", result["params"])
    if "scan" in sections:
        result["scan"] = bench_scan(ints(a.lengths), a.reps)
    if "train" in sections:
        result["train"] = bench_train(names, ints(a.lengths), a.tokens_per_step, a.steps)
    if "decode" in sections:
        result["decode"] = bench_decode(names, ints(a.contexts), a.reps)
    if "quality" in sections:
        result["quality"] = bench_quality(names, a.quality_steps, path=a.data)
    if a.reuse:
        previous = json.load(open(a.reuse))
        for key in ("scan", "train", "decode", "quality"):
            if key not in result and key in previous:
                result[key] = previous[key]
    if a.plot:
        plot(result, a.plot)
        result["plot"] = os.path.abspath(a.plot)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
