"""The transformer: causality, parity with a NumPy reference, GQA / scan / remat
equivalences, dtypes, dropout and config validation.

Tiny models (vocab 37, 2 layers, d_model 32, 4 heads, max_len 16) with O(1)-scale random
parameters (see _model_fixtures.py); each config's forward pass compiles once per session.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.model import ModelConfig, Transformer

from _model_fixtures import (
    FAST_COMPILE,
    GPT2,
    LLAMA,
    assert_same_layout,
    forward,
    param_shapes,
    random_params,
    random_tokens,
    stack_layers,
)

BASE = dict(vocab_size=37, n_layer=2, d_model=32, n_head=4, d_mlp=64, max_len=16)
T = 8  # sequence length used by most tests


def make_cfg(**kw) -> ModelConfig:
    cfg = ModelConfig(**{**BASE, **kw})
    assert cfg.problems() == [], cfg.problems()
    return cfg


def tokens_for(cfg, batch=2, length=T, seed=0):
    return random_tokens(cfg, batch, length, seed)


# ------------------------------------------------------------------ NumPy reference


def reference_logits(cfg: ModelConfig, params, tokens, positions=None):
    """A plain float64 NumPy forward pass over lmjax's (unscanned) parameter tree.

    Fails if any parameter in the tree goes unused (e.g. a bias the config disabled).
    """
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(leaf, np.float64)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    used = set()

    def P(name):
        used.add(name)
        return flat[name]

    tokens = np.asarray(tokens)
    b, t = tokens.shape
    pos = np.broadcast_to(np.arange(t), (b, t)) if positions is None else np.asarray(positions)

    def dense(x, prefix, n_in=1):
        y = np.tensordot(x, P(f"{prefix}/kernel"), axes=n_in)
        return y + P(f"{prefix}/bias") if cfg.use_bias else y

    def norm(x, prefix):
        if cfg.norm == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * P(f"{prefix}/scale")
        if cfg.norm == "layernorm" and cfg.use_bias:
            y = y + P(f"{prefix}/bias")
        return y

    def rope(x):  # [b, t, h, d], halves convention
        d = x.shape[-1]
        inv_freq = cfg.rope_theta ** (-np.arange(0, d, 2) / d)
        angles = pos[..., None] * inv_freq
        cos, sin = np.cos(angles)[:, :, None, :], np.sin(angles)[:, :, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    erf = np.vectorize(math.erf)

    x = P("embed")[tokens]
    if cfg.pos_embedding == "learned":
        x = x + P("pos_embed")[pos]
    group = cfg.n_head // cfg.kv_heads
    for layer in range(cfg.n_layer):
        p = f"blocks_{layer}"
        a = norm(x, f"{p}/ln1")
        q, k, v = (dense(a, f"{p}/attn/{n}") for n in "qkv")
        if cfg.pos_embedding == "rope":
            q, k = rope(q), rope(k)
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # kv head i serves q heads i*group..
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
        s = np.where(pos[:, None, :, None] >= pos[:, None, None, :], s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        z = np.einsum("bhqk,bkhd->bqhd", w, v)
        x = x + dense(z, f"{p}/attn/o", n_in=2)
        m = norm(x, f"{p}/ln2")
        h = dense(m, f"{p}/mlp/fc_in")
        if cfg.mlp == "swiglu":
            g = dense(m, f"{p}/mlp/fc_gate")
            h = g / (1.0 + np.exp(-g)) * h
        elif cfg.mlp == "relu":
            h = np.maximum(h, 0.0)
        elif cfg.mlp == "gelu":
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        else:  # gelu_tanh
            h = 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))
        x = x + dense(h, f"{p}/mlp/fc_out")
    x = norm(x, "ln_final")
    logits = x @ (P("embed").T if cfg.tie_embeddings else P("unembed"))
    assert used == set(flat), f"parameters the reference never used: {sorted(set(flat) - used)}"
    return logits


PARITY_CONFIGS = {
    "learned-layernorm-gelu": dict(GPT2),
    "rope-rmsnorm-swiglu-gqa-untied-nobias": dict(LLAMA),
    "nopos-layernorm-nobias-relu-mqa-dhead6": dict(
        pos_embedding="none", norm="layernorm", mlp="relu", use_bias=False, n_kv_head=1, d_head=6
    ),
    "learned-rmsnorm-gelu_tanh-gqa-bias-3layers": dict(norm="rmsnorm", mlp="gelu_tanh", n_kv_head=2, n_layer=3),
}

# float32 model vs float64 reference: logits here reach |14| and agree to <= 3e-6 (f32
# rounding through 2-3 layers); the tolerance leaves ~5x headroom.
PARITY_ATOL = 2e-5
PARITY_RTOL = 1e-5


def parity_positions(cfg):
    """Row 0 at the usual positions 0..T-1; row 1 shifted to end at max_len - 1."""
    return jnp.asarray(np.arange(T)[None, :] + np.array([[0], [cfg.max_len - T]]), jnp.int32)


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_reference_parity(name):
    cfg = make_cfg(**PARITY_CONFIGS[name])
    params = random_params(cfg)
    tokens = tokens_for(cfg)
    positions = parity_positions(cfg)
    logits = forward(cfg)(params, tokens, positions)
    assert logits.dtype == jnp.float32 and logits.shape == (2, T, cfg.vocab_size)
    ref = reference_logits(cfg, params, tokens, positions)
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(np.asarray(logits), ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_default_positions_and_rope_shift_invariance():
    """positions=None means 0..T-1; RoPE depends only on relative positions, a table does not."""
    tokens = tokens_for(make_cfg())
    shifted = parity_positions(make_cfg())  # row 1 shifted by max_len - T
    for kind in (GPT2, LLAMA):
        cfg = make_cfg(**kind)
        default = np.asarray(forward(cfg)(random_params(cfg), tokens))
        explicit = np.asarray(forward(cfg)(random_params(cfg), tokens, shifted))
        np.testing.assert_allclose(default[0], explicit[0], rtol=1e-5, atol=1e-5)
        shift_change = np.abs(default[1] - explicit[1]).max()
        if cfg.pos_embedding == "rope":
            assert shift_change < 2e-5, shift_change
        else:
            assert shift_change > 1e-2, shift_change


# ------------------------------------------------------------------ causality


CAUSAL_CONFIGS = {
    "learned": dict(GPT2),
    "rope-gqa": dict(LLAMA),
    "scan-learned": dict(GPT2, scan_layers=True),
    "scan-rope-gqa": dict(LLAMA, scan_layers=True),
}


@pytest.mark.parametrize("name", list(CAUSAL_CONFIGS))
def test_causality(name):
    cfg = make_cfg(**CAUSAL_CONFIGS[name])
    params = random_params(cfg)
    base = np.asarray(tokens_for(cfg, batch=1, seed=1))[0]
    for j in range(T):  # row 0: the base prompt; row 1: only the token at position j changed
        alt = base.copy()
        alt[j] = (alt[j] + 1 + j) % cfg.vocab_size
        ref, out = np.asarray(forward(cfg)(params, jnp.asarray(np.stack([base, alt]), jnp.int32)))
        # Positions before j cannot see the change (a leak would be O(0.1) with these params).
        np.testing.assert_allclose(out[:j], ref[:j], rtol=0, atol=1e-6, err_msg=f"position < {j} saw token {j}")
        assert np.abs(out[j] - ref[j]).max() > 1e-3, f"logits at {j} ignore the token at {j}"
        if j < T - 1:  # later positions see it through attention
            assert np.abs(out[-1] - ref[-1]).max() > 1e-4, f"last position ignores token {j}"


# ------------------------------------------------------------------ equivalences


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = make_cfg(**LLAMA)  # n_kv_head=2 for 4 query heads (GQA with biases: see the parity configs)
    mha = dataclasses.replace(gqa, n_kv_head=None)
    group = gqa.n_head // gqa.kv_heads
    params = random_params(gqa)
    mha_params = jax.tree.map(lambda x: x, params)  # a copy we can edit
    for layer in range(gqa.n_layer):
        attn = dict(mha_params[f"blocks_{layer}"]["attn"])
        for n in "kv":  # kernel [d, kv_head, d_head] -> [d, head, d_head]
            attn[n] = {"kernel": jnp.repeat(attn[n]["kernel"], group, axis=1)}
        mha_params[f"blocks_{layer}"] = {**mha_params[f"blocks_{layer}"], "attn": attn}
    assert_same_layout(mha_params, mha)
    tokens = tokens_for(gqa)
    a = forward(gqa)(params, tokens)
    b = forward(mha)(mha_params, tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    # ... and with kv heads *tiled* instead of repeated the models disagree (the test can fail).
    bad = jax.tree.map(lambda x: x, mha_params)
    for layer in range(gqa.n_layer):
        attn = dict(bad[f"blocks_{layer}"]["attn"])
        k = params[f"blocks_{layer}"]["attn"]["k"]
        attn["k"] = {"kernel": jnp.tile(k["kernel"], (1, group, 1))}
        bad[f"blocks_{layer}"] = {**bad[f"blocks_{layer}"], "attn": attn}
    c = forward(mha)(bad, tokens)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_scan_layers_equals_unscanned(kind):
    flat = make_cfg(**(GPT2 if kind == "gpt2" else LLAMA))
    scanned = dataclasses.replace(flat, scan_layers=True)
    params = random_params(flat)
    stacked = stack_layers(params, flat.n_layer)
    assert_same_layout(stacked, scanned)
    tokens = tokens_for(flat)
    a = forward(flat)(params, tokens)
    b = forward(scanned)(stacked, tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def loss_and_grads(cfgs):
    """One jitted program: (loss, grads) of next-token cross-entropy for each config."""
    models = [Transformer(cfg) for cfg in cfgs]

    def loss(params, tokens, model):
        logits = model.apply({"params": params}, tokens[:, :-1])
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return jax.jit(
        lambda params, tokens: [jax.value_and_grad(loss)(params, tokens, m) for m in models],
        compiler_options=FAST_COMPILE,
    )


def test_remat_gives_same_loss_and_grads():
    """(Remat in scanned layers is exercised by test_dropout and test_hooks.test_hooks_under_remat.)"""
    tokens = tokens_for(make_cfg(), batch=2, length=T + 1)
    # One block is enough (remat wraps each block); backward passes dominate this file's compile time.
    cfgs = [make_cfg(**GPT2, n_layer=1, remat=remat) for remat in ("none", "full", "dots")]
    params = random_params(cfgs[0])
    for cfg in cfgs:
        assert_same_layout(params, cfg)  # remat does not rename parameters
    (loss0, grads0), *others = loss_and_grads(cfgs)(params, tokens)
    assert np.isfinite(float(loss0))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads0)) > 1e-2
    for cfg, (loss, grads) in zip(cfgs[1:], others):
        np.testing.assert_allclose(float(loss), float(loss0), rtol=0, atol=1e-6, err_msg=cfg.remat)
        for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=0, atol=1e-6, err_msg=cfg.remat)


# ------------------------------------------------------------------ dtypes


def test_bfloat16_compute():
    cfg32 = make_cfg(**LLAMA)
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    params = random_params(cfg32)
    tokens = tokens_for(cfg32)
    l32 = np.asarray(forward(cfg32)(params, tokens))
    l16, cache = jax.jit(
        lambda p, t: Transformer(cfg16).run_with_cache(p, t, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_q"])
    )(params, tokens)
    assert l16.dtype == jnp.float32 and l16.shape == l32.shape
    assert np.isfinite(np.asarray(l16)).all()
    # The residual stream really is computed in bfloat16 ...
    assert cache["blocks.0.hook_resid_post"].dtype == jnp.bfloat16
    assert cache["blocks.1.attn.hook_q"].dtype == jnp.bfloat16
    # ... so logits differ from float32, but only by bfloat16 rounding (8 bits of mantissa).
    err = np.abs(np.asarray(l16) - l32)
    assert 0 < err.max() < 0.25 and err.mean() < 0.05, (err.max(), err.mean())
    assert np.abs(l32).max() > 1.0


def test_bfloat16_params():
    cfg = make_cfg(**GPT2, param_dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(param_shapes(cfg))} == {jnp.dtype(jnp.bfloat16)}
    params = random_params(cfg)  # same dtypes, O(1) values
    tokens = tokens_for(cfg)
    logits = forward(cfg)(params, tokens)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    # Compute is float32: identical to the float32 model holding the upcast bf16 values.
    cfg32 = dataclasses.replace(cfg, param_dtype="float32")
    up = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(forward(cfg32)(up, tokens)), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("scan,remat", [(False, "full"), (True, "dots")], ids=["unscanned-full", "scanned-dots"])
def test_dropout(scan, remat):
    """Remat is on so that `deterministic` must reach the blocks as a static (Python) bool."""
    cfg0 = make_cfg(**GPT2, scan_layers=scan)
    cfgd = dataclasses.replace(cfg0, dropout=0.3, remat=remat)
    params = random_params(cfg0)
    assert_same_layout(params, cfgd)  # dropout adds no parameters
    tokens = tokens_for(cfg0)
    model = Transformer(cfgd)
    # deterministic=True (the default) ignores dropout entirely.
    eval_logits = np.asarray(forward(cfgd)(params, tokens))
    np.testing.assert_array_equal(eval_logits, np.asarray(forward(cfg0)(params, tokens)))

    train = jax.jit(lambda p, t, key: model.apply({"params": p}, t, deterministic=False, rngs={"dropout": key}))
    key = functools.partial(jax.random.key, impl="rbg")  # any PRNG works; rbg compiles faster than threefry
    a, a2, b = (np.asarray(train(params, tokens, key(s))) for s in (1, 1, 2))
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, a2)  # randomness only from the explicit key
    assert np.abs(a - eval_logits).max() > 1e-2
    assert np.abs(a - b).max() > 1e-2


# ------------------------------------------------------------------ config validation


BAD_CONFIGS = [
    (dict(d_model=30, n_head=4), "d_model", "30"),
    (dict(n_head=4, n_kv_head=3), "n_head", "n_kv_head=3"),
    (dict(n_head=4, n_kv_head=8), "n_head", "n_kv_head=8"),
    (dict(d_model=24, n_head=8, pos_embedding="rope"), "d_head", "3"),  # head dim 3
    (dict(d_head=5, pos_embedding="rope"), "d_head", "5"),
    (dict(norm="batchnorm"), "norm", "batchnorm"),
    (dict(mlp="geglu"), "mlp", "geglu"),
    (dict(pos_embedding="alibi"), "pos_embedding", "alibi"),
    (dict(remat="some"), "remat", "some"),
    (dict(dtype="float64"), "dtype", "float64"),
    (dict(param_dtype="int8"), "param_dtype", "int8"),
    (dict(dropout=1.0), "dropout", "1.0"),
    (dict(n_kv_head=0), "n_kv_head", ""),
    (dict(vocab_size=0), "vocab_size", "0"),
    (dict(n_layer=-1), "n_layer", "-1"),
]


@pytest.mark.parametrize("kw,field,shown", BAD_CONFIGS, ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_CONFIGS)])
def test_config_problems_name_the_field(kw, field, shown):
    problems = ModelConfig(**{**BASE, **kw}).problems()
    lines = [line for line in problems if line.startswith(f"model.{field}:")]
    assert lines, f"no problem reported for {field}: {problems}"
    assert shown in lines[0], lines[0]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(LLAMA),
        dict(d_model=24, n_head=8),  # odd head dim is fine without RoPE
        dict(d_model=30, n_head=4, d_head=8),  # explicit d_head: d_model need not divide
        dict(n_kv_head=1, pos_embedding="none", mlp="relu", remat="dots", dtype="bfloat16"),
    ],
)
def test_good_configs_have_no_problems(kw):
    assert ModelConfig(**{**BASE, **kw}).problems() == []


def test_from_dict_rejects_unknown_keys():
    cfg = ModelConfig.from_dict(dict(BASE, mlp="relu"))
    assert cfg.mlp == "relu" and cfg.vocab_size == 37
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig.from_dict(dict(BASE, n_heads=4))


# ------------------------------------------------------------------ the fast attention core


def _reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + causal mask) v in float64 NumPy, kv heads repeated for GQA."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    t = q.shape[1]
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", pattern, v)


@pytest.mark.parametrize("t, heads, kv_heads, block", [(37, 4, 2, 16), (9, 2, 1, None)])
def test_blocked_attention_matches_reference(t, heads, kv_heads, block):
    """Blocked causal attention (ragged last block, GQA, one block) = the dense softmax, and
    its gradients = those of the explicit core's formula."""
    from lmjax.model.attention import _masked_scores, _mix, blocked_causal_attention

    rng = np.random.default_rng(t)  # NumPy draws: no random-number program to compile
    q = jnp.asarray(rng.standard_normal((2, t, heads, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, t, kv_heads, 8)), jnp.float32) for _ in range(2))
    # each side one program at -O0 (op by op, the blocked loop and its gradient took seconds)
    out = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, block), compiler_options=FAST_COMPILE)(q, k, v)
    np.testing.assert_allclose(out, _reference_attention(q, k, v), rtol=1e-5, atol=1e-5)

    positions = jnp.broadcast_to(jnp.arange(t), (2, t))
    weights = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)

    def explicit(q, k, v):
        return _mix(jax.nn.softmax(_masked_scores(q, k, positions, positions), axis=-1), v, "bskd")

    def loss(core):
        return lambda q, k, v: jnp.sum(core(q, k, v) * weights)

    grad = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    fast = grad(jax.grad(loss(lambda q, k, v: blocked_causal_attention(q, k, v, block)), argnums=(0, 1, 2)))(q, k, v)
    slow = grad(jax.grad(loss(explicit), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_fast_and_explicit_attention_cores_agree(name):
    """A plain forward (fast core) equals one that observes the pattern (explicit scores and
    pattern materialised), and explicit positions 0..t-1 (explicit core) give the same."""
    cfg = make_cfg(**PARITY_CONFIGS[name])
    params, tokens = random_params(cfg), tokens_for(cfg)
    model = Transformer(cfg)
    jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one program each, at -O0
    plain = jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
    observed, cache = jit(lambda p, t: model.run_with_cache(p, t, ["blocks.0.attn.hook_pattern"]))(params, tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    positioned = jit(lambda p, t, pos: model.apply({"params": p}, t, pos))(params, tokens, positions)
    np.testing.assert_allclose(plain, observed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain, positioned, rtol=1e-5, atol=1e-5)
    assert cache["blocks.0.attn.hook_pattern"].shape[-2:] == (tokens.shape[1], tokens.shape[1])


@pytest.mark.parametrize("center, with_bias", [(True, True), (True, False), (False, False)])
def test_normalize_backward_matches_autodiff(center, with_bias):
    """The hand-written LayerNorm / RMSNorm backward = autodiff of the same forward."""
    from lmjax.model.normalize import affine, centered, divide, divisor, normalize

    rng = np.random.default_rng(3)  # NumPy draws: no random-number program to compile
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    x = 3.0 * normal(2, 5, 16) + 1.5
    weight = 1.0 + 0.3 * normal(16)
    bias = 0.2 * normal(16) if with_bias else None
    g = normal(2, 5, 16)

    def autodiff(x, weight, bias):
        xc = centered(x, center)
        return affine(divide(xc, divisor(xc, 1e-5)), weight, bias)

    want_y, want_vjp = jax.vjp(autodiff, x, weight, bias)
    got_y, got_vjp = jax.vjp(lambda x, w, b: normalize(x, w, b, 1e-5, center), x, weight, bias)
    np.testing.assert_array_equal(got_y, want_y)  # the same forward, op for op
    for got, want in zip(got_vjp(g), want_vjp(g)):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
