"""Interventions that test a graph (lmjax.graph.interventions).

Exactness, on a random GPT-2-shaped model with per-layer and cross-layer transcoders: with
nothing changed the real run is the model; the graph's prediction of an ablation equals
the linearised frozen replacement run, and for last-layer features the sum of their edges
into the logit; the real run equals an independent hook (or lmjax.sae.splice) edit.

Acceptance, on an induction model trained here (random tokens with a repeated segment):
for [BOS] + s + s[:j], whose answer is B = s[j] (the token after the earlier copy of the
last token A = s[j-1]), the model predicts B, the graph draws B from its earlier position,
and ablating the graph's top features changes the B logit by at least half of what
zero-ablating their layer's MLP output does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from _model_fixtures import GPT2, random_params, random_tokens
from lmjax.errors import LmjaxError
from lmjax.graph import Transcoders, attribute
from lmjax.graph.interventions import Interventions, features_of
from lmjax.graph.prune import influence, normalized
from lmjax.interp.metrics import NextTokenLoss
from lmjax.model import ModelConfig, Transformer
from lmjax.repro.induction import repeat_rows
from lmjax.sae.activations import ModelSource
from lmjax.sae.architectures import Dictionary
from lmjax.sae.splice import Splice, spliced_run
from lmjax.sae.training import fit
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import init_params, make_train_step, new_state
from test_graph import crosslayer_transcoder, per_layer_transcoders

N_POS = 9


@pytest.fixture(scope="module")
def random_model():
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layer=2, n_head=4, max_len=16, **GPT2)
    return Transformer(cfg), random_params(cfg), random_tokens(cfg, 1, N_POS)[0]


@pytest.fixture(scope="module", params=["per_layer", "cross_layer"])
def traced(request, random_model):
    m, params, tokens = random_model
    make = per_layer_transcoders if request.param == "per_layer" else crosslayer_transcoder
    t = make(random_model)
    graph = attribute(m, params, tokens, t, batch_size=64)
    return m, params, tokens, t, graph, Interventions(m, params, tokens, t, graph)


def _demeaned(logits, token):
    logits = np.asarray(logits, np.float64)
    return logits[token] - logits.mean()


def test_with_nothing_changed_the_real_run_is_the_model(traced):
    m, params, tokens, t, graph, iv = traced
    np.testing.assert_allclose(iv.logits, np.asarray(m.apply({"params": params}, tokens[None])[0, -1]), atol=1e-5)
    e = iv.ablate([])
    assert e.change == 0 and e.linear == pytest.approx(0, abs=1e-6) and e.predicted == 0
    # clamping at the prompt's own activations changes nothing either
    f = graph.features[::7]
    e = iv.clamp(f, multiple=1.0)
    assert abs(e.change) < 1e-5 and abs(e.predicted) < 1e-5 and abs(e.linear) < 1e-5


def test_the_graphs_prediction_is_the_frozen_replacement_run(traced):
    """Propagating an ablation along the graph's edges (every active feature is a node) gives
    the linearised frozen replacement's change, computed by running it; both layers are
    ablated, so the prediction goes through later features' responses too."""
    m, params, tokens, t, graph, iv = traced
    f = graph.features
    for chosen in (f[::5], f[f[:, 0] == 0][::3], f[f[:, 1] == N_POS - 1]):
        e = iv.ablate(chosen)
        assert e.predicted == pytest.approx(e.linear, abs=1e-5 * max(1.0, abs(e.linear)))
        assert abs(e.linear) > 1e-3  # an ablation that moves the logit
    first = f[f[:, 0] == 0][::3]
    assert iv.ablate(first).predicted != pytest.approx(iv.ablate(first).predicted_direct, abs=1e-4)  # indirect paths
    # steering and clamping to other values, the same agreement
    for e in (iv.steer(f[::6], 0.7), iv.clamp(f[1::6], multiple=2.5), iv.clamp(f[2::6], value=0.3)):
        assert e.predicted == pytest.approx(e.linear, abs=1e-5 * max(1.0, abs(e.linear)))


def test_last_layer_features_act_by_their_direct_edges(traced):
    m, params, tokens, t, graph, iv = traced
    f = graph.features
    last = np.flatnonzero(f[:, 0] == graph.n_layers - 1)[::2]
    row = graph.slices()["logits"].start + int(np.flatnonzero(graph.logit_tokens == iv.target)[0])
    edges = graph.adjacency[row, last].astype(np.float64).sum()
    e = iv.ablate(f[last])
    assert e.predicted == pytest.approx(-edges, abs=1e-5) and e.predicted_direct == pytest.approx(-edges, abs=1e-5)
    assert e.linear == pytest.approx(-edges, abs=1e-5)
    if t.kind != "per_layer":  # (the final norm's part is the same for either kind)
        return
    # past the last MLP only the final norm is nonlinear: with it (and the patterns) held,
    # the real model's change is the prediction
    held = Interventions(m, params, tokens, t, graph, replacement=iv.rep, freeze_attention=True, freeze_norms=True)
    assert held.ablate(f[last]).change == pytest.approx(-edges, abs=1e-5)
    assert e.change != pytest.approx(-edges, abs=1e-3)  # free, the final norm rescales


