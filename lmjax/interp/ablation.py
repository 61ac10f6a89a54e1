"""Ablations: replace parts of the model's computation and measure the metric before/after.

What can be ablated (each through its hook point, so it works for every mixer):
heads (`attn.hook_z`, per head), neurons (`mlp.hook_post`, per unit), MLPs
(`hook_mlp_out`), mixers (`hook_attn_out` / `hook_mixer_out`), and whole layers (the
mixer's and the MLP's writes together). How:

- zero: the activation becomes 0 (simple, but may push the model off-distribution);
- mean: its mean over a reference batch, over rows and positions (the "typical" value);
- resample: the activation of a random reference row at the same position (keeps the
  distribution, removes the information; the reference needs the same length).

`head_ablation_effects` runs every single-head ablation (and, if asked, every single
non-attention mixer's) in one vmapped call.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, weights
from lmjax.interp.metrics import as_metric, run_metric

METHODS = ("zero", "mean", "resample")


@dataclasses.dataclass
class Ablation:
    before: float
    after: float
    method: str
    what: dict

    @property
    def change(self) -> float:
        return self.after - self.before


def _mask_replace(x, payload):
    """Units where mask = 1 take the replacement value."""
    replacement, mask = payload
    return jnp.where(mask > 0, replacement.astype(x.dtype), x)


def _targets(model, heads=(), neurons=(), mlps=(), mixers=(), layers=()):
    """{hook name: unit mask over the activation's last axes} for the ablation request."""
    cfg = model.cfg
    out = {}

    def need(layer, suffix):
        name = weights.layer_point(model, layer, suffix)
        if name is None:
            raise LmjaxError(f"layer {layer} has no {suffix} to ablate")
        return name

    for l, h in heads:
        name = need(l, "attn.hook_z")
        out.setdefault(name, np.zeros((cfg.n_head, 1), np.float32))[h] = 1
    for l, i in neurons:
        name = need(l, "mlp.hook_post")
        out.setdefault(name, np.zeros(cfg.mlp_dim, np.float32))[i] = 1
    for l in list(mlps) + [l for l in layers if weights.layer_point(model, l, "hook_mlp_out")]:
        out[need(l, "hook_mlp_out")] = np.ones(1, np.float32)
    for l in list(mixers) + list(layers):
        name = weights.mixer_out(model, l)
        if name is None:
            raise LmjaxError(f"layer {l} has no mixer output to ablate")
        out[name] = np.ones(1, np.float32)
    return out


def _replacements(model, params, names, tokens, method, reference, key):
    """{name: value broadcastable to the activation} for zero / mean / resample."""
    if method == "zero":
        return {n: jnp.zeros(()) for n in names}
    if reference is None:
        raise LmjaxError(f"{method} ablation needs reference tokens")
    _, cache = compiling.run_with_cache(model, params, reference, names)
    if method == "mean":
        return {n: cache[n].mean(axis=(0, 1), keepdims=True) for n in names}
    b = tokens.shape[0]
    rows = jax.random.randint(key, (b,), 0, reference.shape[0])
    if reference.shape[1] != tokens.shape[1]:
        raise LmjaxError("resample ablation needs reference rows as long as the tokens")
    return {n: cache[n][rows] for n in names}


@compiling.jit(static_argnames=("model",))
def _run(model, params, tokens, metric, interventions):
    return run_metric(model, params, tokens, metric), run_metric(model, params, tokens, metric, {
        n: (_mask_replace, payload) for n, payload in interventions.items()})


def ablate(model, params, tokens, metric, *, heads=(), neurons=(), mlps=(), mixers=(), layers=(),
           method: str = "zero", reference=None, seed: int = 0) -> Ablation:
    """The metric before and after ablating the given units together.

    heads: [(layer, head)]; neurons: [(layer, index)]; mlps / mixers / layers: [layer].
    """
    if method not in METHODS:
        raise LmjaxError(f"method must be one of {METHODS}, got {method!r}")
    tokens = jnp.asarray(tokens)
    masks = _targets(model, heads, neurons, mlps, mixers, layers)
    values = _replacements(model, params, masks, tokens, method, reference, jax.random.key(seed))
    interventions = {n: (values[n], jnp.asarray(m)) for n, m in masks.items()}
    before, after = _run(model, params, tokens, as_metric(metric), interventions)
    what = dict(heads=list(heads), neurons=list(neurons), mlps=list(mlps), mixers=list(mixers), layers=list(layers))
    return Ablation(float(before), float(after), method, what)


@compiling.jit(static_argnames=("model", "layers", "mixers"))
def _unit_effects(model, params, tokens, metric, layers, mixers):
    """Metric after zero-ablating each unit alone: every head of the attention `layers`,
    then the whole mixer output of each of `mixers`; cells are one-hots, lax.map-ed."""
    n_head, n_heads = model.cfg.n_head, len(layers) * model.cfg.n_head
    zero = jnp.zeros(())

    def one(cell):  # [n_heads + len(mixers)] one-hot
        interventions = {f"blocks.{l}.attn.hook_z": (_mask_replace, (zero, cell[i * n_head:(i + 1) * n_head, None]))
                         for i, l in enumerate(layers)}
        interventions.update({weights.mixer_out(model, l): (_mask_replace, (zero, cell[n_heads + j, None]))
                              for j, l in enumerate(mixers)})
        return run_metric(model, params, tokens, metric, interventions)

    cells = jnp.eye(n_heads + len(mixers))
    after = jax.lax.map(one, cells, batch_size=min(16, cells.shape[0]))
    return run_metric(model, params, tokens, metric), after


def head_ablation_effects(model, params, tokens, metric, include_mixers: bool = False
                          ) -> tuple[float, dict[int, np.ndarray]]:
    """(metric before, {layer: [head] metric after zero-ablating that head alone}), one call.

    With `include_mixers`, each non-attention layer (Mamba, LSTM, ...) counts as one "head"
    too: {layer: [metric after zero-ablating its whole mixer output]} (a Mamba layer's
    implicit attention is likewise one pattern, lmjax.interp.heads.patterns)."""
    n_layer = model.cfg.n_layer
    layers = tuple(l for l in range(n_layer) if weights.layer_point(model, l, "attn.hook_z"))
    mixers = tuple(l for l in range(n_layer) if include_mixers and l not in layers)
    if not layers and not mixers:
        return float("nan"), {}
    before, after = _unit_effects(model, params, jnp.asarray(tokens), as_metric(metric), layers, mixers)
    after, n_head = np.asarray(after), model.cfg.n_head
    out = {l: after[i * n_head:(i + 1) * n_head] for i, l in enumerate(layers)}
    out.update({l: after[len(layers) * n_head + j:][:1] for j, l in enumerate(mixers)})
    return float(before), dict(sorted(out.items()))
