"""lmjax.sae: architectures, training (vmapped, sharded, resumed), activations, metrics,
splicing and the `lmjax sae` command, on tiny models and toy data.

Invariants asserted: predicting the mean explains exactly 0 of the variance and a perfect
reconstruction all of it (about the mean, not zero); a splice with its error term gives
the model's logits exactly and CE recovered 1, for SAEs, transcoders and cross-layer
transcoders on attention, Mamba, LSTM and hybrid models; JumpReLU's L0 falls as its
coefficient grows over 10x; vmapped members equal separate runs; a resumed run is bitwise
the uninterrupted one; a sharded run equals the single-device one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from _model_fixtures import GPT2, random_params, random_tokens
from lmjax.commands import main
from lmjax.errors import LmjaxError
from lmjax.model import ModelConfig, Transformer
from lmjax.sae.activations import CachedSource, ModelSource, cache_activations
from lmjax.sae.architectures import Dictionary, jump, step
from lmjax.sae.crosslayer import CrossLayerTranscoder
from lmjax.sae.metrics import ReconstructionStats, ce_recovered, reconstruction_metrics
from lmjax.sae.splice import Splice, SplicedModel, spliced_run
from lmjax.sae.store import load_dictionary, save_dictionary
from lmjax.sae.training import ArraySource, GeneratorSource, fit

ATTN = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, max_len=32, **GPT2)
MIXERS = {  # the hybrid holds a Mamba layer and an attention layer
    "lstm": ModelConfig(vocab_size=64, d_model=16, n_layer=2, max_len=32, mixer="lstm", rnn_hidden=12),
    "hybrid": ModelConfig(vocab_size=64, d_model=16, n_layer=2, n_head=2, max_len=32, layer_pattern="MA",
                          d_state=4, dt_rank=2),
}
CORPUS = np.random.RandomState(0).randint(0, 64, 8000).astype(np.int32)


def _toy_sampler(d=32, n=64, active=3, seed=0):
    """Sparse nonnegative combinations of n random unit features in d dims."""
    feats = np.random.default_rng(seed).normal(size=(n, d))
    feats = jnp.asarray(feats / np.linalg.norm(feats, axis=1, keepdims=True), jnp.float32)

    def sample(key, b):
        k1, k2 = jax.random.split(key)
        on = jax.random.bernoulli(k1, active / n, (b, n))
        return (on * jax.random.uniform(k2, (b, n))) @ feats

    return feats, sample


# ---- architectures -------------------------------------------------------------------------

def test_bad_hyperparameters_are_one_line_errors():
    with pytest.raises(LmjaxError, match="k=100 must be between 1 and width=64"):
        Dictionary("topk", 16, 64, k=100)
    with pytest.raises(LmjaxError, match="unknown dictionary arch 'nope'"):
        Dictionary("nope", 16, 64)
    with pytest.raises(LmjaxError, match="matryoshka_widths"):
        Dictionary("matryoshka", 16, 64, matryoshka_widths=(32, 16, 64))


def test_jumprelu_pseudo_derivatives_are_the_rectangle_kernel():
    """d/dtheta of z H(z - theta) is -(theta / eps) inside |z - theta| < eps / 2, else 0; of
    H(z - theta), -(1 / eps); the value is the exact JumpReLU."""
    eps, theta = 0.1, jnp.asarray([0.5, 0.5, 0.5])
    z = jnp.asarray([0.52, 0.7, 0.3])  # inside the kernel, above it, below it
    np.testing.assert_array_equal(jump(z, theta, eps), jnp.asarray([0.52, 0.7, 0.0]))
    g_jump = jax.grad(lambda t: jump(z, t, eps).sum())(theta)
    g_step = jax.grad(lambda t: step(z, t, eps).sum())(theta)
    np.testing.assert_allclose(g_jump, [-0.5 / eps, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(g_step, [-1 / eps, 0, 0], rtol=1e-6)


def test_topk_and_batchtopk_keep_k():
    d = Dictionary("topk", 16, 64, k=5)
    p = d.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 16))
    assert np.all(np.sum(np.asarray(d.encode(p, x)) != 0, -1) <= 5)
    b = Dictionary("batchtopk", 16, 64, k=5)
    f, aux = b.activate(b.init(jax.random.key(0)), b.pre_acts(p, x), train=True)
    assert int(np.sum(np.asarray(f) != 0)) == 5 * 32  # k per token on average, over the batch
    assert float(aux["threshold_estimate"]) == pytest.approx(float(np.min(np.asarray(f)[np.asarray(f) > 0])))


def test_unit_norm_decoder_and_parallel_gradient_removed():
    d = Dictionary("topk", 16, 64, k=5)
    p = d.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 16))
    g = jax.grad(lambda q: d.loss(q, x)[0])(p)
    g = d.project_gradient(p, g)
    np.testing.assert_allclose(np.sum(np.asarray(g["W_dec"]) * np.asarray(p["W_dec"]), -1), 0, atol=1e-5)
    moved = d.constrain({**p, "W_dec": p["W_dec"] * 3})
    np.testing.assert_allclose(np.linalg.norm(np.asarray(moved["W_dec"]), axis=-1), 1, rtol=1e-5)


@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_topk_loss_equals_the_dense_one(transcoder):
    """Without AuxK, TopK's loss runs on the k gathered latents; with AuxK (a `dead` mask),
    densely. Same loss, gradients, L0 and firing counts, with a traced k too."""
    kw = dict(d_out=24, hook_in="a", hook_out="b", skip=True) if transcoder else {}
    d = Dictionary("topk", 32, 256, k=8, **kw)
    p = d.init(jax.random.key(0))
    p["b_dec"], p["b_enc"] = p["b_dec"] + 0.3, p["b_enc"] - 0.2
    if transcoder:
        p["W_skip"] = 0.1 * jax.random.normal(jax.random.key(3), p["W_skip"].shape)
    x = jax.random.normal(jax.random.key(1), (64, 32))
    y = jax.random.normal(jax.random.key(2), (64, 24)) if transcoder else None
    none_dead = jnp.zeros(256, bool)
    for hyper in (None, {"k": jnp.asarray(5)}):
        (dense, a_dense), g_dense = jax.value_and_grad(lambda q: d.loss(q, x, y, none_dead, hyper), has_aux=True)(p)
        (sparse, a_sparse), g_sparse = jax.value_and_grad(lambda q: d.loss(q, x, y, None, hyper), has_aux=True)(p)
        assert float(sparse) == pytest.approx(float(dense), rel=1e-6)
        for name in g_dense:
            np.testing.assert_allclose(np.asarray(g_sparse[name]), np.asarray(g_dense[name]), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(a_sparse["fired"]), np.asarray(a_dense["fired"]))
        assert float(a_sparse["l0"]) == float(a_dense["l0"]) == (5.0 if hyper else 8.0)


def test_clip_norm_clips_each_members_gradient_before_adam():
    from lmjax.sae.training import make_optimizer
    grads = {"a": jnp.full((2, 3), 4.0), "b": jnp.full((2,), 3.0)}  # global norm sqrt(6*16 + 2*9)
    opt = make_optimizer(1e-3, 10, clip_norm=0.5)
    _, state = jax.vmap(opt.update)(grads, jax.vmap(opt.init)(grads), grads)
    first_moment = optax.tree_utils.tree_get(state, "mu")
    norm = np.sqrt(sum(float(jnp.sum(v[0] ** 2)) for v in jax.tree.leaves(first_moment)))
    assert norm == pytest.approx(0.1 * 0.5, rel=1e-5)  # (1 - b1) * the clipped gradient
    with pytest.raises(LmjaxError, match="clip_norm"):
        make_optimizer(1e-3, 10, clip_norm=0.0)


def test_auxk_reaches_only_dead_latents():
    d = Dictionary("topk", 16, 64, k=2, aux_k=8)
    p = d.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 16))
    dead = jnp.zeros(64, bool).at[40:].set(True)
    aux_grad = jax.grad(lambda q: d._aux_k_loss(q, d.pre_acts(q, x), x - d(q, x), dead))(p)["W_dec"]
    rows = np.abs(np.asarray(aux_grad)).sum(-1)
    assert rows[40:].sum() > 0 and rows[:40].sum() == 0
    assert float(d.loss(p, x, dead=jnp.zeros(64, bool))[1]["aux_loss"]) == 0.0


# ---- metrics ----------------------------------------------------------------------------------

def test_explained_variance_is_about_the_mean():
    """Predicting the mean: exactly 0; perfect: 1; a constant offset does not count as explained
    (variance about zero would call the mean ~all of it)."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3000, 8)) + 50.0
    batches = np.split(y, 3)
    for predict, expected in ((lambda b: np.broadcast_to(y.mean(0), b.shape), 0.0), (lambda b: b, 1.0)):
        stats = ReconstructionStats(4)
        for b in batches:
            stats.update(b, predict(b), np.ones((len(b), 4)))
        assert stats.result()["explained_variance"] == pytest.approx(expected, abs=1e-9)
    stats = ReconstructionStats(4)
    half = y * 0.5 + y.mean(0) * 0.5  # halfway to the mean: FVU 0.25
    stats.update(y, half, np.zeros((len(y), 4)))
    r = stats.result()
    assert r["fvu"] == pytest.approx(0.25, rel=1e-9) and r["dead_fraction"] == 1.0 and r["l0"] == 0


