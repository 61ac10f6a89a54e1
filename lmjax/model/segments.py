"""Packed documents: segment ids [b, t] name each token's document within its row (equal ids
in a run, a new id where a document starts). From them every layer takes what it needs to
keep documents apart: positions that restart at each document, where each one starts
(recurrent states restart there), and which query may see which key (attention)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids):
    """[b, t] True at the first token of each document (the row's first token included)."""
    first = jnp.ones_like(segment_ids[:, :1], dtype=bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def segment_positions(segment_ids):
    """[b, t] int32: each token's position inside its document (0 at every start)."""
    index = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    start = jax.lax.cummax(jnp.where(segment_starts(segment_ids), index, 0), axis=1)
    return index - start


def same_segment(query_ids, key_ids):
    """[b, 1, q, k] True where the query and the key are in the same document."""
    return (query_ids[:, :, None] == key_ids[:, None, :])[:, None]
