"""Causal multi-head attention with grouped-query attention (n_kv_head < n_head)."""
from __future__ import annotations

import math

import flax.linen as nn
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
        """With a `cache` ({"k", "v"} [b, max_len, kv_head, d_head]) the new keys and values are
        written at their positions' slots and the queries attend over the whole cache;
        returns (out, cache). Without one, returns out."""
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
        key_positions = positions
        if cache is not None:
            rows = jnp.arange(b)[:, None]
            cache = {"k": cache["k"].at[rows, positions].set(k.astype(cache["k"].dtype)),
                     "v": cache["v"].at[rows, positions].set(v.astype(cache["v"].dtype))}
            k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
            key_positions = jnp.broadcast_to(jnp.arange(k.shape[1]), (b, k.shape[1]))
        s = k.shape[1]
        group = h // kvh  # query heads sharing one key/value head
        qg = q.reshape(b, t, kvh, group, dh)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k) / jnp.asarray(math.sqrt(dh), q.dtype)
        scores = scores.reshape(b, h, t, s).astype(jnp.float32)
        causal = positions[:, None, :, None] >= key_positions[:, None, None, :]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        scores = point("hook_attn_scores", scores)
        pattern = point("hook_pattern", nn.softmax(scores, axis=-1).astype(cfg.compute_dtype))
        if cfg.dropout > 0:
            pattern = nn.Dropout(cfg.dropout)(pattern, deterministic=deterministic)
        z = jnp.einsum("bkgqs,bskd->bqkgd", pattern.reshape(b, kvh, group, t, s), v)
        z = point("hook_z", z.reshape(b, t, h, dh))
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        w_o = Dense(cfg, (cfg.d_model,), ("heads", "head_dim", "embed"), out_std, cfg.use_bias, n_in=2, name="o")
        out = w_o(z)
        return out if cache is None else (out, cache)
