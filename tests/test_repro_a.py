"""Reproductions induction, grokking and upos (lmjax/repro) in reduced settings: each asserts
the qualitative published result, plus the identities of the helpers they rest on.

- induction (`:small`, in-context bigrams over 24 symbols): a layer-1 induction head
  appears in a phase change (the ICL score falls sharply), and mean-ablating it removes
  the in-context gain;
- grokking (`:small`, a + b mod 23): train accuracy hits 100% while test accuracy lags far
  behind (the memorisation phase; the late jump needs thousands of steps, run by the full
  reproduction); the Fourier-spectrum summary finds the frequencies planted in an embedding;
- upos (`:small`): linear probes beat the majority class, and the trained model's best
  layer beats the random-init model's best layer.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, data_file
from lmjax import repro
from lmjax.config import ConfigError, default_config, load_config
from lmjax.errors import LmjaxError
from lmjax.model import ModelConfig, Transformer
from lmjax.repro import _common, grokking, induction, upos
from lmjax.train.loss import masked_cross_entropy
from lmjax.train.optimizer import frozen_mask, make_optimizer
from lmjax.train.steps import init_params, make_train_step, new_state
from _model_fixtures import FAST_COMPILE

GROKKING = os.path.join(REPO, "configs", "repro", "grokking.py")


# ---------------------------------------------------------------- helpers


def test_repro_configs_go_through_the_config_machinery():
    """configs/repro/grokking.py declares its own schema (defaults()): overrides are parsed
    to each key's type; an unknown key, a wrong type, an unknown variant or a failed check
    is a one-line ConfigError before anything runs."""
    c = load_config(GROKKING + ":small", ["steps=7", "optimizer.lr=1", "model.d_model=32"])
    assert c.steps == 7 and c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float) and c.model.d_model == 32
    assert c.p == 23  # the variant
    assert _common.load_repro_config("grokking:small", overrides=["steps=7"]).to_dict() == \
        load_config(GROKKING + ":small", ["steps=7"]).to_dict()
    bad = {
        "optimizer.nope=1": "unknown config key 'optimizer.nope'.*weight_decay",
        "nope=1": "unknown config key 'nope'.*train_fraction",
        "steps=abc": "steps: expected int",
        "train_fraction=1.5": "train_fraction: must be in",
        "model.n_head=5": "model.d_model",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(GROKKING, [override])
    with pytest.raises(ConfigError, match="unknown variant 'huge'"):
        load_config(GROKKING + ":huge")
    with pytest.raises(LmjaxError, match="two variants"):
        _common.load_repro_config("grokking:small", "huge")


def test_repro_command_line_variant_out_and_names(tmp_path):
    """`NAME:variant` (or the alias --variant), --out always a directory, unknown names in one line."""
    config, out, variant = _common.parse_args("grokking:small", ["--out", str(tmp_path / "o"), "--config.steps=3"])
    assert (variant, config.p, config.steps, out) == ("small", 23, 3, str(tmp_path / "o")) and os.path.isdir(out)
    assert _common.parse_args("grokking", ["--variant", "small", "--out", out]).config.p == 23
    assert _common.parse_args("grokking", ["--out", out], variant="small").config.p == 23
    (tmp_path / "file").write_text("")
    with pytest.raises(LmjaxError, match="is a file; --out names the directory"):
        _common.parse_args("grokking", ["--out", str(tmp_path / "file")])
    with pytest.raises(LmjaxError, match="unknown reproduction 'nope'.*grokking"):
        repro.run("nope:small", [])
    with pytest.raises(LmjaxError, match="no reproduction config.*grokking"):
        _common.load_repro_config("nope")


def test_reference_data_paths_need_lmjax_data(monkeypatch, tmp_path):
    """Defaults name reference data as $LMJAX_DATA/...; without the variable, one line naming
    it and the flag, before any training."""
    monkeypatch.delenv("LMJAX_DATA", raising=False)
    config = load_config(os.path.join(REPO, "configs", "repro", "induction.py:text"))
    assert config.data.startswith("$LMJAX_DATA/")
    with pytest.raises(LmjaxError, match="LMJAX_DATA.*--config.data"):
        induction.train(config, progress=False)
    config = load_config(os.path.join(REPO, "configs", "repro", "upos.py:small"))
    with pytest.raises(LmjaxError, match="LMJAX_DATA.*--config.conllu"):
        upos.run(config, str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)


def test_fourier_spectrum_finds_planted_frequencies():
    p, d = 113, 32
    rng = np.random.RandomState(0)
    a = np.arange(p)[:, None]
    planted = sum(np.cos(2 * np.pi * k * a / p) * rng.randn(d) + np.sin(2 * np.pi * k * a / p) * rng.randn(d)
                  for k in (5, 17, 41))
    spectrum = grokking.fourier_spectrum(planted + 0.05 * rng.randn(p, d))
    assert spectrum.shape == (p // 2 + 1,) and spectrum.sum() == pytest.approx(1.0)
    keys, share = grokking.key_frequencies(spectrum, 3)
    assert sorted(keys) == [5, 17, 41] and share > 0.95
    _, noise_share = grokking.key_frequencies(grokking.fourier_spectrum(rng.randn(p, d)), 3)
    assert noise_share < 0.2  # white noise spreads over all 56 frequencies
    # Parseval: the shares are the rows' squared norms split by frequency
    w = rng.randn(p, d)
    total = (np.abs(np.fft.fft(w, axis=0)) ** 2).sum()
    assert total == pytest.approx(p * (w ** 2).sum())


def test_modular_addition_split():
    (xtr, ytr), (xte, yte) = grokking.dataset(23, 0.3, seed=1)
    assert len(ytr) == round(0.3 * 23 * 23) and len(ytr) + len(yte) == 23 * 23
    rows = {tuple(r) for r in xtr} | {tuple(r) for r in xte}
    assert len(rows) == 23 * 23 and (xtr[:, 2] == 23).all()
    np.testing.assert_array_equal(ytr, (xtr[:, 0] + xtr[:, 1]) % 23)
    with pytest.raises(ValueError, match="train_fraction"):
        grokking.dataset(23, 1.0)


# ---------------------------------------------------------------- the train step they share
# lmjax.train.steps.make_train_step with a loss function and frozen parameters, as the
# reproductions call it, against the optax step written out by hand.

STEP_CFG = ModelConfig(vocab_size=11, n_layer=1, d_model=16, n_head=2, max_len=8)


@pytest.fixture(scope="module")
def step_model():
    model, key = Transformer(STEP_CFG), jax.random.key(0)
    return model, _fast(jax.jit(lambda key: init_params(model, key)), key)(key)  # compiled: faster than eager


def _step_batch(rows=4, seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, 11, (rows, 9)).astype(np.int32)
    mask = (rng.rand(rows, 8) < 0.5).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _masked_loss(model):
    def loss_fn(params, batch, key):
        logits = model.apply({"params": params}, batch["inputs"])
        accuracy = (jnp.argmax(logits, -1) == batch["targets"]).mean()
        return masked_cross_entropy(logits, batch["targets"], batch["mask"]), {"accuracy": accuracy}
    return loss_fn


def _by_hand(model, optimizer, params, batches):
    """The optax step written out: value_and_grad, update, apply_updates."""
    loss_fn = _masked_loss(model)
    opt_state = optimizer.init(params)

    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, None), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux["accuracy"]

    step = _fast(jax.jit(step), params, opt_state, batches[0])
    metrics = []
    for batch in batches:
        params, opt_state, loss, acc = step(params, opt_state, batch)
        metrics.append((float(loss), float(acc)))
    return params, metrics


def _fast(jitted, *args):
    """`jitted` compiled for these arguments at XLA's lowest optimisation level (compiling
    dominates these tests)."""
    return jitted.lower(*args).compile(FAST_COMPILE)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_train_step_with_a_loss_fn_is_the_optax_step_by_hand(step_model):
    model, params = step_model
    optimizer = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.1))
    batches = [_step_batch(seed=i) for i in range(3)]
    expected, expected_metrics = _by_hand(model, optimizer, params, batches)

    state, metrics = new_state(_copy(params), optimizer), []  # the step donates the state's buffers
    step = _fast(make_train_step(model, optimizer, loss_fn=_masked_loss(model)), state, batches[0])
    for batch in batches:
        state, m = step(state, batch)
        metrics.append((float(m["loss"]), float(m["accuracy"])))
    _close(state["params"], expected)
    np.testing.assert_allclose(metrics, expected_metrics, rtol=1e-6)
    assert int(state["step"]) == 3

    # unjitted (jit=False), scanned inside the caller's jit: the same steps
    raw = make_train_step(model, optimizer, loss_fn=_masked_loss(model), jit=False)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batches)
    start = new_state(params, optimizer)
    scanned, m = _fast(jax.jit(lambda s, b: jax.lax.scan(raw, s, b)), start, stacked)(start, stacked)
    _close(scanned["params"], expected)
    np.testing.assert_allclose(np.asarray(m["loss"]), [l for l, _ in expected_metrics], rtol=1e-6)


def test_frozen_parameters_never_move_and_have_no_optimizer_state(step_model):
    model, params = step_model
    # AdamW's weight decay alone would move a parameter whose gradient is zero
    optimizer = make_optimizer(default_config().optimizer.copy_and_resolve_references(), 10)
    frozen = _common.is_mlp_path  # a predicate on the key path, or the same as a pytree of bools:
    mask = frozen_mask(params, frozen)
    assert jax.tree.leaves(frozen_mask(params, mask)) == jax.tree.leaves(mask)
    assert 0 < sum(jax.tree.leaves(mask)) < len(jax.tree.leaves(mask))
    with pytest.raises(LmjaxError, match="frozen: a pytree of bools"):
        frozen_mask(params, {"embed": True})
    before = jax.device_get(params)
    state = new_state(_copy(params), optimizer, frozen)
    step = _fast(make_train_step(model, optimizer, frozen=frozen, loss_fn=_masked_loss(model)), state, _step_batch())
    for i in range(3):
        state, metrics = step(state, _step_batch(seed=i))
    after = jax.device_get(state["params"])
    for (path, was), now, is_frozen in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after),
                                           jax.tree.leaves(mask)):
        if is_frozen:
            np.testing.assert_array_equal(now, was, err_msg=jax.tree_util.keystr(path))
        else:
            assert not np.array_equal(now, was), jax.tree_util.keystr(path)
    # the optimizer holds moments for the free parameters only
    moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    free = sum(x.size for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if not f)
    assert moments == 2 * free  # Adam's mu and nu
    # the free parameters' gradient norm
    assert float(metrics["grad_norm"]) > 0
    # a state made without `frozen` is refused in one line (when the step is traced)
    with pytest.raises(LmjaxError, match="new_state"):
        make_train_step(model, optimizer, frozen=frozen).lower(new_state(params, optimizer), _step_batch())


def test_grad_accum_with_a_loss_fn_averages_the_micro_batches(step_model):
    """grad_accum=2 takes the mean of the two micro-batches' gradients, loss and aux (rows
    0, 2 and 1, 3): here a masked loss, normalised within each micro-batch."""
    model, params = step_model
    optimizer = optax.sgd(0.5)
    batch = _step_batch(rows=4, seed=5)
    loss_fn = _masked_loss(model)
    half_a, half_b = (jax.tree.map(lambda x: x[rows], batch) for rows in ([0, 2], [1, 3]))
    grads_of = _fast(jax.jit(jax.value_and_grad(lambda p, part: loss_fn(p, part, None), has_aux=True)), params, half_a)
    (loss_a, aux_a), grad_a = grads_of(params, half_a)
    (loss_b, aux_b), grad_b = grads_of(params, half_b)
    expected = jax.tree.map(lambda p, a, b: p - 0.5 * (a + b) / 2, params, grad_a, grad_b)

    state = new_state(_copy(params), optimizer)
    state, metrics = _fast(make_train_step(model, optimizer, loss_fn=loss_fn, grad_accum=2), state, batch)(state, batch)
    _close(state["params"], expected)
    np.testing.assert_allclose(float(metrics["loss"]), (loss_a + loss_b) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["accuracy"]), (aux_a["accuracy"] + aux_b["accuracy"]) / 2, rtol=1e-6)


# ---------------------------------------------------------------- reduced reproductions


def test_grokking_memorises_before_it_generalises():
    config = _common.load_repro_config("grokking:small", overrides=["steps=200", "eval_every=100"])
    results = grokking.summarize(config, grokking.train(config, progress=False))
    assert results["train_acc_100_step"] is not None and results["train_acc_100_step"] <= 150
    # when the training set is memorised, most held-out pairs are still wrong
    assert results["test_acc_at_train_100"] < 0.7
    assert results["final_train_acc"] == 1.0


def test_induction_phase_change_and_ablation(tmp_path):
    results = repro.run("induction:small", ["--out", str(tmp_path)])  # what `lmjax repro induction:small` runs
    ind = np.asarray(results["log"]["induction"])  # [evals, layer, head]
    assert ind[0].max() < 0.15  # no induction head at init...
    assert results["best_head_induction_end"] > 0.4  # ...a layer-1 one at the end
    assert results["best_head"].startswith("L1") and results["max_layer0_induction_end"] < 0.2
    assert results["icl_score_start"] > -0.1 and results["icl_score_end"] < -0.3  # in-context learning appears
    pc = results["phase_change"]
    assert pc["step"] is not None and pc["share_of_drop_in_window"] > 0.5  # ... abruptly (within 25% of the run)
    ab = results["ablation"]["induction_heads"]
    assert ab["icl_after"] > 0.5 * ab["icl_before"]  # mean-ablating the induction heads removes most of the gain
    assert ab["repeat_half_loss_after"] - ab["repeat_half_loss_before"] > 0.5
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["icl_score_end"] == pytest.approx(results["icl_score_end"])
    assert all(os.path.getsize(f) > 1000 for f in results["figures"])


def test_upos_probes_beat_majority_and_random_init(tmp_path):
    data_file("ud_english_ewt", "en_ewt-ud-dev.conllu"), data_file("tinyshakespeare", "input.txt")
    config = _common.load_repro_config("upos:small")  # the defaults: $LMJAX_DATA/...
    results = upos.run(config, str(tmp_path), progress=False)
    assert results["n_words"] > 1000
    assert min(results["trained_test_acc"]) > results["majority_baseline"] + 0.1
    assert results["best_trained_acc"] > results["best_random_init_acc"] + 0.02
    assert max(results["shuffled_label_acc"]) < results["majority_baseline"] + 0.05  # the control learns nothing
