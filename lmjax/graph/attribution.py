"""The attribution graph of one prediction: the direct linear effects between nodes of the
local replacement model (lmjax.graph.replacement), with circuit-tracer's definitions.

Nodes, in this order (circuit-tracer's): the selected active features (layer, position,
feature) in (layer, position, feature) order, the error nodes (layer-major: L x P), the
token nodes (P: what enters the residual stream, token and position embedding), and the
logit nodes (the top logits at the last position until their probabilities reach
`logit_probability`, at most `max_logits`). adjacency[target, source] is the direct effect
of the source on the target in the frozen model: for a target feature its pre-activation,
for a logit node its demeaned logit (logit - mean over the vocabulary); for a source
feature its activation times its decoder rows, for an error or token node its vector.

Rows are vector-Jacobian products of the affine replacement, many at once (`jax.vmap`
over cotangents, `batch_size` rows per compiled call). Logit rows come first; then, until
`max_feature_nodes` features are visited, the unvisited features of largest influence on
the logits so far (circuit-tracer's partial influences) are visited in batches.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.graph.replacement import Replacement, Transcoders, build_replacement
from lmjax.graph.replacement import linear as replacement_linear


@dataclasses.dataclass
class Graph:
    """An unpruned attribution graph (see the module docstring for the node order)."""

    tokens: np.ndarray  # [P]
    n_layers: int
    active_features: np.ndarray  # [n_active, 3]: (layer, position, feature) of every active feature
    activations: np.ndarray  # [n_active]
    selected: np.ndarray  # indices into active_features of the feature nodes, increasing
    logit_tokens: np.ndarray  # [n_logits]
    logit_probabilities: np.ndarray  # [n_logits]
    adjacency: np.ndarray  # [n_nodes, n_nodes], rows = targets, columns = sources

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.selected)

    @property
    def features(self) -> np.ndarray:
        """[n_features, 3]: (layer, position, feature) of the feature nodes."""
        return self.active_features[self.selected]

    def slices(self) -> dict:
        """Node ranges by kind: features, errors, tokens, logits."""
        f, e = self.n_features, self.n_layers * self.n_pos
        return {"features": slice(0, f), "errors": slice(f, f + e), "tokens": slice(f + e, f + e + self.n_pos),
                "logits": slice(f + e + self.n_pos, f + e + self.n_pos + len(self.logit_tokens))}

    def error_node(self, layer: int, position: int) -> int:
        return self.n_features + layer * self.n_pos + position

    def token_node(self, position: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + position

    def logit_weights(self) -> np.ndarray:
        w = np.zeros(self.adjacency.shape[0], np.float64)
        w[self.slices()["logits"]] = self.logit_probabilities
        return w


def top_logits(logits, max_logits: int = 10, logit_probability: float = 0.95):
    """(tokens, probabilities) of the most probable next tokens, until their cumulative
    probability reaches `logit_probability`, at most `max_logits` (circuit-tracer's rule)."""
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)), np.float64)
    order = np.argsort(-p, kind="stable")[:max_logits]
    cutoff = int(np.searchsorted(np.cumsum(p[order]), logit_probability)) + 1
    order = order[:cutoff]
    return order, p[order]


class _Rows:
    """The compiled row computation of one replacement: cotangents in, edge rows out, in
    blocks of `batch` rows (the last block padded: one compiled shape)."""

    def __init__(self, rep: Replacement, features: np.ndarray, activations: np.ndarray, batch: int):
        t = rep.transcoders
        self.rep, self.batch = rep, batch
        layer, pos, index = features.T
        self.layer, self.pos = layer, pos
        # each source feature's writes per layer, times its activation: [n, L, d]
        writes = t.decoder_rows(layer, index) * activations[:, None, None]
        if t.kind == "per_layer":
            writes = writes[np.arange(len(layer)), layer]  # [n, d]: the one layer each writes to
        self.encoders = t.encoder_columns(layer, index)  # [n, d_in]
        u_embed, u_mlp = rep.u()
        self.args = (rep.params, rep.tokens, rep.frozen, u_embed, u_mlp, rep.errors, jnp.asarray(writes),
                     jnp.asarray(layer), jnp.asarray(pos))
        self._compiled = jax.jit(functools.partial(_rows, rep.model, t))

    def _run(self, cot_inputs: np.ndarray, cot_logits: np.ndarray) -> np.ndarray:
        n = len(cot_inputs)
        pad = (-n) % self.batch
        if pad:
            cot_inputs = np.concatenate([cot_inputs, np.zeros((pad,) + cot_inputs.shape[1:], cot_inputs.dtype)])
            cot_logits = np.concatenate([cot_logits, np.zeros((pad,) + cot_logits.shape[1:], cot_logits.dtype)])
        out = [np.asarray(self._compiled(*self.args, jnp.asarray(cot_inputs[i:i + self.batch]),
                                         jnp.asarray(cot_logits[i:i + self.batch])))
               for i in range(0, len(cot_inputs), self.batch)]
        return np.concatenate(out)[:n]

    def _zeros(self, n: int):
        rep = self.rep
        return (np.zeros((n, rep.n_pos, rep.transcoders.n_layers, self.encoders.shape[1]), np.float32),
                np.zeros((n,) + tuple(rep.logits.shape), np.float32))

    def feature_rows(self, which: np.ndarray) -> np.ndarray:
        """Rows of the features `which` (indices into the active features): each one's
        pre-activation, through its encoder column at its layer and position."""
        cot_inputs, cot_logits = self._zeros(len(which))
        cot_inputs[np.arange(len(which)), self.pos[which], self.layer[which]] = self.encoders[which]
        return self._run(cot_inputs, cot_logits)

    def logit_rows(self, tokens: np.ndarray) -> np.ndarray:
        """Rows of the demeaned logits of `tokens` at the last position."""
        cot_inputs, cot_logits = self._zeros(len(tokens))
        vocab = cot_logits.shape[-1]
        cot_logits[:, -1] = -1.0 / vocab
        cot_logits[np.arange(len(tokens)), -1, tokens] += 1.0
        return self._run(cot_inputs, cot_logits)


