"""Mamba, LSTM, GRU and gated-conv mixers, and hybrid stacks (lmjax/model/mixers.py).

Each mixer three ways: its training path (all positions at once), a plain float64 NumPy
recurrence written here from the papers' equations, and its decoding step run token by
token; then, for every mixer and a hybrid, causality, cached decoding against the full
forward pass, greedy sampling against the full model's argmax, and a short training run.
Tiny shapes throughout: every program compiles once (lru_cache) and compiling dominates.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax.model import ModelConfig, Transformer, hook_names
from lmjax.model.cache import grow_cache, init_cache
from lmjax.model.mixers import mixer_class
from lmjax.model.recurrent import GRU
from lmjax.sample import generate
from lmjax.model.accounting import count_params, flops_per_token, matmul_params, param_count
from lmjax.train.optimizer import decay_mask
from lmjax.train.steps import make_train_step, new_state

from _model_fixtures import FAST_COMPILE, stack_layers



def fast_jit(fn):
    """jax.jit compiled with FAST_COMPILE (LLVM at -O0: halves compiling, which dominates
    these tests; the one bitwise comparison compiles its own two programs at the usual level),
    once per argument structure and shapes."""
    jitted, compiled = jax.jit(fn), {}

    def call(*args):
        key = (jax.tree.structure(args), tuple((x.shape, x.dtype) for x in jax.tree.leaves(args)))
        if key not in compiled:
            compiled[key] = jitted.lower(*args).compile(FAST_COMPILE)
        return compiled[key](*args)

    return call


# ------------------------------------------------------------------ one mixer, three ways

MIXER_CFG = ModelConfig(vocab_size=11, n_layer=2, d_model=16, max_len=32, d_state=4, dt_rank=3, rnn_hidden=12,
                        conv_width=3, ssm_chunk=4, use_bias=True)
B, T = 2, 13  # T: several Mamba chunks of 4 and a ragged last one


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softplus(x):
    return np.log1p(np.exp(x))


def mamba_reference(p, u):
    """Gu & Dao 2023, Algorithm 2, one position at a time in float64."""
    w_in = p["in_proj"]["kernel"]  # [d, 2, d_inner]: x then z
    x, z = np.einsum("btd,dke->btke", u, w_in).transpose(2, 0, 1, 3)
    kernel, bias = p["conv1d"]["kernel"], p["conv1d"]["bias"]  # [width, d_inner]
    width, (b, t, di) = kernel.shape[0], x.shape
    conv = np.zeros_like(x) + bias
    for s in range(t):  # output s sees inputs s - width + 1 .. s (zeros before the start)
        for j in range(width):
            if s - width + 1 + j >= 0:
                conv[:, s] += kernel[j] * x[:, s - width + 1 + j]
    x = silu(conv)
    r, n = p["dt_proj"]["kernel"].shape[0], p["A_log"].shape[1]
    dbc = x @ p["x_proj"]["kernel"]
    delta = softplus(dbc[..., :r] @ p["dt_proj"]["kernel"] + p["dt_proj"]["bias"])
    Bm, Cm = dbc[..., r:r + n], dbc[..., r + n:]
    A = -np.exp(p["A_log"])
    h, y = np.zeros((b, di, n)), np.zeros((b, t, di))
    for s in range(t):
        h = np.exp(delta[:, s, :, None] * A) * h + delta[:, s, :, None] * Bm[:, s, None, :] * x[:, s, :, None]
        y[:, s] = (h * Cm[:, s, None, :]).sum(-1) + p["D"] * x[:, s]
    return (y * silu(z)) @ p["out_proj"]["kernel"]


def lstm_reference(p, u):
    wx, bx, wh = p["input"]["kernel"], p["input"]["bias"], p["recurrent"]  # [d, 4, H], [4, H], [H, 4, H]
    b, t, _ = u.shape
    h, c, out = np.zeros((b, wh.shape[0])), np.zeros((b, wh.shape[0])), []
    for s in range(t):
        i, f, g, o = (np.einsum("bd,dgh->bgh", u[:, s], wx) + bx + np.einsum("bk,kgh->bgh", h, wh)).transpose(1, 0, 2)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, 1) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


def gru_reference(p, u):
    wx, bx, wh, bh = p["input"]["kernel"], p["input"]["bias"], p["recurrent"], p["hidden"]["bias"]
    b, t, _ = u.shape
    h, out = np.zeros((b, wh.shape[0])), []
    for s in range(t):
        xr, xz, xn = (np.einsum("bd,dgh->bgh", u[:, s], wx) + bx).transpose(1, 0, 2)
        hr, hz, hn = (np.einsum("bk,kgh->bgh", h, wh) + bh).transpose(1, 0, 2)
        r, zg = sigmoid(xr + hr), sigmoid(xz + hz)
        h = (1 - zg) * np.tanh(xn + r * hn) + zg * h
        out.append(h)
    return np.stack(out, 1) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


def conv_reference(p, u):
    """Dauphin et al. 2017: (X * W + b) . sigmoid(X * V + c), causal, then out_proj."""
    kernel, bias = p["conv"]["kernel"], p["conv"]["bias"]  # [width, d, 2, d], [2, d]
    width, (b, t, d) = kernel.shape[0], u.shape
    acc = np.zeros((b, t, 2, d)) + bias
    for s in range(t):
        for j in range(width):
            if s - width + 1 + j >= 0:
                acc[:, s] += np.einsum("bd,dke->bke", u[:, s - width + 1 + j], kernel[j])
    return (acc[:, :, 0] * sigmoid(acc[:, :, 1])) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


REFERENCES = {"mamba": mamba_reference, "lstm": lstm_reference, "gru": gru_reference, "conv": conv_reference}
MIXERS = tuple(REFERENCES)


@functools.lru_cache(maxsize=None)
def mixer_setup(kind: str):
    """(module, params, u): the module's own init, every leaf then perturbed so that each matters."""
    module = mixer_class(kind)(MIXER_CFG, "blocks.0.mixer")
    u = jax.random.normal(jax.random.key(1), (B, T, MIXER_CFG.d_model))
    return module, perturbed(fast_jit(module.init)(jax.random.key(0), u)["params"], 0.2), u


