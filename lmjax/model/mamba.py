"""The Mamba mixer: a selective state space model (Gu & Dao 2023), attention-free and O(t).

    (x, z) = in_proj(u)                      d_model -> 2 d_inner, no bias
    x = SiLU(causal depthwise conv1d(x))     width d_conv, with bias
    (dt, B, C) = x_proj(x)                   d_inner -> dt_rank + 2 d_state, no bias
    delta = softplus(dt_proj(dt))            dt_rank -> d_inner, with bias
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t     A = -exp(A_log): ZOH for A, Euler for B
    y_t = C_t . h_t + D x_t
    out = out_proj(y * SiLU(z))              d_inner -> d_model, no bias

Each of the d_inner channels carries its own d_state-dimensional state; B_t, C_t are
shared across channels and, like delta_t, depend on the input: that is the "selection".
The scan runs in float32 whatever the compute dtype.

Two ways to evaluate the same recurrence:
- training (all positions at once, `model.ssm_scan`): `lax.associative_scan` over
  (exp(delta A), delta B x) pairs, which materialises [b, t, d_state, d_inner]
  ("associative"); or chunk by chunk inside a `lax.scan` that carries the state between
  chunks, each chunk recomputed in the backward pass, so that memory is bounded by one
  chunk plus one state per chunk, with a prefix scan ("chunked") or a plain step-by-step
  loop ("sequential") inside the chunk. "auto" picks per backend (`scan_method`: measured
  on CPU, where "sequential" is 5-10x faster than the other two);
- packed documents (`segment_ids`): the decay exp(delta A) is 0 at each document's first
  token, so the state restarts there in every scan, and the conv's taps stop at the start;
- decoding (`ssm_step`): one token, the state [b, d_state, d_inner] and the last d_conv - 1
  conv inputs carried in the cache: O(1) time and memory per token, whatever the context.

Hook points (under blocks.{l}.mixer.): hook_in_proj [b, t, 2, d_inner] (x then z),
hook_silu_ratio [b, t, d_inner] (sigmoid of the conv output c: the SiLU is c times it),
hook_conv [b, t, d_inner] (after the SiLU), hook_delta [b, t, d_inner] (after the softplus),
hook_B, hook_C [b, t, d_state], hook_h [b, t, d_inner, d_state] (the states: materialised
only when cached or patched; a patch there changes the readout C_t . h_t at that step,
not the states that follow), hook_ssm_out [b, t, d_inner] (C . h + D x, before the gate),
hook_gate [b, t, d_inner] (SiLU(z), which multiplies hook_ssm_out). Frozen at their values,
hook_silu_ratio, hook_delta, hook_B, hook_C and hook_gate leave the block linear in its
input (lmjax.graph freezes them so).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import hook
from lmjax.model.layers import Dense, param, uniform
from lmjax.model.mixer_parts import causal_taps, causal_window, is_hooked, state_after, valid_mask
from lmjax.model.segments import segment_starts

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


def dt_bias_init(key, shape, dtype=jnp.float32):
    """softplus^-1(dt) with dt log-uniform in [DT_MIN, DT_MAX] (floored at DT_FLOOR): the
    initial step sizes span two decades, so channels start with memories of ~10 to ~1000
    positions."""
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
    dt = jnp.maximum(dt, DT_FLOOR)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def a_log_init(key, shape, dtype=jnp.float32):
    """A_log[c, i] = log(i + 1): S4D-real's A = -(1, 2, ..., d_state) in every channel."""
    del key
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape).astype(dtype)


# -- The selective scan. x, delta [b, t, d]; A [d, n]; B, C [b, t, n]. States are laid out
# [b, (t,) n, d]: channels minor, so that every step's update is a vector operation over d
# (d_inner is wide, d_state only 16); measured on CPU, this layout and computing y inside
# the step loop made the sequential scan's forward + backward ~10x faster than [b, t, d, n].


def discretize(x, delta, A, B, reset=None):
    """(exp(delta A), delta B x), each [b, t, n, d]: zero-order hold for A, Euler for B.
    Where `reset` [b, t] is True (a document's first token) the decay is 0: h_t = delta B x."""
    decay = jnp.exp(delta[:, :, None, :] * A.T)
    if reset is not None:
        decay = jnp.where(reset[:, :, None, None], 0.0, decay)
    return decay, (delta * x)[:, :, None, :] * B[..., None]


