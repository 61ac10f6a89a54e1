"""Attribution graphs (lmjax.graph), on attention (GPT-2 and Llama shapes), Mamba, a
hybrid, LSTM + GRU and gated convolution: the replacement reproduces the model and is
affine, every edge equals the effect of injecting its source (circuit-tracer's own
exactness check), the logit is the sum of its edges, the node budget keeps the rows it visits, and pruning and scores agree with
circuit-tracer's functions run on the same adjacency."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _model_fixtures import FAST_COMPILE, GPT2, LLAMA, random_params, random_tokens
from lmjax.errors import LmjaxError
from lmjax.graph import Transcoders, attribute, build_replacement
from lmjax.graph.prune import node_influence, prune, scores
from lmjax.graph.replacement import FROZEN_MIXER_POINTS
from lmjax.model import ModelConfig, Transformer
from lmjax.model.config import MIXER_LETTERS
from lmjax.sae.architectures import Dictionary
from lmjax.sae.crosslayer import CrossLayerTranscoder

N_LAYER, D, WIDTH, N_POS = 2, 32, 48, 9
MODELS = {"gpt2": GPT2, "llama": LLAMA, "mamba": dict(GPT2, mixer="mamba"), "hybrid": dict(GPT2, layer_pattern="MA"),
          "recurrent": dict(GPT2, layer_pattern="LG"), "conv": dict(GPT2, layer_pattern="CA")}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    cfg = ModelConfig(vocab_size=61, d_model=D, n_layer=N_LAYER, n_head=4, max_len=16, **MODELS[request.param])
    return Transformer(cfg), random_params(cfg), random_tokens(cfg, 1, N_POS)[0]


MLP_HOOKS = tuple(f"blocks.{l}.ln2.hook_normalized" for l in range(N_LAYER)) + tuple(
    f"blocks.{l}.hook_mlp_out" for l in range(N_LAYER))


@functools.lru_cache(maxsize=None)
def _compiled_mlp_cache(cfg):
    model = Transformer(cfg)
    return jax.jit(lambda params, tokens: model.run_with_cache(params, tokens, MLP_HOOKS)[1],
                   compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _compiled_forward(cfg):
    model = Transformer(cfg)
    return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens), compiler_options=FAST_COMPILE)


def _mlp_samples(model):
    """(MLP inputs [n, L, d], MLP outputs [n, L, d]) of the model on other random tokens."""
    m, params, _ = model
    names = MLP_HOOKS
    cache = _compiled_mlp_cache(m.cfg)(params, random_tokens(m.cfg, 8, 16, seed=1))
    x = np.stack([np.asarray(cache[n]).reshape(-1, D) for n in names[:N_LAYER]], 1)
    return x, np.stack([np.asarray(cache[n]).reshape(-1, D) for n in names[N_LAYER:]], 1)


def _least_squares(f, y):
    return np.linalg.lstsq(np.asarray(f, np.float64), np.asarray(y, np.float64), rcond=None)[0].astype(np.float32)


def per_layer_transcoders(model, seed=0):
    """Random encoders, decoders fitted by least squares to the MLPs on other tokens: a
    replacement that explains much but not all (errors of a realistic size). Layer 0's has a
    random linear skip (the graph's paths through it are linear edges too)."""
    x, y = _mlp_samples(model)
    ds, ps = [], []
    for l in range(N_LAYER):
        d = Dictionary("relu", D, WIDTH, hook_in=f"blocks.{l}.ln2.hook_normalized", hook_out=f"blocks.{l}.hook_mlp_out",
                       input_scale=1.3, output_scale=0.7, skip=l == 0)
        p = d.init(jax.random.key(seed + l))
        p["b_enc"] = p["b_enc"] - 0.05  # about half the features active
        p["b_dec"] = 0.1 * jax.random.normal(jax.random.key(seed + 10 + l), (D,))
        target = y[:, l] * d.output_scale - np.asarray(p["b_dec"])
        if d.skip:
            p["W_skip"] = 0.2 * jax.random.normal(jax.random.key(seed + 20 + l), (D, D)) / np.sqrt(D)
            target = target - x[:, l] * d.input_scale @ np.asarray(p["W_skip"])
        f = d.encode(p, x[:, l] * d.input_scale)
        p["W_dec"] = jnp.asarray(_least_squares(f, target))
        ds.append(d)
        ps.append(p)
    return Transcoders.of(ds, ps)


def crosslayer_transcoder(model, seed=0):
    clt = CrossLayerTranscoder("relu", N_LAYER, D, WIDTH, hooks_in=[f"blocks.{l}.ln2.hook_normalized" for l in range(N_LAYER)],
                               hooks_out=[f"blocks.{l}.hook_mlp_out" for l in range(N_LAYER)],
                               input_scales=(1.2, 0.8), output_scales=(0.9, 1.1))
    p = clt.init(jax.random.key(seed))
    p["b_dec"] = 0.1 * jax.random.normal(jax.random.key(seed + 5), p["b_dec"].shape)
    x, y = _mlp_samples(model)
    return Transcoders.of(clt, fit_crosslayer_decoders(clt, p, x, y))


def fit_crosslayer_decoders(clt, p, x, y):
    """p with each layer t's decoders least-squares-fitted to the MLP outputs y[:, t] from
    the features of layers 0..t on inputs x [n, L, d]."""
    f = np.asarray(clt.encode(p, clt.scale_inputs(x)))  # [n, L, width]
    target = clt.scale_targets(y) - np.asarray(p["b_dec"])
    w_dec = [np.zeros_like(np.asarray(w)) for w in p["W_dec"]]
    for t in range(clt.n_layers):
        w = _least_squares(f[:, :t + 1].reshape(len(f), -1), target[:, t]).reshape(t + 1, clt.width, clt.d_out)
        for l in range(t + 1):
            w_dec[l][:, t - l] = w[l]
    return dict(p, W_dec=tuple(jnp.asarray(w) for w in w_dec))


TRANSCODERS = {"per_layer": per_layer_transcoders, "cross_layer": crosslayer_transcoder}


@pytest.fixture(scope="module", params=sorted(TRANSCODERS))
def traced(request, model):
    m, params, tokens = model
    t = TRANSCODERS[request.param](model)
    return m, params, tokens, t, build_replacement(m, params, tokens, t), attribute(m, params, tokens, t, batch_size=32)


@functools.lru_cache(maxsize=None)
def _compiled_linear(rep):
    return jax.jit(lambda ue, um: rep.linear(ue, um), compiler_options=FAST_COMPILE)


def _targets(rep, graph, u_embed, u_mlp):
    """The selected features' pre-activations and the logit nodes' demeaned logits at (u_embed, u_mlp)."""
    x, logits = _compiled_linear(rep)(u_embed, u_mlp)
    pre, _ = rep.transcoders.encode(x)
    f = graph.features
    last = np.asarray(logits[-1], np.float64)
    return np.asarray(pre)[f[:, 1], f[:, 0], f[:, 2]], (last - last.mean())[graph.logit_tokens]


def test_the_replacement_reproduces_the_model(traced):
    m, params, tokens, t, rep, graph = traced
    u_embed, u_mlp = rep.u()
    _, logits = _compiled_linear(rep)(u_embed, u_mlp)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(_compiled_forward(m.cfg)(params, tokens[None])[0]),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(rep.reconstruction + rep.errors), np.asarray(rep.mlp_out), atol=1e-6)
    assert 0.2 < np.mean(np.asarray(rep.acts) > 0) < 0.8  # a graph with many active features


