"""Packed documents (segment ids): no attention, position or state crosses a document start.

For a transformer (RoPE, grouped-query heads), a Mamba model and a hybrid of every mixer
(Mamba, attention with learned positions, GRU, gated conv, LSTM): perturbing one document
of a packed row leaves the row's other documents' logits bitwise unchanged, through the fast
attention core, the explicit one and the hook API; a packed row's loss is the sum of its
documents' losses computed one document per row; and splash attention (interpret mode)
equals the reference core with segment ids, forward and gradients. `lmjax train` with
data.documents=True trains on such batches (each step's loss is next_token_loss on its
batch), and a tokenizer without EOS is a config error.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.config import ConfigError, config_from_dict, config_problems
from lmjax.data import ByteTokenizer
from lmjax.data.batches import document_ids, eval_batches
from lmjax.errors import LmjaxError
from lmjax.model import ModelConfig, Transformer, hook_names
from lmjax.model.attention import _masked_scores, _mix, blocked_causal_attention
from lmjax.model.cache import init_cache
from lmjax.model.segments import segment_positions
from lmjax.model.splash import splash_causal_attention
from lmjax.train.loss import next_token_loss, weighted_cross_entropy
from lmjax.train import loop
from lmjax.train.steps import make_eval_step

from _model_fixtures import random_params

VOCAB, T = 13, 24
EOS = VOCAB - 1
SMALL = dict(vocab_size=VOCAB, d_model=16, n_head=4, max_len=T, d_state=4, rnn_hidden=12, conv_width=3)
MODELS = {
    "transformer": dict(n_layer=2, pos_embedding="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu"),
    "mamba": dict(mixer="mamba", n_layer=2, mamba_mlp=False, pos_embedding="none", norm="rmsnorm"),
    "hybrid": dict(layer_pattern="MAGCL", n_layer=5, pos_embedding="learned", ssm_scan="chunked", ssm_chunk=4),
}
# Row 0: documents of 7, 9 and 8 tokens; row 1: 5 and 19.
SEGMENTS = jnp.asarray([[0] * 7 + [1] * 9 + [2] * 8, [3] * 5 + [4] * 19], jnp.int32)


@functools.lru_cache(maxsize=None)
def setup(name):
    cfg = ModelConfig(**SMALL, **MODELS[name])
    assert cfg.problems() == []
    return cfg, Transformer(cfg), random_params(cfg)


@functools.lru_cache(maxsize=None)
def forward(name, how):
    """jit(params, tokens, segment_ids) -> logits, by the fast core ("fast"), the explicit core
    (positions passed: "explicit") or the hook API caching every hook point ("hooks")."""
    cfg, model, _ = setup(name)
    if how == "fast":
        return jax.jit(lambda p, x, s: model.apply({"params": p}, x, segment_ids=s))
    if how == "explicit":
        return jax.jit(lambda p, x, s: model.apply({"params": p}, x, segment_positions(s), segment_ids=s))
    return jax.jit(lambda p, x, s: model.run_with_cache(p, x, hook_names(cfg), segment_ids=s)[0])


def random_tokens(shape, seed):
    return jnp.asarray(np.random.RandomState(seed).randint(0, EOS, shape), jnp.int32)


@pytest.mark.parametrize("how", ["fast", "explicit", "hooks"])
@pytest.mark.parametrize("name", list(MODELS))
def test_perturbing_one_document_leaves_the_others_bitwise_unchanged(name, how):
    _, _, params = setup(name)
    fwd = forward(name, how)
    tokens = random_tokens((2, T), 0)
    base = np.asarray(fwd(params, tokens, SEGMENTS))
    for doc in (0, 1, 3):  # the first and a middle document of row 0, the first of row 1
        inside = np.asarray(SEGMENTS == doc)
        changed = np.asarray(fwd(params, jnp.where(inside, (tokens + 5) % EOS, tokens), SEGMENTS))
        assert np.array_equal(base[~inside], changed[~inside]), f"document {doc} reached another"
        assert np.abs(base[inside] - changed[inside]).max() > 1e-3


@pytest.mark.parametrize("name", ["transformer", "mamba"])
def test_scanned_remat_layers_and_run_with_hooks_take_segment_ids(name):
    cfg, model, params = setup(name)
    tokens = random_tokens((2, T), 0)
    expected = forward(name, "fast")(params, tokens, SEGMENTS)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat="full")
    scanned = Transformer(scanned_cfg)
    got = jax.jit(lambda p, x, s: scanned.apply({"params": p}, x, segment_ids=s))(random_params(scanned_cfg), tokens,
                                                                                   SEGMENTS)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    identity = {"blocks.0.hook_resid_post": (lambda x, payload: x + payload, jnp.zeros(()))}
    hooked = jax.jit(lambda p, x, s: model.run_with_hooks(p, x, identity, segment_ids=s))(params, tokens, SEGMENTS)
    np.testing.assert_allclose(hooked, expected, atol=1e-6)


def test_segment_ids_with_a_decoding_cache_is_an_error():
    cfg, model, params = setup("hybrid")
    with pytest.raises(LmjaxError, match="segment_ids"):
        model.apply({"params": params}, jnp.zeros((2, T), jnp.int32), cache=init_cache(cfg, 2), segment_ids=SEGMENTS)


def packed_stream(seed):
    """Documents of 2-11 tokens, each followed by EOS, as the token cache holds them."""
    rng = np.random.RandomState(seed)
    docs = [np.append(rng.randint(0, EOS, rng.randint(2, 12)), EOS) for _ in range(40)]
    return np.concatenate(docs).astype(np.int32)


def document_losses(name, row):
    """Each document of a packed row (its tokens: inputs and the last target) alone, at the
    start of an unpacked row padded to T (the mixers are causal): the summed loss of its
    own next-token predictions."""
    _, _, params = setup(name)
    fwd = forward_unpacked(name)
    ids = document_ids(row[None], EOS)[0]
    total = 0.0
    for doc in np.unique(ids):
        tokens = row[ids == doc]
        padded = np.zeros((1, T), np.int32)
        padded[0, :len(tokens) - 1] = tokens[:-1]
        logits = fwd(params, jnp.asarray(padded))[0, :len(tokens) - 1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        total += -float(jnp.take_along_axis(log_probs, jnp.asarray(tokens[1:, None]), axis=1).sum())
    return total


@functools.lru_cache(maxsize=None)
def forward_unpacked(name):
    _, model, _ = setup(name)
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_loss_is_the_sum_of_per_document_losses(name):
    _, model, params = setup(name)
    stream = packed_stream(1)
    batch = next(eval_batches(stream, batch_size=2, seq_len=T, eos=EOS))
    rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    expected = [document_losses(name, row) for row in rows]
    inside = batch["segment_ids"] == batch["target_segment_ids"]
    assert (~inside).any() and inside.any()
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    logits = forward(name, "fast")(params, device_batch["inputs"], device_batch["segment_ids"])
    log_probs = jax.nn.log_softmax(logits)
    token_losses = -np.asarray(jnp.take_along_axis(log_probs, device_batch["targets"][..., None], axis=-1)[..., 0])
    np.testing.assert_allclose((token_losses * inside).sum(axis=1), expected, rtol=1e-6)
    # the training loss (a mean over the tokens inside documents) and the eval step's sum
    train_loss = jax.jit(next_token_loss(model))(params, device_batch, jax.random.key(0))
    np.testing.assert_allclose(train_loss, sum(expected) / inside.sum(), rtol=1e-6)
    got = make_eval_step(model)(params, device_batch)
    np.testing.assert_allclose(got["loss_sum"], sum(expected), rtol=1e-6)
    assert float(got["tokens"]) == inside.sum()


def test_weighted_cross_entropy_gradient_equals_autodiff():
    rng = np.random.RandomState(2)
    logits = jnp.asarray(rng.standard_normal((2, 5, VOCAB)), jnp.float32)
    targets = jnp.asarray(rng.randint(0, VOCAB, (2, 5)), jnp.int32)
    weights = jnp.asarray(rng.rand(2, 5) > 0.3, jnp.float32)

    def plain(z):
        losses = -jnp.take_along_axis(jax.nn.log_softmax(z), targets[..., None], axis=-1)[..., 0]
        return (losses * weights).sum() / weights.sum()

    np.testing.assert_allclose(weighted_cross_entropy(logits, targets, weights), plain(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(weighted_cross_entropy)(logits, targets, weights), jax.grad(plain)(logits),
                               atol=1e-7)


def test_document_ids_start_after_each_eos():
    rows = np.array([[4, 5, EOS, 6, EOS, EOS, 7]])
    np.testing.assert_array_equal(document_ids(rows, EOS), [[0, 0, 0, 1, 1, 2, 3]])
    np.testing.assert_array_equal(segment_positions(jnp.asarray([[0, 0, 0, 1, 1, 2, 3]])), [[0, 1, 2, 0, 1, 0, 0]])


@pytest.fixture(scope="module")
def documents_corpus(tmp_path_factory):
    """A jsonl corpus of short documents (a few per 32-token row)."""
    path = tmp_path_factory.mktemp("documents") / "docs.jsonl"
    texts = [f"doc {n}: {'ab' * (n % 5)} end." for n in range(200)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def documents_config(corpus, tokenizer="byte"):
    return config_from_dict({
        "model": dict(n_layer=1, d_model=32, n_head=2, max_len=32),
        "data": dict(source=corpus, tokenizer=tokenizer, documents=True),
        "train": dict(steps=4, batch_size=8, grad_accum=1, log_every=1, eval_every=4, eval_batches=2,
                      sample_tokens=0),
        "checkpoint": dict(every=100, async_save=False),
    })


def recorded_steps(monkeypatch):
    """The loop's train steps, recording each step's params before it, its batch and its loss."""
    seen, real = [], loop.make_train_step

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            before = (jax.tree.map(np.asarray, state["params"]), jax.tree.map(np.asarray, batch))
            state, metrics = step(state, batch)
            seen.append((*before, float(metrics["loss"])))
            return state, metrics
        return wrapped

    monkeypatch.setattr(loop, "make_train_step", recording)
    return seen


def test_train_with_documents_feeds_packed_batches_and_their_loss(documents_corpus, tmp_path, monkeypatch):
    config = documents_config(documents_corpus)
    assert config_problems(config) == []
    seen = recorded_steps(monkeypatch)
    summary = loop.train(config, str(tmp_path), progress=False, quiet=True)
    run = summary["run"]
    assert run.eos == ByteTokenizer().eos_id and math.isfinite(summary["val_loss"])
    loss_fn = jax.jit(next_token_loss(run.model))
    for params, batch, loss in seen:
        rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
        ids = document_ids(rows, run.eos)
        np.testing.assert_array_equal(batch["segment_ids"], ids[:, :-1])
        np.testing.assert_array_equal(batch["target_segment_ids"], ids[:, 1:])
        assert (ids[:, -1] > 0).all()  # every row holds more than one document
        assert math.isfinite(loss)
        np.testing.assert_allclose(loss, loss_fn(params, batch, jax.random.key(0)), rtol=1e-5)
    assert len(seen) == 4 and seen[-1][2] < seen[0][2]


def test_documents_need_a_tokenizer_with_eos(documents_corpus, tmp_path):
    from tokenizers import Tokenizer as HFCore
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    core = HFCore(WordLevel({"doc": 0, "end.": 1, "[UNK]": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    path = tmp_path / "tokenizer.json"
    core.save(str(path))  # no special token, so no EOS
    config = documents_config(documents_corpus, tokenizer=str(path))
    with pytest.raises(ConfigError, match="^data.documents needs a tokenizer with an end-of-document token"):
        loop.setup(config, str(tmp_path / "run"))


def reference_core(q, k, v, segment_ids):
    """softmax over the explicit scores, masked causally and across documents."""
    positions = jnp.broadcast_to(jnp.arange(q.shape[1]), segment_ids.shape)
    scores = _masked_scores(q, k, positions, positions, segment_ids=segment_ids)
    return _mix(nn.softmax(scores, axis=-1), v, "bskd")


def test_splash_attention_interpret_and_blocked_core_equal_the_reference_core():
    b, t, h, kvh, d = 2, 128, 4, 2, 8  # splash's key blocks are multiples of 128 positions
    rng = np.random.RandomState(3)
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, d)), jnp.float32) for n in (h, kvh, kvh))
    ids = jnp.asarray(np.sort(rng.randint(0, 5, (b, t)), axis=1), jnp.int32)
    weights = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    cores = {"reference": reference_core,
             "splash": lambda q, k, v, s: splash_causal_attention(q, k, v, s, interpret=True),
             "blocked": lambda q, k, v, s: blocked_causal_attention(q, k, v, 32, s)}
    out, grads = {}, {}
    for name, core in cores.items():
        out[name] = core(q, k, v, ids)
        grads[name] = jax.grad(lambda *qkv: (core(*qkv, ids) * weights).sum(), argnums=(0, 1, 2))(q, k, v)
    for name in ("splash", "blocked"):
        np.testing.assert_allclose(out[name], out["reference"], atol=1e-5, err_msg=name)
        for g, ref, what in zip(grads[name], grads["reference"], "qkv"):
            np.testing.assert_allclose(g, ref, atol=1e-5, err_msg=f"{name} d{what}")
