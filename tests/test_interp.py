"""lmjax.interp: the identities of the analyses (DLA sums, lens at the last layer, patching
with either cache), head detectors on hand-built patterns, probes with a planted
direction, and the whole toolkit on a small model trained to form induction heads.

Tiny models keep compiling cheap: a 3-layer GPT-2-style model with O(1)-scale random
parameters (see _model_fixtures.py) for the identities, and a 2-layer attention-only model
(its MLPs frozen at zero: lmjax has no attention-only switch, and a zero MLP writes
exactly nothing) trained for a few seconds for the circuit tests.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.interp import ablation, attribution, compiling, dla, heads, lens, neurons, patching, probes, ssm
from lmjax.interp.metrics import LogitDiff, NextTokenLoss
from lmjax.model import ModelConfig, Transformer

from _model_fixtures import FAST_COMPILE, GPT2, LLAMA, random_params, random_tokens

BASE = dict(vocab_size=37, n_layer=3, d_model=32, n_head=4, d_mlp=48, max_len=16)
B, T = 3, 7


# A hybrid stack (Mamba, attention, Mamba), GPT-2 style otherwise. The associative scan
# compiles several times faster than CPU's default (an unrolled sequential loop); the
# scans agree (test_mixers), and what is compared here reads only hook points.
HYBRID = dict(GPT2, layer_pattern="MAM", d_state=4, ssm_scan="associative")


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Every lmjax.interp program here compiles with LLVM at -O0: compiling is nearly all of
    these tests' time, and the optimisation level changes nothing that is compared."""
    saved = dict(compiling.COMPILER_OPTIONS)
    compiling.COMPILER_OPTIONS.update(FAST_COMPILE)
    yield
    compiling.COMPILER_OPTIONS.clear()
    compiling.COMPILER_OPTIONS.update(saved)


@functools.lru_cache(maxsize=None)
def small(kind="gpt2"):
    cfg = ModelConfig(**BASE, **{"gpt2": GPT2, "llama": LLAMA, "hybrid": HYBRID}[kind])
    return Transformer(cfg), random_params(cfg)


@functools.partial(jax.jit, static_argnames=("model",), compiler_options=FAST_COMPILE)
def logits_of(model, params, tokens):
    return model.apply({"params": params}, tokens)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "hybrid"])
def test_dla_components_sum_to_the_logit_difference(kind):
    model, params = small(kind)
    tokens = random_tokens(model.cfg, B, T)
    target, contrast = jnp.array([1, 2, 3]), jnp.array([4, 5, 6])
    out = dla.direct_logit_attribution(model, params, tokens, target, contrast)
    np.testing.assert_allclose(out.total, out.logit_diff, atol=1e-4)
    gpt2 = kind != "llama"
    per_layer = [BASE["n_head"] + gpt2 if m == "attention" else 1 for m in model.cfg.layer_mixers]
    n_components = 1 + gpt2 + sum(per_layer) + BASE["n_layer"]  # embed, (pos), heads (+ attn bias) or mixer, mlp
    assert len(out.labels) == out.values.shape[0] == n_components
    assert ("L0 mixer" in out.labels) == (kind == "hybrid")
    # single target, another position: still exact
    one = dla.direct_logit_attribution(model, params, tokens, 5, position=2)
    logits = np.asarray(logits_of(model, params, tokens))
    np.testing.assert_allclose(one.total, logits[:, 2, 5], atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "hybrid"])
def test_logit_lens_at_the_last_layer_is_the_model(kind):
    model, params = small(kind)
    tokens = random_tokens(model.cfg, B, T)
    lensed, logits = lens.lens_logits(model, params, tokens)
    assert lensed.shape == (BASE["n_layer"] + 1, B, T, BASE["vocab_size"])
    np.testing.assert_allclose(lensed[-1], logits, atol=2e-5)
    out = lens.logit_lens(model, params, tokens)
    assert (out.target_rank[-1] == 0).all()  # the default target is the model's own top-1
    np.testing.assert_allclose(out.top_probs[-1, ..., 0], out.target_prob[-1], rtol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "hybrid"])
