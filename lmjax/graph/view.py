"""An attribution graph as a section of the `lmjax explain` page: inline SVG and a little
inline JS, nothing fetched.

The pruned graph is drawn with positions as columns and layers as rows (token nodes at the
bottom, then each layer's features and error nodes, the logits at the top); edges are
lines whose width grows with |weight| and whose colour is its sign (blue positive, red
negative), each with its weight as a tooltip. In the page:

- hovering a node highlights its edges and lists its largest incoming and outgoing weights;
- clicking a feature opens its mini-dashboard (lmjax.sae.dashboard_html.feature_card);
- "pin" keeps a node in a list, "group" makes the pinned nodes one supernode: a box drawn
  around them, with the summed weight of the edges into and out of the group.

The page's address can drive the same actions (`#graph?open=ID&pin=ID,ID&group=1`), which
is how a headless browser is made to click. Node ids in the page (`node_ids`): F{layer}_
{feature}_{position} for a feature, R{layer}_{position} for an error node, T{position} for a
token, L{token id} for a logit (circuit-tracer's own ids, lmjax.graph.frontend, can collide
between an error node and a feature of layer 0 whose index is below the number of layers).
"""
from __future__ import annotations

import dataclasses
import html
import json

import numpy as np

from lmjax.graph.attribution import Graph
from lmjax.graph.frontend import graph_nodes, kept_edges
from lmjax.graph.prune import Pruned
from lmjax.graph.replacement import Transcoders
from lmjax.sae.dashboard_html import CSS as CARD_CSS

# pixels: a layer's row, the margin, the spacing of nodes in a cell and of the logits; a
# position's column is as wide as lets the graph fit FIT pixels, within COLUMNS
ROW, MARGIN, STEP, LOGIT_STEP, FIT, COLUMNS = 90, 40, 11, 72, 1000, (44, 96)
POSITIVE, NEGATIVE = "#2563eb", "#dc2626"

CSS = """
#gv-wrap{overflow-x:auto;border:1px solid #e3e3e3;border-radius:4px;background:#fcfcfd}
#gv-svg .gv-edge{stroke-opacity:.45}#gv-svg .gv-edge.on{stroke-opacity:.95}#gv-svg .gv-edge.off{stroke-opacity:.06}
#gv-svg .gv-node{cursor:pointer;stroke:#333;stroke-width:.8}#gv-svg .gv-node.sel{stroke:#000;stroke-width:2.5}
#gv-svg .gv-node.pinned{stroke:#d97706;stroke-width:2.5}#gv-svg text{font-size:10px;font-family:ui-monospace,monospace}
#gv-svg .gv-group{fill:#fde68a55;stroke:#d97706;stroke-dasharray:4 2}
#gv-info{font-size:13px;min-height:2.4em;margin:6px 0}#gv-tools button{margin-right:6px}
#gv-pins{font-size:13px}#gv-card .fd-card{margin-top:8px}
"""

