"""Logit lens: read the residual stream after every layer through the final norm and the
unembedding, as if the model stopped there (nostalgebraist 2020).

Why: it shows *when* (at which depth) the model settles on its prediction; the target's
probability and rank by layer are the trajectory that `lmjax explain` draws. At the last
layer the lens is the model's own output (tested). Works for any mixer: it reads only
`blocks.{l}.hook_resid_post` (and `blocks.0.hook_resid_pre` for the embeddings).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.interp import compiling, weights


@dataclasses.dataclass
class LogitLens:
    """Per residual point P (embed, L0, ..., L{n-1}), batch row b and position t."""

    labels: list[str]  # P labels
    targets: np.ndarray  # [b, t] the token followed
    target_prob: np.ndarray  # [P, b, t]
    target_rank: np.ndarray  # [P, b, t], 0 = top-1
    top_ids: np.ndarray  # [P, b, t, k]
    top_probs: np.ndarray  # [P, b, t, k]
    logits: np.ndarray  # [b, t, vocab] the model's own


@compiling.jit(static_argnames=("model",))
def lens_logits(model, params, tokens):
    """-> (lens logits [P, b, t, vocab], model logits [b, t, vocab]). P = n_layer + 1."""
    names = [n for _, n in weights.residual_points(model)]
    logits, cache = model.run_with_cache(params, tokens, names)
    resid = jnp.stack([cache[n] for n in names])
    return weights.unembed(model, params, weights.final_norm(model, params, resid)), logits


@compiling.jit(static_argnames=("model", "top_k"))
def _lens_summary(model, params, tokens, targets, top_k):
    lens, logits = lens_logits(model, params, tokens)
    logp = jax.nn.log_softmax(lens, axis=-1)
    if targets is None:
        targets = jnp.argmax(logits, axis=-1)
    target_logp = jnp.take_along_axis(logp, jnp.broadcast_to(targets, logp.shape[:-1])[..., None], axis=-1)
    rank = (logp > target_logp).sum(-1)
    top_logp, top_ids = jax.lax.top_k(logp, top_k)
    return targets, jnp.exp(target_logp[..., 0]), rank, top_ids, jnp.exp(top_logp), logits


def logit_lens(model, params, tokens, targets=None, top_k: int = 5) -> LogitLens:
    """The logit lens of `tokens` [b, t]. `targets` [b, t] (token ids) defaults to the
    model's own top-1 prediction at each position."""
    tokens = jnp.asarray(tokens)
    out = _lens_summary(model, params, tokens, None if targets is None else jnp.asarray(targets), top_k)
    targets, prob, rank, ids, probs, logits = (np.asarray(x) for x in out)
    labels = [label for label, _ in weights.residual_points(model)]
    return LogitLens(labels, targets, prob, rank, ids, probs, logits)
