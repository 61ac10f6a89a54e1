"""lmjax's attribution graphs against circuit-tracer's, on the same model and transcoders.

A small random GPT-2-shaped model goes out through lmjax's Hugging Face export and its
transcoders (per-layer, and a cross-layer one) through save_circuit_tracer; circuit-tracer
0.5 loads both (tests/_circuit_tracer.py) and traces the same prompt. With its conventions
(zero_first_position=True: the BOS at position 0 has no features and no error vectors;
token_vectors="embedding": a token node is its token embedding) lmjax gives the same active
features and activations, the same logit nodes, the same adjacency, the same node budget's
visited features, the same pruned graph and the same scores.
"""
from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from circuit_tracer.graph import compute_graph_scores, prune_graph

import _circuit_tracer as ct
from _model_fixtures import GPT2, random_params, random_tokens
from lmjax.graph import Transcoders, attribute
from lmjax.graph.prune import prune, scores
from lmjax.model import ModelConfig, Transformer
from lmjax.sae.architectures import Dictionary
from lmjax.sae.crosslayer import CrossLayerTranscoder
from test_graph import _least_squares, fit_crosslayer_decoders

N_LAYER, D, WIDTH, N_POS = 2, 32, 64, 12
CT_CONVENTIONS = dict(zero_first_position=True, token_vectors="embedding")
HOOKS_IN = [f"blocks.{l}.ln2.hook_normalized" for l in range(N_LAYER)]
HOOKS_OUT = [f"blocks.{l}.hook_mlp_out" for l in range(N_LAYER)]


def _per_layer(x, y):
    """Random encoders (about half the features active), decoders fitted to the MLPs."""
    ds, ps = [], []
    for l in range(N_LAYER):
        d = Dictionary("relu", D, WIDTH, hook_in=HOOKS_IN[l], hook_out=HOOKS_OUT[l], input_scale=1.3, output_scale=0.7)
        p = d.init(jax.random.key(l))
        p["b_enc"] = p["b_enc"] - 0.05
        p["b_dec"] = 0.1 * jax.random.normal(jax.random.key(10 + l), (D,))
        f = d.encode(p, x[:, l] * d.input_scale)
        p["W_dec"] = jnp.asarray(_least_squares(f, y[:, l] * d.output_scale - np.asarray(p["b_dec"])))
        ds.append(d)
        ps.append(p)
    return Transcoders.of(ds, ps)


