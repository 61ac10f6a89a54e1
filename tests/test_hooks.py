"""Hook points (DESIGN.md, "the interpretability contract"): caching and interventions are
pure, exact, and work under jit, grad and vmap, for unscanned and scanned layers.

Tiny 3-layer models with O(1)-scale random parameters (see _model_fixtures.py); each
scanned model holds exactly the stacked parameters of its unscanned twin. Compiling
dominates the run time, so a few jitted programs per model are built once (lru_cache)
and shared between tests.
"""
from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.model import ModelConfig, Transformer, hook_names

from _model_fixtures import FAST_COMPILE, GPT2, LLAMA, forward, random_params, random_tokens

BASE = dict(vocab_size=37, n_layer=3, d_model=32, n_head=4, d_mlp=48, max_len=16)
KINDS = {"gpt2": GPT2, "llama": LLAMA}  # llama: rope, rmsnorm, swiglu, 2 kv heads, untied, no bias
B, T = 3, 7  # batch and positions differ from heads (4), kv heads (2), d_head (8): shapes are unambiguous
LAST = BASE["n_layer"] - 1
SCANS = pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])


def identity(x, p):
    return x


def replace(x, p):
    return p


def add(x, p):
    return x + p


def ablate_heads(z, mask):  # z [b, t, head, d_head]; mask [head], 1 = ablate
    return z * (1.0 - mask)[None, None, :, None]


@functools.lru_cache(maxsize=None)
def get_cfg(kind: str, scan: bool, remat: str = "none") -> ModelConfig:
    cfg = ModelConfig(**BASE, **KINDS[kind], scan_layers=scan, remat=remat)
    assert cfg.problems() == []
    return cfg


def setup(kind="gpt2", scan=False, remat="none"):
    cfg = get_cfg(kind, scan, remat)
    return cfg, Transformer(cfg), random_params(cfg)


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(get_cfg("gpt2", False), B, T, seed=0)


@pytest.fixture(scope="module")
def other_tokens():
    return random_tokens(get_cfg("gpt2", False), B, T, seed=1)


# ------------------------------------------------------------------ shared compiled programs


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@functools.lru_cache(maxsize=None)
def cache_fn(cfg: ModelConfig, names: tuple[str, ...], spec: tuple = ()):
    """(params, tokens, payloads) -> jitted run_with_cache(names, {name: (fn, payload)}), as NumPy."""
    model = Transformer(cfg)

    @jax.jit
    def run(params, tokens, payloads=()):
        interventions = {name: (fn, p) for (name, fn), p in zip(spec, payloads)}
        return model.run_with_cache(params, tokens, names, interventions=interventions)

    return lambda *args: to_numpy(run(*args))


def cache_all(cfg, params, tokens):
    return cache_fn(cfg, tuple(hook_names(cfg)))(params, tokens)


@functools.lru_cache(maxsize=None)
def hooks_fn(cfg: ModelConfig, specs: tuple):
    """jit(params, tokens, payloads) -> one run_with_hooks per spec (a tuple of (name, fn)), stacked."""
    model = Transformer(cfg)

    def run(params, tokens, payloads):
        runs = [
            model.run_with_hooks(params, tokens, {name: (fn, p) for (name, fn), p in zip(spec, ps)})
            for spec, ps in zip(specs, payloads)
        ]
        return jnp.stack(runs)

    return jax.jit(run)


def named_points(cfg):
    """Points hooked one at a time by the exactness tests (incl. the issue's four)."""
    points = [
        "blocks.0.ln1.hook_scale",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_z",
        "blocks.0.hook_resid_post",
        f"blocks.{LAST}.hook_resid_post",
    ]
    if cfg.pos_embedding == "rope":
        points.append("blocks.2.attn.hook_rot_k")
    if cfg.mlp == "swiglu":
        points.append("blocks.2.mlp.hook_pre_gate")
    return points


def each_and_all(cfg, fn):
    """`fn` at each named point alone, then at every hook point at once."""
    return tuple(((name, fn),) for name in named_points(cfg)) + (tuple((n, fn) for n in hook_names(cfg)),)


def label(spec):
    return spec[0][0] if len(spec) == 1 else "every hook point at once"


