"""The views of an attribution graph: circuit-tracer's graph JSON (lmjax.graph.frontend),
the interactive section of the `lmjax explain` page (lmjax.graph.view), and the commands
that make them (`lmjax sae train --transcoders mlp|clt`, `lmjax explain --graph`).

The JSON is compared with what circuit-tracer's own create_graph_files functions make of
the same graph and pruning, and validated by its pydantic models; the page is opened in a
real headless Chromium, driven by its address to click a feature, pin two nodes and group
them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from _model_fixtures import GPT2, random_params, random_tokens
from _one_device import outputs, run_lmjax
from lmjax import commands
from lmjax.graph import attribute, frontend, view
from lmjax.graph.prune import prune
from lmjax.model import ModelConfig, Transformer
from test_graph import crosslayer_transcoder, per_layer_transcoders

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-extensions", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


# ------------------------------------------------------------------ the JSON, in process

@pytest.fixture(scope="module", params=["per_layer", "cross_layer"])
def traced(request):
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layer=2, n_head=4, max_len=16, **GPT2)
    model = (Transformer(cfg), random_params(cfg), random_tokens(cfg, 1, 9)[0])
    make = per_layer_transcoders if request.param == "per_layer" else crosslayer_transcoder
    transcoders = make(model)
    graph = attribute(model[0], model[1], model[2], transcoders)
    token_strs = [f"<{int(t)}>" for t in graph.tokens]
    logit_strs = [f"<{int(t)}>" for t in graph.logit_tokens]
    return SimpleNamespace(model=model, transcoders=transcoders, graph=graph, pruned=prune(graph),
                           token_strs=token_strs, logit_strs=logit_strs)


def _circuit_tracers_json(t, slug, scan, prompt):
    """circuit-tracer's own node, edge and model builders run on our graph and pruning."""
    import torch
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.graph import Graph as CTGraph
    from circuit_tracer.utils.create_graph_files import build_model, create_nodes, create_used_nodes_and_edges
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

    g = t.graph
    cfg = UnifiedConfig(n_layers=g.n_layers, d_model=32, d_head=8, n_heads=4, d_mlp=128, d_vocab=61,
                        tokenizer_name="lmjax", model_name="lmjax", original_architecture="lmjax")
    ct = CTGraph(input_string=prompt, input_tokens=torch.tensor(g.tokens), cfg=cfg,
                 active_features=torch.as_tensor(g.active_features), adjacency_matrix=torch.tensor(g.adjacency),
                 selected_features=torch.as_tensor(g.selected), activation_values=torch.as_tensor(g.activations),
                 logit_targets=[LogitTarget(token_str=s, vocab_idx=int(i))
                                for s, i in zip(t.logit_strs, g.logit_tokens)],
                 logit_probabilities=torch.tensor(g.logit_probabilities), scan=scan)
    tokenizer = SimpleNamespace(decode=lambda i: f"<{int(i)}>")
    nodes = create_nodes(ct, torch.tensor(t.pruned.node_mask), tokenizer, torch.tensor(t.pruned.cumulative))
    used_nodes, used_edges = create_used_nodes_and_edges(ct, nodes, torch.tensor(t.pruned.edge_mask))
    return build_model(ct, used_nodes, used_edges, slug, scan, 0.8, tokenizer)


