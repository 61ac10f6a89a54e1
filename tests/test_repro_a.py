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

import numpy as np
import pytest

from lmjax.repro import _common, grokking, induction, upos

DATA = "/work/shared/data"
if not os.path.isdir(DATA):
    DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
TINY = os.path.join(DATA, "tinyshakespeare", "input.txt")
EWT = os.path.join(DATA, "ud_english_ewt", "en_ewt-ud-dev.conllu")


# ---------------------------------------------------------------- helpers


def test_overrides_are_typed_and_unknown_keys_name_the_choices():
    c = _common.load_repro_config("grokking", "small", ["steps=7", "optimizer.lr=1", "model.d_model=32"])
    assert c.steps == 7 and c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float) and c.model.d_model == 32
    with pytest.raises(ValueError, match="unknown config key 'optimizer.nope'.*weight_decay"):
        _common.load_repro_config("grokking", None, ["optimizer.nope=1"])
    with pytest.raises(ValueError, match="expected int"):
        _common.load_repro_config("grokking", None, ["steps=abc"])
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _common.load_repro_config("grokking", "huge")


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


# ---------------------------------------------------------------- reduced reproductions


def test_grokking_memorises_before_it_generalises():
    config = _common.load_repro_config("grokking", "small", ["steps=200", "eval_every=100"])
    results = grokking.summarize(config, grokking.train(config, progress=False))
    assert results["train_acc_100_step"] is not None and results["train_acc_100_step"] <= 150
    # when the training set is memorised, most held-out pairs are still wrong
    assert results["test_acc_at_train_100"] < 0.7
    assert results["final_train_acc"] == 1.0


def test_induction_phase_change_and_ablation(tmp_path):
    results = induction.main(["--out", str(tmp_path), "--variant", "small"])
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


@pytest.mark.skipif(not (os.path.exists(EWT) and os.path.exists(TINY)), reason="shared data not found")
def test_upos_probes_beat_majority_and_random_init(tmp_path):
    config = _common.load_repro_config("upos", "small", [f"conllu={EWT}", f"lm.data.source={TINY}"])
    results = upos.run(config, str(tmp_path), progress=False)
    assert results["n_words"] > 1000
    assert min(results["trained_test_acc"]) > results["majority_baseline"] + 0.1
    assert results["best_trained_acc"] > results["best_random_init_acc"] + 0.02
    assert max(results["shuffled_label_acc"]) < results["majority_baseline"] + 0.05  # the control learns nothing
