"""Causal multi-head attention with grouped-query attention (n_kv_head < n_head).

Two cores compute the same softmax(q k^T / sqrt(d_head) + causal mask) v:

- the explicit core materialises the scores and the pattern, so that their hook points
  (hook_attn_scores, hook_pattern) can be cached or patched, attention dropout applied,
  and queries attend over a decoding cache or arbitrary positions;
- the fast core (`attention_core`) is used when none of that is asked for: on GPU it is
  cuDNN's fused flash attention, elsewhere a blocked causal attention that skips the key
  blocks above the diagonal (half of the work) and never materialises the full pattern.

The two agree to float rounding (tests/test_model.py checks it).

Packed documents (`segment_ids` [b, t], lmjax/model/segments.py): both cores also mask every
key in another document, and positions (RoPE) restart at each document. On GPU the fast
core then runs the blocked core, not cuDNN: jax.nn.dot_product_attention takes no segment
ids, and a boolean mask there becomes a dense t x t bias per row that cuDNN reads (the
memory the fused kernel exists to avoid); cuDNN's packed layout (q_offsets / kv_offsets)
is only in JAX's private jax._src.cudnn. On TPU the fast core is Pallas's splash attention
with SegmentIds (lmjax/model/splash.py).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import Hooks, hook
from lmjax.model.layers import Dense, rotary
from lmjax.model.segments import same_segment, segment_positions
from lmjax.model.splash import splash_causal_attention, supported as splash_supported

# Hook points that only the explicit core produces.
_PATTERN_POINTS = ("hook_attn_scores", "hook_pattern")


class Attention(nn.Module):
    """q/k/v projections -> (RoPE) -> softmax(q k^T / sqrt(d_head) + causal mask) v -> W_O.

    Hook points (TransformerLens shapes): hook_q [b, t, head, d_head]; hook_k / hook_v
    [b, t, kv_head, d_head]; hook_rot_q / hook_rot_k with RoPE; hook_attn_scores and
    hook_pattern [b, head, q, k] (scores after scaling and masking); hook_z [b, t, head, d_head].
    """

    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.attn"

    @nn.compact
    def __call__(self, x, positions, hooks: Hooks | None = None, layer_index=None, deterministic=True, cache=None,
                 segment_ids=None):
        """`positions` [b, t], or None for 0..t-1 in every row (then the fast core may run);
        with `segment_ids` [b, t] (packed documents, no cache) None means each document's
        own 0, 1, ... and keys in other documents are masked.

        With a `cache` (lmjax.model.cache: keys [b * kv_head, length, d_head], values
        [b * kv_head, d_head, length]) the new keys and values are written at their
        positions' slots (each row's positions must be consecutive) and the queries attend
        over the whole cache; returns (out, cache). Without one, returns out."""
        cfg = self.cfg
        h, kvh, dh = cfg.n_head, cfg.kv_heads, cfg.head_dim
        p = self.name_prefix
        b, t = x.shape[:2]
        in_order = positions is None
        if in_order and segment_ids is not None:
            positions = segment_positions(segment_ids)
        elif in_order:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))

        def point(name, value):
            return hook(self, hooks, f"{p}.{name}", value, layer_index)

        def proj(name, heads, axis):
            dense = Dense(cfg, (heads, dh), ("embed", axis, "head_dim"), cfg.init_std, cfg.use_bias, name=name)
            return point(f"hook_{name}", dense(x))

        q, k, v = proj("q", h, "heads"), proj("k", kvh, "kv_heads"), proj("v", kvh, "kv_heads")
        if cfg.pos_embedding == "rope":
            q = point("hook_rot_q", rotary(q, positions, cfg.rope_theta))
            k = point("hook_rot_k", rotary(k, positions, cfg.rope_theta))

        pattern_hooked = hooks is not None and any(hooks.touches(f"{p}.{n}") for n in _PATTERN_POINTS)
        attention_dropout = cfg.dropout > 0 and not deterministic
        if in_order and cache is None and not attention_dropout:
            z = attention_core(q, k, v, segment_ids=segment_ids)
            if pattern_hooked:
                z = z + self._pattern_hook_change(q, k, v, positions, point, segment_ids)
        else:
            z, cache = self._explicit_core(q, k, v, positions, point, deterministic, cache, segment_ids)
        z = point("hook_z", z.reshape(b, t, h, dh))
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        w_o = Dense(cfg, (cfg.d_model,), ("heads", "head_dim", "embed"), out_std, cfg.use_bias, n_in=2, name="o")
        out = w_o(z)
        return out if cache is None else (out, cache)

    def _pattern_hook_change(self, q, k, v, positions, point, segment_ids):
        """With the fast core: materialise scores and pattern at their hook points and return
        what the interventions there change in z, (pattern' - pattern) v. An identity
        intervention changes nothing, exactly: the logits stay bitwise equal."""
        scores = _masked_scores(q, k, positions, positions, segment_ids=segment_ids)
        pattern = nn.softmax(scores, axis=-1).astype(self.cfg.compute_dtype)
        hooked_scores = point("hook_attn_scores", scores)
        if hooked_scores is not scores:
            hooked = nn.softmax(hooked_scores, axis=-1).astype(pattern.dtype)
        else:
            hooked = pattern
        return _mix(point("hook_pattern", hooked) - pattern, v, "bskd")

    def _explicit_core(self, q, k, v, positions, point, deterministic, cache, segment_ids):
        """Scores and pattern materialised (and hooked); attends over `cache` if given."""
        cfg = self.cfg
        if cache is None:
            key_positions, values = positions, "bskd"
        else:
            cache = _write(cache, k, v, positions[:, 0])
            b, s = q.shape[0], cache["k"].shape[1]
            k = cache["k"].astype(q.dtype).reshape(b, -1, s, q.shape[-1])
            v = cache["v"].astype(q.dtype).reshape(b, -1, q.shape[-1], s)
            key_positions, values = jnp.broadcast_to(jnp.arange(s), (b, s)), "bkds"
        scores = point("hook_attn_scores", _masked_scores(q, k, positions, key_positions, cached=cache is not None,
                                                            segment_ids=segment_ids))
        pattern = point("hook_pattern", nn.softmax(scores, axis=-1).astype(cfg.compute_dtype))
        if cfg.dropout > 0:
            pattern = nn.Dropout(cfg.dropout)(pattern, deterministic=deterministic)
        return _mix(pattern, v, values), cache


def _masked_scores(q, k, positions, key_positions, cached=False, segment_ids=None):
    """q k^T / sqrt(d_head) in float32 [b, head, q, k], the float32 minimum where a query's
    position is before the key's, or the key is in another document (`segment_ids`, queries
    and keys alike: never with a cache). k is [b, s, kv_head, d], or [b, kv_head, s, d] if `cached`."""
    b, t, h, d = q.shape
    kvh = k.shape[1 if cached else 2]
    qg = q.reshape(b, t, kvh, h // kvh, d)  # query heads grouped by the key/value head they share
    scores = jnp.einsum("bqkgd,bksd->bkgqs" if cached else "bqkgd,bskd->bkgqs", qg, k)
    scores = scores / jnp.asarray(math.sqrt(d), q.dtype)
    scores = scores.reshape(b, h, t, -1).astype(jnp.float32)
    causal = positions[:, None, :, None] >= key_positions[:, None, None, :]
    if segment_ids is not None:
        causal = causal & same_segment(segment_ids, segment_ids)
    return jnp.where(causal, scores, jnp.finfo(jnp.float32).min)


def _mix(pattern, v, values: str):
    """pattern [b, head, q, s] times v (`values` layout "bskd" or "bkds") -> z [b, q, head, d]."""
    b, h, t, s = pattern.shape
    kvh, d = (v.shape[2], v.shape[3]) if values == "bskd" else (v.shape[1], v.shape[2])
    z = jnp.einsum(f"bkgqs,{values}->bqkgd", pattern.reshape(b, kvh, h // kvh, t, s), v)
    return z.reshape(b, t, h, d)


def attention_core(q, k, v, block: int | None = None, segment_ids=None):
    """Causal attention of q [b, t, head, d] over k, v [b, t, kv_head, d] -> [b, t, head, d].

    Query i attends to keys 0..i (of its own document with `segment_ids` [b, t]). cuDNN's
    fused kernel on GPU (16-bit inputs, no segment ids: see the module docstring), splash
    attention on TPU with segment ids (t a multiple of 128), else `blocked_causal_attention`.
    """
    backend = jax.default_backend()
    if segment_ids is None and backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    if segment_ids is not None and backend == "tpu" and splash_supported(q.shape[1]):
        return splash_causal_attention(q, k, v, segment_ids)
    return blocked_causal_attention(q, k, v, block, segment_ids)


def blocked_causal_attention(q, k, v, block: int | None = None, segment_ids=None):
    """Causal attention computed one block of queries at a time (within each document
    with `segment_ids` [b, t]: every block then also masks the keys of other documents).

    Query block i needs only keys 0..(i+1)*block, so the key blocks above the diagonal are
    never computed (about half the work at long contexts) and only the diagonal block needs
    a mask. Heads are moved in front of positions once, so that every block's products
    contract minor axes with no copies. Within a block: scores in float32, an additive
    mask, the row maximum held constant for the gradient (it cancels exactly in the
    softmax), and normalisation after the product with v ([q, d] divisions, not [q, k]).

    The query heads that share a key/value head are folded into the query axis, so every
    product is a 4-D batched matmul over (batch, kv_head): XLA's CPU backend runs the 5-D
    form (a separate group axis) about 2x slower, forward and backward, even when the
    group axis has size 1.
    """
    b, t, h, d = q.shape
    kvh = k.shape[2]
    group = h // kvh
    if block is None:
        block = max(64, -(-t // 8))  # at most ~8 blocks: a few big matmuls beat many small ones
    # [b, kv_head, group, t, d] and [b, kv_head, t, d]
    qh = (q * jnp.asarray(1 / math.sqrt(d), q.dtype)).reshape(b, t, kvh, group, d).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    diagonal = np.where(np.tril(np.ones((block, block), bool)), 0.0, -np.inf).astype(np.float32)
    outputs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        n = stop - start
        q_block = qh[:, :, :, start:stop].reshape(b, kvh, group * n, d)
        scores = jnp.einsum("bkqd,bksd->bkqs", q_block, kh[:, :, :stop]).astype(jnp.float32)
        mask = np.concatenate([np.zeros((n, start), np.float32), diagonal[:n, :n]], axis=1)
        scores = scores + np.tile(mask, (group, 1))
        if segment_ids is not None:
            same = same_segment(segment_ids[:, start:stop], segment_ids[:, :stop])  # [b, 1, n, stop]
            scores = jnp.where(jnp.tile(same, (1, 1, group, 1)), scores, -jnp.inf)
        weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
        z = jnp.einsum("bkqs,bksd->bkqd", weights.astype(q.dtype), vh[:, :, :stop])
        z = z / weights.sum(axis=-1, keepdims=True).astype(z.dtype)
        outputs.append(z.reshape(b, kvh, group, n, d))
    return jnp.concatenate(outputs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _write(cache, k, v, starts):
    """Write k, v [b, t, kv_head, d] into the cache at positions starts[row] + 0..t-1.

    The cache merges rows and kv heads into its leading axis: keys [b * kv_head, length,
    d_head], values transposed, [b * kv_head, d_head, length]. Both products then contract
    the minor axis, which XLA's CPU dot reads in place, and no axis has size one at batch
    one: a size-one batch axis made XLA duplicate the cache update for the dot and copy the
    whole cache on every decoding step.
    """
    b, t, kvh, d = k.shape
    rows = jnp.arange(b * kvh)[:, None]  # [b * kv_head, 1]
    slots = jnp.repeat(starts, kvh)[:, None] + jnp.arange(t)[None, :]  # [b * kv_head, t]
    # In bounds by construction: the sampler sizes the cache to the prompt bucket and grows
    # it before a row's position reaches its end (lmjax.sample._generate).
    new_k = k.transpose(0, 2, 1, 3).reshape(b * kvh, t, d).astype(cache["k"].dtype)
    new_v = v.transpose(0, 2, 1, 3).reshape(b * kvh, t, d).astype(cache["v"].dtype)
    return {"k": cache["k"].at[rows, slots].set(new_k, mode="promise_in_bounds"),
            "v": cache["v"].at[rows, :, slots].set(new_v, mode="promise_in_bounds")}