@pytest.fixture(scope="module")
def attn_model():
    return Transformer(ATTN), random_params(ATTN)


@pytest.fixture(scope="module")
def trained_sae(attn_model):
    model, params = attn_model
    src = ModelSource(model, params, CORPUS, "blocks.0.hook_resid_post", seq_len=32)
    d = Dictionary("topk", 32, 128, k=8, hook_in="blocks.0.hook_resid_post")
    return fit(d, src, steps=150, batch_size=256, lr=2e-3, progress=False, log_every=50), src


def test_training_lowers_the_loss_and_explains_variance(trained_sae):
    result, src = trained_sae
    assert result.history[-1]["mse"] < 0.8 * result.history[0]["mse"]  # first logged at step 50
    d, p = result.member(0)
    m = reconstruction_metrics(d, p, [src.batch(10_000 + i, 512) for i in range(2)])
    assert m["explained_variance"] > 0.5 and m["l0"] <= 8 and 0 < m["shrinkage"] < 1.5


def test_splices_with_error_term_reproduce_the_model(attn_model, trained_sae):
    model, params = attn_model
    d, p = trained_sae[0].member(0)
    tokens = random_tokens(ATTN, 2, 32)
    r = ce_recovered(model, params, tokens, d, p, error=True)
    assert r["max_logit_diff"] == 0.0 and r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    plain = ce_recovered(model, params, tokens, d, p)
    assert plain["max_logit_diff"] > 1e-3 and plain["kl"] > 0


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_streams_trains_and_splices(name):
    """Any hook point on any mixer: streamed activations equal run_with_cache's, a transcoder
    from ln2.hook_normalized to hook_mlp_out trains, and its error-term splice is exact."""
    cfg = MIXERS[name]
    model, params = Transformer(cfg), random_params(cfg)
    mixer_hook = "blocks.0.hook_mixer_out"
    src = ModelSource(model, params, CORPUS, mixer_hook, seq_len=16, skip=0)
    x, _ = src.batch(3, 32)
    window = __import__("lmjax.data.batches", fromlist=["train_batch"]).train_batch(
        CORPUS, seed=0, step=3, batch_size=2, seq_len=16)["inputs"]
    ref = model.run_with_cache(params, jnp.asarray(window), [mixer_hook])[1][mixer_hook].reshape(-1, cfg.d_model)
    np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=1e-5, atol=1e-6)
    tsrc = ModelSource(model, params, CORPUS, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", seq_len=16)
    d = Dictionary("topk", cfg.d_model, 64, k=4, hook_in="blocks.1.ln2.hook_normalized",
                   hook_out="blocks.1.hook_mlp_out", skip=True)
    result = fit(d, tsrc, steps=16, batch_size=128, lr=3e-3, progress=False, log_every=8)
    assert result.history[-1]["mse"] < result.history[0]["mse"]
    d, p = result.member(0)
    r = ce_recovered(model, params, random_tokens(cfg, 2, 16), d, p, error=True)
    assert r["max_logit_diff"] == 0.0 and r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)