def perturbed(params, scale: float):
    """The init plus noise: every parameter matters (and a Mamba model's tiny out_proj does not
    leave its greedy outputs one repeated token)."""
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def mixer_forward(kind: str, scan: str = "auto"):
    """jit(params, x) -> out: the training path (Mamba: with the given scan)."""
    module = mixer_class(kind)(dataclasses.replace(MIXER_CFG, ssm_scan=scan), "blocks.0.mixer")
    return fast_jit(lambda p, x: module.apply({"params": p}, x))


@functools.lru_cache(maxsize=None)
def mixer_step(kind: str):
    """jit(params, x, cache, lengths) -> (out, cache): the cached path."""
    module = mixer_class(kind)(MIXER_CFG, "blocks.0.mixer")
    return fast_jit(lambda p, x, cache, lengths=None: module.apply({"params": p}, x, cache=cache, lengths=lengths))


def as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.mark.parametrize("kind", MIXERS)
def test_parallel_equals_reference_recurrence_and_decoding_steps(kind):
    """Training path == float64 recurrence (1e-5) == decoding step by step (1e-5), f32."""
    module, params, u = mixer_setup(kind)
    ref = REFERENCES[kind](as_numpy(params), np.asarray(u, np.float64))
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zeros
    scans = ("associative", "chunked", "sequential") if kind == "mamba" else ("auto",)
    for scan in scans:
        out = mixer_forward(kind, scan)(params, u)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=f"{kind} {scan}")
    step = mixer_step(kind)
    cache = module.init_state(MIXER_CFG, B, jnp.float32)
    steps = []
    for s in range(T):
        y, cache = step(params, u[:, s:s + 1], cache)
        steps.append(y[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MIXERS)
def test_ragged_prefill_state_skips_padding(kind):
    """Rows of 5 and 9 real tokens in one padded prefill, then one token at a time: each
    row continues exactly as the unpadded sequence does."""
    module, params, u = mixer_setup(kind)
    full = mixer_forward(kind)(params, u)
    step = mixer_step(kind)
    lengths = jnp.array([5, 9])
    padded = u[:, :9].at[0, 5:].set(7.0)  # padding that would wreck the state if absorbed
    out, cache = step(params, padded, module.init_state(MIXER_CFG, B, jnp.float32), lengths)
    np.testing.assert_allclose(out[0, :5], full[0, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], full[1, :9], rtol=1e-5, atol=1e-5)
    for i in range(4):
        x = jnp.stack([u[0, 5 + i], u[1, 9 + i]])[:, None]
        y, cache = step(params, x, cache)
        np.testing.assert_allclose(y[:, 0], jnp.stack([full[0, 5 + i], full[1, 9 + i]]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ whole models

SMALL = dict(vocab_size=11, d_model=16, n_head=2, max_len=24, d_state=4, rnn_hidden=16, conv_width=3, init_std=0.5)
MODELS = {
    "mamba": dict(mixer="mamba", n_layer=2, mamba_mlp=False, pos_embedding="none", norm="rmsnorm"),
    "lstm": dict(mixer="lstm", n_layer=2, pos_embedding="learned", tie_embeddings=False),
    "gru": dict(mixer="gru", n_layer=2, pos_embedding="none", tie_embeddings=False),
    "conv": dict(mixer="conv", n_layer=2, pos_embedding="none", tie_embeddings=False),
    "hybrid": dict(layer_pattern="MAGC", n_layer=4, mamba_mlp=False, pos_embedding="rope"),
}


@functools.lru_cache(maxsize=None)
def model_setup(name: str):
    cfg = ModelConfig(**SMALL, **MODELS[name])
    assert cfg.problems() == []
    model = Transformer(cfg)
    params = nn.unbox(fast_jit(model.init)(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"])
    # Blocks perturbed; the final norm left at its init, whose bias would favour one token everywhere.
    return cfg, model, {k: perturbed(v, 0.3) if k.startswith("blocks") else v for k, v in params.items()}


@functools.lru_cache(maxsize=None)
def padded_forward(name: str):
    """jit(params, window [b, max_len]) -> logits: one compiled length for every prefix (causal)."""
    _, model, _ = model_setup(name)
    return fast_jit(lambda p, w: model.apply({"params": p}, w))


def tokens(cfg, batch, length, seed):
    return jnp.asarray(np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, length)), jnp.int32)


@pytest.mark.parametrize("name", list(MODELS))
def test_causality(name):
    cfg, _, params = model_setup(name)
    fwd = padded_forward(name)
    a = tokens(cfg, 2, cfg.max_len, 0)
    b = a.at[:, 9:].set((a[:, 9:] + 1) % cfg.vocab_size)
    la, lb = fwd(params, a), fwd(params, b)
    np.testing.assert_allclose(la[:, :9], lb[:, :9], atol=1e-6)
    assert np.abs(la[:, 9] - lb[:, 9]).max() > 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_decoding_equals_full_forward(name):
    cfg, model, params = model_setup(name)
    seq = tokens(cfg, 3, cfg.max_len, 1)
    full = padded_forward(name)(params, seq)
    step = fast_jit(lambda tok, pos, cache: model.apply({"params": params}, tok, pos, cache=cache))
    logits, cache = step(seq[:, :6], jnp.broadcast_to(jnp.arange(6), (3, 6)), init_cache(cfg, 3))
    np.testing.assert_allclose(logits, full[:, :6], atol=1e-5)
    for t in range(6, 16):
        logits, cache = step(seq[:, t:t + 1], jnp.full((3, 1), t), cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5, err_msg=f"position {t}")


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_sampling_equals_argmax_of_full_model(name):
    """Ragged prompts in one batch (the recurrent states must skip each row's padding)."""
    cfg, model, params = model_setup(name)
    fwd = padded_forward(name)
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 1], [4]]
    outs = generate(model, params, prompts, max_new_tokens=10, temperature=0.0)
    for prompt, out in zip(prompts, outs):
        seq = list(prompt)
        for _ in range(10):
            window = np.zeros((1, cfg.max_len), np.int32)
            window[0, :len(seq)] = seq
            seq.append(int(np.argmax(fwd(params, window)[0, len(seq) - 1])))
        assert out == seq[len(prompt):], (prompt, out, seq[len(prompt):])
    assert any(len(set(o)) > 2 for o in outs), outs  # not one repeated token


def _stdlib_bytes(n_bytes: int = 200_000) -> np.ndarray:
    """Bytes of the embedded corpus (the standard library's source) as token ids 0..255."""
    from lmjax.data.sources import stdlib_paths

    chunks, total = [], 0
    for path in stdlib_paths()[:40]:
        data = open(path, "rb").read()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:n_bytes], np.uint8).astype(np.int32)


