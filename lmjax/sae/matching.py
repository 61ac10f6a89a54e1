"""How well a learned dictionary recovers known ground-truth features.

Conventions, for every function here:
- `true` is the ground-truth feature matrix [n_true, d] (one feature direction a row) and
  `learned` the dictionary's decoder rows [n_latents, d] (`params["W_dec"]`); n_true and
  n_latents may differ. Rows need not be unit norm: everything compares directions,
  cos(u, v) = u.v / (max(|u|, 1e-8) max(|v|, 1e-8)), so a zero row has cos 0 with everything.
- Activations: `true_acts` [n_samples, n_true] (a feature fires where its coefficient is
  > 0) and `latent_acts` [n_samples, n_latents] (a latent fires where it is != 0).

Definitions:
- MMCS (mean max cosine similarity; Sharkey, Braun & Millidge 2022):
      MMCS = (1 / n_true) sum_i max_j cos(true_i, learned_j)
  with the *signed* cosine, as their post defines it: a latent pointing opposite to a
  feature does not count as finding it (a ReLU latent cannot represent -v by v).
  `absolute=True` uses |cos| instead.
- MCC (mean correlation coefficient; SAELens' `mean_correlation_coefficient`, after
  arXiv:2505.20254): the Hungarian (optimal one-to-one) matching M between true features and
  latents that maximises the total |cos|, and the mean |cos| over its min(n_true, n_latents)
  matched pairs. One-to-one: a latent (or feature) is used once, so duplicates of one
  feature cannot count twice; with n_latents < n_true it is the mean over the latents.
- Uniqueness (SAELens' `feature_uniqueness`): each latent's best true feature
  b(j) = argmax_i |cos(true_i, learned_j)|; uniqueness = |{b(j)}| / n_latents, 1 when
  every latent tracks a different feature, 0 for an empty dictionary.
- Precision / recall / F1 / accuracy (SAELens' `ClassificationMetricsCalculator`, the
  SynthSAEBench detection metrics): latent j is scored as a binary detector of its best
  feature b(j) over the samples. TP_j = #(latent fires and b(j) fires), FP_j = #(latent
  fires, b(j) does not), FN_j = #(b(j) fires, latent does not), TN_j the rest;
  precision_j = TP/(TP+FP), recall_j = TP/(TP+FN), F1_j = 2 P R / (P + R), each 0 where its
  denominator is 0, accuracy_j = (TP+TN)/total; the reported value is the mean over *all*
  latents (a dead latent scores P = R = F1 = 0).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from lmjax.errors import LmjaxError


def _rows(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise LmjaxError(f"{name} must be a matrix [n, d] of feature directions as rows; got shape {x.shape}")
    return x


def cosine_matrix(true, learned) -> np.ndarray:
    """cos(true_i, learned_j) -> [n_true, n_latents], float64."""
    a, b = _rows(true, "true"), _rows(learned, "learned")
    if a.shape[1] != b.shape[1]:
        raise LmjaxError(f"true features have d={a.shape[1]} but learned rows d={b.shape[1]}; they must match")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
    return a @ b.T


def mmcs(true, learned, absolute: bool = False) -> float:
    """Mean over true features of the best (signed, unless `absolute`) cosine to any row."""
    cos = cosine_matrix(true, learned)
    if cos.shape[1] == 0:
        return 0.0
    cos = np.abs(cos) if absolute else cos
    return float(cos.max(axis=1).mean())


def hungarian(true, learned):
    """The one-to-one matching maximising total |cos| -> (true_idx, latent_idx, |cos| of each pair)."""
    cos = np.abs(cosine_matrix(true, learned))
    rows, cols = linear_sum_assignment(-cos)
    return rows, cols, cos[rows, cols]


def mcc(true, learned) -> float:
    """Mean |cos| over the Hungarian matching's min(n_true, n_latents) pairs."""
    _, _, matched = hungarian(true, learned)
    return float(matched.mean()) if matched.size else 0.0


def best_matches(true, learned) -> np.ndarray:
    """b(j): each latent's best true feature by |cos| -> [n_latents] indices."""
    return np.abs(cosine_matrix(true, learned)).argmax(axis=0)


def uniqueness(true, learned) -> float:
    """Distinct best-matched true features over the number of latents."""
    n = np.asarray(learned).shape[0]
    if n == 0:
        return 0.0
    return len(np.unique(best_matches(true, learned))) / n


class DetectionCounts:
    """Streaming TP/FP/FN/TN per latent, each latent against its best true feature; add
    batches with `add`, read the means with `metrics()`."""

    def __init__(self, true, learned):
        self.match = best_matches(true, learned)
        n = self.match.shape[0]
        self.tp, self.fp, self.fn, self.tn = (np.zeros(n, np.int64) for _ in range(4))

    def add(self, latent_acts, true_acts) -> "DetectionCounts":
        lat = np.asarray(latent_acts) != 0
        gt = np.asarray(true_acts)[:, self.match] > 0
        if lat.shape != gt.shape:
            raise LmjaxError(f"latent_acts {lat.shape} and true_acts (matched: {gt.shape}) disagree on samples/latents")
        self.tp += np.sum(lat & gt, 0)
        self.fp += np.sum(lat & ~gt, 0)
        self.fn += np.sum(~lat & gt, 0)
        self.tn += np.sum(~lat & ~gt, 0)
        return self

    def metrics(self) -> dict:
        tp, fp, fn, tn = (c.astype(np.float64) for c in (self.tp, self.fp, self.fn, self.tn))
        if tp.size == 0:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
        p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
        acc = (tp + tn) / np.maximum(tp + fp + fn + tn, 1e-8)
        return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f1.mean()),
                "accuracy": float(acc.mean())}


def detection_metrics(true, learned, true_acts, latent_acts) -> dict:
    """Mean precision, recall, F1 and accuracy of the latents as detectors (one batch)."""
    return DetectionCounts(true, learned).add(latent_acts, true_acts).metrics()


def compare(true, learned) -> dict:
    """The activation-free comparisons at once: mmcs, mmcs_abs, mcc, uniqueness."""
    return {"mmcs": mmcs(true, learned), "mmcs_abs": mmcs(true, learned, absolute=True),
            "mcc": mcc(true, learned), "uniqueness": uniqueness(true, learned)}
