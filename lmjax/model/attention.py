"""Causal multi-head attention with grouped-query attention (n_kv_head < n_head)."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import Hooks, hook
from lmjax.model.layers import Dense, rotary


class Attention(nn.Module):
    """q/k/v projections -> (RoPE) -> softmax(q k^T / sqrt(d_head) + causal mask) v -> W_O.

    Hook points (TransformerLens shapes): hook_q [b, t, head, d_head]; hook_k / hook_v
    [b, t, kv_head, d_head]; hook_rot_q / hook_rot_k with RoPE; hook_attn_scores and
    hook_pattern [b, head, q, k] (scores after scaling and masking); hook_z [b, t, head, d_head].
    """

    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.attn"

    @nn.compact
    def __call__(self, x, positions, hooks: Hooks | None = None, layer_index=None, deterministic=True, cache=None):
        """With a `cache` (lmjax.model.cache: keys [b, kv_head, length, d_head], values
        [b, kv_head, d_head, length]) the new keys and values are
        written at their positions' slots (each row's positions must be consecutive) and the
        queries attend over the whole cache; returns (out, cache). Without one, returns out."""
        cfg = self.cfg
        h, kvh, dh = cfg.n_head, cfg.kv_heads, cfg.head_dim
        p = self.name_prefix

        def point(name, value):
            return hook(self, hooks, f"{p}.{name}", value, layer_index)

        def proj(name, heads, axis):
            dense = Dense(cfg, (heads, dh), ("embed", axis, "head_dim"), cfg.init_std, cfg.use_bias, name=name)
            return point(f"hook_{name}", dense(x))

        q, k, v = proj("q", h, "heads"), proj("k", kvh, "kv_heads"), proj("v", kvh, "kv_heads")
        if cfg.pos_embedding == "rope":
            q = point("hook_rot_q", rotary(q, positions, cfg.rope_theta))
            k = point("hook_rot_k", rotary(k, positions, cfg.rope_theta))

        b, t = x.shape[:2]
        group = h // kvh  # query heads sharing one key/value head
        qg = q.reshape(b, t, kvh, group, dh)
        if cache is None:
            key_positions, s = positions, t
            scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k)
        else:
            # The cache keeps keys as [b, kv_head, length, d_head] and values transposed,
            # [b, kv_head, d_head, length]: both products then contract the minor axis, which
            # XLA's CPU dot reads in place (another layout copies the whole cache every step).
            cache = {"k": _write(cache["k"], k.transpose(0, 2, 1, 3), positions[:, 0], axis=2),
                     "v": _write(cache["v"], v.transpose(0, 2, 3, 1), positions[:, 0], axis=3)}
            k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
            s = k.shape[2]
            key_positions = jnp.broadcast_to(jnp.arange(s), (b, s))
            scores = jnp.einsum("bqkgd,bksd->bkgqs", qg, k)
        scores = scores / jnp.asarray(math.sqrt(dh), q.dtype)
        scores = scores.reshape(b, h, t, s).astype(jnp.float32)
        causal = positions[:, None, :, None] >= key_positions[:, None, None, :]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        scores = point("hook_attn_scores", scores)
        pattern = point("hook_pattern", nn.softmax(scores, axis=-1).astype(cfg.compute_dtype))
        if cfg.dropout > 0:
            pattern = nn.Dropout(cfg.dropout)(pattern, deterministic=deterministic)
        values = "bskd" if cache is None else "bkds"
        z = jnp.einsum(f"bkgqs,{values}->bqkgd", pattern.reshape(b, kvh, group, t, s), v)
        z = point("hook_z", z.reshape(b, t, h, dh))
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        w_o = Dense(cfg, (cfg.d_model,), ("heads", "head_dim", "embed"), out_std, cfg.use_bias, n_in=2, name="o")
        out = w_o(z)
        return out if cache is None else (out, cache)


def _write(cache, new, starts, axis):
    """Write new [b, ...] into cache [b, ...] along the position `axis`, from each row's start."""

    def update(c, u, start):
        index = [0] * c.ndim
        index[axis - 1] = start  # axis counts the batch dimension, which vmap removes
        return jax.lax.dynamic_update_slice(c, u.astype(c.dtype), index)

    return jax.vmap(update)(cache, new, starts)