def _rows(model, transcoders, params, tokens, frozen, u_embed, u_mlp, errors, writes, layer, pos,
          cot_inputs, cot_logits):
    """[B, n_features + L * P + P] edges of B rows given by their cotangents."""
    _, vjp = jax.vjp(lambda ue, um: replacement_linear(model, transcoders, params, tokens, frozen, ue, um),
                     u_embed, u_mlp)

    def one(ci, cl):
        g_embed, g_mlp = vjp((ci, cl))  # [P, d], [L, P, d]
        token = jnp.sum(g_embed * u_embed, -1)
        error = jnp.sum(g_mlp * errors, -1).reshape(-1)
        if writes.ndim == 2:  # per-layer transcoders
            feature = jnp.sum(g_mlp[layer, pos] * writes, -1)
        else:
            feature = jnp.einsum("lnd,nld->n", g_mlp[:, pos], writes)
        return jnp.concatenate([feature, error, token])

    return jax.vmap(one)(cot_inputs, cot_logits)


def active_features(rep: Replacement):
    """([n, 3] (layer, position, feature) in that order, [n] activations) of the nonzero features."""
    acts = np.asarray(rep.acts)  # [P, L, width]
    pos, layer, index = np.nonzero(acts)
    order = np.lexsort((index, pos, layer))
    features = np.stack([layer, pos, index], 1)[order].astype(np.int64)
    return features, acts[pos, layer, index][order].astype(np.float32)


def partial_influence(rows: np.ndarray, row_nodes: np.ndarray, logit_probabilities: np.ndarray,
                      max_iter: int = 128) -> np.ndarray:
    """circuit-tracer's partial influences: the influence on the logits of every source
    column, by power iteration over the rows computed so far (`row_nodes[i]`: the column
    of row i's node; the logit rows are the last ones and have no column)."""
    a = np.abs(rows.astype(np.float64))
    a /= np.maximum(a.sum(1, keepdims=True), 1e-8)
    n_logits = len(logit_probabilities)
    weights = np.zeros(len(rows))
    weights[-n_logits:] = logit_probabilities
    influence = np.zeros(rows.shape[1])
    for _ in range(max_iter):
        prod = weights @ a
        if not prod.any():
            return influence
        influence += prod
        weights = np.concatenate([prod[row_nodes[:-n_logits]], np.zeros(n_logits)])
    raise LmjaxError(f"feature influences did not converge in {max_iter} iterations")


def attribute(model, params, tokens, transcoders: Transcoders, *, max_feature_nodes: Optional[int] = None,
              max_logits: int = 10, logit_probability: float = 0.95, batch_size: int = 64,
              update_interval: int = 4, progress: bool = False) -> Graph:
    """The attribution graph of the prediction after `tokens` [P] (see the module docstring).

    max_feature_nodes: the features given rows (None: every active feature); the rest are
    left out of the graph. batch_size: rows per compiled call."""
    if batch_size < 1 or (max_feature_nodes is not None and max_feature_nodes < 0):
        raise LmjaxError(f"batch_size must be >= 1 and max_feature_nodes >= 0; got {batch_size}, {max_feature_nodes}")
    rep = build_replacement(model, params, tokens, transcoders)
    features, activations = active_features(rep)
    n_active = len(features)
    logit_tokens, logit_p = top_logits(rep.logits[-1], max_logits, logit_probability)
    rows_fn = _Rows(rep, features, activations, batch_size)

    budget = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    logit_rows = rows_fn.logit_rows(logit_tokens)
    feature_rows = np.zeros((budget, logit_rows.shape[1]), np.float32)
    visited = np.zeros(n_active, bool)
    row_nodes = np.zeros(budget, np.int64)
    done = 0
    bar = _progress(budget, progress)
    while done < budget:
        if budget == n_active:
            pending = np.arange(n_active)
        else:
            stacked = np.concatenate([feature_rows[:done], logit_rows])
            influence = partial_influence(stacked, np.concatenate([row_nodes[:done], [0] * len(logit_rows)]),
                                          logit_p)[:n_active]
            rank = np.argsort(-influence, kind="stable")
            pending = rank[~visited[rank]][:min(update_interval * batch_size, budget - done)]
        for start in range(0, len(pending), batch_size):
            which = pending[start:start + batch_size]
            feature_rows[done:done + len(which)] = rows_fn.feature_rows(which)
            row_nodes[done:done + len(which)] = which
            visited[which] = True
            done += len(which)
            if bar is not None:
                bar.update(len(which))
    if bar is not None:
        bar.close()

    selected = np.flatnonzero(visited)
    columns = np.concatenate([selected, np.arange(n_active, logit_rows.shape[1])])
    order = np.argsort(row_nodes, kind="stable")  # rows in node order
    n_nodes = len(columns) + len(logit_tokens)
    adjacency = np.zeros((n_nodes, n_nodes), np.float32)
    adjacency[:budget, :len(columns)] = feature_rows[order][:, columns]
    adjacency[n_nodes - len(logit_tokens):, :len(columns)] = logit_rows[:, columns]
    return Graph(np.asarray(tokens), rep.transcoders.n_layers, features, activations, selected,
                 np.asarray(logit_tokens), logit_p.astype(np.float32), adjacency)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # local: only a run with a progress bar needs it
    return tqdm(total=total, desc="attribution", unit="feature", dynamic_ncols=True)