def test_patching_layer0_with_either_cache(kind):
    model, params = small(kind)
    clean, corrupt = random_tokens(model.cfg, B, T, 0), random_tokens(model.cfg, B, T, 1)
    metric = LogitDiff(jnp.array([1, 2, 3]), jnp.array([4, 5, 6]))
    name = "blocks.0.hook_resid_pre"
    _, c_clean = compiling.run_with_cache(model, params, clean, [name])
    _, c_corrupt = compiling.run_with_cache(model, params, corrupt, [name])
    m_clean = patching.metric_value(model, params, clean, metric)
    m_corrupt = patching.metric_value(model, params, corrupt, metric)
    assert patching.patch(model, params, clean, {name: c_corrupt[name]}, metric) == m_corrupt
    assert patching.patch(model, params, clean, {name: c_clean[name]}, metric) == m_clean
    # the heatmap (one compiled call): per-position cells of layer 0 restore nothing... and
    # a whole-layer cell of resid_pre restores everything, in both directions
    heat = patching.activation_patching(model, params, clean, corrupt, metric, "resid_pre", per="layer")
    np.testing.assert_allclose(heat.values, 1.0, atol=1e-4)
    noised = patching.activation_patching(model, params, clean, corrupt, metric, "resid_pre", per="layer",
                                          denoise=False)
    np.testing.assert_allclose(noised.values, 0.0, atol=1e-4)
    assert heat.clean == pytest.approx(m_clean, abs=1e-5) and heat.corrupt == pytest.approx(m_corrupt, abs=1e-5)
    if kind == "hybrid":  # attribution patching reads mixer outputs too; rows of layers without a point are NaN
        approx = attribution.attribution_patching(model, params, clean, corrupt, metric,
                                                  points=("resid_pre", "attn_out", "mixer_out"))
        assert approx["clean"] == pytest.approx(m_clean, abs=1e-4) and approx["resid_pre"].shape == (3, T)
        assert np.isnan(approx["attn_out"][[0, 2]]).all() and np.isfinite(approx["attn_out"][1]).all()
        assert np.isnan(approx["mixer_out"][1]).all() and np.isfinite(approx["mixer_out"][[0, 2]]).all()
        assert np.isfinite(approx["resid_pre"]).all() and np.abs(approx["mixer_out"][[0, 2]]).max() > 0


def test_heatmap_cells_match_single_patches():
    """Cells of the vmapped heatmap equal separate patched runs, for positions and heads."""
    model, params = small()
    clean, corrupt = random_tokens(model.cfg, B, T, 0), random_tokens(model.cfg, B, T, 1)
    metric = LogitDiff(jnp.array([1, 2, 3]), jnp.array([4, 5, 6]))
    heat = patching.activation_patching(model, params, clean, corrupt, metric, "resid_pre", normalize=False)
    z = patching.activation_patching(model, params, clean, corrupt, metric, "z", per="head", normalize=False)
    assert heat.values.shape == (3, T) and z.values.shape == (3, 4)
    names = ["blocks.1.hook_resid_pre", "blocks.2.attn.hook_z"]
    _, cc = compiling.run_with_cache(model, params, clean, names)
    _, cr = compiling.run_with_cache(model, params, corrupt, names)
    assert patching.patch(model, params, corrupt, {names[0]: cc[names[0]]}, metric, positions=[4]) == \
        pytest.approx(heat.values[1, 4], abs=1e-4)
    head1 = cr[names[1]].at[:, :, 1].set(cc[names[1]][:, :, 1])
    assert patching.patch(model, params, corrupt, {names[1]: head1}, metric) == pytest.approx(z.values[2, 1], abs=1e-4)


