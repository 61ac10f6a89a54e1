"""Interventions that test an attribution graph: change features, compare the model's
response with what the graph predicts.

A feature node (layer, position, feature) is ablated (its activation a -> 0), clamped
(a -> a value, e.g. a multiple of a) or steered (a -> a + alpha). Its change da is written
as da x its decoder rows into the MLP outputs it writes (a per-layer transcoder: its own
layer's hook_mlp_out; a cross-layer one: every layer from its own on), on top of what the
MLP itself outputs, so with no change the model is exactly itself (the transcoder's error
stays in). Two runs follow:

- the real effect: the model itself with those writes added, everything else free
  (attention re-routes, later MLPs respond through their real weights). An ablated or
  clamped feature is held at its value: its da is taken against its activation in the
  intervened run itself (later layers see the earlier interventions), as in
  circuit-tracer's feature_intervention;
- the graph's prediction: the frozen replacement (lmjax.graph.replacement: attention
  patterns and norms fixed at the prompt's values) linearised at the prompt, where later
  features respond by their activation's derivative times the change of their
  pre-activation. From a Graph this is the propagation of da along its edges
  (`predicted`; `predicted_direct` keeps only the edges from the intervened features to
  the logit); from the frozen replacement itself it is the same number computed by
  running it (`linear`), and equals `predicted` when the graph holds every active feature.

The target is a demeaned logit at the last position (logit minus the mean over the
vocabulary), as in the graph. A supernode is a group of features changed together:
`Interventions.each(groups, ...)` gives one Effect per group.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.graph.attribution import Graph
from lmjax.graph.replacement import Replacement, Transcoders, build_replacement
from lmjax.graph.replacement import linear as replacement_linear

EDITS = ("ablate", "clamp", "steer")


@dataclasses.dataclass(frozen=True)
class Effect:
    """What one intervention did to the target's demeaned logit, and what was predicted."""

    target: int  # the token whose logit at the last position is measured
    before: float  # demeaned logit, unintervened
    after: float  # demeaned logit, the real model intervened
    predicted: Optional[float]  # the graph's linear prediction of the change (None: a feature is not a node)
    predicted_direct: Optional[float]  # its direct edges into the logit alone
    linear: float  # the linearised frozen replacement's change, computed by running it
    top_changes: tuple  # ((token, p_before, p_after), ...) by |change of next-token probability|

    @property
    def change(self) -> float:
        return self.after - self.before


def features_of(features) -> np.ndarray:
    """[n, 3] int64 (layer, position, feature) from an [n, 3] array-like or from a list of
    groups of them (a supernode's members, joined)."""
    if not len(features):
        return np.zeros((0, 3), np.int64)
    if isinstance(features, (np.ndarray, jax.Array)) or np.ndim(features[0]) == 1:
        out = np.asarray(features)
    else:
        out = np.concatenate([np.asarray(g).reshape(-1, 3) for g in features])
    out = out.reshape(-1, 3) if out.ndim == 3 and out.shape[-1] == 3 else out
    if out.ndim != 2 or out.shape[1] != 3 or not np.issubdtype(out.dtype, np.integer):
        raise LmjaxError(f"features must be integer (layer, position, feature) rows, shape [n, 3] (or a list of "
                         f"such groups); got shape {out.shape}, dtype {out.dtype}")
    return out.astype(np.int64)


def _add(y, delta):
    return y + delta.astype(y.dtype)


def _replace(_y, value):
    return value


