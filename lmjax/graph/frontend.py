"""An attribution graph as circuit-tracer's graph JSON (its `frontend/graph_models.py`
schema), so that circuit-tracer's own viewer loads a graph made here.

The file is the pruned graph: the nodes `prune` keeps that have a kept edge (token and logit
nodes always), and the kept edges with their weights (adjacency[target, source]). Node ids
follow circuit-tracer's:

    feature   "{layer}_{feature}_{position}"   layer "{layer}", feature = cantor(layer, feature)
    error     "0_{layer}_{position}"           layer "{layer}", feature -1
    token     "E_{token id}_{position}"        layer "E",       feature = position
    logit     "{L + 1}_{token id}_{P - 1}"     layer "{L + 1}", feature = token id

`influence` is the node's place in the cumulative influence (Pruned.cumulative), as
circuit-tracer writes it. The viewer loads a feature's examples from
`features/{scan}/{feature}.json` (circuit-tracer's feature schema): `feature_files`
renames lmjax.sae.dashboard's feature JSON to those ids.
"""
from __future__ import annotations

import json
import os

import numpy as np

from lmjax.errors import LmjaxError
from lmjax.graph.attribution import Graph
from lmjax.graph.prune import Pruned, prune

SCHEMA_VERSION = 1
FEATURE_TYPE = "cross layer transcoder"  # what circuit-tracer's viewer draws as a feature, per-layer or not


def cantor(x: int, y: int) -> int:
    """circuit-tracer's feature number of (layer, feature): the Cantor pairing."""
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id, feature, layer, pos, kind, js_id, **extra) -> dict:
    out = {"node_id": node_id, "feature": int(feature), "layer": str(layer), "ctx_idx": int(pos),
           "feature_type": kind, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
           "jsNodeId": js_id, "clerp": "", "influence": None, "activation": None}
    out.update(extra)
    return out


def graph_nodes(graph: Graph, token_strs, logit_strs, cumulative: np.ndarray, clerps=None) -> list:
    """One circuit-tracer node dict per graph node (None for none: every node is described);
    clerps: {(layer, feature): label} for feature nodes."""
    s, n_pos, n_layers = graph.slices(), graph.n_pos, graph.n_layers
    if len(token_strs) != n_pos or len(logit_strs) != len(graph.logit_tokens):
        raise LmjaxError(f"give one string per prompt token ({n_pos}) and per logit ({len(graph.logit_tokens)}); got "
                         f"{len(token_strs)} and {len(logit_strs)}")
    clerps = clerps or {}
    out = []
    for i, (layer, pos, feat) in enumerate(graph.features.tolist()):
        act = float(graph.activations[graph.selected[i]])
        out.append(_node(f"{layer}_{feat}_{pos}", cantor(layer, feat), layer, pos, FEATURE_TYPE, f"{layer}_{feat}-0",
                         influence=float(cumulative[i]), activation=act, clerp=clerps.get((layer, feat), "")))
    for j in range(n_layers * n_pos):
        layer, pos = divmod(j, n_pos)
        out.append(_node(f"0_{layer}_{pos}", -1, layer, pos, "mlp reconstruction error", f"{layer}_{pos}-0",
                         influence=float(cumulative[s["errors"].start + j])))
    for pos, tok in enumerate(graph.tokens.tolist()):
        out.append(_node(f"E_{tok}_{pos}", pos, "E", pos, "embedding", f"E_{tok}-{pos}",
                         influence=float(cumulative[s["tokens"].start + pos])))
    for j, (tok, p) in enumerate(zip(graph.logit_tokens.tolist(), graph.logit_probabilities.tolist())):
        layer = n_layers + 1
        out.append(_node(f"{layer}_{tok}_{n_pos - 1}", tok, layer, n_pos - 1, "logit", f"L_{tok}-{n_pos - 1}",
                         token_prob=float(p), is_target_logit=j == 0,
                         clerp=f'Output "{logit_strs[j]}" (p={p:.3f})'))
    return out


def kept_edges(graph: Graph, pruned: Pruned):
    """(targets, sources, weights) of the kept edges, from the graph's rows."""
    r, src = np.nonzero(pruned.edge_rows)
    return pruned.row_nodes[r], src, graph.rows[r, src].astype(np.float64)


def graph_json(graph: Graph, token_strs, logit_strs, *, prompt: str, slug: str = "lmjax-graph", scan: str = "lmjax",
               pruned: Pruned | None = None, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               clerps=None) -> dict:
    """circuit-tracer's graph file (Model: metadata, qParams, nodes, links) of the pruned graph.

    token_strs: each prompt token's text; logit_strs: each logit token's text (written as
    given: circuit-tracer writes its tokenizer's decoding of each token).

    circuit-tracer's error ids ("0_{layer}_{position}") equal a layer-0 feature's whose
    index is that layer; the viewer then sees one node for the two."""
    if not slug or not all(c.isalnum() or c in "-_." for c in slug):
        raise LmjaxError(f"the graph's slug names its file in circuit-tracer's viewer: letters, digits, '-', '_' and "
                         f"'.' only; got {slug!r}")
    pruned = prune(graph, node_threshold, edge_threshold) if pruned is None else pruned
    nodes = graph_nodes(graph, token_strs, logit_strs, pruned.cumulative, clerps)
    kept = pruned.node_mask
    targets, sources, weights = kept_edges(graph, pruned)
    both = kept[targets] & kept[sources]
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
             for t, s, w in zip(targets[both], sources[both], weights[both])]
    linked = set(sources[both].tolist()) | set(targets[both].tolist())
    used = [nodes[i] for i in np.flatnonzero(kept)
            if i in linked or nodes[i]["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": list(token_strs),
            "prompt": prompt, "node_threshold": float(node_threshold), "schema_version": SCHEMA_VERSION}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": used, "links": links}


def feature_files(features_json: dict, scan: str = "lmjax") -> dict:
    """{relative path: feature dict}: circuit-tracer's feature JSON (lmjax.sae.dashboard.
    circuit_tracer_features) keyed by (layer, feature), renamed to the viewer's
    `features/{scan}/{cantor(layer, feature)}.json`."""
    out = {}
    for (layer, feat), d in features_json.items():
        number = cantor(int(layer), int(feat))
        out[os.path.join("features", scan, f"{number}.json")] = {**d, "index": number}
    return out


def write_json(path: str, data) -> str:
    """Write JSON whole or not at all (a temporary name, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path
