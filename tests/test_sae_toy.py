"""Dictionaries recover known features: the matching metrics, the toy generators, and
ReLU / TopK dictionaries trained on Sharkey et al.'s toy data and on a TMS model's hidden
activations. Trained dictionaries are module fixtures (each compiles and trains once)."""
import jax
import numpy as np
import pytest
import torch

from lmjax.errors import LmjaxError
from lmjax.sae import matching, toy
from lmjax.sae.architectures import Dictionary
from lmjax.sae.training import GeneratorSource, fit

EVAL = 32768


def _unit(rng, n, d):
    w = rng.standard_normal((n, d))
    return w / np.linalg.norm(w, axis=1, keepdims=True)


# -- matching: known answers -----------------------------------------------------------------

def test_permuted_sign_flipped_copy_is_a_perfect_match():
    rng = np.random.default_rng(0)
    true = _unit(rng, 40, 16)
    perm = rng.permutation(40)
    signs = rng.choice([-1.0, 1.0], 40)[:, None]
    learned = true[perm] * signs * rng.uniform(0.5, 3.0, (40, 1))  # norms do not matter
    assert matching.mcc(true, learned) == pytest.approx(1.0)
    assert matching.uniqueness(true, learned) == pytest.approx(1.0)
    assert matching.mmcs(true, learned, absolute=True) == pytest.approx(1.0)
    # signed MMCS (Sharkey et al.): an opposite row does not find its feature
    basis = np.linalg.qr(rng.standard_normal((16, 16)))[0]  # orthonormal rows
    assert matching.mmcs(basis, -basis) == pytest.approx(0.0, abs=1e-9)
    assert matching.mmcs(basis, -basis, absolute=True) == pytest.approx(1.0)


def test_duplicates_do_not_count_twice():
    rng = np.random.default_rng(1)
    true = np.eye(8)
    learned = np.stack([true[0]] * 8)  # eight copies of one feature
    assert matching.mmcs(true, learned) == pytest.approx(1 / 8)
    assert matching.mcc(true, learned) == pytest.approx(1 / 8)  # one pair at 1, the rest at 0
    assert matching.uniqueness(true, learned) == pytest.approx(1 / 8)
    # half the features learned twice: MCC counts each once, over min(n_true, n_latents) pairs
    half = np.concatenate([true[:4], true[:4]])
    assert matching.mcc(true, half) == pytest.approx(0.5)
    assert matching.mcc(true, np.concatenate([true, true])) == pytest.approx(1.0)  # wider: 8 matched pairs
    assert matching.mcc(true, true[:3]) == pytest.approx(1.0)  # narrower: mean over the 3 latents
    assert matching.uniqueness(true, np.concatenate([true, true])) == pytest.approx(0.5)
    with pytest.raises(LmjaxError, match="d=8"):
        matching.mcc(true, rng.standard_normal((3, 5)))


def test_random_dictionaries_score_low():
    rng = np.random.default_rng(2)
    true = _unit(rng, 256, 256)
    learned = _unit(rng, 256, 256)
    assert matching.mmcs(true, learned) < 0.3  # ~0.18: the best of 256 random overlaps
    assert matching.mcc(true, learned) < 0.3
    assert matching.uniqueness(true, learned) < 0.8  # ~0.63 = 1 - 1/e: random best matches collide


