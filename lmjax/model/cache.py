"""Decoding state: one entry per layer.

An attention layer keeps keys "k" as [batch * kv_heads, length, d_head] and values "v"
transposed, [batch * kv_heads, d_head, length] (rows and heads merged, row-major): the
layouts in which attention reads them without a copy (lmjax.model.attention._write).
The slot of a token is its position; the cache is preallocated to
`length` positions and `grow_cache` pads it to longer spans.

Other mixers keep their recurrent state in the same per-layer tuple (lmjax/model/mixers.py:
Mamba's {"conv", "ssm"}, the LSTM's {"h", "c"}, the GRU's {"h"}, the gated conv's {"conv"}).
Its size does not depend on the context: `grow_cache` leaves it as it is, so decoding
a recurrent layer costs the same at every position. With scan_layers (identical layers)
the per-layer entries are stacked on a leading axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.mixers import mixer_class

_POSITION_AXIS = {"k": -2, "v": -1}  # the cache entries that grow with the context


def layer_cache(cfg: ModelConfig, batch: int, length: int | None = None, dtype=None, mixer: str = "attention") -> dict:
    length, dtype = length or cfg.max_len, dtype or cfg.compute_dtype
    if mixer != "attention":
        return mixer_class(mixer).init_state(cfg, batch, dtype)
    return {"k": jnp.zeros((batch * cfg.kv_heads, length, cfg.head_dim), dtype),
            "v": jnp.zeros((batch * cfg.kv_heads, cfg.head_dim, length), dtype)}


def init_cache(cfg: ModelConfig, batch: int, length: int | None = None, dtype=None):
    """An empty cache for `batch` rows and `length` positions (default: the model's context):
    a tuple of per-layer dicts (stacked on a leading layer axis when scanned)."""
    layers = tuple(layer_cache(cfg, batch, length, dtype, mixer) for mixer in cfg.layer_mixers)
    if cfg.scan_layers:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return layers


def grow_cache(cache, length: int):
    """Pad every attention layer's position axis with empty slots up to `length`;
    recurrent states are unchanged."""

    def pad(path, x):
        name = getattr(path[-1], "key", None)
        if name not in _POSITION_AXIS:
            return x
        axis = x.ndim + _POSITION_AXIS[name]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    return jax.tree_util.tree_map_with_path(pad, cache)