def _cross_layer(x, y):
    clt = CrossLayerTranscoder("relu", N_LAYER, D, WIDTH, hooks_in=HOOKS_IN, hooks_out=HOOKS_OUT,
                               input_scales=(1.2, 0.8), output_scales=(0.9, 1.1))
    p = clt.init(jax.random.key(0))
    p["b_dec"] = 0.1 * jax.random.normal(jax.random.key(5), p["b_dec"].shape)
    return Transcoders.of(clt, fit_crosslayer_decoders(clt, p, x, y))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, params, prompt starting with BOS, MLP samples, the Hugging Face directory)."""
    cfg = ModelConfig(vocab_size=61, d_model=D, n_layer=N_LAYER, n_head=4, max_len=16, **GPT2)
    model, params = Transformer(cfg), random_params(cfg)
    _, cache = model.run_with_cache(params, random_tokens(cfg, 8, 16, seed=1), HOOKS_IN + HOOKS_OUT)
    x = np.stack([np.asarray(cache[n]).reshape(-1, D) for n in HOOKS_IN], 1)
    y = np.stack([np.asarray(cache[n]).reshape(-1, D) for n in HOOKS_OUT], 1)
    tokens = np.array(random_tokens(cfg, 1, N_POS, seed=3)[0])
    tokens[0] = ct.BOS
    hf_dir = ct.export_model(cfg, params, str(tmp_path_factory.mktemp("graph_parity") / "hf"))
    return model, params, tokens, (x, y), hf_dir


@pytest.fixture(scope="module", params=["per_layer", "cross_layer"])
def both(request, exported, tmp_path_factory):
    """(lmjax's model, params, tokens, transcoders, circuit-tracer's ReplacementModel, both full graphs)."""
    model, params, tokens, (x, y), hf_dir = exported
    transcoders = (_per_layer if request.param == "per_layer" else _cross_layer)(x, y)
    directory = ct.save_transcoders(transcoders, str(tmp_path_factory.mktemp(request.param) / "transcoders"))
    theirs_model = ct.replacement_model(hf_dir, directory)
    with torch.no_grad():  # the same model on both sides
        np.testing.assert_allclose(theirs_model(torch.as_tensor(tokens)[None])[0].numpy(),
                                   np.asarray(model.apply({"params": params}, jnp.asarray(tokens)[None])[0]), atol=1e-4)
    theirs = ct.trace(theirs_model, tokens, batch_size=32)
    ours = attribute(model, params, jnp.asarray(tokens), transcoders, batch_size=32, **CT_CONVENTIONS)
    yield model, params, tokens, transcoders, theirs_model, ours, theirs
    theirs_model.reset_hooks(including_permanent=True)
    del theirs_model
    gc.collect()


def test_the_same_nodes_and_adjacency(both):
    *_, ours, theirs = both
    np.testing.assert_array_equal(ours.active_features, theirs.active_features.numpy())
    np.testing.assert_allclose(ours.activations, theirs.activation_values.numpy(), rtol=1e-5, atol=1e-6)
    assert not (ours.active_features[:, 1] == 0).any() and len(ours.active_features) > 100
    np.testing.assert_array_equal(ours.selected, theirs.selected_features.numpy())
    np.testing.assert_array_equal(ours.logit_tokens, [t.vocab_idx for t in theirs.logit_targets])
    np.testing.assert_allclose(ours.logit_probabilities, theirs.logit_probabilities.numpy(), atol=1e-6)
    adjacency = theirs.adjacency_matrix.numpy()
    assert ours.adjacency.shape == adjacency.shape
    s = ours.slices()
    # a graph with every kind of edge, feature to feature included
    for target, source in (("features", "features"), ("features", "errors"), ("features", "tokens"),
                           ("logits", "features"), ("logits", "errors"), ("logits", "tokens")):
        assert np.abs(adjacency[s[target], s[source]]).max() > 1e-2, (target, source)
    np.testing.assert_allclose(ours.adjacency, adjacency, atol=1e-4)


@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.6, 0.9)])
def test_the_same_pruned_graph_and_scores(both, thresholds):
    *_, ours, theirs = both
    kept, theirs_kept = prune(ours, *thresholds), prune_graph(theirs, *thresholds)
    np.testing.assert_array_equal(kept.node_mask, theirs_kept.node_mask.numpy())
    assert 0 < kept.node_mask[ours.slices()["features"]].sum() < ours.n_features  # pruning that could go wrong
    np.testing.assert_array_equal(kept.edge_mask, theirs_kept.edge_mask.numpy())
    mine, (replacement, completeness) = scores(ours), compute_graph_scores(theirs)
    assert mine["replacement"] == pytest.approx(replacement, abs=1e-4)
    assert mine["completeness"] == pytest.approx(completeness, abs=1e-4)
    assert 0 < mine["replacement"] < 1 and 0 < mine["completeness"] < 1


def test_a_node_budget_visits_the_same_features(both):
    """Ranked by partial influence, re-ranked every batch: the same visited set and rows."""
    model, params, tokens, transcoders, theirs_model, full, _ = both
    budget = len(full.active_features) // 5
    theirs = ct.trace(theirs_model, tokens, max_feature_nodes=budget, batch_size=16, update_interval=1)
    ours = attribute(model, params, jnp.asarray(tokens), transcoders, max_feature_nodes=budget, batch_size=16,
                     update_interval=1, **CT_CONVENTIONS)
    assert ours.n_features == budget
    np.testing.assert_array_equal(ours.selected, theirs.selected_features.numpy())
    np.testing.assert_allclose(ours.adjacency, theirs.adjacency_matrix.numpy(), atol=1e-4)
