"""Implicit attention of selective state-space (Mamba) layers (Ali et al. 2024).

Unrolled, the selective scan of lmjax/model/mamba.py (h_t = exp(delta_t A) h_{t-1} +
delta_t B_t x_t, y_t = C_t . h_t + D x_t) is a data-dependent causal linear map of its
inputs, one per channel c:

    y_t[c] = sum_{s <= t} alpha[c, t, s] x_s[c] + D[c] x_t[c]
    alpha[c, t, s] = sum_n C_t[n] exp(A[c, n] sum_{k=s+1..t} delta_k[c]) delta_s[c] B_s[n]

with x the SiLU output of the causal conv (`hook_conv`) and y the scan output before the
gate (`hook_ssm_out`). `implicit_attention` computes alpha [b, d_inner, t, s] in float32
from the cached delta, B, C and the layer's A = -exp(A_log); the sum of delta over
(s, t] comes from a masked cumulative sum (no difference of two large prefix sums, so no
cancellation on long sequences). The unrolled map reproduces `hook_ssm_out` (tested).

Unlike softmax attention, alpha is signed and its rows do not sum to 1. For pictures and
for the head detectors (which read "the share of a row's mass on a mask"),
`heads.implicit_patterns` turns it into an attention-like pattern: |alpha| averaged over the
channels of each group, each query row then normalised to sum 1. With `groups=1` a Mamba
layer is one "head" [b, 1, t, s]; `groups=g` splits its channels into g contiguous
"heads". Memory: b x d_inner x t^2 floats per layer (per-channel alpha is materialised).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, weights

SCAN_POINTS = ("hook_conv", "hook_delta", "hook_B", "hook_C", "hook_ssm_out")


def mamba_layers(model, layers=None) -> list[int]:
    """The layers (among `layers`, default all) whose mixer is Mamba."""
    layers = range(model.cfg.n_layer) if layers is None else layers
    return [int(l) for l in layers if weights.layer_point(model, int(l), "mixer.hook_delta") is not None]


def _check_mamba(model, layers):
    bad = [l for l in layers if l not in mamba_layers(model, [l])]
    if bad:
        raise LmjaxError(f"layer(s) {bad} are not Mamba layers; this model's Mamba layers are {mamba_layers(model)}")


def ssm_parameters(params, layer: int):
    """(A [d_inner, d_state] = -exp(A_log), D [d_inner]) of a Mamba layer, float32."""
    mixer = weights.layer_params(params, layer)["mixer"]
    return -jnp.exp(mixer["A_log"].astype(jnp.float32)), mixer["D"].astype(jnp.float32)


def segment_sums(delta):
    """delta [b, t, c] -> S [b, c, t, s] = sum_{k=s+1..t} delta_k for s <= t, 0 above the
    diagonal. Built as a cumulative sum over t of delta_t masked to t > s, which adds
    only non-negative terms."""
    t = delta.shape[1]
    d = jnp.swapaxes(delta, 1, 2)[..., :, None]  # [b, c, t, 1]
    strictly_below = jnp.tril(jnp.ones((t, t), bool), k=-1)
    return jnp.cumsum(jnp.where(strictly_below, d, 0.0), axis=-2)


def implicit_attention(delta, A, B, C):
    """alpha [b, c, t, s] (zero for s > t) from delta [b, t, c], A [c, n], B, C [b, t, n]."""
    delta, A, B, C = (jnp.asarray(v, jnp.float32) for v in (delta, A, B, C))
    t = delta.shape[1]
    seg = segment_sums(delta)  # [b, c, t, s]
    causal = jnp.tril(jnp.ones((t, t), bool))

    def state(n):  # the n-th state dimension's term, summed over n below (keeps memory at one [b, c, t, s])
        decay = jnp.exp(jnp.where(causal, seg * A[None, :, n, None, None], -jnp.inf))
        return decay * (C[:, None, :, n, None] * B[:, None, None, :, n])

    kernel = sum(state(n) for n in range(A.shape[1]))
    return kernel * jnp.swapaxes(delta, 1, 2)[:, :, None, :]  # delta_s scales the input at s


def unrolled_scan(alpha, x, D):
    """y [b, t, c] = sum_s alpha[c, t, s] x_s[c] + D[c] x_t[c]: the scan output from alpha."""
    x = jnp.asarray(x, jnp.float32)
    return jnp.einsum("bcts,bsc->btc", alpha, x) + D * x


def scan_cache_names(layer: int) -> list[str]:
    """The hook points of one Mamba layer's scan: its input x, delta, B, C and its output."""
    return [f"blocks.{layer}.mixer.{p}" for p in SCAN_POINTS]


def alpha_cache_names(layer: int) -> list[str]:
    """The hook points alpha is computed from (delta, B, C)."""
    return scan_cache_names(layer)[1:4]


def alpha_from_cache(params, cache, layer: int):
    """alpha [b, d_inner, t, s] of a Mamba layer from a cache holding `alpha_cache_names`."""
    delta, B, C = (cache[n] for n in alpha_cache_names(layer))
    return implicit_attention(delta, ssm_parameters(params, layer)[0], B, C)


@compiling.jit(static_argnames=("model", "layers"))
def _layer_alphas(model, params, tokens, layers):
    _, cache = model.run_with_cache(params, tokens, [n for l in layers for n in alpha_cache_names(l)])
    return {l: alpha_from_cache(params, cache, l) for l in layers}


def layer_attention(model, params, tokens, layers=None) -> dict[int, jax.Array]:
    """{layer: alpha [b, d_inner, t, s]} per channel for the Mamba layers among `layers`
    (default: all of them), in one compiled run."""
    layers = tuple(mamba_layers(model) if layers is None else [int(l) for l in layers])
    _check_mamba(model, layers)
    if not layers:
        return {}
    return _layer_alphas(model, params, jnp.asarray(tokens), layers)


def as_pattern(alpha, groups: int = 1):
    """alpha [b, c, t, s] -> an attention-like pattern [b, groups, t, s]: |alpha| averaged
    over each group's channels, each query row normalised to sum 1 (causal, non-negative)."""
    b, c, t, s = alpha.shape
    if groups < 1 or c % groups:
        raise LmjaxError(f"groups must divide the {c} channels, got {groups}")
    mass = jnp.abs(alpha).reshape(b, groups, c // groups, t, s).mean(2)
    total = mass.sum(-1, keepdims=True)
    return jnp.where(total > 0, mass / jnp.where(total > 0, total, 1.0), 0.0)
