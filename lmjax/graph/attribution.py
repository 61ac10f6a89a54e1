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

Only feature and logit nodes have incoming edges, so the graph keeps just their rows
(`Graph.rows`, [n_features + n_logits, n_nodes]): at a fixed node budget its memory grows
linearly in the prompt length. `Graph.adjacency` builds the square matrix on demand.

Rows are vector-Jacobian products of the affine replacement, many at once (`jax.vmap`
over cotangents, `batch_size` rows per compiled call). A feature's row runs backward only
through the layers up to its own and holds only the sources below it, so each batch of
rows (visited in layer order) runs the program of its top layer. The compiled programs are
kept across calls, keyed on their shapes. Logit rows come first; then, until
`max_feature_nodes` features are visited, the unvisited features of largest influence on
the logits so far (circuit-tracer's partial influences) are visited in batches.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.graph.replacement import Replacement, Transcoders, build_replacement, compiler_options
from lmjax.graph.replacement import linear as replacement_linear

TOKEN_VECTORS = ("residual", "embedding")


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
    rows: np.ndarray  # [n_features + n_logits, n_nodes]: the feature nodes' rows, then the logit nodes'

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.selected)

    @property
    def n_nodes(self) -> int:
        return self.rows.shape[1]

    @property
    def features(self) -> np.ndarray:
        """[n_features, 3]: (layer, position, feature) of the feature nodes."""
        return self.active_features[self.selected]

    @property
    def row_nodes(self) -> np.ndarray:
        """The node of each row: the features, then the logits."""
        return np.concatenate([np.arange(self.n_features), np.arange(self.slices()["logits"].start, self.n_nodes)])

    @property
    def adjacency(self) -> np.ndarray:
        """[n_nodes, n_nodes], rows = targets, columns = sources (dense: for small graphs)."""
        out = np.zeros((self.n_nodes, self.n_nodes), self.rows.dtype)
        out[self.row_nodes] = self.rows
        return out

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
        w = np.zeros(self.n_nodes, np.float64)
        w[self.slices()["logits"]] = self.logit_probabilities
        return w


def top_logits(logits, max_logits: int = 10, logit_probability: float = 0.95):
    """(tokens, probabilities) of the most probable next tokens, until their cumulative
    probability reaches `logit_probability`, at most `max_logits` (circuit-tracer's rule)."""
    x = np.asarray(logits, np.float32)
    e = np.exp(x - x.max())  # a float32 softmax, as circuit-tracer's (in NumPy: nothing to compile)
    p = (e / e.sum()).astype(np.float64)
    order = np.argsort(-p, kind="stable")[:max_logits]
    cutoff = int(np.searchsorted(np.cumsum(p[order]), logit_probability)) + 1
    order = order[:cutoff]
    return order, p[order]


# the row programs compile side by side (XLA compiles outside the GIL, one core each)
_background = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmjax-graph-compile")
_programs: dict = {}  # (function, statics, argument shapes) -> Future of its compiled program
_programs_lock = threading.Lock()
_MAX_PROGRAMS = 32


def _compiled(fn, statics: tuple, args: tuple) -> concurrent.futures.Future:
    """fn(*statics, *args) compiled for these argument shapes with the graph's compiler
    options (replacement.compiler_options), in the background, and kept across calls:
    another graph of the same model, transcoders and shapes compiles nothing."""
    leaves, tree = jax.tree.flatten(args)
    options = compiler_options()
    key = (fn, statics, options, tree, tuple((x.shape, x.dtype) for x in leaves))  # every leaf is an array
    with _programs_lock:
        if key not in _programs:
            if len(_programs) >= _MAX_PROGRAMS:
                _programs.pop(next(iter(_programs)))  # the oldest
            program = jax.jit(functools.partial(fn, *statics), compiler_options=dict(options))
            _programs[key] = _background.submit(lambda: program.lower(*args).compile())
        return _programs[key]