def test_crosslayer_transcoder_trains_saves_and_splices(attn_model, tmp_path):
    model, params = attn_model
    ins = [f"blocks.{l}.hook_resid_mid" for l in range(2)]
    outs = [f"blocks.{l}.hook_mlp_out" for l in range(2)]
    src = ModelSource(model, params, CORPUS, ins, outs, seq_len=32, layer_axis=True)
    clt = CrossLayerTranscoder("relu", 2, 32, 64, hooks_in=ins, hooks_out=outs, l1=0.1)
    result = fit(clt, src, steps=30, batch_size=256, lr=2e-3, progress=False, log_every=15)
    assert result.history[-1]["mse"] < result.history[0]["mse"]
    d, p = result.member(0)
    # layer 0's features write to layers 0 and 1; layer 1's only to 1
    assert p["W_dec"][0].shape == (64, 2, 32) and p["W_dec"][1].shape == (64, 1, 32)
    f = jnp.zeros((1, 2, 64)).at[0, 1, 3].set(1.0)
    np.testing.assert_allclose(d.decode(p, f)[0, 0], p["b_dec"][0], atol=1e-6)  # no write downward
    tokens = random_tokens(ATTN, 2, 32)
    r = ce_recovered(model, params, tokens, d, p, error=True)
    assert r["max_logit_diff"] == 0.0
    save_dictionary(str(tmp_path / "clt"), d, p)
    d2, p2 = load_dictionary(str(tmp_path / "clt"))
    assert d2 == d and all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p2)))