def test_ablations_and_steering_run_on_every_unit_kind():
    model, params = small()
    tokens = random_tokens(model.cfg, B, T)
    metric = NextTokenLoss(tokens)
    zero = ablation.ablate(model, params, tokens, metric, heads=[(0, 1)], neurons=[(1, 3)], mlps=[2], layers=[0])
    mean = ablation.ablate(model, params, tokens, metric, heads=[(1, 2)], method="mean", reference=tokens)
    resample = ablation.ablate(model, params, tokens, metric, mixers=[1], method="resample",
                               reference=random_tokens(model.cfg, 5, T, 3))
    for a in (zero, mean, resample):
        assert np.isfinite([a.before, a.after]).all() and a.after != a.before
    before, effects = ablation.head_ablation_effects(model, params, tokens, metric)
    one = ablation.ablate(model, params, tokens, metric, heads=[(2, 3)])
    assert before == pytest.approx(one.before, abs=1e-5) and effects[2][3] == pytest.approx(one.after, abs=1e-5)
    d = np.zeros(BASE["d_model"], np.float32)
    d[0] = 1.0
    np.testing.assert_allclose(neurons.steer(model, params, tokens, "blocks.1.hook_resid_pre", d, 0.0),
                               logits_of(model, params, tokens), atol=1e-5)
    pushed = neurons.steer(model, params, tokens, "blocks.1.hook_resid_pre", d, 50.0)
    assert float(jnp.abs(pushed - logits_of(model, params, tokens)).max()) > 0.1
    top = neurons.top_activating(model, params, random_tokens(model.cfg, 40, T), "blocks.1.mlp.hook_post",
                                 neuron=5, k=4, batch_size=16)
    assert [e.value for e in top] == sorted([e.value for e in top], reverse=True)


# ---------------------------------------------------------------- Mamba layers: implicit attention


def implicit_attention_reference(delta, A, B, C):
    """alpha[b, c, t, s] = sum_n C_t[n] prod_{k=s+1..t} exp(delta_k[c] A[c, n]) delta_s[c] B_s[n],
    straight from the definition (a product of per-step decays), in float64."""
    delta, A, B, C = (np.asarray(v, np.float64) for v in (delta, A, B, C))
    b, t, c = delta.shape
    alpha = np.zeros((b, c, t, t))
    for q in range(t):
        decay = np.ones((b, c, A.shape[1]))  # prod over k in (s, q], built from s = q down to 0
        for s in range(q, -1, -1):
            alpha[:, :, q, s] = np.einsum("bn,bcn,bc,bn->bc", C[:, q], decay, delta[:, s], B[:, s])
            decay = decay * np.exp(delta[:, s, :, None] * A)
    return alpha


def test_mamba_implicit_attention_reproduces_the_scan():
    """sum_s alpha[c, t, s] x_s[c] + D x_t is the layer's scan output (hook_ssm_out), with x
    the SiLU'd conv output the scan reads (hook_conv); alpha matches its definition."""
    model, params = small("hybrid")
    tokens = random_tokens(model.cfg, 2, 9)
    assert ssm.mamba_layers(model) == [0, 2]
    alphas = ssm.layer_attention(model, params, tokens)
    names = ssm.scan_cache_names(0) + ssm.scan_cache_names(2)
    _, cached = compiling.run_with_cache(model, params, tokens, names)
    for layer, alpha in alphas.items():
        x, delta, B_, C, y = (cached[n] for n in ssm.scan_cache_names(layer))
        A, D = ssm.ssm_parameters(params, layer)
        assert alpha.shape == (2, model.cfg.d_inner, 9, 9) and alpha.dtype == jnp.float32
        assert float(jnp.abs(jnp.triu(alpha, 1)).max()) == 0.0  # causal
        np.testing.assert_allclose(ssm.unrolled_scan(alpha, x, D), y, atol=1e-5 * float(jnp.abs(y).max()))
        np.testing.assert_allclose(alpha, implicit_attention_reference(delta, A, B_, C), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="not Mamba layers"):
        ssm.layer_attention(model, params, tokens, layers=[1])