@pytest.mark.parametrize("kind", MIXERS)
def test_each_mixer_trains_on_the_embedded_corpus(kind):
    """40 Adam steps of a 2-layer d_model 32 model on byte windows of the standard library:
    the loss falls well below its start and below the byte unigram entropy's neighbourhood."""
    cfg = ModelConfig(vocab_size=256, n_layer=2, d_model=32, n_head=2, max_len=32, mixer=kind, d_state=8,
                      pos_embedding="none", mamba_mlp=False)
    model = Transformer(cfg)
    data = _stdlib_bytes()
    rng = np.random.RandomState(0)
    params = nn.unbox(fast_jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    opt = optax.adam(1e-2)
    state = new_state(params, opt)
    starts = rng.randint(0, len(data) - 33, (40, 16))
    windows = np.stack([[data[s:s + 33] for s in row] for row in starts])
    batches = [{"inputs": w[:, :-1], "targets": w[:, 1:]} for w in windows]
    step = jax.jit(make_train_step(model, opt, jit=False)).lower(state, batches[0]).compile(FAST_COMPILE)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] > 5.0  # ~ln 256 at the start
    assert np.mean(losses[-5:]) < 3.6, losses


# ------------------------------------------------------------------ config, accounting, hooks, caches


def test_layer_pattern_repeats_and_config_errors_name_the_field():
    cfg = ModelConfig(vocab_size=5, n_layer=8, layer_pattern="MMMA")
    assert cfg.layer_mixers == ("mamba",) * 3 + ("attention",) + ("mamba",) * 3 + ("attention",)
    assert ModelConfig(vocab_size=5, n_layer=3, mixer="gru").layer_mixers == ("gru",) * 3
    bad = {
        "layer_pattern": dict(n_layer=4, layer_pattern="MX"),
        "layer_pattern ": dict(n_layer=4, layer_pattern="MMA"),
        "scan_layers": dict(n_layer=4, layer_pattern="MA", scan_layers=True),
        "mixer": dict(mixer="rwkv"),
        "ssm_scan": dict(mixer="mamba", ssm_scan="parallel"),
        "d_state": dict(mixer="mamba", d_state=0),
    }
    for field, kw in bad.items():
        problems = ModelConfig(vocab_size=5, **kw).problems()
        assert any(p.startswith(f"model.{field.strip()}:") for p in problems), (field, problems)
    # attention's head constraints do not apply to attention-free stacks
    assert ModelConfig(vocab_size=5, d_model=30, n_head=4, mixer="mamba").problems() == []
    assert ModelConfig(vocab_size=5, n_layer=4, mixer="lstm", scan_layers=True).problems() == []


