"""The few weights analyses read directly: each head's W_O, the unembedding, the final norm.

Everything else in lmjax.interp goes through the hook API (run_with_cache / interventions);
these weights are needed where an activation has to be split further than any hook point
splits it (one head's write to the residual stream, z_h W_O[h]) or projected onto the
vocabulary (logit lens, direct logit attribution). Both parameter layouts are read:
unscanned (`blocks_{l}/...`) and scanned (`blocks/block/...`, layers on axis 0).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax.core import meta

from lmjax.errors import LmjaxError
from lmjax.model import hook_names

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def unbox(params):
    """Plain arrays, whether or not the tree still holds Flax partitioning boxes."""
    return meta.unbox(params)


def layer_params(params, layer: int):
    """The parameter subtree of one block, in either layout."""
    params = unbox(params)
    if f"blocks_{layer}" in params:
        return params[f"blocks_{layer}"]
    if "blocks" in params:  # scanned: every leaf stacked over layers
        return jax.tree.map(lambda x: x[layer], params["blocks"]["block"])
    raise LmjaxError(f"no parameters for layer {layer} (keys: {sorted(params)})")


def w_o(params, layer: int):
    """(W_O [head, d_head, d_model], b_O [d_model] or None) of an attention layer."""
    o = layer_params(params, layer)["attn"]["o"]
    return o["kernel"], o.get("bias")


def w_u(model, params):
    """The unembedding [d_model, vocab] (the embedding transposed when tied)."""
    params = unbox(params)
    if model.cfg.tie_embeddings:
        return params["embed"].T
    return params["unembed"]


def final_norm(model, params, x, scale=None):
    """The model's final norm applied to residual-stream vectors x [..., d_model].

    Same arithmetic as lmjax.model.layers.Norm (statistics in float32). With `scale` (the
    cached `ln_final.hook_scale`) the divisor is taken from the run instead of recomputed,
    which makes the map linear in x: what direct logit attribution needs.
    """
    cfg = model.cfg
    p = unbox(params)["ln_final"]
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        x32 = x32 - x32.mean(-1, keepdims=True)
    if scale is None:
        scale = jnp.sqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
    y = x32 / scale * p["scale"].astype(jnp.float32)
    if "bias" in p:
        y = y + p["bias"].astype(jnp.float32)
    return y


def unembed(model, params, normalized):
    """Final-normalised residual [..., d_model] -> logits [..., vocab] (float32)."""
    return normalized.astype(jnp.float32) @ w_u(model, params).astype(jnp.float32)


def n_layers(model) -> int:
    return model.cfg.n_layer


def names_of(model) -> set[str]:
    return set(hook_names(model.cfg))


def layer_point(model, layer: int, suffix: str) -> str | None:
    """`blocks.{layer}.{suffix}` if this model names it, else None (e.g. attn in a Mamba layer)."""
    name = f"blocks.{layer}.{suffix}"
    return name if name in names_of(model) else None


def mixer_out(model, layer: int) -> str:
    """The point where a layer's sequence mixer writes to the residual stream: attention's
    `hook_attn_out`, or `hook_mixer_out` for Mamba / recurrent / convolutional mixers."""
    return layer_point(model, layer, "hook_attn_out") or layer_point(model, layer, "hook_mixer_out")


def is_attention(model, layer: int) -> bool:
    return layer_point(model, layer, "attn.hook_pattern") is not None


def residual_points(model) -> list[tuple[str, str]]:
    """(label, hook name) of the residual stream: before layer 0, then after each layer."""
    out = [("embed", "blocks.0.hook_resid_pre")]
    out += [(f"L{l}", f"blocks.{l}.hook_resid_post") for l in range(model.cfg.n_layer)]
    return out
