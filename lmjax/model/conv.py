"""The gated causal convolution mixer (Dauphin et al. 2017, "Language Modeling with Gated
Convolutional Networks"): the classical CNN on text.

    [value, gate] = causal_conv(x) + bias     (kernel width conv_width, d_model -> 2 d_model)
    out = out_proj(value * sigmoid(gate))

A layer sees the last conv_width positions, so a stack of L layers sees L (conv_width - 1)
+ 1: a finite receptive field, which is what distinguishes it from the recurrent mixers.
Training computes all positions at once as one matmul over the stacked windows
([b, t, width * d] im2col: one large GEMM is what a CPU does best). Decoding carries the
last conv_width - 1 inputs and computes the same product for one window. In packed rows
(segment_ids) the window stops at its document's start.

Hook points (under blocks.{l}.mixer.): hook_value, hook_gate (before the sigmoid),
hook_post (value * sigmoid(gate)), all [b, t, d_model].
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from lmjax.model.config import ModelConfig
from lmjax.model.hooks import hook
from lmjax.model.layers import Dense
from lmjax.model.mixer_parts import causal_taps, causal_window, state_after


class GatedConv(nn.Module):
    cfg: ModelConfig
    name_prefix: str  # "blocks.{l}.mixer"

    @staticmethod
    def hook_suffixes(cfg: ModelConfig) -> list[str]:
        return ["hook_value", "hook_gate", "hook_post"]

    @staticmethod
    def init_state(cfg: ModelConfig, batch: int, dtype) -> dict:
        return {"conv": jnp.zeros((batch, cfg.conv_width - 1, cfg.d_model), dtype)}

    @nn.compact
    def __call__(self, x, hooks=None, layer_index=None, cache=None, lengths=None, segment_ids=None):
        cfg = self.cfg
        k, d, t = cfg.conv_width, cfg.d_model, x.shape[1]

        def point(name, value):
            return hook(self, hooks, f"{self.name_prefix}.{name}", value, layer_index)

        window = causal_window(x, None if cache is None else cache["conv"], k)
        stacked = jnp.stack(causal_taps(window, k, t, segment_ids), axis=2)  # [b, t, k, d]
        conv = Dense(cfg, (2, d), (None, "embed", None, "mlp"), cfg.init_std, True, n_in=2, name="conv")
        u = conv(stacked)  # [b, t, 2, d]
        value, gate = point("hook_value", u[:, :, 0]), point("hook_gate", u[:, :, 1])
        post = point("hook_post", value * nn.sigmoid(gate))
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        out = Dense(cfg, (d,), ("mlp", "embed"), out_std, cfg.use_bias, name="out_proj")(post)
        if cache is None:
            return out
        return out, {"conv": state_after(window, lengths, k).astype(cache["conv"].dtype)}