def exact_runs(cfg, params, tokens, cache):
    """One compiled program: identity at each named point / everywhere, and `replace` with
    `cache`'s value at each named point / everywhere. -> {("identity"|"replace", label): logits}."""
    specs = each_and_all(cfg, identity) + each_and_all(cfg, replace)
    payloads = tuple(
        tuple(jnp.zeros(()) if fn is identity else cache[name] for name, fn in spec) for spec in specs
    )
    out = np.asarray(hooks_fn(cfg, specs)(params, tokens, payloads))
    return {(spec[0][1].__name__, label(spec)): logits for spec, logits in zip(specs, out)}


# ------------------------------------------------------------------ exactness


@SCANS
def test_identity_intervention_is_bitwise(scan, tokens):
    """DESIGN.md: an identity intervention must leave the logits bitwise equal (under jit)."""
    cfg, model, params = setup("gpt2", scan)
    plain = np.asarray(forward(cfg)(params, tokens))
    _, cache = cache_all(cfg, params, tokens)
    runs = exact_runs(cfg, params, tokens, cache)
    checked = 0
    for (fn, where), logits in runs.items():
        if fn == "identity":
            np.testing.assert_array_equal(logits, plain, err_msg=f"identity at {where}")
            checked += 1
    assert checked == len(named_points(cfg)) + 1


def test_cache_then_patch_back_is_bitwise_op_by_op(tokens):
    """Op by op (no jit, so no fusion differences between programs): caching every point leaves
    the logits bitwise equal, and patching any cached activation back in changes nothing.
    (The llama model: RoPE, SwiGLU and GQA hook points.)"""
    cfg, model, params = setup("llama", False)
    plain = np.asarray(model.apply({"params": params}, tokens))
    every = hook_names(cfg)
    logits, cache = model.run_with_cache(params, tokens, every)
    np.testing.assert_array_equal(np.asarray(logits), plain)
    assert sorted(cache) == sorted(every)  # every listed name is a real hook point
    for spec in each_and_all(cfg, replace):
        patched = model.run_with_hooks(params, tokens, {name: (fn, cache[name]) for name, fn in spec})
        np.testing.assert_array_equal(np.asarray(patched), plain, err_msg=f"patched back {label(spec)}")
    # Only what was asked for comes back.
    _, some = model.run_with_cache(params, tokens, ["blocks.1.attn.hook_z", "hook_embed"])
    assert sorted(some) == ["blocks.1.attn.hook_z", "hook_embed"]
    np.testing.assert_array_equal(np.asarray(some["blocks.1.attn.hook_z"]), np.asarray(cache["blocks.1.attn.hook_z"]))
    assert some["hook_embed"].shape == (B, T, cfg.d_model)


@SCANS
def test_cache_then_patch_back_changes_nothing_under_jit(scan, tokens):
    """Cache every point, patch the cached values back in one at a time and all at once.

    Scanned models run one compiled block whose arithmetic should not depend on what is
    observed: bitwise, except for the attention pattern. In an unscanned model, caching or
    patching a point can change how XLA fuses the surrounding graph (last-bit differences,
    ~1e-6): equal to rounding there, and bitwise op by op (test above). The pattern is
    produced only when observed (the fast attention core never materialises it), and a
    softmax computed in another program may round its row sums differently: patching it
    back changes z by (cached - recomputed pattern) v, rounding again."""
    cfg, model, params = setup("gpt2", scan)
    plain = np.asarray(forward(cfg)(params, tokens))
    logits, cache = cache_all(cfg, params, tokens)
    runs = exact_runs(cfg, params, tokens, cache)
    outs = [("run_with_cache", logits)]
    outs += [(f"patched back {where}", out) for (fn, where), out in runs.items() if fn == "replace"]
    assert len(outs) == len(named_points(cfg)) + 2
    for what, out in outs:
        if scan and "hook_pattern" not in what:
            np.testing.assert_array_equal(out, plain, err_msg=what)
        else:
            np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-5, err_msg=what)