class Interventions:
    """Interventions on one prompt: `ablate`, `clamp`, `steer` (and `run` for any of them)
    return an Effect. The unintervened run, the replacement and the two compiled programs
    (one shape for every intervention) are made once.

    graph: the prompt's Graph, for `predicted`; replacement: its Replacement, if built
    already; target: the token to measure (default: the graph's top logit, else the
    model's top next token); freeze_attention: hold attention patterns (and the other
    mixers' frozen points, lmjax.graph.replacement.FROZEN_MIXER_POINTS) at the prompt's
    values in the real run too (circuit-tracer's default), separating what re-routing
    adds; freeze_norms: hold the norms' scales too. With both, the real run differs from
    the graph's prediction only by the MLPs (real ones vs linearised transcoders)."""

    def __init__(self, model, params, tokens, transcoders: Transcoders, graph: Optional[Graph] = None, *,
                 replacement: Optional[Replacement] = None, target: Optional[int] = None,
                 freeze_attention: bool = False, freeze_norms: bool = False, top_k: int = 5):
        tokens = np.asarray(tokens)
        if graph is not None and (graph.n_layers != transcoders.n_layers or not np.array_equal(graph.tokens, tokens)):
            raise LmjaxError("the graph is of another prompt or transcoders: its tokens and layers must be these")
        if replacement is not None and not np.array_equal(np.asarray(replacement.tokens), tokens):
            raise LmjaxError("the replacement is of another prompt: its tokens must be these")
        if top_k < 1:
            raise LmjaxError(f"top_k must be >= 1; got {top_k}")
        self.rep = replacement if replacement is not None else build_replacement(model, params, tokens, transcoders)
        self.model, self.params, self.transcoders, self.graph, self.top_k = model, params, transcoders, graph, top_k
        self.shape = (len(tokens), transcoders.n_layers, transcoders.width)
        vocab = int(self.rep.logits.shape[-1])
        if target is None:
            target = int(graph.logit_tokens[0]) if graph is not None else int(np.argmax(self.rep.logits[-1]))
        if not 0 <= int(target) < vocab:
            raise LmjaxError(f"target token {target} is outside the vocabulary 0..{vocab - 1}")
        self.target = int(target)
        # the frozen replacement's held values that the real run holds too
        frozen = {n: v for n, v in self.rep.frozen.items()
                  if (freeze_norms if n.endswith(".hook_scale") else freeze_attention)}
        positions = jnp.arange(len(tokens))[None]  # attention's explicit core, as in the replacement
        self._real = jax.jit(functools.partial(_real_run, model, transcoders, vocab))
        self._real_args = (params, self.rep.tokens, positions, frozen)
        self._linear = jax.jit(functools.partial(_linear_run, model, transcoders, vocab))
        u_embed, u_mlp = self.rep.u()
        self._linear_args = (params, self.rep.tokens, self.rep.frozen, u_embed, u_mlp, self.rep.acts)
        self.logits = np.asarray(self._real(*self._real_args, *_no_change(self.shape)), np.float64)  # unintervened
        self._linear_base = np.asarray(self._linear(*self._linear_args, *_no_change(self.shape)), np.float64)

    # -- the three edits

    def ablate(self, features) -> Effect:
        return self.run(features, "ablate")

    def clamp(self, features, value=None, *, multiple=None) -> Effect:
        """Hold the features at `value` (scalar or one per feature), or at `multiple` times
        their activation on the prompt."""
        if (value is None) == (multiple is None):
            raise LmjaxError("clamp takes one of value= (the activation to hold) or multiple= (of its activation)")
        f = features_of(features)
        self._check(f)
        if multiple is not None:
            value = np.asarray(multiple, np.float64) * np.asarray(self.rep.acts)[f[:, 1], f[:, 0], f[:, 2]]
        return self.run(f, "clamp", value)

    def steer(self, features, alpha) -> Effect:
        """Add alpha (scalar or one per feature) to the features' activations: alpha times
        their decoder rows to the MLP outputs."""
        return self.run(features, "steer", alpha)

    def each(self, groups: Sequence, edit: str = "ablate", amount=None) -> list:
        """One Effect per group of features (a supernode), each changed alone."""
        return [self.run(g, edit, amount) for g in groups]

    def run(self, features, edit: str = "ablate", amount=None) -> Effect:
        """edit: "ablate" (amount unused), "clamp" (amount: the values) or "steer" (amount: alpha)."""
        if edit not in EDITS:
            raise LmjaxError(f"edit must be one of {list(EDITS)}; got {edit!r}")
        f = features_of(features)
        self._check(f)
        if edit == "ablate":
            amount = 0.0
        elif amount is None:
            raise LmjaxError(f"{edit} needs an amount (a value per feature, or one for all)")
        amount = np.asarray(amount, np.float64)
        amount = np.full(len(f), float(amount)) if amount.ndim == 0 else amount
        if amount.shape != (len(f),) or not np.all(np.isfinite(amount)):
            raise LmjaxError(f"give one finite amount, or one per feature ({len(f)}); got shape {amount.shape}")
        fixed, value, add = _no_change(self.shape)
        at = (f[:, 1], f[:, 0], f[:, 2])
        if edit == "steer":
            add[at] = amount
        else:
            fixed[at], value[at] = True, amount
        after = np.asarray(self._real(*self._real_args, fixed, value, add), np.float64)
        linear = np.asarray(self._linear(*self._linear_args, fixed, value, add), np.float64)
        predicted = (None, None) if self.graph is None else graph_prediction(self.graph, f, edit, amount, self.target)
        t = self.target
        return Effect(t, _demeaned(self.logits, t), _demeaned(after, t), *predicted,
                      _demeaned(linear, t) - _demeaned(self._linear_base, t), _top_changes(self.logits, after, self.top_k))

    def _check(self, f: np.ndarray) -> None:
        n_pos, n_layers, width = self.shape
        for column, name, size in ((0, "layer", n_layers), (1, "position", n_pos), (2, "feature", width)):
            bad = f[(f[:, column] < 0) | (f[:, column] >= size)]
            if len(bad):
                raise LmjaxError(f"feature {tuple(bad[0])}: its {name} must be in 0..{size - 1}")
        if len(np.unique(f, axis=0)) != len(f):
            raise LmjaxError("a feature is listed twice; give each (layer, position, feature) once")


# -- The two compiled runs: masks [P, L, width] say which activations are held (at `value`)
# and what is added (steering), so every intervention has one shape.

def _no_change(shape):
    """(held [P, L, width] bool, held values, added values) of no intervention."""
    return np.zeros(shape, bool), np.zeros(shape, np.float32), np.zeros(shape, np.float32)


def _writes(transcoders: Transcoders, dacts):
    """[L, P, d]: what activation changes dacts [P, L, width] write to each MLP output."""
    recon, bias = transcoders.reconstruct(dacts)
    return jnp.moveaxis(recon - bias[None], 1, 0)


