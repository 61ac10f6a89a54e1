"""Sequence mixers other than attention, behind one interface, and what they share.

A block is norm -> mixer -> residual add (-> norm -> MLP -> residual add). Every mixer is a
Flax module `Mixer(cfg, name_prefix)` called as

    mixer(x [b, t, d_model], hooks, layer_index, cache=None, lengths=None, segment_ids=None)
        -> out [b, t, d_model], or (out, cache) when given a cache

where `cache` is the mixer's recurrent decoding state (`init_state`) after the tokens
before x. With a cache, the tokens of each row after `lengths[row]` are right padding
(the sampler's ragged prompts): they must not advance the state. With `segment_ids` [b, t]
(packed documents, no cache) the state restarts at each document's first token. Each mixer also says
which hook points it names (`hook_suffixes`, under `blocks.{l}.mixer.`), in forward order.

The mixers: `mamba` (lmjax/model/mamba.py), `lstm` and `gru` (recurrent.py), `conv`
(conv.py); what they share lives in mixer_parts.py. Attention keeps its own module
(attention.py) and a key/value cache.
"""
from __future__ import annotations

from lmjax.model.conv import GatedConv
from lmjax.model.mamba import Mamba
from lmjax.model.recurrent import GRU, LSTM

MIXERS = {"mamba": Mamba, "lstm": LSTM, "gru": GRU, "conv": GatedConv}


def mixer_class(kind: str):
    """The module class of a non-attention mixer."""
    return MIXERS[kind]