def test_clamp_ablate_and_steer(attn_model, trained_sae):
    model, params = attn_model
    d, p = trained_sae[0].member(0)
    tokens = random_tokens(ATTN, 1, 32)
    hook = d.hook_in
    base = spliced_run(model, params, tokens, [Splice(d, p, error=True)], [hook])[1][hook]
    x = model.run_with_cache(params, tokens, [hook])[1][hook]
    f = d.encode(p, x * d.input_scale)
    feature = int(np.argmax(np.asarray(f).sum((0, 1))))
    ablated = spliced_run(model, params, tokens, [Splice(d, p, error=True, ablate=[feature])], [hook])[1][hook]
    expected = base - f[..., feature:feature + 1] * p["W_dec"][feature] / d.output_scale
    np.testing.assert_allclose(np.asarray(ablated), np.asarray(expected), rtol=1e-4, atol=1e-4)
    steered = spliced_run(model, params, tokens, [Splice(d, p, error=True, steer={feature: 2.0})], [hook])[1][hook]
    np.testing.assert_allclose(np.asarray(steered - base), np.broadcast_to(2.0 * p["W_dec"][feature] / d.output_scale,
                                                                         base.shape), rtol=1e-4, atol=1e-5)
    with pytest.raises(LmjaxError, match="feature 999 does not exist"):
        Splice(d, p, ablate=[999])
    # the spliced model behind the hook API: an interp analysis runs on it
    from lmjax.interp import logit_lens
    sm = SplicedModel(model, [Splice(d, p, error=True)])
    lens_spliced = logit_lens(sm, params, tokens)
    lens = logit_lens(model, params, tokens)
    np.testing.assert_allclose(np.asarray(lens_spliced.logits if hasattr(lens, "logits") else lens_spliced),
                               np.asarray(lens.logits if hasattr(lens, "logits") else lens), rtol=1e-5, atol=1e-5)


# ---- training: sweeps, resume, sharding ------------------------------------------------------------

def test_jumprelu_l0_falls_as_its_coefficient_grows():
    _, sample = _toy_sampler()
    coefs = [0.3, 1.0, 3.0]
    result = fit(Dictionary("jumprelu", 32, 128), GeneratorSource(sample), steps=400, batch_size=256, lr=3e-3,
                 progress=False, log_every=400, hypers=[{"l0_coef": c} for c in coefs])
    l0 = [result.history[-1][f"l0/{i}"] for i in range(3)]
    assert l0[0] > l0[1] > l0[2], l0
    assert l0[0] > 1.3 * l0[2], l0