def test_graph_json_is_circuit_tracers(traced):
    from circuit_tracer.frontend.graph_models import Model

    t = traced
    ours = frontend.graph_json(t.graph, t.token_strs, t.logit_strs, prompt="a prompt", slug="g-1", scan="lmjax",
                               pruned=t.pruned)
    theirs = _circuit_tracers_json(t, "g-1", "lmjax", "a prompt").model_dump()
    mine = Model(**json.loads(json.dumps(ours))).model_dump()  # valid under its models, through a file's text
    assert mine["metadata"] == theirs["metadata"] and mine["qParams"] == theirs["qParams"]
    assert mine["nodes"] == theirs["nodes"]
    assert len(mine["links"]) == len(theirs["links"])
    for a, b in zip(mine["links"], theirs["links"]):
        assert (a["source"], a["target"]) == (b["source"], b["target"]) and a["weight"] == pytest.approx(b["weight"])

    # and against the pruned graph itself: every kept node and edge, weights from the adjacency
    g, p = t.graph, t.pruned
    assert len(ours["nodes"]) == p.node_mask.sum() and len(ours["links"]) == p.edge_mask.sum()
    kinds = [n["feature_type"] for n in ours["nodes"]]
    s = g.slices()
    for kind, key in (("cross layer transcoder", "features"), ("mlp reconstruction error", "errors"),
                      ("embedding", "tokens"), ("logit", "logits")):
        assert kinds.count(kind) == p.node_mask[s[key]].sum()
    dst, src = np.nonzero(p.edge_mask)
    np.testing.assert_allclose(sorted(l["weight"] for l in ours["links"]), np.sort(g.adjacency[dst, src]), rtol=1e-6)
    assert 0 < p.node_mask[s["features"]].sum() < g.n_features  # pruning that could go wrong
    feature = next(n for n in ours["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index, pos = map(int, feature["node_id"].split("_"))
    assert feature["feature"] == frontend.cantor(layer, index) and feature["ctx_idx"] == pos
    i = np.flatnonzero((g.features == [layer, pos, index]).all(1))[0]
    assert feature["activation"] == pytest.approx(float(g.activations[g.selected[i]]))


def test_feature_files_are_circuit_tracers(traced):
    from circuit_tracer.frontend.feature_models import Model as FeatureModel

    t = traced
    m, params, tokens = t.model
    kept = [tuple(f) for f in t.graph.features[t.pruned.node_mask[:t.graph.n_features]][:, [0, 2]].tolist()][:4]
    text = random_tokens(m.cfg, 6, 12, seed=3)
    cards, features = view.feature_cards(m, params, _Tokenizer(), t.transcoders, kept, np.asarray(tokens), text)
    files = frontend.feature_files(features, scan="s")
    assert sorted(files) == sorted(os.path.join("features", "s", f"{frontend.cantor(l, f)}.json") for l, f in kept)
    for d in files.values():
        FeatureModel(**d)
    assert set(cards) == set(kept) and all("Top activations" in c for c in cards.values())


def test_a_crosslayer_layer_reads_the_features_the_graph_has(traced):
    """The per-layer view of a transcoder set (what a feature's dashboard is drawn from) gives
    the graph's activations on the prompt."""
    from lmjax.sae.dashboard import feature_activations

    t = traced
    m, params, tokens = t.model
    g = t.graph
    for layer in range(g.n_layers):
        d, dp = view.layer_dictionary(t.transcoders, layer)
        acts = feature_activations(m, params, d, dp, np.asarray(tokens)[None])[0]  # [P, width]
        rows = g.active_features[:, 0] == layer
        _, pos, index = g.active_features[rows].T
        np.testing.assert_allclose(acts[pos, index], g.activations[rows], rtol=1e-4, atol=1e-5)
        assert (acts > 0).sum() == rows.sum()


class _Tokenizer:
    def decode(self, ids):
        return "".join(f"<{int(i)}>" for i in ids)


def test_graph_section_draws_every_kept_node_and_edge(traced):
    t = traced
    sid, _, _, body = view.graph_section(t.graph, t.pruned, t.token_strs, t.logit_strs)
    assert sid == "graph"
    assert body.count('class="gv-node') == t.pruned.node_mask.sum()
    assert body.count('class="gv-edge"') == t.pruned.edge_mask.sum()
    _, _, _, light = view.graph_section(t.graph, t.pruned, t.token_strs, t.logit_strs, max_edges=5)
    drawn = sorted(abs(float(w)) for w in re.findall(r'class="gv-edge"[^>]*data-weight="([^"]+)"', light))
    weights = np.abs(t.graph.adjacency[t.pruned.edge_mask])
    np.testing.assert_allclose(drawn, np.sort(weights)[-5:], rtol=1e-5)  # the five strongest
    assert "(the 5 strongest drawn)" in light
    lay = view.layout(t.graph, t.pruned.node_mask)
    kept = t.pruned.node_mask
    s = t.graph.slices()
    tokens_y, logits_y = lay.y[s["tokens"]][kept[s["tokens"]]], lay.y[s["logits"]][kept[s["logits"]]]
    features = np.flatnonzero(kept[s["features"]])
    assert (tokens_y > lay.y[features].max()).all() and (logits_y < lay.y[features].min()).all()  # bottom to top
    layer, pos = t.graph.features[features, 0], t.graph.features[features, 1]
    for l in range(t.graph.n_layers - 1):  # each layer's row above the one before
        below, above = lay.y[features][layer == l], lay.y[features][layer == l + 1]
        assert not len(below) or not len(above) or above.max() < below.min()
    assert (np.argsort(lay.x[s["tokens"]]) == np.arange(t.graph.n_pos)).all()  # positions left to right
    assert (pos == (lay.x[features] - view.MARGIN) // lay.column).all()


# ------------------------------------------------------------------ the commands, one subprocess

@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph_cli")
    corpus = tmp / "text.txt"
    corpus.write_text("".join(f"The cat sat on the mat {i % 7}. The dog sat on the log {i % 5}.\n" for i in range(300)))
    cfg = tmp / "cfg.py"
    cfg.write_text("def get_config(arg=None):\n"
                   "    return {'model': dict(n_layer=2, d_model=32, n_head=4, max_len=32),\n"
                   f"            'data': dict(source={str(corpus)!r}),\n"
                   "            'optimizer': dict(lr=1e-2, warmup_steps=10),\n"
                   "            'train': dict(steps=40, batch_size=16, eval_every=40, eval_batches=1,\n"
                   "                          sample_tokens=0)}\n")
    w, mlp, clt = str(tmp / "w"), str(tmp / "tcs"), str(tmp / "clt")
    train = ["--no_progress", "--config.batch_size=256", "--config.eval_tokens=512", "--config.lr=3e-3",
             "--width", "64", "--steps", "40"]
    prompt = ["--workdir", w, "--prompt", "The dog sat on the l"]
    codes, stdout, stderr = run_lmjax(
        ["train", "--config", str(cfg), "--workdir", w, "--no_progress"],
        ["sae", "train", "--workdir", w, "--transcoders", "mlp", "--arch", "topk", "--k", "6", "--out", mlp, *train],
        ["sae", "train", "--workdir", w, "--transcoders", "clt", "--arch", "relu", "--config.l1=0.3", "--out", clt,
         *train],
        ["explain", *prompt, "--graph", "--dictionary", mlp, "--feature_text", str(corpus), "--node_budget", "200",
         "--out", str(tmp / "mlp.html")])
    assert codes == [0] * 4, stderr[-3000:]
    return SimpleNamespace(tmp=tmp, w=w, mlp=mlp, clt=clt, stdout=outputs(stdout), prompt=prompt)


def test_sae_train_transcoders_writes_a_set_per_mlp(cli):
    from lmjax.commands.explain import load_transcoders
    from lmjax.graph.replacement import Transcoders
    from lmjax.sae.store import dictionary_dirs, load_dictionary
    from lmjax.train.workdir import open_workdir

    model = open_workdir(cli.w).load()[0]
    found = [load_dictionary(d) for d in dictionary_dirs(cli.mlp)]
    assert [(d.hook_in, d.hook_out) for d, _ in found] == [
        (f"blocks.{l}.ln2.hook_normalized", f"blocks.{l}.hook_mlp_out") for l in range(2)]
    assert found[0][0].output_scale != found[1][0].output_scale  # each layer at its own scale
    Transcoders.of([d for d, _ in found], [p for _, p in found]).check_model(model)
    for path, kind in ((cli.mlp, "per_layer"), (cli.clt, "cross_layer")):  # what `explain --graph` reads
        transcoders = load_transcoders(path)
        assert transcoders.kind == kind and transcoders.width == 64
        transcoders.check_model(model)
    # the CLT exported as a circuit-tracer directory reads back as the same transcoders
    from lmjax.sae.interchange import save_circuit_tracer

    clt, clt_params = load_dictionary(dictionary_dirs(cli.clt)[0])
    exported = save_circuit_tracer(clt, clt_params, str(cli.tmp / "ct"))
    ours, theirs = load_transcoders(cli.clt), load_transcoders(exported)
    assert theirs.kind == "cross_layer" and theirs.hooks_out == ours.hooks_out
    x = np.random.default_rng(0).standard_normal((5, 2, clt.d_in)).astype(np.float32)
    for a, b in zip(ours.encode(x), theirs.encode(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # layer 0's MLP is learnt in 40 steps (this tiny model's layer 1 MLP output is mostly
    # noise: zero-ablating it barely moves the loss); the CLT over both layers at once
    mlp, (whole,) = (json.load(open(os.path.join(out, "eval.json"))) for out in (cli.mlp, cli.clt))
    assert len(mlp) == 2 and mlp[0]["explained_variance"] > 0.3 and all(r["l0"] <= 6 for r in mlp), mlp
    assert whole["explained_variance"] > 0.1 and whole["ce_loss_recovered"] > 0, whole
    assert "2 transcoders" in cli.stdout[1] and "a cross-layer transcoder" in cli.stdout[2]


def test_explain_graph_writes_circuit_tracers_json(cli):
    from circuit_tracer.frontend.feature_models import Model as FeatureModel
    from circuit_tracer.frontend.graph_models import Model

    m = Model(**json.load(open(cli.tmp / "mlp.graph.json")))
    ids = {n.node_id for n in m.nodes}
    assert all(link["source"] in ids and link["target"] in ids for link in m.links)
    assert sum(n.feature_type == "logit" for n in m.nodes) >= 1 and m.metadata.prompt == "The dog sat on the l"
    assert m.metadata.scan == "tcs" and m.metadata.slug == "mlp"
    html = open(cli.tmp / "mlp.html", encoding="utf-8").read()
    assert html.count('class="gv-node') == len(m.nodes)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched
    features = os.listdir(cli.tmp / "mlp.graph_features")  # the viewer's features/<scan>/
    numbers = {str(n.feature) for n in m.nodes if n.feature_type == "cross layer transcoder"}
    assert {f[:-5] for f in features} == numbers
    for f in features:
        FeatureModel(**json.load(open(cli.tmp / "mlp.graph_features" / f)))
    assert "circuit-tracer's graph JSON" in cli.stdout[3]


def _dom(url):
    run = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no JS errors, no console output at all
    return run.stdout


def test_the_graph_renders_and_a_click_opens_a_feature(cli):
    assert CHROMIUM, "the test needs chromium on PATH"
    page = cli.tmp / "mlp.html"
    text = page.read_text(encoding="utf-8")
    features = re.findall(r'class="gv-node gv-feature" data-id="(F\d+_\d+_\d+)"', text)
    others = re.findall(r'class="gv-node gv-(?:error|token)" data-id="([^"]+)"', text)
    assert features and others
    first, (layer, index, _) = features[0], features[0][1:].split("_")
    dom = _dom(f"file://{page}#graph?open={first}&pin={features[-1]},{others[0]}&group=1")
    assert 'data-rendered="ok"' in dom
    n_nodes = int(re.search(r'id="gv-wrap" data-nodes="(\d+)"', dom).group(1))
    assert n_nodes == len(json.load(open(cli.tmp / "mlp.graph.json"))["nodes"]) == dom.count('class="gv-node')
    card = re.search(r'<div id="gv-card" data-open="([^"]+)">(.*?)</div>', dom, re.S)
    assert card.group(1) == first and f"Layer {layer}, feature {index}" in card.group(2)
    assert "Top activations" in dom.split('id="gv-card"')[1]  # the dashboard's contexts (--feature_text)
    group = re.search(r'class="gv-group" data-members="([^"]+)"', dom)
    assert group and group.group(1).split() == [features[-1], others[0]]
    assert "group 1:" in dom and 'class="gv-node gv-feature pinned"' not in dom  # grouping unpins
    assert f'class="gv-node gv-feature sel" data-id="{first}"' in dom


def test_graph_errors_are_one_line_before_any_work(cli, capsys, tmp_path):
    def error(argv):
        assert commands.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        return line

    out = ["--out", str(tmp_path / "r.html")]
    assert "--graph needs --dictionary" in error(["explain", *cli.prompt, "--graph", *out])
    assert "--node_budget is for --graph" in error(["explain", *cli.prompt, "--node_budget", "3", *out])
    one = os.path.join(cli.mlp, "dictionaries", "1")  # layer 1's transcoder alone: not a set for this model
    line = error(["explain", *cli.prompt, "--graph", "--dictionary", one, *out])
    assert "one per MLP" in line and "blocks.0.hook_mlp_out" in line
    line = error(["explain", *cli.prompt, "--graph", "--dictionary", str(tmp_path), *out])
    assert "no transcoder set here" in line
    line = error(["sae", "train", "--workdir", cli.w, "--transcoders", "mlp", "--hook", "blocks.0.hook_resid_post",
                  "--out", str(tmp_path / "s")])
    assert "drop --hook" in line
    line = error(["sae", "train", "--workdir", cli.w, "--transcoders", "clt", "--arch", "matryoshka",
                  "--out", str(tmp_path / "s")])
    assert "--arch matryoshka" in line
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "s").exists()