@SCANS
def test_caching_norm_scale_does_not_change_logits(scan, tokens):
    """Observing `hook_scale` (caching it, or patching its own value back) must not change
    the computation. Norm computes `x / sqrt(var + eps)`, which XLA rewrites to
    `x * rsqrt(var + eps)` only while the sqrt has no other user: caching the sqrt (or
    feeding it in) changes the normalized activations, and so the logits, in the last bits."""
    cfg, model, params = setup("gpt2", scan)
    plain = np.asarray(forward(cfg)(params, tokens))
    names = ("blocks.0.ln1.hook_scale", "blocks.1.ln2.hook_scale", "ln_final.hook_scale")
    logits, cache = cache_fn(cfg, names)(params, tokens)
    assert sorted(cache) == sorted(names)  # only the requested names come back
    np.testing.assert_array_equal(logits, plain, err_msg="caching hook_scale changed the logits")
    _, everything = cache_all(cfg, params, tokens)
    patched = exact_runs(cfg, params, tokens, {**everything, **cache})[("replace", names[0])]
    np.testing.assert_array_equal(patched, plain, err_msg="patching hook_scale back changed the logits")


@SCANS
def test_patching_resid_post_reproduces_the_other_prompt(scan, tokens, other_tokens):
    cfg, model, params = setup("gpt2", scan)
    logits_a = np.asarray(forward(cfg)(params, tokens))
    logits_b, cache_b = cache_all(cfg, params, other_tokens)
    assert np.abs(logits_a - logits_b).max() > 1.0
    runs = exact_runs(cfg, params, tokens, cache_b)  # replace = B's activation in A's run
    for layer in (0, LAST):
        out = runs[("replace", f"blocks.{layer}.hook_resid_post")]
        np.testing.assert_allclose(out, logits_b, rtol=1e-5, atol=1e-5, err_msg=f"layer {layer}")
    # Patching only the attention pattern of one layer does not carry the whole prompt over.
    assert np.abs(runs[("replace", "blocks.1.attn.hook_pattern")] - logits_b).max() > 1e-2


# ------------------------------------------------------------------ caching


def expected_shape(cfg, name):
    d, h, kvh, dh, mlp = cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
    return {
        "hook_q": (B, T, h, dh),
        "hook_rot_q": (B, T, h, dh),
        "hook_z": (B, T, h, dh),
        "hook_k": (B, T, kvh, dh),
        "hook_v": (B, T, kvh, dh),
        "hook_rot_k": (B, T, kvh, dh),
        "hook_attn_scores": (B, h, T, T),
        "hook_pattern": (B, h, T, T),
        "hook_pre": (B, T, mlp),
        "hook_pre_gate": (B, T, mlp),
        "hook_post": (B, T, mlp),
        "hook_scale": (B, T, 1),
    }.get(name.rsplit(".", 1)[-1], (B, T, d))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cache_shapes_and_scan_equivalence(kind, tokens):
    """DESIGN.md shapes at every point; causal patterns whose rows sum to 1; the scanned
    model caches the same values as the unscanned one."""
    cfg, _, params = setup(kind, False)
    scfg, _, sparams = setup(kind, True)
    logits, cache = cache_all(cfg, params, tokens)
    slogits, scache = cache_all(scfg, sparams, tokens)
    np.testing.assert_allclose(slogits, logits, atol=1e-5, rtol=1e-5)
    every = hook_names(cfg)
    assert sorted(cache) == sorted(scache) == sorted(every)
    for name in every:
        assert cache[name].shape == scache[name].shape == expected_shape(cfg, name), (name, cache[name].shape)
        np.testing.assert_allclose(scache[name], cache[name], atol=1e-5, rtol=1e-5, err_msg=name)
    above = np.triu(np.ones((T, T), bool), k=1)
    for c in (cache, scache):
        for layer in range(cfg.n_layer):
            pattern = c[f"blocks.{layer}.attn.hook_pattern"]
            np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
            assert (pattern[:, :, above] == 0).all(), "attention to future positions"
            assert (pattern[:, :, ~above] > 0).all()
    # Each layer's slot holds that layer's values (a scan must not hand back another layer's).
    for layer in range(1, cfg.n_layer):
        assert maxdiff(cache[f"blocks.{layer}.attn.hook_q"], cache["blocks.0.attn.hook_q"]) > 0.1


