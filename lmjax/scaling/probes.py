"""Interpretability probes of emergence, measured on each finished sweep run.

- `icl_score` (in-context learning; Olsson et al. 2022 define it as the loss at token 500
  minus the loss at token 50): the mean next-token loss on held-out text late in the
  context (the last quarter of positions) minus that early in it (positions T/16 to T/8).
  More negative = the model gains more from its context.
- `induction`: the best induction score over all heads (lmjax.interp.heads.induction_score:
  attention from the second copy of a repeated random sequence to the token after the
  current token's first occurrence), and which head has it.
- `copy_gain`: the loss on the first copy of a random sequence minus the loss on its
  repetition (nats): what an induction circuit buys behaviourally.

All three need one forward pass each on a small batch, so probing a run costs seconds.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp.heads import induction_score, ranked, repeated_tokens

PROBE_COLUMNS = ("icl_score", "induction_score", "induction_head", "copy_gain")


@functools.partial(jax.jit, static_argnames=("model",))
def _position_losses(model, params, tokens):
    """Next-token loss at every position, averaged over the batch: [t - 1]."""
    logits = model.apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0].mean(0)


def _windows(stream, seq_len: int, batch: int, seed: int) -> np.ndarray:
    """`batch` windows of seq_len + 1 tokens at seeded offsets into a token stream."""
    stream = np.asarray(stream)
    if len(stream) < seq_len + 2:
        raise LmjaxError(f"probe text has {len(stream)} tokens; the ICL probe needs more than seq_len + 1 = {seq_len + 1}")
    starts = np.random.RandomState(seed).randint(0, len(stream) - seq_len - 1, batch)
    return np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int32)


def icl_score(model, params, val_tokens, seq_len: int, batch: int = 32, seed: int = 0) -> float:
    if seq_len < 32:
        raise LmjaxError(f"the ICL probe compares early and late positions: seq_len must be >= 32, got {seq_len}")
    losses = np.asarray(_position_losses(model, params, jnp.asarray(_windows(val_tokens, seq_len, batch, seed))))
    # losses[i] predicts token i + 1 from the i + 1 tokens before it
    early = losses[seq_len // 16 - 1: seq_len // 8 - 1].mean()
    late = losses[3 * seq_len // 4 - 1:].mean()
    return float(late - early)


def copy_gain(model, params, n: int, batch: int = 32, seed: int = 0,
              vocab_range: tuple[int, int] | None = None) -> float:
    """Loss on the first copy of r + r (r uniformly random, length n) minus loss on the second."""
    low, high = vocab_range or (0, model.cfg.vocab_size)
    losses = np.asarray(_position_losses(model, params, jnp.asarray(repeated_tokens(high, n, batch, None, seed, low))))
    # predicting tokens 1..n-1 of the first copy (context cannot help) vs n+1..2n-1 of the
    # second (token n, the repeat's first, is not predictable either)
    return float(losses[: n - 1].mean() - losses[n:].mean())


def emergence_probes(model, params, val_tokens, seq_len: int, *, batch: int = 32, seed: int = 0,
                     vocab_range: tuple[int, int] | None = None) -> dict:
    """{icl_score, induction_score, induction_head, copy_gain} of a trained model."""
    n = min(50, seq_len // 2)  # r + r fits the context (no BOS)
    scores = induction_score(model, params, n=n, batch=batch, bos=None, seed=seed, vocab_range=vocab_range)
    head, best = ranked(scores, top=1)[0] if scores else ("none", float("nan"))
    return {"icl_score": icl_score(model, params, val_tokens, seq_len, batch, seed),
            "induction_score": float(best), "induction_head": head,
            "copy_gain": copy_gain(model, params, n, batch, seed + 1, vocab_range)}