def test_detectors_and_ablations_treat_mamba_layers_as_heads():
    model, params = small("hybrid")
    tokens = random_tokens(model.cfg, B, T)
    pats = heads.patterns(model, params, tokens)
    assert {l: p.shape for l, p in pats.items()} == {0: (B, 1, T, T), 1: (B, 4, T, T), 2: (B, 1, T, T)}
    np.testing.assert_allclose(pats[0].sum(-1), 1.0, rtol=1e-5)  # rows are distributions, like softmax attention
    alpha = ssm.layer_attention(model, params, tokens, layers=[0])[0]
    mass = np.abs(np.asarray(alpha)).mean(1)
    np.testing.assert_allclose(pats[0][:, 0], mass / mass.sum(-1, keepdims=True), rtol=1e-5)
    grouped = heads.implicit_patterns(model, params, tokens, groups=4)
    assert grouped[2].shape == (B, 4, T, T) and 1 not in grouped
    np.testing.assert_allclose(grouped[2].sum(-1), 1.0, rtol=1e-5)
    # detectors on the Mamba layers are the formula applied to their patterns
    scores = heads.head_scores(model, params, tokens)
    mask = heads.previous_token_mask(T)[None, None]
    np.testing.assert_allclose(scores["previous_token"][0], heads.detection_score(pats[0], mask), rtol=1e-6)
    assert [r["head"] for r in heads.table(scores, top=None, model=model) if "ssm" in r["head"]] != []
    assert heads.parse_label(heads.head_label(model, 2, 0)) == (2, 0) and heads.head_label(model, 2, 0) == "L2ssm"
    # one zero-ablation per attention head and per Mamba mixer, in one call
    metric = LogitDiff(jnp.array([1, 2, 3]), jnp.array([4, 5, 6]))
    before, effects = ablation.head_ablation_effects(model, params, tokens, metric, include_mixers=True)
    assert {l: e.shape for l, e in effects.items()} == {0: (1,), 1: (4,), 2: (1,)}
    whole = ablation.ablate(model, params, tokens, metric, mixers=[2])
    assert whole.before == pytest.approx(before, abs=1e-5) and effects[2][0] == pytest.approx(whole.after, abs=1e-5)


# ---------------------------------------------------------------- head detectors


def test_detectors_match_the_formula_on_hand_built_patterns():
    tokens = np.array([[0, 5, 6, 7, 5, 6, 7]])
    t = tokens.shape[1]
    prev = np.eye(t, k=-1)
    prev[0, 0] = 1.0  # the first query can only attend to itself
    uniform = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    mix = 0.5 * prev + 0.5 * uniform
    patterns = jnp.asarray(np.stack([prev, uniform, mix])[None])  # [batch 1, 3 heads, q, k]

    score = lambda mask: np.asarray(heads.detection_score(patterns, mask))  # noqa: E731
    np.testing.assert_allclose(score(heads.previous_token_mask(t)), [6 / 7, (1 - 1 / 7 * 0 - 0) * 0 + sum(
        1 / (i + 1) for i in range(1, t)) / 7, 0.5 * 6 / 7 + 0.5 * sum(1 / (i + 1) for i in range(1, t)) / 7], rtol=1e-6)
    dup = heads.duplicate_token_mask(tokens)  # queries 4, 5, 6 repeat keys 1, 2, 3
    assert dup[0].sum() == 3 and dup[0, 4, 1] == dup[0, 5, 2] == dup[0, 6, 3] == 1
    ind = heads.induction_mask(tokens)
    assert ind[0].sum() == 3 and ind[0, 4, 2] == ind[0, 5, 3] == ind[0, 6, 4] == 1
    # uniform: each detected key of query q holds 1/(q+1) of that query's mass 1; 7 queries
    np.testing.assert_allclose(score(dup[:, None])[1], (1 / 5 + 1 / 6 + 1 / 7) / 7, rtol=1e-6)
    np.testing.assert_allclose(score(ind[:, None])[1], (1 / 5 + 1 / 6 + 1 / 7) / 7, rtol=1e-6)
    np.testing.assert_allclose(score(ind[:, None])[0], 0.0)  # previous-token head: no induction
    # exclude_bos / exclude_current drop that mass from both sums
    only_bos = np.zeros((t, t))
    only_bos[:, 0] = 0.5
    only_bos[np.arange(t), np.arange(t)] += 0.5
    only_bos[0, 0] = 1.0
    p = jnp.asarray(only_bos[None, None])
    assert float(heads.detection_score(p, np.eye(t), exclude_bos=True)[0]) == pytest.approx(1.0)
    assert float(heads.detection_score(p, np.eye(t), exclude_current=True)[0]) == pytest.approx(0.0)
    # induction stripe on [BOS] + r + r
    n = 3
    stripe = np.zeros((1, 1, 2 * n + 1, 2 * n + 1))
    q = np.arange(n + 1, 2 * n + 1)
    stripe[0, 0, q, q - n + 1] = 0.8
    assert float(heads.induction_stripe(stripe, n)[0]) == pytest.approx(0.8)


# ---------------------------------------------------------------- probes


