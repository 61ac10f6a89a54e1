"""Single-accelerator training MFU of a GPT-2-medium-shaped (~350M) model in bfloat16.

Prints ONE JSON object on stdout (progress goes to stderr): tokens/s and MFU of the real
training step (lmjax.train.steps: forward, backward, clipped AdamW update, parameters and
optimizer state in float32, compute in bfloat16) for each `--sizes` entry, against two
denominators measured or looked up in the same run:

- `peak_flops_table`: the vendor's dense bf16 peak (lmjax.train.mfu.PEAK_FLOPS), the usual
  MFU denominator (PaLM appendix B);
- `matmul_peak_flops`: the best bf16 square matmul this device ran in this process
  (--peak_n), which says how far the table's number is reachable at all.

FLOPs per token: lmjax.model.accounting.flops_per_token (6 N + 12 L d T). The step time
is taken as lmjax.train.loop runs: each step dispatched before the previous one's loss is
fetched (`step_s`); `step_s_synced_median` waits for every step on its own (adds the host
round trip, ~7 ms on an H100). `--profile DIR` also traces three steps (perfetto JSON).

What it measured on an H100 (MFU, step time, memory, a profile): bench/README.md.

    python bench/accelerator_mfu.py                                  # 24x1024, T=1024, B=32
    python bench/accelerator_mfu.py --sizes 24x1024,12x768 --batch 16 --steps 20
    python bench/accelerator_mfu.py --sizes 2x64 --seq 64 --batch 2 --vocab 256 --peak_n 256  # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def measure(n_layer, d_model, n_head, args):
    import jax
    import ml_collections
    import numpy as np

    from lmjax import sharding
    from lmjax.model import ModelConfig, Transformer
    from lmjax.model.accounting import count_params, flops_per_token
    from lmjax.train.optimizer import make_optimizer
    from lmjax.train.steps import init_state, make_train_step

    cfg = ModelConfig(vocab_size=args.vocab, n_layer=n_layer, d_model=d_model, n_head=n_head, max_len=args.seq,
                      mlp="gelu_tanh", use_bias=True, tie_embeddings=True, dtype=args.dtype,
                      param_dtype="float32", remat=args.remat, scan_layers=args.scan_layers)
    model = Transformer(cfg)
    opt_cfg = ml_collections.ConfigDict(dict(lr=3e-4, end_lr=3e-5, schedule="cosine", warmup_steps=10, b1=0.9,
                                             b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
    optimizer = make_optimizer(opt_cfg, 1000)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rng = np.random.default_rng(0)
    batches = [jax.device_put({k: rng.integers(0, args.vocab, (args.batch, args.seq), dtype=np.int32)
                               for k in ("inputs", "targets")}, sharding.batch_sharding(mesh)) for _ in range(2)]
    log(f"[{n_layer}x{d_model}] initialising the sharded train state")
    t0 = time.perf_counter()
    state = init_state(model, optimizer, mesh, seed=0)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    n_params = count_params(state["params"])
    log(f"[{n_layer}x{d_model}] {n_params / 1e6:.1f}M parameters, initialised in {init_s:.1f} s; compiling the train step")
    step = make_train_step(model, optimizer)
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    log(f"[{n_layer}x{d_model}] compiled in {compile_s:.1f} s; timing")
    for i in range(args.warmup):
        state, metrics = compiled(state, batches[i % 2])
    float(metrics["loss"])
    # As lmjax.train.loop runs: step i+1 is dispatched before step i's loss is fetched, so
    # the device never waits for the host.
    t0 = time.perf_counter()
    pending = None
    for i in range(args.steps):
        state, metrics = compiled(state, batches[i % 2])
        if pending is not None:
            float(pending["loss"])
        pending = metrics
    loss = float(pending["loss"])
    step_s = (time.perf_counter() - t0) / args.steps
    synced = []  # each step waited for on its own: adds the host round trip to every step
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2])
        float(metrics["loss"])
        synced.append(time.perf_counter() - t0)
    if args.profile:  # a few more steps under the profiler, for bench/trace_summary.py
        with jax.profiler.trace(f"{args.profile}/{n_layer}x{d_model}", create_perfetto_trace=True):
            for i in range(3):
                state, metrics = compiled(state, batches[i % 2])
            float(metrics["loss"])
    memory = None
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats:
        memory = {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}
    tokens_per_s = args.batch * args.seq / step_s
    return {
        "n_layer": n_layer, "d_model": d_model, "n_head": n_head, "n_params": n_params,
        "flops_per_token": flops_per_token(cfg, args.seq),
        "tokens_per_s": tokens_per_s,
        "achieved_flops": tokens_per_s * flops_per_token(cfg, args.seq),
        "step_s": step_s, "step_s_synced_median": statistics.median(synced), "compile_s": compile_s, "init_s": init_s,
        "loss_last": loss, "memory": memory,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="24x1024", help="LAYERSxD_MODEL[xHEADS],...; heads default d/64")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50257 padded to a multiple of 64")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", metavar="DIR", help="also trace 3 steps into DIR/<size> (perfetto JSON)")
    p.add_argument("--peak_n", type=int, default=8192, help="square size of the bf16 matmul peak probe")
    p.add_argument("--peak_reps", type=int, default=10)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from lmjax.train.mfu import matmul_peak_probe, peak_flops_per_device

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from train_throughput import parse_sizes

    device = jax.devices()[0]
    table_peak, table_source = peak_flops_per_device()
    log(f"device {device.device_kind} ({jax.default_backend()}); bf16 matmul probe at n={args.peak_n}")
    probe = matmul_peak_probe(args.peak_n, args.peak_reps, dtype=jnp.bfloat16)
    out = {
        "device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
        "settings": {k: getattr(args, k) for k in ("batch", "seq", "vocab", "dtype", "remat", "scan_layers", "steps")},
        "peak_flops_table": table_peak, "peak_flops_table_source": table_source,
        "matmul_peak_flops": probe,
        "flops_formula": "lmjax.model.accounting.flops_per_token: 6*N_matmul + 12*n_layer*d_model*seq",
        "results": {},
    }
    for n_layer, d_model, n_head in parse_sizes(args.sizes):
        row = measure(n_layer, d_model, n_head, args)
        row["mfu_table_peak"] = row["achieved_flops"] / table_peak
        row["mfu_matmul_peak"] = row["achieved_flops"] / probe
        log(f"[{n_layer}x{d_model}] {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu_table_peak']:.1%} of "
            f"{table_peak / 1e12:.0f} TFLOP/s ({row['mfu_matmul_peak']:.1%} of the probed {probe / 1e12:.0f})")
        out["results"][f"{n_layer}x{d_model}"] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
