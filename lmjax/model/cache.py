"""Decoding state: one entry per layer, preallocated to the model's context length.

An attention layer keeps keys "k" as [batch, kv_heads, length, d_head] and values "v"
transposed, [batch, kv_heads, d_head, length]: the layouts in which attention reads them
without a copy. The slot of a token is its position. Other mixers keep their own recurrent state in the same
per-layer tuple. With scan_layers the per-layer entries are stacked on a leading axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig


def layer_cache(cfg: ModelConfig, batch: int, length: int | None = None, dtype=None) -> dict:
    length, dtype = length or cfg.max_len, dtype or cfg.compute_dtype
    return {"k": jnp.zeros((batch, cfg.kv_heads, length, cfg.head_dim), dtype),
            "v": jnp.zeros((batch, cfg.kv_heads, cfg.head_dim, length), dtype)}


def init_cache(cfg: ModelConfig, batch: int, length: int | None = None, dtype=None):
    """An empty cache for `batch` rows and `length` positions (default: the model's context):
    a tuple of per-layer dicts (stacked on a leading layer axis when scanned)."""
    layers = tuple(layer_cache(cfg, batch, length, dtype) for _ in range(cfg.n_layer))
    if cfg.scan_layers:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return layers


def grow_cache(cache, length: int):
    """Pad every layer's position axis with empty slots up to `length`."""

    def pad(name, x):
        axis = x.ndim - 2 if name == "k" else x.ndim - 1
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    return jax.tree_util.tree_map_with_path(lambda path, x: pad(path[-1].key, x), cache)