def _real_run(model, transcoders, vocab, params, tokens, positions, frozen, fixed, value, add):
    """The last position's logits of the model with the changes written in, layer by layer:
    layer l's held features are measured in the run with layers < l already changed (one
    traced model run, looped over the layers, then once more for the logits)."""
    names, n_layers = transcoders.hooks_in, transcoders.n_layers

    def step(l, carry):
        dacts, _ = carry
        w = _writes(transcoders, dacts)
        hooks = {n: (_replace, v) for n, v in frozen.items()}
        hooks.update({n: (_add, w[t][None]) for t, n in enumerate(transcoders.hooks_out)})
        logits, cache = model.run_with_cache(params, tokens[None], names, positions, hooks)
        _, acts = transcoders.encode(jnp.stack([cache[n][0] for n in names], 1))
        return _update(dacts, l, n_layers, fixed, value - acts, jnp.zeros_like(acts), add), logits[0, -1]

    return _loop(step, fixed.shape, n_layers, vocab)


def _linear_run(model, transcoders, vocab, params, tokens, frozen, u_embed, u_mlp, acts0, fixed, value, add):
    """The last position's logits of the frozen replacement with the changes written in and
    later features responding linearly (the activation's derivative at the prompt)."""
    x0, _ = replacement_linear(model, transcoders, params, tokens, frozen, u_embed, u_mlp)

    def step(l, carry):
        dacts, _ = carry
        x, logits = replacement_linear(model, transcoders, params, tokens, frozen, u_embed,
                                       u_mlp + _writes(transcoders, dacts))
        _, (_, response) = jax.jvp(transcoders.encode, (x0,), (x - x0,))
        return _update(dacts, l, transcoders.n_layers, fixed, value - acts0, response, add), logits[-1]

    return _loop(step, fixed.shape, transcoders.n_layers, vocab)


def _update(dacts, l, n_layers, fixed, held, response, add):
    """Layer l's activation changes: `held` where fixed, else the response plus steering
    (nothing after the last layer: that pass only gives the logits)."""
    i = jnp.minimum(l, n_layers - 1)
    new = jnp.where(fixed[:, i], held[:, i], response[:, i] + add[:, i])
    return dacts.at[:, i].set(jnp.where(l < n_layers, new, dacts[:, i]))


def _loop(step, shape, n_layers, vocab):
    """L + 1 passes of `step` (one traced body: compiles once whatever the depth)."""
    carry = (jnp.zeros(shape, jnp.float32), jnp.zeros(vocab, jnp.float32))
    return jax.lax.fori_loop(0, n_layers + 1, step, carry)[1]


# -- The graph's prediction --------------------------------------------------------------

def graph_prediction(graph: Graph, features, edit: str, amount, target: int):
    """(total, direct) predicted change of the target's demeaned logit from the graph's
    edges, or (None, None) when a feature is not a node or the target not a logit node.

    An edge from feature s is its activation a_s times its effect per unit, so a change
    da_s moves a target by edge * da_s / a_s. Feature nodes respond in layer order; held
    ones take da = value - a, steered ones add alpha to their response."""
    f = features_of(features)
    amount = np.broadcast_to(np.asarray(amount, np.float64), (len(f),))
    nodes = graph.features
    index = {tuple(row): i for i, row in enumerate(nodes.tolist())}
    which = [index.get(tuple(row)) for row in f.tolist()]
    logit = np.flatnonzero(graph.logit_tokens == target)
    if any(i is None for i in which) or not len(logit):
        return None, None
    which = np.asarray(which, np.int64)
    n = graph.n_features
    a = np.asarray(graph.activations[graph.selected], np.float64)
    inverse = np.divide(1.0, a, out=np.zeros(n), where=a != 0)  # edges per unit of activation

    def edges(rows, change):  # the targets' changes from the sources' changes da
        return np.asarray(graph.rows[rows, :n], np.float64) @ (change * inverse)

    own = np.zeros(n)  # the interventions' own changes
    held = np.zeros(n, bool)
    if edit == "steer":
        own[which] = amount
    else:
        own[which], held[which] = amount - a[which], True
    da = np.zeros(n)
    for layer in np.unique(nodes[:, 0]):  # edges run from lower layers to higher ones only
        rows = np.flatnonzero(nodes[:, 0] == layer)
        da[rows] = np.where(held[rows], own[rows], edges(rows, da) + own[rows])
    logit_row = n + logit[:1]
    return float(edges(logit_row, da)[0]), float(edges(logit_row, own)[0])


def _demeaned(logits: np.ndarray, token: int) -> float:
    return float(logits[token] - logits.mean())


def _top_changes(before: np.ndarray, after: np.ndarray, k: int) -> tuple:
    p0, p1 = (np.asarray(jax.nn.softmax(jnp.asarray(x, jnp.float32)), np.float64) for x in (before, after))
    order = np.argsort(-np.abs(p1 - p0), kind="stable")[:k]
    return tuple((int(i), float(p0[i]), float(p1[i])) for i in order)