def test_probe_finds_a_planted_direction_and_the_control_stays_at_chance():
    rng = np.random.RandomState(0)
    n, d = 600, 24
    labels = rng.randint(0, 2, n)
    direction = rng.standard_normal(d)
    layers = np.stack([rng.standard_normal((n, d)) + s * np.outer(2 * labels - 1, direction) for s in (0.0, 0.5)])
    result = probes.train_probes(layers, labels, names=["noise", "planted"])
    assert result.test_acc[1] > 0.97 and result.train_acc[1] > 0.97
    assert abs(result.test_acc[0] - 0.5) < 0.1  # nothing planted: chance
    assert abs(result.control_acc[1] - 0.5) < 0.1  # shuffled labels: chance
    assert 0.4 < result.chance < 0.6


def test_conllu_words_align_to_first_and_last_subtokens():
    from lmjax.data.tokenizers import ByteTokenizer

    path = "/work/shared/data/ud_english_ewt/en_ewt-ud-dev.conllu"
    import os

    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ud_english_ewt",
                            "en_ewt-ud-dev.conllu")
    if not os.path.exists(path):
        pytest.skip("UD English EWT not found under shared/data")
    sentences = probes.read_conllu(path, max_sentences=20)
    assert len(sentences) == 20 and sentences[0].words[:3] == ["From", "the", "AP"]
    assert sentences[0].upos[:3] == ["ADP", "DET", "PROPN"]
    tok = ByteTokenizer()
    s = sentences[1]
    ids, first = probes.align_words(tok, s, "first")
    _, last = probes.align_words(tok, s, "last")
    assert ids[0] == tok.bos_id and (first >= 1).all()
    text = s.text.encode()
    for w, i, j in zip(s.words, first, last):  # byte tokens: position k (after BOS) is byte k-1
        assert text[i - 1:j] == w.encode()


# ---------------------------------------------------------------- circuits in a trained model

# The induction model: 2 layers, 2 heads, attention only (MLP weights zero and frozen).
# Data: in-context bigrams (Bietti et al. 2023): each row draws its own random map
# f: token -> token and continues x_{t+1} = f(x_t) with probability 0.7 (else a fresh
# random token), so a token's successor is predictable only from its earlier occurrence
# in the same row: exactly the previous-token + induction circuit. (Repeating r + r with a
# fixed length is solved by a positional layer-0 head instead; measured.) The circuit forms
# between steps ~1250 and ~1500 with these settings (deterministic on CPU, but the step
# moves with the float rounding of the attention core: 2000 steps leave a margin).
IV, IN, ISTEPS = 24, 16, 2000


def _induction_batches(steps, batch=64, keep=0.7, seed=0):
    rng = np.random.RandomState(seed)
    t = 2 * IN
    f = rng.randint(0, IV, (steps, batch, IV))
    fresh = rng.randint(0, IV, (steps, batch, t))
    kept = rng.rand(steps, batch, t) < keep
    rows = np.empty((steps, batch, t), np.int32)
    rows[..., 0] = fresh[..., 0]
    s, b = np.meshgrid(np.arange(steps), np.arange(batch), indexing="ij")
    for i in range(1, t):
        rows[..., i] = np.where(kept[..., i], f[s, b, rows[..., i - 1]], fresh[..., i])
    return np.concatenate([np.full((steps, batch, 1), IV, np.int32), rows], axis=2)  # BOS = IV


@pytest.fixture(scope="module")
def induction_model():
    """Attention only: the MLPs are zeroed and frozen (zero weights write nothing)."""
    import optax

    from lmjax.train.steps import init_params, make_train_step, new_state

    cfg = ModelConfig(vocab_size=IV + 1, n_layer=2, d_model=64, n_head=2, d_mlp=4, max_len=2 * IN + 1)
    model = Transformer(cfg)
    params = init_params(model, jax.random.key(0))
    params = {k: {**v, "mlp": jax.tree.map(jnp.zeros_like, v["mlp"])} if k.startswith("blocks_") else v
              for k, v in params.items()}
    is_mlp = lambda path: any(getattr(p, "key", "") == "mlp" for p in path)  # noqa: E731
    optimizer = optax.adamw(1e-2, b2=0.98, weight_decay=0.0)

    def loss_fn(p, tokens, key):
        return NextTokenLoss(tokens)(model.apply({"params": p}, tokens)).mean()

    step = make_train_step(model, optimizer, loss_fn=loss_fn, frozen=is_mlp, jit=False)
    train = jax.jit(lambda state, batches: jax.lax.scan(lambda s, b: (step(s, b)[0], None), state, batches))
    state = new_state(params, optimizer, is_mlp)
    batches = _induction_batches(ISTEPS)
    for start in range(0, ISTEPS, 250):  # one compiled chunk of 250 steps
        state, _ = train(state, jnp.asarray(batches[start:start + 250]))
    return model, state["params"]