def test_detection_metrics_known_counts():
    true = np.eye(3)
    learned = np.array([[1.0, 0, 0], [0, 0.1, 1.0], [0, 0, 0]])  # latent 1 -> feature 2; latent 2 is empty
    true_acts = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]], float)
    latent_acts = np.array([[2, 0, 0], [0, 1, 0], [0, 3, 0], [0, 0, 0]], float)
    m = matching.detection_metrics(true, learned, true_acts, latent_acts)
    # latent 0: TP 1, FN 1 -> P 1, R 0.5, F1 2/3; latent 1 (feature 2): TP 1, FP 1, FN 1 -> 0.5, 0.5, 0.5
    # latent 2 (an all-zero row matches feature 0): never fires -> 0, 0, 0
    assert m["precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["recall"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["accuracy"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 4) / 3)


def test_metrics_agree_with_sae_lens():
    from sae_lens.synthetic import compute_classification_metrics, feature_uniqueness, mean_correlation_coefficient

    rng = np.random.default_rng(3)
    true = _unit(rng, 64, 24)
    learned = np.concatenate([true[:30] + 0.3 * rng.standard_normal((30, 24)), _unit(rng, 20, 24)])
    true_acts = rng.uniform(size=(500, 64)) * (rng.uniform(size=(500, 64)) < 0.2)
    latent_acts = rng.uniform(size=(500, 50)) * (rng.uniform(size=(500, 50)) < 0.3)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    assert matching.mcc(true, learned) == pytest.approx(mean_correlation_coefficient(t(learned), t(true)), abs=1e-5)
    assert matching.uniqueness(true, learned) == pytest.approx(feature_uniqueness(t(learned), t(true)))
    ref = compute_classification_metrics(t(latent_acts), t(true_acts), t(learned), t(true))
    ours = matching.detection_metrics(true, learned, true_acts, latent_acts)
    for ours_key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1_score"),
                              ("accuracy", "accuracy")):
        assert ours[ours_key] == pytest.approx(getattr(ref, ref_key), abs=1e-5)


# -- the generators ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharkey_data():
    features, sample = toy.sharkey(jax.random.key(0))
    x, codes = sample.with_codes(jax.random.key(1), EVAL)
    return features, sample, np.asarray(x), np.asarray(codes)


def test_sharkey_generator(sharkey_data):
    features, _, x, codes = sharkey_data
    assert features.shape == (512, 256) and x.shape == (EVAL, 256)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert 4.8 < (codes > 0).sum(1).mean() < 5.2  # ~5 active on average
    rate = (codes > 0).mean(0)
    assert rate[:50].mean() > 5 * rate[-50:].mean()  # frequencies decay with the index (0.99^i)
    np.testing.assert_allclose(x, codes @ np.asarray(features), atol=1e-4)
    assert codes.max() <= 1.0 and codes.min() >= 0.0


