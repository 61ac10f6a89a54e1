"""Decoding state: one entry per layer, preallocated to the model's context length.

An attention layer keeps {"k", "v"} of shape [batch, max_len, kv_heads, d_head]; the
slot of a token is its position. Other mixers keep their own recurrent state in the same
per-layer tuple. With scan_layers the per-layer entries are stacked on a leading axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig


def layer_cache(cfg: ModelConfig, batch: int, dtype=None) -> dict:
    shape = (batch, cfg.max_len, cfg.kv_heads, cfg.head_dim)
    dtype = dtype or cfg.compute_dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def init_cache(cfg: ModelConfig, batch: int, dtype=None):
    """An empty cache for `batch` rows: a tuple of per-layer dicts (stacked when scanned)."""
    layers = tuple(layer_cache(cfg, batch, dtype) for _ in range(cfg.n_layer))
    if cfg.scan_layers:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return layers