def test_induction_circuit_detected_and_ablated(induction_model):
    model, params = induction_model
    induction = heads.induction_score(model, params, n=IN, batch=32, bos=IV, vocab_range=(0, IV), seed=1)
    tokens = heads.repeated_tokens(IV, IN, 32, IV, seed=2)
    scores = heads.head_scores(model, params, tokens)
    h1 = int(np.argmax(induction[1]))
    assert induction[1][h1] > 0.4 and induction[1][h1] > 4 * max(induction[0])  # a layer-1 induction head
    assert scores["previous_token"][0].max() > 0.7  # a layer-0 previous-token head
    assert heads.ranked(induction, top=1)[0][0] == f"L1H{h1}"
    second = NextTokenLoss(jnp.asarray(tokens), IN + 1)  # predicting the repeated half
    first = NextTokenLoss(jnp.asarray(tokens), 1, IN)  # predicting the first half (after the first token)
    # both layer-1 heads may have become induction heads: ablate every one that scores as such
    induction_heads = [(1, h) for h in range(len(induction[1])) if induction[1][h] > 0.4]
    ablated = ablation.ablate(model, params, tokens, second, heads=induction_heads)
    first_half = ablation.ablate(model, params, tokens, first, heads=induction_heads).before
    assert ablated.before < 0.5 * first_half  # the repeated half is predicted in context
    # zero-ablating the induction heads gives back a good part of the gap to the first half
    assert ablated.after - ablated.before > 0.3 * (first_half - ablated.before)


def test_attribution_patching_agrees_with_activation_patching(induction_model):
    """Clean: [BOS] r r; corrupted: the first copy's token that the last position copies is
    changed. Metric: correct next token minus the corrupted one at the last position."""
    model, params = induction_model
    clean = heads.repeated_tokens(IV, IN, 1, IV, seed=3)
    corrupt = clean.copy()
    q = 2 * IN - 3  # the query (last) position; its earlier copy is at q - IN, the successor at q - IN + 1
    clean, corrupt = clean[:, :q + 1], corrupt[:, :q + 1]
    answer = int(clean[0, q - IN + 1])
    wrong = (answer + 1) % IV
    corrupt[0, q - IN + 1] = wrong
    metric = LogitDiff(jnp.asarray(answer), jnp.asarray(wrong))
    exact = {p: r.values for p, r in patching.activation_patching_points(
        model, params, clean, corrupt, metric, ("resid_pre", "attn_out", "z")).items()}  # one compiled call
    approx = attribution.attribution_patching(model, params, clean, corrupt, metric, points=("resid_pre", "attn_out", "z"))
    assert approx["clean"] - approx["corrupt"] > 1.0  # the corruption matters
    a = np.concatenate([approx[p].ravel() for p in exact])
    e = np.concatenate([exact[p].ravel() for p in exact])
    corr = np.corrcoef(a, e)[0, 1]
    big = np.abs(e) > 0.1
    print(f"attribution vs activation patching: Pearson r = {corr:.3f} over {a.size} cells; "
          f"sign agreement on |effect| > 0.1: {np.mean(np.sign(a[big]) == np.sign(e[big])):.2f}")
    assert corr > 0.98  # docs/interpretability.md states Pearson 0.99
    assert np.mean(np.sign(a[big]) == np.sign(e[big])) > 0.9
    # Attribution finds the cells that matter: its largest |values| are exactly the cells
    # with a real effect. (Their order within that set is not checked: patching a residual
    # stream restores the metric fully, so several exact effects saturate at the same value,
    # which a linear estimate cannot reproduce; a rank correlation over a handful of tied
    # cells measured only that.)
    top = set(np.argsort(-np.abs(a))[: big.sum()].tolist())
    assert top == set(np.flatnonzero(big).tolist())
