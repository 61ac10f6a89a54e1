"""What the non-attention mixers share: causal windows over time (cut at document starts
in packed rows), the state after ragged prompts, and whether a hook point is asked for
(lmjax/model/mixers.py has the interface)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.model.segments import segment_positions


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


def causal_taps(window, width: int, t: int, segment_ids=None) -> list:
    """The width inputs each position's causal window reads, oldest first: width arrays
    [b, t, c] sliced from `window` (`causal_window`). With `segment_ids` [b, t] a tap that
    reaches back before its position's document start reads zeros, as at a row's start."""
    taps = [window[:, j:j + t] for j in range(width)]
    if segment_ids is None:
        return taps
    inside = segment_positions(segment_ids)  # tap j reaches back width - 1 - j positions
    return [jnp.where((inside >= width - 1 - j)[..., None], tap, 0) for j, tap in enumerate(taps)]


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
