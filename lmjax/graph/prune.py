"""Pruning an attribution graph and scoring it, with circuit-tracer's definitions.

With A = |adjacency| normalised so each row (target) sums to 1 and w the logit nodes'
probabilities (0 elsewhere):

- influence = w A + w A^2 + ... : each node's total influence on the logits through all paths;
- node pruning keeps the fewest nodes holding `node_threshold` (0.8) of the total influence
  (tokens and logits always), edge pruning then the edges holding `edge_threshold` (0.98)
  of the edge scores A * (influence + w) of the node-pruned graph, and nodes left without an
  outgoing edge (or, for features, an incoming one) are dropped until none is;
- replacement score = token influence / (token + error influence): how much of what the
  prompt does to the logits goes through features rather than errors;
- completeness score = sum_n (1 - share of n's inputs from errors) (influence_n + w_n) /
  sum_n (influence_n + w_n).

Everything is computed on the graph's rows (only feature and logit nodes have incoming
edges; every other row of the adjacency is zero), so memory grows with rows x nodes, not
nodes squared.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.errors import LmjaxError
from lmjax.graph.attribution import Graph


def normalized(rows: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(rows, np.float64))
    return a / np.maximum(a.sum(1, keepdims=True), 1e-10)


def influence(a: np.ndarray, row_nodes: np.ndarray, weights: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """weights A + weights A^2 + ... for a normalised adjacency A given by its nonzero rows
    `a` (row i is node row_nodes[i]'s); a graph without cycles: the powers reach 0."""
    current = weights[row_nodes] @ a
    total = current.copy()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current[row_nodes] @ a
        total += current
    raise LmjaxError(f"influence did not converge in {max_iter} iterations: the graph has a cycle")


def node_influence(graph: Graph) -> np.ndarray:
    return influence(normalized(graph.rows), graph.row_nodes, graph.logit_weights())


def _threshold(scores: np.ndarray, fraction: float, size: int | None = None) -> float:
    """The score above which the fewest entries hold `fraction` of the total; `size`: the
    number of entries counting the zeros left out of `scores` (they sort last)."""
    ordered = np.sort(scores.reshape(-1))[::-1]
    cumulative = np.cumsum(ordered) / np.sum(ordered)
    index = int(np.searchsorted(cumulative, fraction))
    size = len(ordered) if size is None else size
    if index >= len(ordered):  # not reached before the end (only near fraction 1): the last entry
        return 0.0 if size > len(ordered) else ordered[-1]
    return ordered[index]


@dataclasses.dataclass
class Pruned:
    node_mask: np.ndarray  # [n_nodes] bool
    edge_rows: np.ndarray  # [n_rows, n_nodes] bool: the kept edges into the graph's row nodes (graph.row_nodes)
    row_nodes: np.ndarray  # [n_rows]
    cumulative: np.ndarray  # [n_nodes]: each node's place in the cumulative influence (0..1]
    influence: np.ndarray  # [n_nodes]

    @property
    def edge_mask(self) -> np.ndarray:
        """[n_nodes, n_nodes] bool (rows targets, columns sources), dense: for small graphs."""
        out = np.zeros((self.edge_rows.shape[1],) * 2, bool)
        out[self.row_nodes] = self.edge_rows
        return out


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise LmjaxError(f"{name} must be between 0 and 1; got {v}")
    s = graph.slices()
    n_features, keep_from, row_nodes = graph.n_features, s["tokens"].start, graph.row_nodes
    weights = graph.logit_weights()
    node_inf = influence(normalized(graph.rows), row_nodes, weights)
    node_mask = node_inf >= _threshold(node_inf, node_threshold)
    node_mask[keep_from:] = True  # tokens and logits

    pruned = np.array(graph.rows, np.float64)
    pruned[~node_mask[row_nodes]] = 0
    pruned[:, ~node_mask] = 0
    a = normalized(pruned)
    del pruned
    edge_scores = a * (influence(a, row_nodes, weights) + weights)[row_nodes][:, None]
    edge_rows = edge_scores >= _threshold(edge_scores, edge_threshold, graph.n_nodes ** 2)
    del a, edge_scores

    while True:
        before = node_mask.copy()
        node_mask[:keep_from] &= edge_rows[:, :keep_from].any(0)  # features and errors need an outgoing edge
        node_mask[:n_features] &= edge_rows[:n_features].any(1)  # features need an incoming one
        edge_rows[~node_mask[row_nodes]] = False
        edge_rows[:, ~node_mask] = False
        if np.array_equal(before, node_mask):
            break

    order = np.argsort(-node_inf, kind="stable")
    cumulative = np.zeros_like(node_inf)
    cumulative[order] = np.cumsum(node_inf[order]) / np.sum(node_inf)
    return Pruned(node_mask, edge_rows, row_nodes, cumulative, node_inf)


def scores(graph: Graph) -> dict:
    """{"replacement": ..., "completeness": ...} (see the module docstring)."""
    s = graph.slices()
    weights = graph.logit_weights()
    a = normalized(graph.rows)
    inf = influence(a, graph.row_nodes, weights)
    tokens, errors = inf[s["tokens"]].sum(), inf[s["errors"]].sum()
    non_error = np.ones(graph.n_nodes)  # a node without inputs has no error share
    non_error[graph.row_nodes] = 1 - a[:, s["errors"]].sum(-1)
    out = inf + weights
    return {"replacement": float(tokens / (tokens + errors)), "completeness": float((non_error * out).sum() / out.sum())}