def _combine(earlier, later):
    """Compose h -> a1 h + b1 then h -> a2 h + b2: h -> (a2 a1) h + (a2 b1 + b2)."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def scan_states(x, delta, A, B, h0=None, reset=None):
    """Every state h_t [b, t, n, d] by a parallel prefix scan, starting from h0 [b, n, d] (or
    zeros), restarting where `reset` [b, t] is True."""
    dA, dBx = discretize(x, delta, A, B, reset)
    if h0 is not None:  # h_1 = a_1 h0 + b_1: fold the initial state into the first element
        dBx = dBx.at[:, 0].add(dA[:, 0] * h0)
    return jax.lax.associative_scan(_combine, (dA, dBx), axis=1)[1]


def readout(states, C):
    """y_t = C_t . h_t: states [b, t, n, d], C [b, t, n] -> [b, t, d]."""
    return jnp.einsum("btnd,btn->btd", states, C)


def ssm_step(h, x, delta, A, B, C, reset=None):
    """One step: x, delta [b, d]; B, C [b, n]; h [b, n, d] -> (h, y [b, d]); the old state
    is dropped where `reset` [b] is True."""
    decay = jnp.exp(delta[:, None, :] * A.T)
    if reset is not None:
        decay = jnp.where(reset[:, None, None], 0.0, decay)
    h = decay * h + (delta * x)[:, None, :] * B[..., None]
    return h, jnp.einsum("bnd,bn->bd", h, C)


def _sequential_chunk(x, delta, A, B, C, h, reset=None):
    """(y [b, t, d], last state) step by step (a Python loop: unrolled, for short chunks)."""
    ys = []
    for i in range(x.shape[1]):
        h, y = ssm_step(h, x[:, i], delta[:, i], A, B[:, i], C[:, i], None if reset is None else reset[:, i])
        ys.append(y)
    return jnp.stack(ys, axis=1), h


def _associative_chunk(x, delta, A, B, C, h, reset=None):
    states = scan_states(x, delta, A, B, h, reset)
    return readout(states, C), states[:, -1]


def scan_chunked(x, delta, A, B, C, h0=None, chunk: int = 128, inner: str = "associative", reset=None):
    """(y [b, t, d], last state [b, n, d]) chunk by chunk: the state is carried across chunks
    by lax.scan and each chunk is rematerialised in the backward pass, so peak memory is one
    chunk's [b, chunk, n, d] (plus one state per chunk) instead of the whole [b, t, n, d].

    Inside a chunk the states come from a prefix scan (`inner="associative"`: parallel,
    log-depth) or step by step (`"sequential"`: unrolled; no redundant work, which is what
    a CPU wants). Padding to a multiple of `chunk` uses delta = 0, an identity step, so the
    last state is exact. `reset` [b, t]: the documents' first tokens, where the state restarts.
    """
    b, t, d = x.shape
    chunk = min(chunk, t)
    pad = -t % chunk
    if pad:
        x, delta, B, C = (jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2)) for v in (x, delta, B, C))
        reset = None if reset is None else jnp.pad(reset, [(0, 0), (0, pad)])
    n_chunks = (t + pad) // chunk
    run = _associative_chunk if inner == "associative" else _sequential_chunk

    def split(v):  # [b, t, ...] -> [chunks, b, chunk, ...]
        return v.reshape(b, n_chunks, chunk, *v.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def body(h, xs):
        xc, dc, bc, cc, rc = xs
        y, h = run(xc, dc, A, bc, cc, h, rc)
        return h, y

    h0 = jnp.zeros((b, A.shape[1], d), jnp.float32) if h0 is None else h0
    xs = (*map(split, (x, delta, B, C)), None if reset is None else split(reset))
    last, ys = jax.lax.scan(body, h0, xs)
    return ys.swapaxes(0, 1).reshape(b, t + pad, d)[:, :t], last


def scan_method(cfg: ModelConfig) -> tuple[str, int]:
    """(method, chunk) of the training scan. "auto" is "sequential" on CPU and "chunked"
    elsewhere. Measured on the 2-core CPU (bench/mixers.py `scan`: forward + backward of one
    layer's scan, b 8, d_inner 256, d_state 16), seconds and XLA temporaries:

        positions   associative       chunked (128)     sequential (16)
        1024        1.28 s  1.65 GiB  0.76 s  225 MiB   0.13 s   32 MiB
        4096        4.54 s  6.68 GiB  2.47 s  279 MiB   0.47 s  107 MiB

    On a CPU the log-depth forms only add work (and the associative one memory). On a GPU
    the log-depth associative form inside chunks should win (an expectation: the scans have
    not been timed on a GPU); the chunk bounds its memory either way."""
    method = cfg.ssm_scan
    if method == "auto":
        method = "sequential" if jax.default_backend() == "cpu" else "chunked"
    chunk = cfg.ssm_chunk or (16 if method == "sequential" else 128)
    return method, chunk


class CausalDepthwiseConv(nn.Module):
    """y_t = sum_j kernel[j] * x_{t - width + 1 + j} + bias, per channel, over the width taps
    [b, t, c] of lmjax.model.mixer_parts.causal_taps (oldest first)."""

    width: int
    cfg: ModelConfig

    @nn.compact
    def __call__(self, taps):
        c, dtype = taps[0].shape[-1], self.cfg.params_dtype
        bound = self.width ** -0.5  # PyTorch's Conv1d default: fan_in = width for a depthwise conv
        kernel = param(self, "kernel", uniform(bound), (self.width, c), (None, "mlp"), dtype)
        bias = param(self, "bias", uniform(bound), (c,), ("mlp",), dtype)
        kernel, bias = kernel.astype(taps[0].dtype), bias.astype(taps[0].dtype)
        return sum(tap * kernel[j] for j, tap in enumerate(taps)) + bias


class Mamba(nn.Module):
    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.mixer"

    @staticmethod
    def hook_suffixes(cfg: ModelConfig) -> list[str]:
        return ["hook_in_proj", "hook_silu_ratio", "hook_conv", "hook_delta", "hook_B", "hook_C", "hook_h",
                "hook_ssm_out", "hook_gate"]

    @staticmethod
    def init_state(cfg: ModelConfig, batch: int, dtype) -> dict:
        return {"conv": jnp.zeros((batch, cfg.d_conv - 1, cfg.d_inner), dtype),
                "ssm": jnp.zeros((batch, cfg.d_state, cfg.d_inner), jnp.float32)}  # [b, n, d]: see scan_states

    @nn.compact
    def __call__(self, u, hooks=None, layer_index=None, cache=None, lengths=None, segment_ids=None):
        cfg = self.cfg
        d, di, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.mamba_dt_rank, cfg.d_conv
        b, t = u.shape[:2]
        f32 = jnp.float32

        def point(name, value):
            return hook(self, hooks, f"{self.name_prefix}.{name}", value, layer_index)

        xz = Dense(cfg, (2, di), ("embed", None, "mlp"), 0.0, False, init=uniform(d ** -0.5), name="in_proj")(u)
        xz = point("hook_in_proj", xz)
        x, z = xz[:, :, 0], xz[:, :, 1]
        window = causal_window(x, None if cache is None else cache["conv"], k)
        conv = CausalDepthwiseConv(k, cfg, name="conv1d")(causal_taps(window, k, t, segment_ids))
        x = point("hook_conv", conv * point("hook_silu_ratio", nn.sigmoid(conv)))  # silu(conv), op for op

        dbc = Dense(cfg, (r + 2 * n,), ("mlp", None), 0.0, False, init=uniform(di ** -0.5), name="x_proj")(x)
        dt_proj = Dense(cfg, (di,), (None, "mlp"), 0.0, True, init=uniform(r ** -0.5), bias_init=dt_bias_init,
                        name="dt_proj")
        delta = point("hook_delta", nn.softplus(dt_proj(dbc[..., :r]).astype(f32)))
        B = point("hook_B", dbc[..., r:r + n].astype(f32))
        C = point("hook_C", dbc[..., r + n:].astype(f32))
        A = -jnp.exp(param(self, "A_log", a_log_init, (di, n), ("mlp", None), cfg.params_dtype).astype(f32))
        D = param(self, "D", nn.initializers.ones, (di,), ("mlp",), cfg.params_dtype).astype(f32)

        xf = x.astype(f32)
        h0 = None if cache is None else cache["ssm"]
        valid = valid_mask(lengths, t)
        if valid is not None:  # padding: delta = 0 is the identity step, the state stays put
            delta = jnp.where(valid[..., None], delta, 0.0)
        reset = None if segment_ids is None else segment_starts(segment_ids)
        method, chunk = scan_method(cfg)
        if cache is not None and t == 1:
            last, y = ssm_step(h0, xf[:, 0], delta[:, 0], A, B[:, 0], C[:, 0])
            y, states = y[:, None], last[:, None]
        elif method == "associative":
            states = scan_states(xf, delta, A, B, h0, reset)
            last, y = states[:, -1], readout(states, C)
        else:
            inner = "associative" if method == "chunked" else "sequential"
            y, last = scan_chunked(xf, delta, A, B, C, h0, chunk, inner, reset)
            states = None
        if is_hooked(hooks, f"{self.name_prefix}.hook_h"):
            # The states are materialised only here, as [b, t, d_inner, d_state]. A patch
            # changes the readout by C . (h' - h): exactly nothing for an identity patch,
            # whichever scan ran.
            states = (scan_states(xf, delta, A, B, h0, reset) if states is None else states).transpose(0, 1, 3, 2)
            y = y + jnp.einsum("btdn,btn->btd", point("hook_h", states) - states, C)

        y = point("hook_ssm_out", y + D * xf)
        y = (y * point("hook_gate", nn.silu(z.astype(f32)))).astype(cfg.compute_dtype)
        # The reference's rescaling: each residual write's std shrinks with the number of writes.
        writes = cfg.n_layer * (2 if cfg.mamba_mlp else 1)
        out_init = uniform(di ** -0.5 / math.sqrt(writes))
        out = Dense(cfg, (d,), ("mlp", "embed"), 0.0, False, init=out_init, name="out_proj")(y)
        if cache is None:
            return out
        return out, {"conv": state_after(window, lengths, k).astype(cache["conv"].dtype), "ssm": last}
