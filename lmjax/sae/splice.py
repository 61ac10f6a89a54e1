"""A dictionary as a hook intervention: splice its reconstruction into the model.

At the dictionary's output hook the activation y becomes

    y_hat(edit(f)) + [y - y_hat(f)]            f = encode(x at the input hook)

where the bracket is the error term (kept with `error=True`, so an unedited splice
reproduces the model), and `edit` clamps features to values (`clamp={i: v}`), ablates
them (`ablate=[i, ...]`: clamp to 0), or scales them. Steering adds a feature's decoder
direction (model units) to the output hook instead: `steer={i: alpha}`.

For an SAE the input and output hooks coincide: one pass. A transcoder reads an earlier
hook, so `spliced_run` first caches the input hooks (everything upstream of the first
output hook is unchanged by the splice), then runs again with the interventions; with
several dictionaries on several layers it repeats that in layer order, so each dictionary
reads its input from the already-spliced model.

`SplicedModel(model, splices)` wraps a model so that every analysis written against the
hook API (`lmjax.interp`: lens, DLA, patching, ablations, ...) runs on the spliced model.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from lmjax.errors import LmjaxError


@dataclasses.dataclass(frozen=True, eq=False)
class Splice:
    """One dictionary spliced in: its parameters, whether the error term stays, and edits."""

    dictionary: object
    params: dict
    error: bool = False
    clamp: Optional[Mapping[int, float]] = None  # feature -> value (scaled space)
    ablate: Sequence[int] = ()
    steer: Optional[Mapping[int, float]] = None  # feature -> coefficient on its decoder direction (model units)
    positions: Optional[Sequence[int]] = None  # edits and steering only at these positions (None: all)

    def __post_init__(self):
        width = self.dictionary.width
        for i in list(self.clamp or {}) + list(self.ablate) + list(self.steer or {}):
            if not 0 <= int(i) < width:
                raise LmjaxError(f"feature {i} does not exist: the dictionary has {width} features (0..{width - 1})")

    @property
    def edits(self) -> bool:
        return bool(self.clamp) or bool(self.ablate)

    def _position_mask(self, shape):
        if self.positions is None:
            return jnp.ones(shape[:-1] + (1,), bool)
        mask = jnp.zeros(shape[1], bool).at[jnp.asarray(self.positions)].set(True)
        return jnp.broadcast_to(mask[None, :, None], shape[:2] + (1,))

    def output(self, y, x):
        """The new activation at the output hook, given the true one y and the input x
        (both [batch, pos, d] in model units)."""
        d, p = self.dictionary, self.params
        shape_out = y.shape
        xs = x.reshape(x.shape[:2] + (-1,)) * d.input_scale
        f = d.encode(p, xs)
        recon = d.decode(p, f, xs) / d.output_scale
        new = recon
        if self.edits:
            g = f
            if self.clamp:
                idx = jnp.asarray(list(self.clamp), jnp.int32)
                g = g.at[..., idx].set(jnp.asarray(list(self.clamp.values()), g.dtype))
            if self.ablate:
                g = g.at[..., jnp.asarray(list(self.ablate), jnp.int32)].set(0.0)
            edited = d.decode(p, g, xs) / d.output_scale
            new = jnp.where(self._position_mask(f.shape), edited, recon)
        y_flat = y.reshape(y.shape[:2] + (-1,))
        if self.error:  # y + (new - recon): unedited, exactly y (new is recon, the difference 0)
            new = y_flat + (new - recon)
        if self.steer:
            idx = jnp.asarray(list(self.steer), jnp.int32)
            coef = jnp.asarray(list(self.steer.values()), jnp.float32)
            direction = (coef[:, None] * p["W_dec"][idx]).sum(0) / d.output_scale
            new = new + jnp.where(self._position_mask(f.shape), direction, 0.0)
        return new.reshape(shape_out).astype(y.dtype)


def _apply_splice(y, payload):
    splice, x = payload
    return splice.output(y, x)


def _replace(y, payload):
    return payload.astype(y.dtype)


def spliced_run(model, params, tokens, splices: Sequence[Splice], names=(), positions=None, interventions=None):
    """-> (logits, cache of `names`) of the model with every splice applied (and the user's
    own `interventions` too, upstream or elsewhere). Each output hook's new value is computed
    from the input hook of the model spliced so far, in forward order."""
    order = _forward_order(model)
    splices = sorted(splices, key=lambda s: order[_outputs(s.dictionary)[0]])
    outs = [h for s in splices for h in _outputs(s.dictionary)]
    if len(set(outs)) != len(outs):
        raise LmjaxError(f"two dictionaries write the same hook point: {outs}")
    clash = sorted(set(outs) & set(interventions or {}))
    if clash:
        raise LmjaxError(f"an intervention and a dictionary both change {clash}; splice or intervene, not both")
    fixed = dict(interventions or {})
    for s in splices:
        d = s.dictionary
        if hasattr(d, "hooks_out"):
            _splice_crosslayer(model, params, tokens, s, positions, fixed)
            continue
        if d.hook_in == d.hook_out:
            fixed[d.hook_out] = (_apply_splice_same, s)
            continue
        _, cache = model.run_with_cache(params, tokens, (d.hook_in,), positions, fixed)
        y_new = s.output(_true_output(model, params, tokens, d.hook_out, positions, fixed), cache[d.hook_in])
        fixed[d.hook_out] = (_replace, y_new)
    return model.run_with_cache(params, tokens, tuple(names), positions, fixed)


def _outputs(dictionary) -> tuple:
    return tuple(dictionary.hooks_out) if hasattr(dictionary, "hooks_out") else (dictionary.hook_out,)


def _splice_crosslayer(model, params, tokens, s: Splice, positions, fixed: dict) -> None:
    """Replace each layer's output by the cross-layer transcoder's, layer by layer: layer t's
    features read the model spliced below t (one pass per layer). Edits and steering are
    for single-layer dictionaries; here only `error` applies."""
    if s.edits or s.steer:
        raise LmjaxError("clamping, ablating and steering apply to single-layer dictionaries; "
                         "a cross-layer transcoder splices with or without its error term only")
    d, p = s.dictionary, s.params
    features = []
    for t in range(d.n_layers):
        names = (d.hooks_in[t], d.hooks_out[t])
        _, cache = model.run_with_cache(params, tokens, names, positions, fixed)
        x = cache[d.hooks_in[t]]
        x = x.reshape(x.shape[:2] + (-1,)) * d.input_scales[t]
        pre = jnp.einsum("...d,dw->...w", x, p["W_enc"][t]) + p["b_enc"][t]
        sub = {"threshold": p["threshold"][t]} if "threshold" in p else {}
        features.append(d.layer.activate(sub, pre)[0])
        recon = p["b_dec"][t] + sum(features[l] @ p["W_dec"][l][:, t - l] for l in range(t + 1))
        recon = recon / d.output_scales[t]
        y = cache[d.hooks_out[t]]
        # With its error term (true output minus reconstruction) the replacement gives back y itself.
        new = y if s.error else recon.reshape(y.shape)
        fixed[d.hooks_out[t]] = (_replace, new.astype(y.dtype))


def _apply_splice_same(y, splice):
    return splice.output(y, y)


def _true_output(model, params, tokens, name, positions, interventions):
    return model.run_with_cache(params, tokens, (name,), positions, interventions)[1][name]


def _forward_order(model) -> dict:
    from lmjax.model import hook_names  # local: only the order of names is needed here
    return {n: i for i, n in enumerate(hook_names(model.cfg))}


jax.tree_util.register_pytree_node(Splice, lambda s: ((s.params,), (s.dictionary, s.error, _freeze(s.clamp),
                                                                        tuple(s.ablate), _freeze(s.steer),
                                                                        None if s.positions is None else tuple(s.positions))),
                                   lambda aux, ch: Splice(aux[0], ch[0], aux[1], dict(aux[2]) if aux[2] else None,
                                                          aux[3], dict(aux[4]) if aux[4] else None, aux[5]))


def _freeze(m):
    return tuple(sorted((int(k), float(v)) for k, v in m.items())) if m else None


class SplicedModel:
    """`model` with dictionaries spliced in, behind the same hook API (run_with_cache,
    run_with_hooks, check_hook_names, cfg, ...), so `lmjax.interp` analyses run on it."""

    def __init__(self, model, splices: Sequence[Splice]):
        self.model, self.splices = model, tuple(splices)
        for s in self.splices:
            model.check_hook_names((s.dictionary.hook_in, s.dictionary.hook_out))

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def run_with_cache(self, params, tokens, names, positions=None, interventions=None):
        self.model.check_hook_names(tuple(names), interventions)
        return spliced_run(self.model, params, tokens, self.splices, names, positions, interventions)

    def run_with_hooks(self, params, tokens, interventions, positions=None):
        return self.run_with_cache(params, tokens, (), positions, interventions)[0]

    def apply(self, variables, tokens, positions=None, hooks=None, **kwargs):
        if hooks is None and not kwargs:
            return self.run_with_hooks(variables["params"], tokens, {}, positions)
        raise LmjaxError("a SplicedModel runs through its hook API (run_with_cache / run_with_hooks), not apply(...)")
