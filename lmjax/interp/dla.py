"""Direct logit attribution: how much each component's write to the residual stream pushes
one logit (or a logit difference) up or down.

The final residual stream is a sum of writes: the token (and position) embedding, each
attention head's z_h W_O[h] (+ the output bias), each MLP, each other mixer. With the final
norm's divisor taken from the run (`ln_final.hook_scale`), the norm is linear, so the
logit of a direction u (a column of W_U, or the difference of two) is

    sum_c ((x_c - mean x_c) / sigma) . (gamma * u)  +  beta . u

exactly: the components sum to the logit difference (tested to 1e-4). "Direct" means the
path through later layers is ignored: a head whose output a later head reads gets no
credit for that here (activation patching measures the total effect).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lmjax.interp import compiling, weights


@dataclasses.dataclass
class DLA:
    """Attributions at one position per batch row."""

    labels: list[str]  # C component labels: "embed", "pos_embed", "L0H3", "L0 attn bias", "L0 mlp", ...
    values: np.ndarray  # [C, b] contribution of each component to the logit (difference)
    constant: np.ndarray  # [b] the final norm's bias . u (no component owns it)
    logit_diff: np.ndarray  # [b] the model's own logit (difference)

    @property
    def total(self) -> np.ndarray:
        return self.values.sum(0) + self.constant

    def ranked(self, row: int = 0, top: int | None = None):
        """[(label, value)] by |value|, largest first."""
        order = np.argsort(-np.abs(self.values[:, row]))[:top]
        return [(self.labels[i], float(self.values[i, row])) for i in order]


def _component_plan(model):
    """(label, hook name, kind) for every component, in forward order."""
    plan = [("embed", "hook_embed", "whole")]
    if "hook_pos_embed" in weights.names_of(model):
        plan.append(("pos_embed", "hook_pos_embed", "whole"))
    for l in range(model.cfg.n_layer):
        z = weights.layer_point(model, l, "attn.hook_z")
        if z is not None:
            plan.append((f"L{l}", z, "heads"))
        else:
            plan.append((f"L{l} mixer", weights.mixer_out(model, l), "whole"))
        mlp = weights.layer_point(model, l, "hook_mlp_out")
        if mlp is not None:
            plan.append((f"L{l} mlp", mlp, "whole"))
    return plan


def component_labels(model) -> list[str]:
    labels = []
    for label, _, kind in _component_plan(model):
        if kind == "heads":
            labels += [f"{label}H{h}" for h in range(model.cfg.n_head)]
            if model.cfg.use_bias:
                labels.append(f"{label} attn bias")
        else:
            labels.append(label)
    return labels


@compiling.jit(static_argnames=("model",))
def components(model, params, tokens):
    """-> (writes [C, b, t, d_model] in component_labels order, final norm divisor [b, t, 1],
    the final residual stream [b, t, d_model], logits)."""
    plan = _component_plan(model)
    last = f"blocks.{model.cfg.n_layer - 1}.hook_resid_post"
    names = sorted({n for _, n, _ in plan} | {"ln_final.hook_scale", last})
    logits, cache = model.run_with_cache(params, tokens, names)
    parts = []
    for _, name, kind in plan:
        if kind == "heads":
            layer = int(name.split(".")[1])
            w, b = weights.w_o(params, layer)
            per_head = jnp.einsum("bthd,hdm->hbtm", cache[name].astype(jnp.float32), w.astype(jnp.float32))
            parts += list(per_head)
            if model.cfg.use_bias:
                parts.append(jnp.broadcast_to(b.astype(jnp.float32), per_head.shape[1:]))
        else:
            parts.append(cache[name].astype(jnp.float32))
    return jnp.stack(parts), cache["ln_final.hook_scale"], cache[last], logits


def logit_direction(model, params, target, contrast=None):
    """u = W_U[:, target] (- W_U[:, contrast]); target/contrast: ints or [b] arrays -> [b?, d]."""
    w = weights.w_u(model, params).astype(jnp.float32)
    u = w[:, jnp.asarray(target)].T
    if contrast is not None:
        u = u - w[:, jnp.asarray(contrast)].T
    return u


@compiling.jit(static_argnames=("model",))
def _dla(model, params, tokens, target, contrast, position):
    parts, scale, _, logits = components(model, params, tokens)
    b = tokens.shape[0]
    rows = jnp.arange(b)
    pos = jnp.broadcast_to(position, (b,))
    x = parts[:, rows, pos]  # [C, b, d]
    if model.cfg.norm == "layernorm":
        x = x - x.mean(-1, keepdims=True)
    x = x / scale[rows, pos][None]  # [b, 1] divisor
    ln = weights.unbox(params)["ln_final"]
    u = jnp.broadcast_to(logit_direction(model, params, target, contrast), (b, x.shape[-1]))
    values = jnp.einsum("cbd,bd->cb", x, u * ln["scale"].astype(jnp.float32))
    const = u @ ln["bias"].astype(jnp.float32) if "bias" in ln else jnp.zeros(b)
    own = logits[rows, pos, jnp.broadcast_to(target, (b,))]
    if contrast is not None:
        own = own - logits[rows, pos, jnp.broadcast_to(contrast, (b,))]
    return values, const, own


def direct_logit_attribution(model, params, tokens, target, contrast=None, position=-1) -> DLA:
    """DLA of logit[target] (- logit[contrast]) at `position` (int or [b]) of each row.

    Every write to the residual stream is a component (heads split by W_O); the values
    plus `constant` sum to the model's logit (difference).
    """
    tokens = jnp.asarray(tokens)
    position = jnp.asarray(position) % tokens.shape[1]
    values, const, own = _dla(model, params, tokens, jnp.asarray(target),
                              None if contrast is None else jnp.asarray(contrast), position)
    return DLA(component_labels(model), np.asarray(values), np.asarray(const), np.asarray(own))