@SCANS
def test_residual_stream_and_hook_semantics(scan, tokens):
    """Hook points sit where DESIGN.md says: the residual stream adds up, norms, attention and
    MLP are recomputable from their hooks, and the tied unembedding reads ln_final.hook_normalized."""
    cfg, model, params = setup("gpt2", scan)
    logits, c = cache_all(cfg, params, tokens)
    c = {k: v.astype(np.float64) for k, v in c.items()}
    exact = dict(rtol=0, atol=1e-6)
    np.testing.assert_allclose(c["hook_embed"] + c["hook_pos_embed"], c["blocks.0.hook_resid_pre"], **exact)
    flat = random_params(get_cfg("gpt2", False))
    np.testing.assert_allclose(c["hook_embed"], np.asarray(flat["embed"])[np.asarray(tokens)], **exact)
    for l in range(cfg.n_layer):
        p = f"blocks.{l}"
        w = jax.tree.map(lambda x: np.asarray(x, np.float64), flat[f"blocks_{l}"])
        resid_pre, resid_mid = c[f"{p}.hook_resid_pre"], c[f"{p}.hook_resid_mid"]
        np.testing.assert_allclose(resid_pre + c[f"{p}.hook_attn_out"], resid_mid, **exact)
        np.testing.assert_allclose(resid_mid + c[f"{p}.hook_mlp_out"], c[f"{p}.hook_resid_post"], **exact)
        if l + 1 < cfg.n_layer:
            np.testing.assert_array_equal(c[f"{p}.hook_resid_post"], c[f"blocks.{l + 1}.hook_resid_pre"])
        # ln1: hook_scale = sqrt(var + eps); hook_normalized = centred / hook_scale * scale + bias
        centred = resid_pre - resid_pre.mean(-1, keepdims=True)
        scale = np.sqrt((centred**2).mean(-1, keepdims=True) + cfg.norm_eps)
        np.testing.assert_allclose(c[f"{p}.ln1.hook_scale"], scale, rtol=1e-5)
        normalized = centred / c[f"{p}.ln1.hook_scale"] * w["ln1"]["scale"] + w["ln1"]["bias"]
        np.testing.assert_allclose(c[f"{p}.ln1.hook_normalized"], normalized, atol=1e-5)
        attn = w["attn"]
        for n in "qkv":
            proj = np.einsum("btd,dhe->bthe", c[f"{p}.ln1.hook_normalized"], attn[n]["kernel"]) + attn[n]["bias"]
            np.testing.assert_allclose(c[f"{p}.attn.hook_{n}"], proj, atol=1e-5, err_msg=n)
        scores = np.einsum("bqhe,bkhe->bhqk", c[f"{p}.attn.hook_q"], c[f"{p}.attn.hook_k"]) / np.sqrt(cfg.head_dim)
        lower = np.tril(np.ones((T, T), bool))
        np.testing.assert_allclose(c[f"{p}.attn.hook_attn_scores"][..., lower], scores[..., lower], atol=1e-5)
        scores = c[f"{p}.attn.hook_attn_scores"]
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        np.testing.assert_allclose(c[f"{p}.attn.hook_pattern"], pattern / pattern.sum(-1, keepdims=True), atol=1e-6)
        z = np.einsum("bhqk,bkhe->bqhe", c[f"{p}.attn.hook_pattern"], c[f"{p}.attn.hook_v"])
        np.testing.assert_allclose(c[f"{p}.attn.hook_z"], z, atol=1e-5)
        attn_out = np.einsum("bqhe,hed->bqd", c[f"{p}.attn.hook_z"], attn["o"]["kernel"]) + attn["o"]["bias"]
        np.testing.assert_allclose(c[f"{p}.hook_attn_out"], attn_out, atol=1e-5)
        pre = c[f"{p}.ln2.hook_normalized"] @ w["mlp"]["fc_in"]["kernel"] + w["mlp"]["fc_in"]["bias"]
        np.testing.assert_allclose(c[f"{p}.mlp.hook_pre"], pre, atol=1e-5)
        mlp_out = c[f"{p}.mlp.hook_post"] @ w["mlp"]["fc_out"]["kernel"] + w["mlp"]["fc_out"]["bias"]
        np.testing.assert_allclose(c[f"{p}.hook_mlp_out"], mlp_out, atol=1e-5)
    embed = np.asarray(flat["embed"], np.float64)
    np.testing.assert_allclose(c["ln_final.hook_normalized"] @ embed.T, logits, atol=1e-5)


# ------------------------------------------------------------------ interventions