class _Slots:
    """The source features grouped by where they write from, for one matrix product per
    group: features sorted by (layer, position) split into slots of at most `width`
    features at one (layer, position); edges[b, n] = gradient at slot(n) . writes[n].
    The writes are built in chunks straight into their slots: a fresh large buffer costs
    its first touch of every page, so there is one, touched once."""

    def __init__(self, t: Transcoders, features: np.ndarray, activations: np.ndarray, n_pos: int,
                 chunk: int = 4096):
        layer, pos, index = features.T
        n, n_layers = len(layer), t.n_layers
        where = layer * n_pos + pos  # nondecreasing: the features are in (layer, position) order
        counts = np.bincount(where, minlength=n_layers * n_pos)
        busy = counts[counts > 0]
        # a slot about as wide as a busy position: little padding, and a crowded position
        # (a first token's outliers) takes several slots rather than widening them all
        self.width = width = int(-(-max(int(np.ceil(busy.mean())) if len(busy) else 1, 8) // 8) * 8)
        rank = np.arange(n) - (np.cumsum(counts) - counts)[where]
        per = -(-counts // width)
        slot = (np.cumsum(per) - per)[where] + rank // width
        n_slots = max(int(per.sum()), 1)
        self.index = (slot * width + rank % width).astype(np.int32)  # each feature's place in [slots x width]
        row = (t.dictionaries[0].d_out,) if t.kind == "per_layer" else (n_layers, t.dictionaries.d_out)
        flat = np.zeros((n_slots * width,) + row, np.float32)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            flat[self.index[sl]] = _writes(t, layer[sl], index[sl], activations[sl])
        self.writes = flat.reshape((n_slots, width) + row)
        owner = np.repeat(np.arange(n_layers * n_pos), per)
        self.layer = np.zeros(n_slots, np.int32)
        self.pos = np.zeros(n_slots, np.int32)
        self.layer[:len(owner)], self.pos[:len(owner)] = owner // n_pos, owner % n_pos


def _slot_edges(g_mlp, writes, layer, pos, index):
    """[B, n] edges from the source features: g_mlp [B, L, P, d], slots' writes [S, W, d]
    (per-layer transcoders) or [S, W, L, d] (a cross-layer transcoder: each writes to all)."""
    b = g_mlp.shape[0]
    if writes.ndim == 3:
        out = jnp.einsum("bsd,swd->bsw", g_mlp[:, layer, pos], writes)
    else:
        out = jnp.einsum("btsd,swtd->bsw", g_mlp[:, :, pos], writes)
    return out.reshape(b, -1)[:, index]


def _writes(t: Transcoders, layer, index, activations) -> np.ndarray:
    """Each source feature's writes times its activation: [n, L, d] (a cross-layer
    transcoder), [n, d] (per-layer: the one layer each writes to)."""
    if t.kind == "per_layer":
        return t.own_layer_rows(layer, index) * activations[:, None]
    return t.decoder_rows(layer, index) * activations[:, None, None]


class _Rows:
    """The compiled row computations of one replacement: a feature row's cotangent is its
    encoder column at its layer and position, a logit row's the demeaned one-hot at the last
    position.

    A feature at layer k depends only on what enters below it: its row is a backward pass
    through layers 0..k alone, and its sources are the features and errors of layers < k
    (a prefix of the source columns: they are in layer order) and the tokens. So there is
    one feature program per top layer k (`batch` rows of layers <= k at a time, the last
    call padded) whose rows hold just those columns (`columns(k)`); logit rows run through
    all layers, without the transcoders' inputs."""

    def __init__(self, rep: Replacement, features: np.ndarray, activations: np.ndarray, errors, token_vectors,
                 batch: int, n_logits: int):
        t = rep.transcoders
        self.batch, self.n_sources, self.n_pos, self.n_layers = batch, len(features), rep.n_pos, t.n_layers
        layer, pos, index = features.T
        self.layer, self.pos = layer.astype(np.int32), pos.astype(np.int32)
        slots = _Slots(t, features, activations, rep.n_pos)
        self.transcoders, self.index = t, index
        self.d_in = t.encoder_columns(np.zeros(1, np.int64), np.zeros(1, np.int64)).shape[1]
        self.vocab = int(rep.logits.shape[-1])
        # the sources below layer k (k = 0..L): that many features, in that many slots
        self.n_below = np.searchsorted(self.layer, np.arange(t.n_layers + 1)).astype(int)
        slots_below = np.searchsorted(slots.layer, np.arange(t.n_layers + 1)).astype(int)
        slots_below[-1] = len(slots.layer)
        u_embed, u_mlp = rep.u()
        self.args = (rep.params, t.params, rep.tokens, rep.frozen, u_embed, u_mlp, jnp.asarray(errors),
                     jnp.asarray(token_vectors), jnp.asarray(slots.writes), jnp.asarray(slots.layer),
                     jnp.asarray(slots.pos), jnp.asarray(slots.index))
        statics = lambda k: (rep.model, t.structure, k, int(slots_below[k]), int(self.n_below[k]))  # noqa: E731
        self._logits = _compiled(_logit_rows, statics(t.n_layers),
                                 self.args + (np.zeros((n_logits, self.vocab), np.float32),))
        example = (np.zeros(batch, np.int32), np.zeros(batch, np.int32), np.zeros((batch, self.d_in), np.float32))
        self._features = [_compiled(_feature_rows, statics(k), self.args + example) for k in range(t.n_layers)]

    def columns(self, k: int) -> np.ndarray:
        """The source columns (features, errors layer-major, tokens) of a row program of top layer k."""
        errors = self.n_sources + np.arange(k * self.n_pos)
        tokens = self.n_sources + self.n_layers * self.n_pos + np.arange(self.n_pos)
        return np.concatenate([np.arange(self.n_below[k]), errors, tokens])

    def feature_rows(self, which: np.ndarray):
        """(rows, k) of at most `batch` features `which` (indices into the active features):
        each one's pre-activation, through its encoder column at its layer and position; k
        their top layer, the rows' columns `columns(k)`."""
        n = len(which)
        k = int(self.layer[which].max())
        pad = self.batch - n  # zero rows at layer 0, position 0
        pos = np.concatenate([self.pos[which], np.zeros(pad, np.int32)])
        layer = np.concatenate([self.layer[which], np.zeros(pad, np.int32)])
        enc = np.zeros((self.batch, self.d_in), np.float32)
        enc[:n] = self.transcoders.encoder_columns(self.layer[which], self.index[which])
        return np.asarray(self._features[k].result()(*self.args, pos, layer, enc))[:n], k

    def logit_rows(self, tokens: np.ndarray) -> np.ndarray:
        """Rows of the demeaned logits of `tokens` at the last position (every source column)."""
        vec = np.full((len(tokens), self.vocab), -1.0 / self.vocab, np.float32)
        vec[np.arange(len(tokens)), tokens] += 1.0
        return np.asarray(self._logits.result()(*self.args, vec))


def _edges(k, n_slots, n_sources, g_embed, g_mlp, errors, token_vectors, writes, slot_layer, slot_pos, index):
    """[B, columns(k)]: the rows' edges from their gradients at the sources below layer k
    (g_mlp [B, >= k, P, d]: only its first k layers are read)."""
    b = g_mlp.shape[0]
    g_mlp, writes = g_mlp[:, :k], writes[:n_slots]
    if writes.ndim == 4:  # a cross-layer transcoder's writes to the layers below k
        writes = writes[:, :, :k]
    token = jnp.einsum("bpd,pd->bp", g_embed, token_vectors)
    error = jnp.einsum("blpd,lpd->blp", g_mlp, errors[:k]).reshape(b, -1)
    features = _slot_edges(g_mlp, writes, slot_layer[:n_slots], slot_pos[:n_slots], index[:n_sources])
    return jnp.concatenate([features, error, token], 1)


def _feature_rows(model, structure, k, n_slots, n_sources, params, transcoder_params, tokens, frozen, u_embed, u_mlp,
                  errors, token_vectors, writes, slot_layer, slot_pos, index, row_pos, row_layer, row_enc):
    """Rows of B features of layers <= k given by their positions, layers and encoder columns [B, d_in]."""
    transcoders = Transcoders.of_structure(structure, transcoder_params)

    def inputs(ue, um):  # layers 0..k's transcoder inputs only: nothing above them is computed
        return replacement_linear(model, transcoders, params, tokens, frozen, ue, um, input_layers=k + 1)[0]

    _, vjp = jax.vjp(inputs, u_embed, u_mlp)
    b, n_pos = row_pos.shape[0], tokens.shape[0]
    cot = jnp.zeros((b, n_pos, k + 1, row_enc.shape[-1]), jnp.float32).at[jnp.arange(b), row_pos, row_layer].set(row_enc)
    g_embed, g_mlp = jax.vmap(vjp)(cot)  # [B, P, d], [B, L, P, d]
    return _edges(k, n_slots, n_sources, g_embed, g_mlp, errors, token_vectors, writes, slot_layer, slot_pos, index)


def _logit_rows(model, structure, k, n_slots, n_sources, params, transcoder_params, tokens, frozen, u_embed, u_mlp,
                errors, token_vectors, writes, slot_layer, slot_pos, index, row_logit):
    """Rows of the last position's logits along B directions row_logit [B, vocab] (k = L: every source)."""
    transcoders = Transcoders.of_structure(structure, transcoder_params)

    def last_logits(ue, um):
        return replacement_linear(model, transcoders, params, tokens, frozen, ue, um, with_inputs=False)[1][-1]

    _, vjp = jax.vjp(last_logits, u_embed, u_mlp)
    g_embed, g_mlp = jax.vmap(vjp)(row_logit)
    return _edges(k, n_slots, n_sources, g_embed, g_mlp, errors, token_vectors, writes, slot_layer, slot_pos, index)


def active_features(rep: Replacement, zero_first_position: bool = False):
    """([n, 3] (layer, position, feature) in that order, [n] activations) of the nonzero features
    (without position 0's when `zero_first_position`)."""
    acts = np.ascontiguousarray(np.swapaxes(np.asarray(rep.acts, np.float32), 0, 1))  # [L, P, width]
    if zero_first_position:
        acts[:, 0] = 0.0
    layer, pos, index = np.nonzero(acts)  # in (layer, position, feature) order already
    return np.stack([layer, pos, index], 1).astype(np.int64), acts[layer, pos, index]


class _Influence:
    """circuit-tracer's partial influences over the rows computed so far: each row's
    |edges| normalised to sum 1 is kept as it arrives (float32, like circuit-tracer's), in
    blocks as wide as the rows' source features (a row of layer k has only the features
    below k), so every power-iteration step is a matrix-vector product per block."""

    def __init__(self, logit_rows: np.ndarray, logit_probabilities: np.ndarray, n_sources: int):
        self.n_sources = n_sources  # only source features are propagated: the other columns have no rows
        self.p = np.asarray(logit_probabilities, np.float32)
        self.logits = self._normalised(logit_rows, n_sources)
        self.blocks = []  # (nodes, normalised |edges| from the first n features)

    @staticmethod
    def _normalised(rows: np.ndarray, n: int) -> np.ndarray:
        a = np.abs(rows[:, :n])
        a /= np.maximum(a.sum(1) + np.abs(rows[:, n:]).sum(1), 1e-8)[:, None]
        return a

    def add(self, rows: np.ndarray, n_features: int, nodes: np.ndarray) -> None:
        if n_features:  # rows with no source features pass no influence on
            self.blocks.append((nodes, self._normalised(rows, n_features)))

    def __call__(self, max_iter: int = 128) -> np.ndarray:
        """[n_sources]: every source feature's influence on the logits through the visited rows."""
        prod = self.p @ self.logits
        influence = np.zeros(self.n_sources, np.float32)
        for _ in range(max_iter):
            if not prod.any():
                return influence
            influence += prod
            nxt = np.zeros(self.n_sources, np.float32)
            for nodes, a in self.blocks:
                nxt[:a.shape[1]] += prod[nodes] @ a
            prod = nxt
        raise LmjaxError(f"feature influences did not converge in {max_iter} iterations")


def attribute(model, params, tokens, transcoders: Transcoders, *, max_feature_nodes: Optional[int] = None,
              max_logits: int = 10, logit_probability: float = 0.95, batch_size: int = 64,
              update_interval: int = 4, zero_first_position: bool = False, token_vectors: str = "residual",
              progress: bool = False) -> Graph:
    """The attribution graph of the prediction after `tokens` [P] (see the module docstring).

    max_feature_nodes: the features given rows (None: every active feature); the rest are
    left out of the graph. batch_size: rows per compiled call.
    zero_first_position: leave out position 0's features and give its error nodes zero
    vectors (circuit-tracer's convention for the BOS it puts there, whose activations are
    outliers); its token node stays. token_vectors: what a token node's vector is,
    "residual" (token plus position embedding: all that enters the residual stream) or
    "embedding" (the token embedding alone, circuit-tracer's hook_embed; a learned position
    embedding then enters on no node). For circuit-tracer's graph of the same prompt, give
    zero_first_position=True and token_vectors="embedding"."""
    if batch_size < 1 or (max_feature_nodes is not None and max_feature_nodes < 0):
        raise LmjaxError(f"batch_size must be >= 1 and max_feature_nodes >= 0; got {batch_size}, {max_feature_nodes}")
    if token_vectors not in TOKEN_VECTORS:
        raise LmjaxError(f"token_vectors must be one of {list(TOKEN_VECTORS)}; got {token_vectors!r}")
    if update_interval < 1:
        raise LmjaxError(f"update_interval must be >= 1; got {update_interval}")
    rep = build_replacement(model, params, tokens, transcoders)
    features, activations = active_features(rep, zero_first_position)
    n_active = len(features)
    logit_tokens, logit_p = top_logits(rep.logits[-1], max_logits, logit_probability)
    errors = np.array(rep.errors, np.float32)
    if zero_first_position:
        errors[:, 0] = 0.0
    rows_fn = _Rows(rep, features, activations, errors, _token_vectors(rep, token_vectors), batch_size,
                    len(logit_tokens))

    budget = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    n_logits = len(logit_tokens)
    logit_rows = rows_fn.logit_rows(logit_tokens)
    n_cols = logit_rows.shape[1]  # sources: active features, errors, tokens
    bar = _progress(budget, progress)
    if budget == n_active:  # every feature, in node order: each batch goes straight into the graph
        selected = np.arange(n_active)
        rows = np.zeros((budget + n_logits, n_cols + n_logits), np.float32)
        for start in range(0, budget, batch_size):
            which = selected[start:start + batch_size]
            block, k = rows_fn.feature_rows(which)
            rows[start:start + len(which), rows_fn.columns(k)] = block
            _update(bar, len(which))
        rows[budget:, :n_cols] = logit_rows
    else:
        selected, rows = _visit_by_influence(rows_fn, logit_rows, logit_p, n_active, budget, batch_size,
                                             update_interval, bar)
    if bar is not None:
        bar.close()
    return Graph(np.asarray(tokens), rep.transcoders.n_layers, features, activations, selected,
                 np.asarray(logit_tokens), logit_p.astype(np.float32), rows)


def _visit_by_influence(rows_fn: _Rows, logit_rows, logit_p, n_active, budget, batch_size, update_interval, bar):
    """(selected, rows): the `budget` features of largest partial influence, visited in
    batches, re-ranked every `update_interval` batches (circuit-tracer's order)."""
    blocks = []  # (features, rows, top layer) in visiting order
    visited = np.zeros(n_active, bool)
    influence = _Influence(logit_rows, logit_p, n_active)
    done = 0
    while done < budget:
        rank = np.argsort(-influence(), kind="stable")
        pending = rank[~visited[rank]][:min(update_interval * batch_size, budget - done)]
        # the same rows in layer order: each batch runs through as few layers as its rows need
        pending = pending[np.argsort(rows_fn.layer[pending], kind="stable")]
        for start in range(0, len(pending), batch_size):
            which = pending[start:start + batch_size]
            block, k = rows_fn.feature_rows(which)
            influence.add(block, rows_fn.n_below[k], which)
            blocks.append((which, block, k))
            visited[which] = True
            done += len(which)
            _update(bar, len(which))
    del influence
    return _assemble(rows_fn, blocks, logit_rows, np.flatnonzero(visited))


def _assemble(rows_fn: _Rows, blocks: list, logit_rows: np.ndarray, selected: np.ndarray):
    """(selected, rows [budget + n_logits, n_nodes]): the computed rows in node order, on
    the graph's columns (the selected features, errors, tokens; zero for the logits)."""
    n_active, n_cols = rows_fn.n_sources, logit_rows.shape[1]
    budget, n_logits = len(selected), len(logit_rows)
    node = np.full(n_cols, -1)  # each source column's node, -1 for features left out
    node[selected] = np.arange(budget)
    node[n_active:] = budget + np.arange(n_cols - n_active)
    rows = np.zeros((budget + n_logits, budget + n_cols - n_active + n_logits), np.float32)
    while blocks:  # a block at a time, each freed once placed: no second copy of the rows
        which, block, k = blocks.pop()
        columns = node[rows_fn.columns(k)]
        kept = columns >= 0
        rows[np.ix_(node[which], columns[kept])] = block[:, kept]
    rows[budget:, :n_cols - (n_active - budget)] = logit_rows[:, node >= 0]
    return selected, rows


def _token_vectors(rep: Replacement, which: str) -> np.ndarray:
    if which == "residual":
        return np.asarray(rep.u_embed, np.float32)
    if rep.model.cfg.pos_embedding != "learned":  # nothing but the token embedding enters
        return np.asarray(rep.u_embed, np.float32)
    return np.asarray(rep.params["embed"], np.float32)[np.asarray(rep.tokens)]  # what hook_embed holds


def _update(bar, n: int) -> None:
    if bar is not None:
        bar.update(n)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # local: only a run with a progress bar needs it
    return tqdm(total=total, desc="attribution", unit="feature", dynamic_ncols=True)
