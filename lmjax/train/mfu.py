"""Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak.

MFU = tokens/s * FLOPs per token / peak FLOP/s (no credit for recomputation). The peak
comes from a table of known accelerators (dense bf16 matmul), or, on a CPU, from a short
float32 matmul probe on this machine.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2250e12,
}


def matmul_peak_probe(n: int = 1024, reps: int = 10, dtype=jnp.float32) -> float:
    """Measured square-matmul FLOP/s of the default backend in `dtype` (best of `reps`).

    On an accelerator each timing covers 20 back-to-back products: one n=4096 product is
    ~0.2 ms on an H100, about what timing a single call from the host adds."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    per_timing = 1 if jax.default_backend() == "cpu" else 20
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(per_timing):
            out = f(a, a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / per_timing)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=1)
def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure came from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak, f"table: {name}"
    if jax.default_backend() == "cpu":
        return matmul_peak_probe(), "measured: f32 matmul probe"
    return float("nan"), f"unknown device {kind!r}"


def total_peak_flops() -> float:
    """Peak FLOP/s of everything the run computes on.

    On a CPU the probe measures the whole host (all cores), and simulated CPU devices
    share those cores, so the host counts once per process, not once per device.
    """
    peak, _ = peak_flops_per_device()
    if jax.default_backend() == "cpu":
        return peak * jax.process_count()
    return peak * jax.device_count()


def mfu(tokens_per_second: float, flops_per_token: float) -> float:
    return tokens_per_second * flops_per_token / total_peak_flops()