JS = """
(function () {
  var data = JSON.parse(document.getElementById('gv-data').textContent);
  var svg = document.getElementById('gv-svg');
  var byId = {}, edgesOf = {}, pinned = [], groups = 0, selected = null;
  data.nodes.forEach(function (n) { byId[n.id] = n; edgesOf[n.id] = []; });
  var edges = Array.prototype.slice.call(svg.querySelectorAll('.gv-edge'));
  edges.forEach(function (e) {
    edgesOf[e.getAttribute('data-source')].push(e);
    edgesOf[e.getAttribute('data-target')].push(e);
  });
  function node(id) { return svg.querySelector('.gv-node[data-id="' + id + '"]'); }
  function fmt(w) { return (w >= 0 ? '+' : '') + w.toPrecision(3); }
  function ranked(id, side, other) {
    return edgesOf[id].filter(function (e) { return e.getAttribute(side) === id; })
      .map(function (e) { return [e.getAttribute(other), parseFloat(e.getAttribute('data-weight'))]; })
      .sort(function (a, b) { return Math.abs(b[1]) - Math.abs(a[1]); }).slice(0, 4)
      .map(function (x) { return byId[x[0]].label + ' ' + fmt(x[1]); }).join(', ') || 'none';
  }
  function hover(id) {
    var mine = edgesOf[id];
    edges.forEach(function (e) {
      e.classList.toggle('on', id !== null && mine.indexOf(e) >= 0);
      e.classList.toggle('off', id !== null && mine.indexOf(e) < 0);
    });
    if (id === null) return;
    var n = byId[id];
    var act = n.act !== null ? ' (activation ' + n.act.toPrecision(3) + ')' : '';
    document.getElementById('gv-info').textContent = n.label + act +
      ' | from: ' + ranked(id, 'data-target', 'data-source') + ' | to: ' + ranked(id, 'data-source', 'data-target');
  }
  function open(id) {
    if (!byId[id]) return;
    if (selected) node(selected).classList.remove('sel');
    selected = id;
    node(id).classList.add('sel');
    var panel = document.getElementById('gv-card'), card = document.getElementById('gv-card-' + id);
    panel.innerHTML = card ? card.innerHTML :
      '<p class="note">' + byId[id].label + ': no dashboard (only features have one).</p>';
    panel.setAttribute('data-open', id);
    hover(id);
  }
  function pin(id) {
    if (!byId[id]) return;
    var i = pinned.indexOf(id);
    if (i >= 0) pinned.splice(i, 1); else pinned.push(id);
    node(id).classList.toggle('pinned', i < 0);
    document.getElementById('gv-pins').textContent = pinned.length ?
      'pinned: ' + pinned.map(function (p) { return byId[p].label; }).join(', ') : '';
  }
  function group() {
    if (pinned.length < 2) return;
    var xs = pinned.map(function (p) { return byId[p].x; }), ys = pinned.map(function (p) { return byId[p].y; });
    var inside = {}, into = 0, out = 0;
    pinned.forEach(function (p) { inside[p] = true; });
    edges.forEach(function (e) {
      var s = inside[e.getAttribute('data-source')], t = inside[e.getAttribute('data-target')];
      var w = parseFloat(e.getAttribute('data-weight'));
      if (t && !s) into += w;
      if (s && !t) out += w;
    });
    var ns = 'http://www.w3.org/2000/svg', box = document.createElementNS(ns, 'rect');
    var x0 = Math.min.apply(null, xs) - 9, y0 = Math.min.apply(null, ys) - 9;
    box.setAttribute('x', x0); box.setAttribute('y', y0);
    box.setAttribute('width', Math.max.apply(null, xs) - x0 + 9);
    box.setAttribute('height', Math.max.apply(null, ys) - y0 + 9);
    box.setAttribute('class', 'gv-group'); box.setAttribute('data-members', pinned.join(' '));
    var name = 'group ' + (++groups), title = document.createElementNS(ns, 'title');
    title.textContent = name + ': ' + pinned.map(function (p) { return byId[p].label; }).join(', ') +
      '; in ' + fmt(into) + ', out ' + fmt(out);
    box.appendChild(title);
    svg.insertBefore(box, svg.firstChild);
    var li = document.createElement('li');
    li.textContent = title.textContent;
    document.getElementById('gv-groups').appendChild(li);
    pinned.slice().forEach(pin);
  }
  svg.querySelectorAll('.gv-node').forEach(function (el) {
    var id = el.getAttribute('data-id');
    el.addEventListener('mouseenter', function () { hover(id); });
    el.addEventListener('mouseleave', function () { hover(selected); });
    el.addEventListener('click', function (ev) { if (ev.shiftKey) pin(id); else open(id); });
  });
  document.getElementById('gv-pin').addEventListener('click', function () { if (selected) pin(selected); });
  document.getElementById('gv-group').addEventListener('click', group);
  var query = (location.hash.split('?')[1] || '').split('&');
  query.forEach(function (kv) {
    var k = kv.split('=')[0], v = decodeURIComponent(kv.split('=')[1] || '');
    if (k === 'open' && node(v)) node(v).dispatchEvent(new MouseEvent('click', {bubbles: true}));
    if (k === 'pin') v.split(',').forEach(function (id) {
      if (node(id)) node(id).dispatchEvent(new MouseEvent('click', {bubbles: true, shiftKey: true}));
    });
    if (k === 'group') document.getElementById('gv-group').click();
  });
  if (location.hash.indexOf('#graph?') === 0) window.addEventListener('load', function () {
    document.getElementById('graph').scrollIntoView();
  });
  document.getElementById('gv-wrap').setAttribute('data-nodes', svg.querySelectorAll('.gv-node').length);
})();
"""