@SCANS
def test_payloads_are_traced_not_compiled_in(scan, tokens):
    cfg, model, params = setup("gpt2", scan)
    traces = []
    names = ("blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.2.hook_resid_pre")

    @jax.jit
    def f(params, tokens, payload):
        traces.append(1)  # a Python side effect: runs once per trace, never per call
        interventions = {"blocks.1.hook_resid_mid": (add, payload)}
        logits = model.run_with_hooks(params, tokens, interventions)
        return logits, model.run_with_cache(params, tokens, names, interventions=interventions)[1]

    plain = np.asarray(forward(cfg)(params, tokens))
    v = jnp.asarray(np.random.RandomState(3).standard_normal(cfg.d_model), jnp.float32)
    payloads = (jnp.zeros_like(v), v, -2 * v)
    outs = [to_numpy(f(params, tokens, p)) for p in payloads]
    assert len(traces) == 1, f"traced {len(traces)} times for 3 payload values"
    np.testing.assert_allclose(outs[0][0], plain, atol=1e-5, rtol=1e-5)  # x + 0
    for p, (logits, c) in zip(payloads, outs):
        # Each call used its own payload: resid_mid = resid_pre + attn_out + payload, and it flows on.
        expected = c["blocks.1.hook_resid_pre"] + c["blocks.1.hook_attn_out"] + np.asarray(p)
        np.testing.assert_allclose(c["blocks.1.hook_resid_mid"], expected, atol=1e-5)
    (logits1, c1), (logits2, c2) = outs[1:]
    np.testing.assert_allclose(c1["blocks.1.hook_resid_pre"], c2["blocks.1.hook_resid_pre"], atol=1e-6)
    assert maxdiff(c1["blocks.2.hook_resid_pre"], c2["blocks.2.hook_resid_pre"]) > 1.0
    assert maxdiff(logits1, plain) > 1e-2 and maxdiff(logits1, logits2) > 1e-2


def test_scanned_interventions_touch_only_their_layer(tokens):
    """blocks.{l}.X on a scanned model == the same intervention on the unscanned model."""
    flat_cfg, _, flat_params = setup("llama", False)
    scan_cfg, _, scan_params = setup("llama", True)
    rng = np.random.RandomState(4)
    spec = (
        ("blocks.1.hook_resid_pre", add),
        ("blocks.1.attn.hook_z", ablate_heads),
        ("blocks.2.attn.hook_z", ablate_heads),  # same point, another layer, another payload
        ("blocks.1.mlp.hook_post", add),
    )
    payloads = (
        jnp.asarray(rng.standard_normal((T, flat_cfg.d_model)), jnp.float32),
        jnp.asarray([1.0, 0.0, 0.0, 0.0]),
        jnp.asarray([0.0, 0.0, 1.0, 1.0]),
        jnp.asarray(rng.standard_normal(flat_cfg.mlp_dim), jnp.float32),
    )
    names = tuple(f"blocks.{l}.hook_resid_post" for l in range(3))
    names += ("blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.2.attn.hook_z")
    fl, fc = cache_fn(flat_cfg, names, spec)(flat_params, tokens, payloads)
    sl, sc = cache_fn(scan_cfg, names, spec)(scan_params, tokens, payloads)
    np.testing.assert_allclose(sl, fl, atol=1e-5, rtol=1e-5)
    for name in names:
        np.testing.assert_allclose(sc[name], fc[name], atol=1e-5, rtol=1e-5, err_msg=name)
    # The cache holds activations after the interventions.
    expected = sc["blocks.0.hook_resid_post"] + np.asarray(payloads[0])
    np.testing.assert_allclose(sc["blocks.1.hook_resid_pre"], expected, atol=1e-5)
    z1, z2 = sc["blocks.1.attn.hook_z"], sc["blocks.2.attn.hook_z"]
    assert (z1[:, :, 0] == 0).all() and np.abs(z1[:, :, 1:]).max() > 0.1
    assert (z2[:, :, 2:] == 0).all() and np.abs(z2[:, :, :2]).max() > 0.1
    # Layer 0 of the scan is untouched; layers 1 and 2 moved.
    _, plain = cache_all(scan_cfg, scan_params, tokens)
    name = "blocks.0.hook_resid_post"
    np.testing.assert_allclose(sc[name], plain[name], atol=1e-5, rtol=1e-5)
    for name in ("blocks.1.hook_resid_post", f"blocks.{LAST}.hook_resid_post"):
        assert maxdiff(sc[name], plain[name]) > 1e-2, name