@pytest.mark.parametrize("kw", [dict(mixer=m) for m in ("attention", "mamba", "lstm", "gru", "conv")]
                         + [dict(layer_pattern="MAGLC", mamba_mlp=False, use_bias=False, tie_embeddings=False,
                                 mlp="swiglu", n_kv_head=1)])
def test_param_count_formula_matches_the_tree(kw):
    cfg = ModelConfig(**{**SMALL, "n_layer": 5, "rnn_hidden": 12, **kw})
    shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert count_params(nn.unbox(shapes["params"])) == param_count(cfg)
    assert flops_per_token(cfg, 64) >= 6 * matmul_params(cfg) > 0


def test_transformer_flops_formula_is_unchanged():
    cfg = ModelConfig(vocab_size=65, n_layer=6, d_model=384, n_head=6)
    n = 6 * 12 * 384 * 384 + 384 * 65
    assert matmul_params(cfg) == n
    assert flops_per_token(cfg, 256) == 6 * n + 12 * 6 * 384 * 256


def test_no_weight_decay_on_a_log_and_d_scanned_or_not():
    for scan in (False, True):
        cfg = ModelConfig(**{**SMALL, **MODELS["mamba"], "scan_layers": scan})
        shapes = nn.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
        flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(decay_mask(shapes["params"]))[0]}
        a_log = [v for k, v in flat.items() if "A_log" in k]
        d_skip = [v for k, v in flat.items() if k.endswith("['D']")]
        assert a_log and d_skip and not any(a_log) and not any(d_skip)
        assert any(v for k, v in flat.items() if "in_proj" in k)


