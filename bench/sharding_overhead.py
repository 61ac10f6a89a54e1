"""Sharding overhead: one training step of the same global batch on 1 device vs 8 devices.

Prints ONE JSON object on stdout (progress on stderr). For each mesh preset (dp, fsdp,
fsdp_tp: see lmjax/sharding.py) the real training step (lmjax.train.steps.make_train_step
with explicit shardings; forward, backward, clipped AdamW) runs on the 8 simulated CPU
devices of `--xla_force_host_platform_device_count=8`, and the same step, same batch, runs
on one of those devices. Timed blocks of the four programs are interleaved in rounds so
that load from other processes falls on all alike; each figure is the median step time.

On a CPU this measures OVERHEAD, not speed-up: the 8 "devices" are slices of the same
cores, so an 8-way step does the same arithmetic plus the partitioning, the collectives
(all-reduce of gradients; all-gathers and reduce-scatters of FSDP parameters; tensor-
parallel all-reduces) and XLA:CPU's smaller per-device kernels. `ratio` = 8-device step
time / 1-device step time; 1.0 would mean free sharding. On real accelerators each
device brings its own FLOPs and the same program runs up to ~8x faster.

    python bench/sharding_overhead.py                  # 4x256, context 128, batch 16
    python bench/sharding_overhead.py --layers 6 --d_model 384 --batch 32 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from _machine import machine  # noqa: E402  (bench/, beside this script)
from lmjax import sharding  # noqa: E402
from lmjax.config import config_from_dict  # noqa: E402
from lmjax.model import Transformer  # noqa: E402
from lmjax.model.config import ModelConfig  # noqa: E402
from lmjax.model.accounting import flops_per_token  # noqa: E402
from lmjax.train.optimizer import make_optimizer  # noqa: E402
from lmjax.train.steps import init_state, make_train_step  # noqa: E402

PRESETS = ("dp", "fsdp", "fsdp_tp")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="global batch (the same on 1 and 8 devices)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--block", type=int, default=3, help="timed steps per program per round")
    p.add_argument("--presets", default=",".join(PRESETS))
    a = p.parse_args(argv)

    cfg = ModelConfig(vocab_size=a.vocab, n_layer=a.layers, d_model=a.d_model, n_head=a.heads, max_len=a.seq,
                      dropout=0.0)
    model = Transformer(cfg)
    optimizer = make_optimizer(config_from_dict({}).optimizer, 1000)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    programs = {}  # name -> [state, step, device batch, mesh]
    meshes = {"1_device": sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])}
    for preset in a.presets.split(","):
        meshes[preset] = sharding.make_mesh({"preset": preset})
    for name, mesh in meshes.items():
        log(f"compiling {name} on mesh {sharding.describe(mesh)}")
        state = init_state(model, optimizer, mesh, seed=0)
        step = make_train_step(model, optimizer, mesh=mesh)
        b = jax.device_put(batch, sharding.batch_sharding(mesh))
        state, m = step(state, b)  # compile
        state, m = step(state, b)  # one warm step
        jax.block_until_ready(m)
        programs[name] = [state, step, b, mesh, []]

    for r in range(a.rounds):
        for name, prog in programs.items():
            state, step, b, _, times = prog
            state, m = step(state, b)  # untimed switch step
            jax.block_until_ready(m)
            for _ in range(a.block):
                t0 = time.perf_counter()
                state, m = step(state, b)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t0)
            prog[0] = state
        log(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {np.median(p[4]) * 1e3:.1f} ms" for n, p in programs.items()))

    base = float(np.median(programs["1_device"][4]))
    tokens_per_step = a.batch * a.seq
    out = {
        "benchmark": "sharding_overhead",
        "note": ("8 simulated CPU devices share the same cores as 1 device: this measures the overhead of "
                 "sharding (partitioning, collectives, smaller kernels), not a speed-up"),
        "machine": machine(backend=jax.default_backend()),
        "model": {"n_layer": a.layers, "d_model": a.d_model, "n_head": a.heads, "seq_len": a.seq,
                  "vocab": a.vocab, "params": int(sum(x.size for x in jax.tree.leaves(programs["1_device"][0]["params"]))),
                  "flops_per_token": flops_per_token(cfg, a.seq)},
        "global_batch": a.batch,
        "timed_steps_per_program": a.rounds * a.block,
        "one_device": {"step_ms": base * 1e3, "tokens_per_s": tokens_per_step / base},
        "presets": {},
    }
    for preset in meshes:
        if preset == "1_device":
            continue
        t = float(np.median(programs[preset][4]))
        out["presets"][preset] = {
            "mesh": dict(meshes[preset].shape),
            "step_ms": t * 1e3,
            "tokens_per_s": tokens_per_step / t,
            "ratio_to_one_device": t / base,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