@SCANS
def test_grad_with_respect_to_payloads(scan, tokens):
    cfg, model, params = setup("gpt2", scan)
    b0, t0, v0 = 1, 4, 7

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    @functools.partial(jax.value_and_grad, argnums=(0, 1))
    def logit(p_mid, p_final):
        interventions = {"blocks.1.hook_resid_mid": (add, p_mid), "ln_final.hook_normalized": (add, p_final)}
        return model.run_with_hooks(params, tokens, interventions)[b0, t0, v0]

    p_mid = jnp.asarray(np.random.RandomState(5).standard_normal((B, T, cfg.d_model)) * 0.1, jnp.float32)
    zeros = jnp.zeros((B, T, cfg.d_model))
    _, (g_mid, g_final) = logit(p_mid, zeros)
    # Analytic: logits = (ln_final.hook_normalized + p) @ embed.T (tied) -> d/dp = embed[v0] at (b0, t0) only.
    expected = np.zeros((B, T, cfg.d_model), np.float32)
    expected[b0, t0] = np.asarray(params["embed"])[v0]
    np.testing.assert_allclose(np.asarray(g_final), expected, atol=1e-6)
    # Through two blocks and the final norm: causal, per row, and equal to finite differences.
    g = np.asarray(g_mid)
    assert (g[:, t0 + 1 :] == 0).all(), "gradient from future positions"
    assert (g[[0, 2]] == 0).all(), "gradient across batch rows"
    assert np.abs(g[b0, : t0 + 1]).max() > 1e-2
    direction = np.zeros((B, T, cfg.d_model), np.float32)
    direction[b0, : t0 + 1] = np.random.RandomState(6).standard_normal((t0 + 1, cfg.d_model))
    eps = 1e-2
    up, _ = logit(p_mid + eps * direction, zeros)
    down, _ = logit(p_mid - eps * direction, zeros)
    fd = (float(up) - float(down)) / (2 * eps)
    np.testing.assert_allclose(float(np.sum(g * direction)), fd, rtol=2e-2, atol=2e-3)


@functools.lru_cache(maxsize=None)
def head_sweep(cfg):
    """One compiled, vmapped call: ablate blocks.1 attention heads by mask, for a batch of masks."""
    model = Transformer(cfg)
    return jax.jit(
        lambda params, tokens, masks: jax.vmap(
            lambda m: model.run_with_hooks(params, tokens, {"blocks.1.attn.hook_z": (ablate_heads, m)})
        )(masks)
    )


def test_vmap_over_payloads(tokens):
    """A head-ablation sweep as one vmapped call: equals running each mask on its own, and the
    scanned model's sweep equals the unscanned model's (GQA: query heads share kv heads)."""
    cfg, model, params = setup("llama", False)
    scfg, _, sparams = setup("llama", True)
    masks = jnp.concatenate([jnp.zeros((1, cfg.n_head)), jnp.eye(cfg.n_head)])  # none, then each head
    sweep = np.asarray(head_sweep(cfg)(params, tokens, masks))
    ssweep = np.asarray(head_sweep(scfg)(sparams, tokens, masks))
    assert sweep.shape == ssweep.shape == (cfg.n_head + 1, B, T, cfg.vocab_size)
    np.testing.assert_allclose(ssweep, sweep, atol=1e-5, rtol=1e-5)
    for i in range(len(masks)):  # one at a time, op by op
        single = model.run_with_hooks(params, tokens, {"blocks.1.attn.hook_z": (ablate_heads, masks[i])})
        np.testing.assert_allclose(sweep[i], np.asarray(single), atol=1e-5, rtol=1e-5)
    plain, _ = cache_all(cfg, params, tokens)
    np.testing.assert_allclose(sweep[0], plain, atol=1e-5, rtol=1e-5)
    diffs = [np.abs(sweep[h + 1] - plain).max() for h in range(cfg.n_head)]
    assert min(diffs) > 1e-3, diffs  # each head matters ...
    assert np.abs(sweep[1] - sweep[2]).max() > 1e-3  # ... differently, even the two sharing a kv head


