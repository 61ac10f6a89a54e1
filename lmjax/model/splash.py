"""Causal attention within packed documents on TPU: the Pallas splash attention kernel
that ships with JAX (jax.experimental.pallas.ops.tpu.splash_attention), with SegmentIds.

The kernel takes one example's [head, t, d] (grouped-query heads included) and applies no
softmax scale, so the rows are vmapped and q is scaled first, as the blocked core does.
Its key blocks must be multiples of 128 positions, so it runs when t is one (`supported`);
elsewhere lmjax.model.attention falls back to the blocked core. On CPU it runs in
interpret mode (tests/test_documents.py checks it against the reference core). Under a
mesh the kernel is not partitioned by XLA (it would need shard_map over the batch).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

LANES = 128  # the kernel's key-block granularity


def supported(t: int) -> bool:
    return t % LANES == 0


def _block(t: int) -> int:
    """The largest of 512, 256, 128 that divides t."""
    return next(b for b in (512, 256, LANES) if t % b == 0)


def _kernel(t: int, heads: int, interpret: bool):
    b = _block(t)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * heads)
    return splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_causal_attention(q, k, v, segment_ids, interpret: bool = False):
    """q [b, t, head, d], k, v [b, t, kv_head, d], segment_ids [b, t] -> [b, t, head, d]:
    each query attends to the keys at or before it in its own document."""
    b, t, h, d = q.shape
    kernel = _kernel(t, h, interpret)
    qh = (q * jnp.asarray(1 / math.sqrt(d), q.dtype)).transpose(0, 2, 1, 3)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    ids = segment_ids.astype(jnp.int32)
    out = jax.vmap(kernel)(qh, kh, vh, splash.SegmentIds(q=ids, kv=ids))
    return out.transpose(0, 2, 1, 3)