@dataclasses.dataclass
class Layout:
    """Where each kept node is drawn (pixels) and its short label."""

    x: np.ndarray
    y: np.ndarray
    width: int
    height: int
    column: float  # a position's width


def layout(graph: Graph, kept: np.ndarray) -> Layout:
    """Rows: 0 tokens, 1..L layers (features, then error nodes), L + 1 logits; columns:
    positions; nodes sharing a cell side by side, wrapping onto sub-rows."""
    s, n_pos, n_layers = graph.slices(), graph.n_pos, graph.n_layers
    rows, cols = np.zeros(graph.n_nodes, np.int64), np.zeros(graph.n_nodes, np.int64)
    rows[s["features"]], cols[s["features"]] = graph.features[:, 0] + 1, graph.features[:, 1]
    err = np.arange(n_layers * n_pos)
    rows[s["errors"]], cols[s["errors"]] = err // n_pos + 1, err % n_pos
    rows[s["tokens"]], cols[s["tokens"]] = 0, np.arange(n_pos)
    rows[s["logits"]], cols[s["logits"]] = n_layers + 1, n_pos - 1
    x, y = np.zeros(graph.n_nodes), np.zeros(graph.n_nodes)
    column = float(np.clip((FIT - 2 * MARGIN) / n_pos, *COLUMNS))
    per_row = max(int((column - 10) // STEP), 1)
    height = MARGIN * 2 + (n_layers + 1) * ROW
    right = MARGIN + n_pos * column
    for (r, c) in sorted(set(zip(rows[kept].tolist(), cols[kept].tolist()))):
        here = np.flatnonzero(kept & (rows == r) & (cols == c))
        k = np.arange(len(here))
        if r == n_layers + 1:  # the logits in a row at the top, ending over the last position
            start = max(MARGIN, MARGIN + c * column - (len(here) - 1) * LOGIT_STEP)
            x[here], y[here] = start + k * LOGIT_STEP, MARGIN
            right = max(right, start + len(here) * LOGIT_STEP)
            continue
        x[here] = MARGIN + c * column + (k % per_row) * STEP
        y[here] = height - MARGIN - r * ROW - (k // per_row) * STEP
    return Layout(x, y, int(right + MARGIN), height, column)


def node_ids(graph: Graph) -> list:
    """The page's id of every graph node (see the module docstring)."""
    ids = [f"F{l}_{f}_{p}" for l, p, f in graph.features.tolist()]
    ids += [f"R{j // graph.n_pos}_{j % graph.n_pos}" for j in range(graph.n_layers * graph.n_pos)]
    return ids + [f"T{p}" for p in range(graph.n_pos)] + [f"L{t}" for t in graph.logit_tokens.tolist()]


def _svg(graph: Graph, pruned: Pruned, nodes: list, lay: Layout, token_strs, max_edges: int) -> str:
    kept = pruned.node_mask
    targets, sources, weights = kept_edges(graph, pruned)
    both = kept[targets] & kept[sources]
    targets, sources, weights = targets[both], sources[both], weights[both]
    strongest = np.argsort(-np.abs(weights), kind="stable")[:max_edges]  # a large graph: its strongest edges
    targets, sources, weights = targets[strongest], sources[strongest], weights[strongest]
    scale = float(np.abs(weights).max()) if len(weights) else 1.0
    ids = node_ids(graph)
    parts = []
    for t, s, w in sorted(zip(targets, sources, weights), key=lambda e: abs(e[2])):  # strongest drawn last, on top
        colour = POSITIVE if w >= 0 else NEGATIVE
        a, b = nodes[s], nodes[t]
        parts.append(f'<line class="gv-edge" x1="{lay.x[s]:.1f}" y1="{lay.y[s]:.1f}" x2="{lay.x[t]:.1f}" '
                     f'y2="{lay.y[t]:.1f}" stroke="{colour}" stroke-width="{0.4 + 4 * abs(w) / scale:.2f}" '
                     f'data-source="{ids[s]}" data-target="{ids[t]}" data-weight="{w:.6g}">'
                     f'<title>{html.escape(_label(a))} \u2192 {html.escape(_label(b))}: {w:+.4g}</title></line>')
    for r, name in [(0, "tokens")] + [(l + 1, f"layer {l}") for l in range(graph.n_layers)]:
        y = lay.height - MARGIN - r * ROW
        parts.append(f'<text x="2" y="{y + 18:.0f}" fill="#888">{name}</text>')
    for p, tok in enumerate(token_strs):
        parts.append(f'<text x="{MARGIN + p * lay.column:.0f}" y="{lay.height - 6}" fill="#333">'
                     f'{html.escape(tok[:int(lay.column // 7)])}</text>')
    for i in np.flatnonzero(kept):
        n, x, y = nodes[i], lay.x[i], lay.y[i]
        common = f'class="gv-node gv-{_kind(n)}" data-id="{ids[i]}"'
        tip = f"<title>{html.escape(_label(n))}</title>"
        if n["feature_type"] == "mlp reconstruction error":
            parts.append(f'<rect {common} x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#bbb">'
                         f"{tip}</rect>")
        elif n["feature_type"] == "embedding":
            parts.append(f'<rect {common} x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="#9ca3af">'
                         f"{tip}</rect>")
        elif n["feature_type"] == "logit":
            token = n["clerp"][len('Output "'):n["clerp"].rindex('" (p=')]
            parts.append(f'<circle {common} cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#10b981">{tip}</circle>'
                         f'<text x="{x:.1f}" y="{y - 10:.1f}" text-anchor="middle">"{html.escape(token[:6])}" '
                         f'{n["token_prob"]:.2f}</text>')
        else:
            parts.append(f'<circle {common} cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="#f59e0b">{tip}</circle>')
    return (f'<svg id="gv-svg" width="{lay.width}" height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="attribution graph">{"".join(parts)}</svg>')


def _kind(n: dict) -> str:
    kinds = {"embedding": "token", "logit": "logit", "mlp reconstruction error": "error"}
    return kinds.get(n["feature_type"], "feature")


def _label(n: dict) -> str:
    kind = _kind(n)
    if kind == "feature":
        layer, feat, pos = n["node_id"].split("_")  # circuit-tracer's feature id: layer_feature_position
        return f"L{layer} feature {feat} @{pos}"
    if kind == "error":
        return f"L{n['layer']} error @{n['ctx_idx']}"
    if kind == "token":
        return f"token @{n['ctx_idx']}"
    return n["clerp"]


def graph_section(graph: Graph, pruned: Pruned, token_strs, logit_strs, cards=None, scores=None,
                  max_edges: int = 4000):
    """(section id, nav label, title, body HTML) for lmjax.interp.report.render_html.

    cards: {(layer, feature): the feature's card HTML} (features without one say so when
    clicked); scores: lmjax.graph.prune.scores(graph), shown above the graph; max_edges:
    the kept edges drawn, the strongest first (a page stays light on a large graph)."""
    nodes = graph_nodes(graph, token_strs, logit_strs, pruned.cumulative)
    lay = layout(graph, pruned.node_mask)
    kept = np.flatnonzero(pruned.node_mask)
    ids = node_ids(graph)
    data = {"nodes": [{"id": ids[i], "label": _label(nodes[i]), "act": nodes[i]["activation"],
                       "x": round(float(lay.x[i]), 1), "y": round(float(lay.y[i]), 1)} for i in kept]}
    hidden = []
    for i in kept[kept < graph.n_features]:
        layer, _, feat = graph.features[i].tolist()
        if cards and (layer, feat) in cards:
            hidden.append(f'<template id="gv-card-{ids[i]}">{cards[(layer, feat)]}</template>')
    counts = {k: int(pruned.node_mask[s].sum()) for k, s in graph.slices().items()}
    note = (f"{counts['features']} features, {counts['errors']} error nodes, {counts['tokens']} tokens and "
            f"{counts['logits']} logits kept by pruning (of {graph.n_features} features computed), "
            f"{int(pruned.edge_rows.sum())} edges" +
            (f" (the {max_edges} strongest drawn)." if pruned.edge_rows.sum() > max_edges else "."))
    if scores:
        note += f" Replacement score {scores['replacement']:.3f}, completeness {scores['completeness']:.3f}."
    body = (f"<style>{CSS}{CARD_CSS if hidden else ''}</style><p class=\"note\">{html.escape(note)} Hover a node "
            "for its edges; click a feature "
            "for its dashboard; shift-click (or <i>pin</i>) to pin nodes, <i>group</i> to make the pinned nodes one "
            "supernode. Blue edges raise their target, red ones lower it.</p>"
            '<div id="gv-tools"><button id="gv-pin" type="button">pin</button>'
            '<button id="gv-group" type="button">group pinned</button><span id="gv-pins"></span></div>'
            '<div id="gv-info" class="note"></div>'
            f'<div id="gv-wrap">{_svg(graph, pruned, nodes, lay, token_strs, max_edges)}</div><ul id="gv-groups"></ul>'
            '<div id="gv-card"></div>' + "".join(hidden) +
            f'<script type="application/json" id="gv-data">{_json_in_html(data)}</script><script>{JS}</script>')
    return "graph", "Graph", "Attribution graph", body


def _json_in_html(data) -> str:
    return json.dumps(data).replace("</", "<\\/")


# ------------------------------------------------------------------ the features' cards

def layer_dictionary(transcoders: Transcoders, layer: int):
    """(Dictionary, params) reading layer `layer`'s features for their dashboards. A
    cross-layer transcoder's layer becomes one transcoder whose decoder is the sum of what
    each feature writes to its own and every later layer (its direct effect on the logits is
    that sum's); the card names its first output, hooks_out[layer]."""
    if transcoders.kind == "per_layer":
        return transcoders.dictionaries[layer], transcoders.params[layer]
    clt, p = transcoders.dictionaries, transcoders.params
    scales = np.asarray(clt.output_scales, np.float32)
    w_dec = (np.asarray(p["W_dec"][layer]) / scales[layer:][None, :, None]).sum(1)
    d = dataclasses.replace(clt.layer, hook_in=clt.hooks_in[layer], hook_out=clt.hooks_out[layer],
                            input_scale=float(clt.input_scales[layer]), output_scale=1.0)
    params = {"W_enc": np.asarray(p["W_enc"][layer]), "b_enc": np.asarray(p["b_enc"][layer]), "W_dec": w_dec,
              "b_dec": np.zeros(clt.d_out, np.float32)}
    if "threshold" in p:
        params["threshold"] = np.asarray(p["threshold"][layer])
    return d, params


def feature_cards(model, params, tokenizer, transcoders: Transcoders, features, prompt_tokens, tokens=None):
    """({(layer, feature): card HTML}, {(layer, feature): circuit-tracer feature dict}) for the
    (layer, feature) pairs `features`: each card with the feature's top logits, its
    activation over the prompt and, with a token set `tokens` [n, t], its top contexts."""
    from lmjax.sae import dashboard, dashboard_html  # local: only a report with a graph draws cards

    cards, ct = {}, {}
    ids = np.asarray(prompt_tokens)
    for layer in sorted({int(l) for l, _ in features}):
        d, dp = layer_dictionary(transcoders, layer)
        index = sorted({int(f) for l, f in features if l == layer})
        if tokens is not None:
            dash = dashboard.compute(model, params, tokenizer, d, dp, tokens, index)
        else:
            top, bottom = dashboard.top_logits(model, params, d, dp, np.asarray(index, np.int64))
            empty = np.zeros(0)
            dash = dashboard.Dashboards(d, [dashboard.Feature(i, 0, 0, 0.0, 0.0, 0.0, [], [], empty, empty, empty,
                                                              top[j], bottom[j]) for j, i in enumerate(index)],
                                        0, {}, 0.0)
        acts = dashboard.feature_activations(model, params, d, dp, ids[None], index)[0]  # [P, F]
        for j, f in enumerate(dash.features):
            f.prompt = dashboard.Context(float(acts[-1, j]), 0, len(ids) - 1, 0, ids.tolist(), acts[:, j].tolist())
        dash.labels = dashboard.card_labels(tokenizer, dash.features)
        for f, d_json in zip(dash.features, dashboard.circuit_tracer_features(dash)):
            card = dashboard_html.feature_card(f, dash).replace(f'id="f-{f.index}"', f'data-layer="{layer}"', 1)
            cards[(layer, f.index)] = card.replace(f"<h3>Feature {f.index}</h3>",
                                                   f"<h3>Layer {layer}, feature {f.index}</h3>", 1)
            ct[(layer, f.index)] = d_json
    return cards, ct