def test_synthsaebench_matches_sae_lens():
    """Same configuration, same data model: the firing probabilities are equal and the
    per-level L0 of our JAX sampler matches SAELens' own sampler."""
    from sae_lens.synthetic import (FoldedNormalMagnitudeConfig, HierarchyConfig, LinearMagnitudeConfig,
                                    LowRankCorrelationConfig, SyntheticModel, SyntheticModelConfig,
                                    ZipfianFiringProbabilityConfig)

    c = toy.SynthConfig(n_features=512, d=32, roots=4, ortho_steps=0)
    ref = SyntheticModel(SyntheticModelConfig(
        num_features=c.n_features, hidden_dim=c.d,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=c.exponent, max_prob=c.max_prob,
                                                          min_prob=c.min_prob),
        hierarchy=HierarchyConfig(total_root_nodes=c.roots, branching_factor=c.branching, max_depth=c.depth,
                                  mutually_exclusive_portion=c.me_portion, compensate_probabilities=c.compensate),
        correlation=LowRankCorrelationConfig(rank=c.rank, correlation_scale=c.corr_scale),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=c.mean_start, end=c.mean_end),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=c.std_mean, std=c.std_std), seed=0))
    ours = toy.synthsaebench(jax.random.key(0), c)
    np.testing.assert_allclose(ours.probs, ref.activation_generator.firing_probabilities.numpy(), rtol=1e-5)
    torch.manual_seed(0)
    a_ref = ref.sample_with_features(EVAL // 4)[1].numpy()
    x, a = ours.sample.with_codes(jax.random.key(1), EVAL // 4)
    a = np.asarray(a)
    bounds = [0, 4, 20, 84, 340, 512]  # roots, depth 1..3, outside the forest
    for lo, hi in zip(bounds, bounds[1:]):
        assert (a[:, lo:hi] > 0).sum(1).mean() == pytest.approx((a_ref[:, lo:hi] > 0).sum(1).mean(), rel=0.06, abs=0.02)
    assert a[a > 0].mean() == pytest.approx(a_ref[a_ref > 0].mean(), rel=0.02)
    # the hierarchy: no child without its parent, at most one active sibling
    child = np.flatnonzero(ours.parent >= 0)
    assert not np.any((a[:, child] > 0) & ~(a[:, ours.parent[child]] > 0))
    for p in np.unique(ours.parent[child]):
        assert (a[:, ours.parent == p] > 0).sum(1).max() <= 1
    np.testing.assert_allclose(np.asarray(x), a @ np.asarray(ours.features) + np.asarray(ours.bias), atol=1e-3)


# -- dictionaries trained on Sharkey toy data ------------------------------------------------

def _trained(dictionary, sample, **kw):
    return fit(dictionary, GeneratorSource(sample, seed=0), progress=False, **kw)


def _evaluate(result, features, x):
    d, params = result.dictionary, result.params
    latents = np.asarray(d.encode(params, x * d.input_scale))
    w = np.asarray(params["W_dec"])
    return {**matching.compare(features, w), "dead": int(np.sum(~np.any(latents != 0, 0))),
            "l0": float(np.mean(np.sum(latents != 0, 1)))}


@pytest.fixture(scope="module")
def relu_on_sharkey(sharkey_data):
    # 1.25x wide: the spare latents let the rarest features (0.99^511 of the first's rate)
    # find latents of their own instead of losing them to duplicates of frequent ones
    features, sample, x, _ = sharkey_data
    result = _trained(Dictionary("relu", 256, 640, l1=0.7), sample, steps=2000, batch_size=512, lr=4e-3,
                      decay_fraction=0.3)
    return _evaluate(result, features, x)


@pytest.fixture(scope="module")
def topk_on_sharkey(sharkey_data):
    features, sample, x, _ = sharkey_data
    result = _trained(Dictionary("topk", 256, 512, k=5, aux_k=64), sample, steps=800, batch_size=512, lr=3e-3,
                      aux_window=200_000, decay_fraction=0.3)
    return _evaluate(result, features, x)


@pytest.mark.parametrize("which", ["relu_on_sharkey", "topk_on_sharkey"])
def test_dictionary_recovers_sharkey_features(which, request):
    m = request.getfixturevalue(which)
    print(which, m)  # shown with -s
    assert m["mmcs"] >= 0.99, m
    assert m["mcc"] >= 0.95, m
    assert m["dead"] == 0, m


# -- a dictionary on a TMS model's hidden activations ---------------------------------------

@pytest.fixture(scope="module")
def tms_model():
    return toy.tms(jax.random.key(0), steps=2000)


def test_tms_model_superposes_its_important_features(tms_model):
    rep = tms_model.represented()
    assert tms_model.W.shape == (5, 20)
    assert 6 <= len(rep) <= 12 and set(range(5)) <= set(rep)  # more features than dims, the important first
    assert tms_model.loss < 0.02


def test_dictionary_recovers_tms_columns(tms_model):
    rep = tms_model.represented()
    features = np.asarray(tms_model.features)[rep]  # unrepresented columns are ~0: nothing to find
    result = _trained(Dictionary("relu", 5, 2 * len(rep), l1=0.3), tms_model.sample, steps=800, batch_size=1024,
                      lr=3e-3, decay_fraction=0.3)
    h = np.asarray(tms_model.sample(jax.random.key(7), EVAL))
    m = _evaluate(result, features, h)
    print("tms", len(rep), "represented features:", m)  # shown with -s
    assert m["mcc"] >= 0.95, m
    assert m["mmcs"] >= 0.95, m