def test_the_frozen_model_is_affine(traced):
    """Every nonlinearity of the prompt is frozen (attention patterns, norm scales, Mamba's
    SiLU ratio, steps, B, C and gate): f(2u) - f(u) = f(u) - f(0), far from the prompt too."""
    m, params, tokens, t, rep, graph = traced
    u_embed, u_mlp = rep.u()
    (x0, l0), (x1, l1), (x2, l2) = [_compiled_linear(rep)(c * u_embed, c * u_mlp) for c in (0.0, 1.0, 2.0)]
    np.testing.assert_allclose(np.asarray(x2 - x1), np.asarray(x1 - x0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(l2 - l1), np.asarray(l1 - l0), atol=1e-4)


def test_every_edge_equals_the_effect_of_injecting_its_source(traced):
    """circuit-tracer's exactness check: in the frozen model, adding a source's vector (an
    error, a token's embedding, a feature's activation times its decoder rows) changes every
    feature's pre-activation and every demeaned logit by that source's adjacency column."""
    m, params, tokens, t, rep, graph = traced
    u_embed, u_mlp = rep.u()
    base = _targets(rep, graph, u_embed, u_mlp)
    s = graph.slices()
    f = graph.features
    writes = t.decoder_rows(f[:, 0], f[:, 2]) * graph.activations[graph.selected][:, None, None]
    injections = [(graph.error_node(l, p), u_embed, u_mlp.at[l, p].add(rep.errors[l, p]))
                  for l in range(N_LAYER) for p in range(N_POS)]
    injections += [(graph.token_node(p), u_embed.at[p].add(rep.u_embed[p]), u_mlp) for p in range(N_POS)]
    injections += [(j, u_embed, u_mlp.at[:, f[j, 1]].add(jnp.asarray(writes[j])))
                   for j in range(0, graph.n_features, max(graph.n_features // 24, 1))]
    assert graph.adjacency[s["features"], s["errors"]].any() and graph.adjacency[s["logits"], s["features"]].any()
    for column, ue, um in injections:
        pre, logits = _targets(rep, graph, ue, um)
        np.testing.assert_allclose(pre - base[0], graph.adjacency[s["features"], column], atol=1e-3, err_msg=str(column))
        np.testing.assert_allclose(logits - base[1], graph.adjacency[s["logits"], column], atol=1e-5, err_msg=str(column))
    # nothing flows into errors and tokens, nor from a feature to one at its own layer or below
    assert not graph.adjacency[s["errors"].start:s["logits"].start].any()
    layer = f[:, 0]
    assert not graph.adjacency[s["features"], s["features"]][layer[:, None] <= layer[None, :]].any()


def test_a_logit_is_the_sum_of_its_edges_and_the_biases(traced):
    """The replacement is affine: the demeaned logit minus what the decoder biases alone give
    (no tokens, no features, no errors) is the sum of its row over every source."""
    m, params, tokens, t, rep, graph = traced
    u_embed, u_mlp = rep.u()
    _, full = _targets(rep, graph, u_embed, u_mlp)
    biases_only = jnp.broadcast_to(rep.bias[:, None], u_mlp.shape)
    _, bias = _targets(rep, graph, jnp.zeros_like(u_embed), biases_only)
    assert graph.n_features == len(graph.active_features)  # no budget: every source is a node
    np.testing.assert_allclose(graph.adjacency[graph.slices()["logits"]].sum(1), full - bias, atol=1e-4)


def test_the_top_logits_reach_the_probability_with_at_most_ten(traced):
    m, params, tokens, t, rep, graph = traced
    p = np.asarray(jax.nn.softmax(rep.logits[-1]))
    order = np.argsort(-p)
    n = len(graph.logit_tokens)
    assert list(graph.logit_tokens) == list(order[:n]) and n <= 10
    assert n == 10 or (p[order[:n]].sum() >= 0.95 and p[order[:n - 1]].sum() < 0.95)


def test_a_node_budget_keeps_the_rows_it_visits(model):
    m, params, tokens = model
    t = per_layer_transcoders(model)
    full = attribute(m, params, tokens, t, batch_size=16)
    budget = len(full.active_features) // 4
    small = attribute(m, params, tokens, t, batch_size=16, max_feature_nodes=budget)
    assert small.n_features == budget and np.all(np.diff(small.selected) > 0)
    columns = np.concatenate([small.selected, np.arange(full.n_features, full.adjacency.shape[1])])
    rows = np.concatenate([small.selected, np.arange(full.n_features + (N_LAYER + 1) * N_POS, full.adjacency.shape[0])])
    np.testing.assert_allclose(small.adjacency[:budget], full.adjacency[small.selected][:, columns], atol=1e-6)
    np.testing.assert_allclose(small.adjacency[-len(small.logit_tokens):], full.adjacency[rows[budget:]][:, columns],
                               atol=1e-6)
    # visited by influence: the budget holds far more of the features' influence than its share
    influence = node_influence(full)[:full.n_features]
    assert influence[small.selected].sum() / influence.sum() > 0.5


def _circuit_tracer_graph(graph):
    import torch
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.graph import Graph as CTGraph
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

    cfg = UnifiedConfig(n_layers=graph.n_layers, d_model=D, d_head=8, n_heads=4, d_mlp=4 * D, d_vocab=61,
                        tokenizer_name="byte", model_name="lmjax", original_architecture="lmjax")
    return CTGraph(input_string="", input_tokens=torch.tensor(graph.tokens), cfg=cfg,
                   active_features=torch.as_tensor(graph.active_features),
                   adjacency_matrix=torch.tensor(graph.adjacency),
                   selected_features=torch.as_tensor(graph.selected),
                   activation_values=torch.as_tensor(graph.activations),
                   logit_targets=[LogitTarget(token_str="", vocab_idx=int(i)) for i in graph.logit_tokens],
                   logit_probabilities=torch.tensor(graph.logit_probabilities), scan="lmjax")


@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9)])
def test_pruning_and_scores_equal_circuit_tracers(traced, thresholds):
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    graph = traced[-1]
    theirs = prune_graph(_circuit_tracer_graph(graph), *thresholds)
    ours = prune(graph, *thresholds)
    np.testing.assert_array_equal(ours.node_mask, theirs.node_mask.numpy())
    np.testing.assert_array_equal(ours.edge_mask, theirs.edge_mask.numpy())
    np.testing.assert_allclose(ours.cumulative, theirs.cumulative_scores.numpy(), atol=1e-6)
    kept = ours.node_mask[graph.slices()["features"]].sum()
    assert kept < graph.n_features and (kept > 0 or thresholds != (0.8, 0.98))  # pruning that could go wrong
    replacement, completeness = compute_graph_scores(_circuit_tracer_graph(graph))
    mine = scores(graph)
    assert mine["replacement"] == pytest.approx(replacement, abs=1e-6)
    assert mine["completeness"] == pytest.approx(completeness, abs=1e-6)
    assert 0 < mine["replacement"] < 1 and 0 < mine["completeness"] < 1


def test_one_line_errors_before_anything_runs(model):
    m, params, tokens = model
    t = per_layer_transcoders(model)
    with pytest.raises(LmjaxError, match="one prompt"):
        attribute(m, params, tokens[None], t)
    with pytest.raises(LmjaxError, match="one per MLP"):
        attribute(m, params, tokens, Transcoders.of(t.dictionaries[:1], t.params[:1]))
    sae = Dictionary("relu", D, WIDTH, hook_in="blocks.0.hook_resid_post")
    with pytest.raises(LmjaxError, match="transcoders"):
        Transcoders.of([sae, t.dictionaries[1]], t.params)


def test_every_mixer_names_what_freezes_it():
    assert set(FROZEN_MIXER_POINTS) == set(MIXER_LETTERS.values())