def test_the_real_run_is_an_independent_edit(traced):
    """Steering by alpha adds alpha x the decoder rows at the feature's position (an
    independent hook); a per-layer ablation equals lmjax.sae.splice's (error term kept)."""
    m, params, tokens, t, graph, iv = traced
    first = graph.features[graph.features[:, 0] == 0]  # a cross-layer one writes both layers
    layer, pos, feature = first[len(first) // 2]
    rows = t.decoder_rows(np.array([layer]), np.array([feature]))[0]  # [L, d]
    hooks = {name: (lambda y, w: y.at[:, pos].add(w), jnp.asarray(rows[l]))
             for l, name in enumerate(t.hooks_out) if rows[l].any()}
    steered = m.run_with_hooks(params, tokens[None], {n: (fn, 1.5 * w) for n, (fn, w) in hooks.items()})[0, -1]
    e = iv.steer([(layer, pos, feature)], 1.5)
    assert e.after == pytest.approx(_demeaned(steered, iv.target), abs=1e-5)
    assert e.top_changes[0][0] == int(np.argmax(np.abs(jax.nn.softmax(steered) - jax.nn.softmax(iv.logits))))
    if t.kind != "per_layer":
        return
    chosen = graph.features[(graph.features[:, 1] == 3) & (graph.features[:, 0] == 0)][:4]
    splice = Splice(t.dictionaries[0], t.params[0], error=True, ablate=list(chosen[:, 2]), positions=[3])
    logits, _ = spliced_run(m, params, tokens[None], [splice])
    assert iv.ablate(chosen).after == pytest.approx(_demeaned(logits[0, -1], iv.target), abs=1e-5)


def test_supernodes_are_groups_changed_together(traced):
    m, params, tokens, t, graph, iv = traced
    f = graph.features
    groups = [f[:3], f[3:5].tolist()]
    each = iv.each(groups, "ablate")
    assert [e.change for e in each] == [iv.ablate(f[:3]).change, iv.ablate(f[3:5]).change]
    np.testing.assert_array_equal(features_of(groups), f[:5])
    assert iv.ablate(groups).change == iv.ablate(f[:5]).change


def test_bad_interventions_are_one_line_errors(traced):
    m, params, tokens, t, graph, iv = traced
    cases = [(lambda: iv.ablate([(2, 0, 0)]), "layer must be in 0..1"),
             (lambda: iv.ablate([(0, N_POS, 0)]), "position must be in"),
             (lambda: iv.ablate([(0, 0, t.width)]), "feature must be in"),
             (lambda: iv.ablate([(0, 0, 1), (0, 0, 1)]), "listed twice"),
             (lambda: iv.ablate([(0, 0)]), r"shape \[n, 3\]"),
             (lambda: iv.run([(0, 0, 1)], "boost", 1.0), "edit must be one of"),
             (lambda: iv.clamp([(0, 0, 1)]), "one of value= .* or multiple="),
             (lambda: iv.steer([(0, 0, 1), (0, 1, 1)], [1.0, 2.0, 3.0]), "one per feature"),
             (lambda: Interventions(m, params, tokens, t, target=10 ** 6), "outside the vocabulary"),
             (lambda: Interventions(m, params, tokens[:-1], t, graph), "another prompt")]
    for call, message in cases:
        with pytest.raises(LmjaxError, match=message):
            call()


# -- The induction model ---------------------------------------------------------------------

V, T, D = 32, 25, 32  # symbols (BOS = V), context, width
HOOKS_IN = [f"blocks.{l}.ln2.hook_normalized" for l in range(2)]
HOOKS_OUT = [f"blocks.{l}.hook_mlp_out" for l in range(2)]


def _train_induction_model():
    """2 layers, d_model 32, on [BOS] + random symbols with a copied segment of random
    length (lmjax.repro.induction.repeat_rows): only an induction circuit predicts the copy."""
    model = Transformer(ModelConfig(vocab_size=V + 1, n_layer=2, d_model=D, n_head=2, max_len=T))
    steps, batch, chunk = 3000, 32, 500
    o = ml_collections.ConfigDict(dict(lr=1e-2, end_lr=1e-2, schedule="constant", warmup_steps=0, b1=0.9, b2=0.98,
                                       eps=1e-8, weight_decay=0.0, clip_norm=1.0))
    optimizer = make_optimizer(o, steps)

    def loss_fn(p, tokens, key):
        return NextTokenLoss(tokens)(model.apply({"params": p}, tokens)).mean()

    step = make_train_step(model, optimizer, loss_fn=loss_fn, jit=False)
    run = jax.jit(lambda state, batches: jax.lax.scan(lambda s, b: (step(s, b)[0], None), state, batches)[0])
    state = new_state(init_params(model, jax.random.key(0)), optimizer)
    rng = np.random.RandomState(0)
    for _ in range(steps // chunk):
        state = run(state, jnp.asarray(repeat_rows(None, rng, chunk * batch, T, V, V).reshape(chunk, batch, T)))
    return model, state["params"]


def _transcoders(model, params):
    """TopK (k 8 of 128) transcoders on both MLPs, trained together (one member per layer)."""
    corpus = repeat_rows(None, np.random.RandomState(1), 2000, T, V, V).reshape(-1)
    source = ModelSource(model, params, corpus, HOOKS_IN, HOOKS_OUT, seq_len=T)
    d = Dictionary("topk", D, 128, d_out=D, k=8, hook_in=HOOKS_IN[0], hook_out=HOOKS_OUT[0])
    fitted = fit(d, source, steps=400, batch_size=1024, lr=3e-3, progress=False, log_every=400)
    members = [fitted.member(l) for l in range(2)]
    return Transcoders.of([dataclasses.replace(d, hook_in=HOOKS_IN[l], hook_out=HOOKS_OUT[l])
                           for l, (d, _) in enumerate(members)], [p for _, p in members])


@pytest.fixture(scope="module")
def induction():
    model, params = _train_induction_model()
    transcoders = _transcoders(model, params)
    s = np.random.RandomState(10).permutation(V)[:10]  # distinct symbols: one earlier copy of each
    j = 5
    tokens = jnp.asarray(np.concatenate([[V], s, s[:j]]), jnp.int32)
    graph = attribute(model, params, tokens, transcoders)
    b = int(s[j])
    return dict(model=model, params=params, tokens=tokens, transcoders=transcoders, graph=graph, b=b,
                earlier_b=j + 1, iv=Interventions(model, params, tokens, transcoders, graph, target=b))


def _influence_on(graph, token):
    """Every node's influence on one logit node (circuit-tracer's influence, that logit's weight 1)."""
    w = np.zeros(graph.n_nodes)
    w[graph.slices()["logits"].start + int(np.flatnonzero(graph.logit_tokens == token)[0])] = 1.0
    return influence(normalized(graph.rows), graph.row_nodes, w)


def test_the_induction_model_predicts_the_token_after_the_earlier_copy(induction):
    assert int(np.argmax(induction["iv"].logits)) == induction["b"]


def test_the_graph_draws_the_answer_from_its_earlier_position(induction):
    """B occurs once before the last position, right after the earlier A: of all token
    nodes, that one (not the current A, not the earlier A) has the largest influence on
    the B logit, and the features reached from it carry it there."""
    graph, b, at = induction["graph"], induction["b"], induction["earlier_b"]
    inf = _influence_on(graph, b)
    tokens = inf[graph.slices()["tokens"]]
    assert int(np.argmax(tokens)) == at, np.round(tokens, 3)
    assert tokens[at] > 2 * np.delete(tokens, at).max()
    # the top feature's largest input from an earlier position comes from the earlier B's
    top = int(np.argmax(inf[:graph.n_features]))
    row = graph.adjacency[top]
    f = graph.features
    sources = np.concatenate([f[:, 1], np.tile(np.arange(graph.n_pos), graph.n_layers), np.arange(graph.n_pos)])
    by_position = np.bincount(sources, np.abs(row[:len(sources)]), minlength=graph.n_pos)
    assert f[top, 1] == graph.n_pos - 1
    assert int(np.argmax(by_position[:-1])) == at, np.round(by_position, 3)


def test_ablating_the_top_features_does_half_of_what_their_layer_does(induction):
    """The layer whose features carry most of the influence on the B logit: its 5 features
    of largest influence, ablated in the real model (attention and later layers free),
    change the B logit by at least half of what zeroing that layer's MLP output does."""
    graph, b, iv, model = induction["graph"], induction["b"], induction["iv"], induction["model"]
    inf = _influence_on(graph, b)[:graph.n_features]
    f = graph.features
    layer = int(np.argmax(np.bincount(f[:, 0], inf, minlength=graph.n_layers)))
    mine = np.flatnonzero(f[:, 0] == layer)
    top = mine[np.argsort(-inf[mine], kind="stable")[:5]]
    effect = iv.ablate(f[top])
    zeroed = model.run_with_hooks(induction["params"], induction["tokens"][None],
                                  {HOOKS_OUT[layer]: (lambda y, _: jnp.zeros_like(y), None)})[0, -1]
    whole = _demeaned(zeroed, b) - effect.before
    print(f"layer {layer}: top-5 ablation {effect.change:+.3f} (graph predicted {effect.predicted:+.3f}), "
          f"zeroed MLP {whole:+.3f}, ratio {effect.change / whole:.2f}")
    assert whole < 0 and effect.change < 0
    assert effect.change <= 0.5 * whole