@pytest.mark.parametrize("scan,remat", [(False, "full"), (True, "dots")], ids=["unscanned-full", "scanned-dots"])
def test_hooks_under_remat(scan, remat, tokens):
    """Remat changes how activations are recomputed, never what the hooks see or do."""
    names = ("blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post", "ln_final.hook_normalized")
    cfgs = [get_cfg("gpt2", scan, "none"), get_cfg("gpt2", scan, remat)]
    params = random_params(cfgs[0])
    models = [Transformer(cfg) for cfg in cfgs]

    @jax.jit
    def run(params, tokens, p):
        interventions = {"blocks.0.hook_resid_post": (add, p)}
        return [m.run_with_cache(params, tokens, names, interventions=interventions) for m in models]

    (ref_logits, ref_cache), (logits, cache) = to_numpy(run(params, tokens, jnp.ones((cfgs[0].d_model,))))
    _, plain = cache_all(cfgs[0], params, tokens)
    assert maxdiff(ref_cache["blocks.1.hook_resid_post"], plain["blocks.1.hook_resid_post"]) > 1e-2
    np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0)
    assert sorted(cache) == sorted(names)
    for name in names:
        np.testing.assert_allclose(cache[name], ref_cache[name], atol=1e-6, rtol=0, err_msg=name)


# ------------------------------------------------------------------ errors and names


@pytest.mark.parametrize(
    "kind,bad",
    [
        ("gpt2", "blocks.3.hook_resid_post"),  # only layers 0..2
        ("gpt2", "blocks.*.hook_resid_post"),  # the internal scan wildcard is not a public name
        ("gpt2", "blocks.1.attn.hook_rot_q"),  # no RoPE here
        ("gpt2", "blocks.1.mlp.hook_pre_gate"),  # no gate without SwiGLU
        ("gpt2", "blocks.1.hook_resid"),
        ("llama", "hook_pos_embed"),  # RoPE has no position table
        ("llama", "hook_q"),
    ],
)
@SCANS
def test_unknown_hook_names_raise(kind, bad, scan, tokens):
    cfg, model, params = setup(kind, scan)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        model.run_with_cache(params, tokens, ["hook_embed", bad])
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        model.run_with_hooks(params, tokens, {bad: (identity, None)})
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        model.run_with_cache(params, tokens, ["hook_embed"], interventions={bad: (identity, None)})


@pytest.mark.parametrize(
    "value",
    [
        identity,  # a bare function
        (identity,),  # no payload
        (jnp.zeros(()), identity),  # the wrong order
        [identity, jnp.zeros(())],  # a list, not a pair
        (identity, jnp.zeros(()), None),  # three items
        ("identity", jnp.zeros(())),  # not callable
    ],
    ids=["bare-fn", "1-tuple", "swapped", "list", "3-tuple", "str"],
)
def test_malformed_interventions_raise_type_error(value, tokens):
    cfg, model, params = setup("gpt2", False)
    with pytest.raises(TypeError, match="blocks.1.hook_resid_mid"):
        model.run_with_hooks(params, tokens, {"blocks.1.hook_resid_mid": value})
    with pytest.raises(TypeError, match="blocks.1.hook_resid_mid"):
        model.run_with_cache(params, tokens, ["hook_embed"], interventions={"blocks.1.hook_resid_mid": value})


def test_hook_names_match_design():
    """TransformerLens names from DESIGN.md, in forward order, once each."""
    cfg = get_cfg("gpt2", False)
    names = hook_names(cfg)
    assert len(names) == len(set(names))
    assert names[:3] == ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    assert names[-2:] == ["ln_final.hook_scale", "ln_final.hook_normalized"]
    per_layer = [
        "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
        "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
    ]  # fmt: skip
    for layer in range(cfg.n_layer):
        assert [n for n in names if n.startswith(f"blocks.{layer}.")] == [f"blocks.{layer}.{s}" for s in per_layer]
    llama = hook_names(get_cfg("llama", True))
    assert "hook_pos_embed" not in llama
    assert {"blocks.2.attn.hook_rot_q", "blocks.2.attn.hook_rot_k", "blocks.2.mlp.hook_pre_gate"} <= set(llama)
    assert hook_names(dataclasses.replace(cfg, scan_layers=True)) == names