def test_scanned_mamba_equals_unscanned():
    cfg, _, params = model_setup("mamba")
    scanned = dataclasses.replace(cfg, scan_layers=True)
    seq = tokens(cfg, 2, 12, 4)
    want = padded_forward("mamba")(params, seq)
    got = fast_jit(Transformer(scanned).apply)({"params": stack_layers(params, cfg.n_layer)}, seq)
    np.testing.assert_allclose(got, want, atol=1e-5)
    cache = init_cache(scanned, 2)
    assert cache["ssm"].shape == (2, 2, cfg.d_state, cfg.d_inner)


def test_hook_names_per_mixer():
    cfg, _, _ = model_setup("hybrid")  # M A G C, Mamba blocks without an MLP
    names = hook_names(cfg)
    assert len(names) == len(set(names))
    mamba = [n[len("blocks.0."):] for n in names if n.startswith("blocks.0.")]
    assert mamba == ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "mixer.hook_in_proj",
                     "mixer.hook_silu_ratio", "mixer.hook_conv", "mixer.hook_delta", "mixer.hook_B", "mixer.hook_C",
                     "mixer.hook_h", "mixer.hook_ssm_out", "mixer.hook_gate", "hook_mixer_out", "hook_resid_post"]
    assert "blocks.1.hook_attn_out" in names and "blocks.1.hook_mixer_out" not in names
    gru = ["mixer.hook_reset_gate", "mixer.hook_update_gate", "mixer.hook_candidate_ratio", "mixer.hook_h"]
    for layer, inside in ((2, gru), (3, ["mixer.hook_value", "mixer.hook_gate", "mixer.hook_post"])):
        block = [n[len(f"blocks.{layer}."):] for n in names if n.startswith(f"blocks.{layer}.")]
        assert block[3:3 + len(inside)] == inside
        assert block[3 + len(inside):] == ["hook_mixer_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
                                           "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


def test_hooks_cache_shapes_identity_is_bitwise_and_state_patch_changes_readout():
    cfg, model, params = model_setup("hybrid")
    seq = tokens(cfg, 2, cfg.max_len, 5)
    plain = padded_forward("hybrid")(params, seq)
    names = hook_names(cfg)
    identity = {n: (lambda x, p: x, jnp.zeros(())) for n in names}
    logits, cache = fast_jit(lambda p, s: model.run_with_cache(p, s, names, interventions=identity))(params, seq)
    # bitwise only at XLA's usual optimisation level: at -O0 the two programs round differently
    # (an identity at a recurrent cell's gate factors reruns the cell in its factored form:
    # equal to rounding, not bitwise)
    factors = {f"blocks.2.mixer.{n}" for n in GRU.factor_names}
    unfactored = {n: v for n, v in identity.items() if n not in factors}
    optimised = jax.jit(lambda p, s: model.apply({"params": p}, s))(params, seq)
    np.testing.assert_array_equal(jax.jit(lambda p, s: model.run_with_cache(
        p, s, [n for n in names if n not in factors], interventions=unfactored)[0])(params, seq), optimised)
    np.testing.assert_allclose(logits, plain, atol=1e-5)
    di, n, H, t = cfg.d_inner, cfg.d_state, cfg.rnn_width, cfg.max_len
    expected = {"blocks.0.mixer.hook_in_proj": (2, t, 2, di), "blocks.0.mixer.hook_h": (2, t, di, n),
                "blocks.0.mixer.hook_delta": (2, t, di), "blocks.0.mixer.hook_B": (2, t, n),
                "blocks.0.hook_mixer_out": (2, t, cfg.d_model), "blocks.2.mixer.hook_h": (2, t, H),
                "blocks.3.mixer.hook_gate": (2, t, cfg.d_model)}
    for name, shape in expected.items():
        assert cache[name].shape == shape, name
    # the states cached are the recurrence's: C . h + D x reproduces hook_ssm_out
    ssm = cache["blocks.0.mixer.hook_ssm_out"]
    readout = jnp.einsum("btdn,btn->btd", cache["blocks.0.mixer.hook_h"], cache["blocks.0.mixer.hook_C"])
    d_skip = params["blocks_0"]["mixer"]["D"] * cache["blocks.0.mixer.hook_conv"]
    np.testing.assert_allclose(readout + d_skip, ssm, atol=1e-5)
    # zeroing the state at position 4 changes outputs from position 4 on only
    zero_at_4 = lambda h, p: h.at[:, 4].multiply(p)
    patch = {"blocks.0.mixer.hook_h": (zero_at_4, jnp.zeros(()))}
    patched = fast_jit(lambda p, s: model.run_with_hooks(p, s, patch))(params, seq)
    np.testing.assert_allclose(patched[:, :4], plain[:, :4], atol=1e-6)
    assert np.abs(patched[:, 4] - plain[:, 4]).max() > 1e-4


def test_grow_cache_pads_kv_only():
    cfg, _, _ = model_setup("hybrid")
    cache = init_cache(cfg, 2, length=8)
    grown = grow_cache(cache, 16)
    assert grown[1]["k"].shape[1] == 16 and grown[1]["v"].shape[2] == 16
    for layer in (0, 2, 3):
        assert jax.tree.map(jnp.shape, grown[layer]) == jax.tree.map(jnp.shape, cache[layer])
    # a recurrent model's decoding state does not depend on the context at all
    mamba_cfg = model_setup("mamba")[0]
    shapes = lambda length: jax.tree.map(jnp.shape, init_cache(mamba_cfg, 2, length=length))
    assert shapes(8) == shapes(4096)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 simulated devices of tests/conftest.py")
def test_every_mixer_shards():
    """Loss and gradients of a hybrid holding every mixer, with its parameters sharded by
    their logical axes on an FSDP x tensor mesh (4 x 2) and the batch split, equal one
    device's: the mixers' axis names are ones the mesh can split."""
    from lmjax import sharding
    from lmjax.train.steps import cross_entropy, param_shardings

    cfg = ModelConfig(vocab_size=64, n_layer=5, d_model=16, n_head=2, max_len=8, layer_pattern="MAGLC",
                      mamba_mlp=False, d_state=4, conv_width=3)
    model = Transformer(cfg)
    tokens = np.random.default_rng(0).integers(0, 64, (8, 9)).astype(np.int32)
    loss = lambda p, x, y: cross_entropy(model.apply({"params": p}, x), y)
    grad = jax.value_and_grad(loss)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens[:1, :4])["params"])
    rng = np.random.default_rng(1)  # random values without compiling the init
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    want_loss, want_grads = jax.jit(grad).lower(params, tokens[:, :-1], tokens[:, 1:]).compile(FAST_COMPILE)(
        params, tokens[:, :-1], tokens[:, 1:])
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = param_shardings(model, mesh)
    assert any(s.spec and "tensor" in jax.tree.leaves(tuple(s.spec)) for s in jax.tree.leaves(shardings["blocks_0"]))
    sharded = jax.device_put(params, shardings)
    rows = sharding.batch_sharding(mesh)
    x, y = jax.device_put(tokens[:, :-1], rows), jax.device_put(tokens[:, 1:], rows)
    got_loss, got_grads = jax.jit(grad).lower(sharded, x, y).compile(FAST_COMPILE)(sharded, x, y)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)
