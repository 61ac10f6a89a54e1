"""Sequence mixers other than attention, behind one interface, and what they share.

A block is norm -> mixer -> residual add (-> norm -> MLP -> residual add). Every mixer is a
Flax module `Mixer(cfg, name_prefix)` called as

    mixer(x [b, t, d_model], hooks, layer_index, cache=None, lengths=None)
        -> out [b, t, d_model], or (out, cache) when given a cache

where `cache` is the mixer's recurrent decoding state (`init_state`) after the tokens
before x. With a cache, the tokens of each row after `lengths[row]` are right padding
(the sampler's ragged prompts): they must not advance the state. Each mixer also says
which hook points it names (`hook_suffixes`, under `blocks.{l}.mixer.`), in forward order.

The mixers: `mamba` (lmjax/model/mamba.py), `lstm` and `gru` (recurrent.py), `conv`
(conv.py). Attention keeps its own module (attention.py) and a key/value cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mixer_class(kind: str):
    """The module class of a non-attention mixer."""
    from lmjax.model.conv import GatedConv
    from lmjax.model.mamba import Mamba
    from lmjax.model.recurrent import GRU, LSTM

    return {"mamba": Mamba, "lstm": LSTM, "gru": GRU, "conv": GatedConv}[kind]


def is_hooked(hooks, name: str) -> bool:
    """Whether the hook point `name` is cached or intervened on (for activations that are
    only materialised when someone asks, such as Mamba's state)."""
    if hooks is None:
        return False
    return name in hooks.names or hooks.wants_cache(name) or bool(hooks.layer_interventions(name))


def causal_window(x, state, width: int):
    """[state; x] along time: [b, width - 1 + t, c]. `state` holds the width - 1 inputs
    before x (None: the start of the sequence, zeros)."""
    if state is None:
        state = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
    return jnp.concatenate([state.astype(x.dtype), x], axis=1)


def state_after(window, lengths, width: int):
    """The width - 1 inputs before the next token: the last ones of `window`, or, per row,
    the ones before position lengths[row] when the rest of the row is padding."""
    if width == 1:
        return window[:, :0]
    if lengths is None:
        return window[:, window.shape[1] - (width - 1):]
    take = lambda row, n: jax.lax.dynamic_slice_in_dim(row, n, width - 1, axis=0)
    return jax.vmap(take)(window, lengths)


def valid_mask(lengths, t: int):
    """[b, t] True where a position holds a real token (None: all of them)."""
    if lengths is None:
        return None
    return jnp.arange(t)[None, :] < lengths[:, None]
