"""Neurons and directions: what excites them, and what adding them does.

- `top_activating`: the dataset positions where a unit (one index of a hook point, e.g. an
  MLP neuron in `blocks.3.mlp.hook_post`) or a direction (a vector dotted with the
  activation, e.g. a probe's weight in the residual stream) is largest, with their context.
  Batches run through one compiled function; only a running top-k is kept on the host.
- `steer`: the logits with `scale * direction` added at a hook point (activation
  steering / "activation addition", Turner et al. 2023), and `steered_generate`, greedy
  or sampled continuation under the same intervention.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lmjax.errors import LmjaxError
from lmjax.interp import compiling


@dataclasses.dataclass
class Example:
    value: float
    row: int
    position: int
    context: list[int]  # token ids up to and including the position (at most `context` of them)
    text: str | None = None  # decoded context, when a tokenizer was given


@compiling.jit(static_argnames=("model", "hook"))
def _scores(model, params, tokens, hook, direction):
    _, cache = model.run_with_cache(params, tokens, [hook])
    act = cache[hook].astype(jnp.float32)
    return act.reshape(*act.shape[:2], -1) @ direction.reshape(-1)  # [b, t]


def activations_along(model, params, tokens, hook: str, neuron=None, direction=None, batch_size: int = 32):
    """[N, T] the unit `neuron` (an index into the activation's non-batch/position axes, an
    int or a tuple) or the projection onto `direction` (same shape as those axes)."""
    tokens = np.asarray(tokens)
    probe = jax.eval_shape(lambda p, t: model.run_with_cache(p, t, [hook])[1], params, jnp.asarray(tokens[:1, :2]))
    unit_shape = probe[hook].shape[2:]  # shapes only: traced, never run
    if direction is None:
        if neuron is None:
            raise LmjaxError("give a neuron index or a direction")
        direction = np.zeros(unit_shape, np.float32)
        direction[neuron] = 1.0
    direction = jnp.asarray(direction, jnp.float32).reshape(unit_shape)
    out = []
    for start in tqdm(range(0, len(tokens), batch_size), desc=f"scan {hook}", leave=False,
                      disable=len(tokens) <= batch_size):
        chunk = tokens[start:start + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape for every chunk
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad and len(tokens) > batch_size else chunk
        out.append(np.asarray(_scores(model, params, jnp.asarray(chunk), hook, direction))[: batch_size - pad or None])
    return np.concatenate(out)


def top_activating(model, params, tokens, hook: str, neuron=None, direction=None, k: int = 10,
                   context: int = 16, tokenizer=None, batch_size: int = 32) -> list[Example]:
    """The k (row, position)s of `tokens` [N, T] with the largest activation, largest first."""
    tokens = np.asarray(tokens)
    values = activations_along(model, params, tokens, hook, neuron, direction, batch_size)
    flat = np.argsort(-values, axis=None)[:k]
    out = []
    for i in flat:
        row, pos = np.unravel_index(i, values.shape)
        ids = tokens[row, max(0, pos - context + 1): pos + 1].tolist()
        out.append(Example(float(values[row, pos]), int(row), int(pos), ids,
                           tokenizer.decode(ids) if tokenizer is not None else None))
    return out


def _add_scaled(x, payload):
    direction, scale, mask = payload
    return x + (scale * mask[None, :, None] * direction).astype(x.dtype)


@compiling.jit(static_argnames=("model", "hook"))
def _steered_logits(model, params, tokens, hook, direction, scale, mask):
    return model.run_with_hooks(params, tokens, {hook: (_add_scaled, (direction, scale, mask))})


def steer(model, params, tokens, hook: str, direction, scale: float, positions=None):
    """Logits with scale * direction [d] added at `hook` (a residual-stream-shaped point)
    at `positions` (None = all)."""
    tokens = jnp.asarray(tokens)
    mask = np.zeros(tokens.shape[1], np.float32)
    mask[slice(None) if positions is None else np.asarray(positions)] = 1.0
    return _steered_logits(model, params, tokens, hook, jnp.asarray(direction, jnp.float32),
                           jnp.float32(scale), jnp.asarray(mask))


def steered_generate(model, params, prompt: list[int], hook: str, direction, scale: float,
                     max_new_tokens: int = 20, temperature: float = 0.0, seed: int = 0) -> list[int]:
    """Continue `prompt` under the steering intervention at every position.

    Re-runs the padded window each step (one compiled shape, no KV cache): meant for short
    inspections, not fast decoding (lmjax.sample is the fast path without interventions).
    """
    length = min(len(prompt) + max_new_tokens, model.cfg.max_len)
    ids = np.zeros((1, length), np.int32)
    ids[0, :len(prompt)] = prompt
    rng = np.random.RandomState(seed)
    for cur in range(len(prompt), length):
        logits = np.asarray(steer(model, params, ids, hook, direction, scale)[0, cur - 1], np.float64)
        if temperature <= 0:
            nxt = int(np.argmax(logits))
        else:
            p = np.exp((logits - logits.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        ids[0, cur] = nxt
    return ids[0, len(prompt):].tolist()
