"""Text generation from a trained model.

This is the simple sampler: one compiled forward pass over a fixed window per new token
(the context slides once it is full). It compiles once per (model, window) and needs no
cache, so it is the reference that a KV-cached sampler must reproduce.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.model import Transformer


@functools.partial(jax.jit, static_argnums=(0,))
def _next_token(model: Transformer, params, window, length, key, temperature):
    logits = model.apply({"params": params}, window)[0, length - 1]
    greedy = jnp.argmax(logits)
    sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled, greedy)


def sample_tokens(model: Transformer, params, prompt: list[int], max_new_tokens: int, *,
                  temperature: float = 1.0, seed: int = 0) -> list[int]:
    """Continue `prompt` (token ids) by `max_new_tokens`; temperature 0 is greedy."""
    if not prompt:
        raise ValueError("prompt is empty: give at least one token (e.g. the tokenizer's BOS)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    vocab, window_len = model.cfg.vocab_size, model.cfg.max_len
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    tokens = list(prompt)
    key = jax.random.key(seed)
    for i in range(max_new_tokens):
        context = tokens[-window_len:]
        window = np.zeros((1, window_len), np.int32)
        window[0, : len(context)] = context
        token = _next_token(model, params, jnp.asarray(window), len(context), jax.random.fold_in(key, i),
                            jnp.float32(temperature))
        tokens.append(int(token))
    return tokens[len(prompt):]


def sample_text(model: Transformer, params, tokenizer, prompt: str, max_new_tokens: int, *,
                temperature: float = 1.0, seed: int = 0) -> str:
    """Continue a text prompt; an empty prompt starts from the tokenizer's BOS."""
    ids = tokenizer.encode(prompt)
    if not ids:
        if tokenizer.bos_id is None:
            raise ValueError("empty prompt and the tokenizer has no BOS token to start from")
        ids = [tokenizer.bos_id]
    out = sample_tokens(model, params, ids, max_new_tokens, temperature=temperature, seed=seed)
    return tokenizer.decode(out)