def test_vmapped_members_equal_separate_runs():
    _, sample = _toy_sampler()
    src = GeneratorSource(sample)
    d = Dictionary("topk", 32, 64, k=8)
    both = fit(d, src, steps=20, batch_size=64, seeds=[3, 4], hypers=[{"k": 8}, {"k": 4}], progress=False)
    alone = fit(dataclasses.replace(d, k=4), src, steps=20, batch_size=64, seed=4, progress=False)
    assert both.dictionaries[1].k == 4
    for a, b in zip(jax.tree.leaves(both.member(1)[1]), jax.tree.leaves(alone.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_every_layer_in_one_step_equals_each_layer_alone(attn_model):
    """A source with one hook per layer trains one dictionary per layer in the same vmapped
    step; each equals the dictionary trained on its layer alone."""
    model, params = attn_model
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    d = Dictionary("topk", 32, 64, k=4, hook_in=hooks[1])
    both = fit(d, ModelSource(model, params, CORPUS, hooks, seq_len=32), steps=6, batch_size=128, seeds=[0, 0],
               scale=False, progress=False)
    alone = fit(d, ModelSource(model, params, CORPUS, hooks[1], seq_len=32), steps=6, batch_size=128, scale=False,
                progress=False)
    for a, b in zip(jax.tree.leaves(both.member(1)[1]), jax.tree.leaves(alone.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    assert not np.allclose(both.member(0)[1]["b_dec"], both.member(1)[1]["b_dec"])  # each layer's own mean


def test_resume_is_bitwise(tmp_path):
    _, sample = _toy_sampler()
    src = GeneratorSource(sample)
    d = Dictionary("batchtopk", 32, 64, k=4)
    kw = dict(batch_size=64, progress=False, save_every=3, log_every=3)
    straight = fit(d, src, steps=9, workdir=str(tmp_path / "a"), **kw)
    fit(d, src, steps=5, workdir=str(tmp_path / "b"), **kw)
    resumed = fit(d, src, steps=9, workdir=str(tmp_path / "b"), **kw)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    lines = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [row["step"] for row in lines][-1] == 9 and os.path.isdir(tmp_path / "b" / "tb")
    with pytest.raises(LmjaxError, match="other settings"):
        fit(dataclasses.replace(d, k=3), src, steps=9, workdir=str(tmp_path / "b"), **kw)
    loaded, p = load_dictionary(str(tmp_path / "b"))
    assert loaded == resumed.dictionary


def test_sharded_training_matches_one_device():
    if len(jax.devices()) < 4:
        pytest.fail("needs the 8 simulated CPU devices that tests/conftest.py sets up")
    _, sample = _toy_sampler()
    src = GeneratorSource(sample)
    d = Dictionary("topk", 32, 64, k=4)
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2, 1), ("data", "fsdp", "tensor"))
    sharded = fit(d, src, steps=10, batch_size=64, mesh=mesh, progress=False)
    single = fit(d, src, steps=10, batch_size=64, progress=False)
    w = sharded.state["params"]["W_enc"]
    assert w.sharding.spec[-1] in ("fsdp", ("fsdp",))  # the latents are split
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_cached_activations_round_trip(attn_model, tmp_path):
    model, params = attn_model
    src = ModelSource(model, params, CORPUS, "blocks.1.attn.hook_z", seq_len=32)
    assert src.d_in == ATTN.d_model  # heads x d_head flattened
    out = cache_activations(src, str(tmp_path / "acts"), n_tokens=1000, batch_size=256, progress=False)
    cached = CachedSource(out, seed=1)
    x_all = np.load(os.path.join(out, "x.npy"))
    np.testing.assert_allclose(x_all[:256], np.asarray(src.batch(0, 256)[0]), rtol=1e-6)
    x, _ = cached.batch(0, 100)
    assert x.shape == (100, ATTN.d_model) and len({r.tobytes() for r in x}) == 100
    assert cache_activations(src, out, n_tokens=1000, batch_size=256, progress=False) == out  # reused
    with pytest.raises(LmjaxError, match="another request"):
        cache_activations(src, out, n_tokens=999, batch_size=256, progress=False)
    assert isinstance(ArraySource(x_all).batch(0, 10)[0], np.ndarray)


# ---- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sae_cli")
    corpus = tmp / "text.txt"
    corpus.write_text("".join(f"The cat sat on the mat {i % 7}. The dog ran.\n" for i in range(300)))
    cfg = tmp / "cfg.py"
    cfg.write_text("def get_config(arg=None):\n"
                   "    return {'model': dict(n_layer=2, d_model=16, n_head=2, max_len=32),\n"
                   f"            'data': dict(source={str(corpus)!r}),\n"
                   "            'train': dict(steps=4, batch_size=8, log_every=2, eval_every=100, eval_batches=1,\n"
                   "                          sample_tokens=0)}\n")
    workdir = str(tmp / "w")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--config", str(cfg), "--workdir", workdir, "--no_progress"]) == 0
    return workdir, str(cfg)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_sae_command_trains_resumes_and_evaluates(model_workdir, tmp_path, capsys):
    workdir, _ = model_workdir
    out = str(tmp_path / "sae")
    argv = ["sae", "train", "--workdir", workdir, "--hook", "blocks.1.hook_resid_post", "--arch", "topk", "--k", "4",
            "--width", "64", "--steps", "30", "--out", out, "--no_progress", "--config.batch_size=256",
            "--config.eval_tokens=1024", "--config.save_every=10"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "explained variance" in first and os.path.isfile(os.path.join(out, "eval.json"))
    report = json.load(open(os.path.join(out, "eval.json")))[0]
    assert report["l0"] <= 4 and report["explained_variance"] > 0.3
    assert main(argv) == 0  # a finished run resumes to the same dictionary
    assert main(["sae", "eval", "--workdir", workdir, "--dictionary", out, "--tokens", "1024"]) == 0
    assert "CE recovered" in capsys.readouterr().out
    html = str(tmp_path / "features.html")
    assert main(["sae", "dashboard", "--workdir", workdir, "--dictionary", out, "--out", html, "--features", "3",
                 "--tokens", "512"]) == 0
    assert open(html).read().count('class="fd-card') == 3
    assert len(os.listdir(str(tmp_path / "features_features"))) == 3


def test_sae_command_bad_input(model_workdir, tmp_path, capsys):
    workdir, cfg = model_workdir
    base = ["sae", "train", "--workdir", workdir, "--out", str(tmp_path / "s"), "--no_progress"]
    assert "--hook NAME" in _error(capsys, base)
    line = _error(capsys, base + ["--hook", "blocks.9.hook_resid_post"])
    assert "unknown hook point" in line and "blocks.9.hook_resid_post" in line
    assert "k: 99 must be between 1 and width=64" in _error(capsys, base + ["--hook", "blocks.0.hook_resid_post",
                                                                           "--k", "99", "--width", "64"])
    assert not (tmp_path / "s").exists()  # refused before any work
    # a dictionary trained on another model
    other = Dictionary("topk", 16, 32, k=4, hook_in="blocks.0.hook_resid_post")
    save_dictionary(str(tmp_path / "other"), other, other.init(jax.random.key(0)),
                    trained_on={"model": {"d_model": 999}, "tokenizer": "byte"})
    line = _error(capsys, ["sae", "eval", "--workdir", workdir, "--dictionary", str(tmp_path / "other")])
    assert "another model" in line


def test_topk_mask_keeps_each_rows_k_largest():
    from lmjax.sae.architectures import topk_mask
    for shape, k in (((7, 256), 8), ((3, 5, 64), 16), ((4, 30), 4), ((2, 9), 3)):
        x = np.asarray(jax.random.normal(jax.random.key(shape[-1]), shape))
        ranks = np.argsort(np.argsort(-x, -1), -1)  # 0 = the row's largest
        np.testing.assert_array_equal(np.asarray(topk_mask(jnp.asarray(x), k)), ranks < k)
        np.testing.assert_array_equal(np.asarray(jax.jit(topk_mask, static_argnums=1)(jnp.asarray(x), k, k // 2)),
                                      ranks < k // 2)
