"""Dictionary features vs neurons: part-of-speech monosemanticity, and grokking's Fourier features.

Published: the latents of a sparse dictionary trained on a layer's activations are more
monosemantic than the layer's neurons: a single feature picks out a concept (a part of
speech, a language, a token class) more cleanly than any single neuron (Bricken et al.
2023, Towards Monosemanticity; Gurnee et al. 2023's sparse probing; SAEBench's k = 1
sparse probing, Karvonen et al. 2025). In the grokked modular-addition model each MLP
neuron at the '=' position responds to one key Fourier frequency (Nanda et al. 2023); the
claim tested here is that a dictionary's features line up with the key frequencies at
least as well as the neurons, and far better than random directions.

What is computed:

1. UPOS. The byte-level model of `lmjax repro upos` (same `lm` config), one JumpReLU
   dictionary per seed of `upos.dictionary_seeds` (vmapped, the same token stream) on
   one MLP's hidden layer (`blocks.{l}.mlp.hook_post`) fitted on the model's own training
   text (tinyshakespeare; it never sees EWT), and the activations of that hook at each
   word's last byte on UD English EWT dev. Sparse probing with one latent (SAEBench's
   k = 1, here without the logistic regression): for a tag t and a latent j (a dictionary
   feature, or a neuron of the same hook), the classifier is "word is t iff s * a_j >
   theta" with a sign s in {+1, -1} and a threshold theta. On a random `1 - test_fraction`
   of the words (train), theta is the cut between two consecutive distinct values of
   s * a_j that maximises F1 = 2 TP / (2 TP + FP + FN), and the (j, s) with the highest
   train F1 is the tag's best single latent; its F1 on the held-out words (test) is what
   is reported, per tag and as the mean over the tags with at least `min_train` /
   `min_test` words in the splits, per dictionary seed and as the mean over seeds. The
   same selection runs on the neurons, on the same words and split.
2. Grokking, MLP (the test of the claim). The a + b mod p model of `lmjax repro grokking`
   (same config); `grok_mlp_hook` (the MLP hidden layer) at '=' on all p^2 inputs "a b =";
   dictionaries of each width in `grok_mlp_widths`, one per seed of `grok_mlp_seeds`, on
   those p^2 activation vectors. For each latent -- an alive feature's activation f_i(a, b),
   a live neuron's activation (nonzero variance), a random unit direction's linear readout
   x(a, b) . d, and a feature's decoder direction read the same way -- its variance over
   the (a, b) grid is split by 2D DFT power into frequency clusters: cluster k holds the
   frequencies (+-k, 0), (0, +-k), (+-k, +-k) (Nanda et al.'s terms cos / sin(w_k a),
   cos / sin(w_k b) and their products, cos / sin(w_k (a + b)) among them), w_k = 2 pi k / p;
   what no cluster holds is left over. Reported: the fraction of latents with at least
   `concentrated` (0.5) of their variance in one key frequency's cluster (key frequencies:
   grokking.key_frequencies on W_E's spectrum), the mean share in the top cluster, and the
   mean share in the key clusters together.
3. Grokking, embedding (kept from the first version; it shows nothing). A dictionary on
   W_E's p rows (`hook_embed`), each alive feature's decoder direction read through W_E,
   g_i(a) = W_E[a] . d_i, and g_i's 1D spectrum over the numbers, beside random and basis
   directions (`n_random`): once W_E is mostly key frequencies every direction's dominant
   frequency is a key one, features and random directions alike.

lmjax (configs/repro/features.py, full run; 2-core AMD EPYC, 2026-12-02, shared/loaded:
load average 6-7 from other jobs throughout). UPOS: the upos model (4 layers, d_model 128,
1,500 steps, reused via --config.lm_dir), its layer-2 MLP (`blocks.2.mlp.hook_post`, 512
GELU neurons), two JumpReLU dictionaries of 1,024 features (seeds 0, 1; 1,000 steps of
1,024 tokens = 1.0M tokens each, twice the first version's 0.5M; on held-out text FVU
0.068, L0 20.9, 0.4% dead, means over the seeds); 17,952 EWT words, 4,488 held out, all 17
tags scored. Mean held-out F1 of the best single latent: features 0.362 (seed 0) and 0.372
(seed 1), mean 0.367, spread 0.010; neurons 0.356. Differences +0.006 (95% interval over
resamples of the held-out words -0.008 to +0.022) and +0.016 (+0.000 to +0.033). The
first version's single seed on 0.5M tokens: 0.370, +0.014 (-0.003 to +0.031). So: the
published direction in all three dictionaries, by about 0.01 F1 -- the size of the
seed-to-seed spread and of the held-out split's noise; doubling the tokens did not widen
it. Not shown: that features beat neurons here. Per tag (features as the mean over
seeds) features lead on 10 (PUNCT 0.84 vs 0.71, ADP 0.55 vs 0.44, SCONJ 0.28 vs 0.20, SYM
0.19 vs 0.12, DET, PART, ADV, NUM, PROPN, INTJ), neurons on 6 (CCONJ 0.60 vs 0.71, NOUN
0.37 vs 0.44, PRON 0.36 vs 0.41, ADJ, AUX, VERB), X is 0 for both; the dictionary has twice
as many candidates as there are neurons.
Grokking: 1,200 steps (test accuracy 99% from step 750, 99.3% at the end), key
frequencies 47, 28, 48, 55, 50, 24 (85% of the embedding's non-constant norm). MLP
(`blocks.0.mlp.hook_post`, 256 ReLU neurons, all live, each firing on 30% of the inputs):
neurons: 48% have >= 50% of their variance in one key frequency's cluster (mean top
share 0.49, key clusters 0.61; the top cluster is a key one for 98%; each key frequency
has 30-55 neurons). Random directions (1,000): 3% (top share 0.31; key clusters 0.86:
a random readout mixes the frequencies of many neurons). Features, width 64 (fewer than
the p = 113 answers; 1,000 steps, FVU 0.08, L0 14.6, all alive, each firing on 23% of the
inputs, not neurons: a decoder direction's largest |cosine| with a neuron axis is 0.40 on
average): 48% and 44% (seeds 0, 1; top share 0.47, 0.45; key clusters 0.61, 0.60);
decoder directions 45%, 52%. Features, width 256 (= d_mlp; FVU 0.08, L0 11.3, 2-3% dead,
each firing on 4.5% of the inputs): 4% and 5% (top share 0.14, key clusters 0.23),
decoder directions 31%, 35% (top share 0.45). So at width 64 the features match the
neurons (within the seeds' spread, not better) and are far above random directions --
the claim holds there; at width 256 the features' activations are not single-frequency
at all (below random directions on the top share): they fire on ~5% of the grid, and a
localised activation spreads its variance over many 2D frequencies, while their decoder
directions still carry mostly one key frequency. The result hinges on the width: width
64 was run after width 256 came out, chosen because it is below the number of answers;
no other widths or sparsity settings were tried, and which measure (activation or
decoder direction) is the fair one for a sparse feature is itself a choice.
Embedding: a JumpReLU dictionary of 64 features on W_E's 113 rows (63 alive, FVU 0.045):
every alive feature's dominant frequency is a key one (100%), as for random and basis
directions (100%); the top share is 0.37 (random 0.34, basis 0.34), the key share 0.94
(random 0.83, basis 0.82).
Wall time 11 min 0 s for the command (results.json's 655 s excludes start-up), with
--config.lm_dir reusing a finished LM (training it, 1,500 steps, took 17 min 7 s on its
own); of that: the two UPOS dictionaries 308 s (2.4 steps/s under load: over the ~5 min
planned), the one-latent probes 34 s, grokking's 1,200 steps 236 s, the MLP dictionaries
(2 widths x 2 seeds) 43 s, the embedding dictionary 5 s; docs/repro/features_{upos,grokking}.png.

Command: `lmjax repro features --out runs/repro/features` (figures features_upos.png,
features_grokking.png and results.json; the LM's checkpoint stays in OUT/lm unless
--config.lm_dir names an `lmjax repro upos` run's OUT/lm to reuse); `features:small` for
the test's setting. LMJAX_DATA names the folder holding tinyshakespeare/ and
ud_english_ewt/ (or --config.lm.data.source=PATH --config.conllu=PATH).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lmjax import plotting
from lmjax.data import reference
from lmjax.errors import MissingFileError
from lmjax.interp import probes
from lmjax.repro import _common, grokking, upos
from lmjax.sae.activations import ModelSource
from lmjax.sae.architectures import Dictionary
from lmjax.sae.metrics import reconstruction_metrics
from lmjax.sae.training import ArraySource, fit
from lmjax.train.loop import train as train_lm

# ---------------------------------------------------------------- sparse probing with one latent


def best_thresholds(acts, positive, chunk: int = 256):
    """Per latent and sign, the threshold with the best F1 on these examples.

    acts [N, W] (one column per latent), positive [T, N] bool (one row per tag) ->
    (f1 [T, 2, W], threshold [T, 2, W]): for sign s = +1 (index 0) and -1 (index 1) the
    classifier s * acts[:, j] > threshold, the threshold halfway between two consecutive
    distinct values of s * acts[:, j] (or -inf: every example positive). Ties go to the
    higher threshold (fewer positives)."""
    acts = np.asarray(acts, np.float32)
    positive = np.asarray(positive, bool)
    n, width = acts.shape
    n_pos = positive.sum(1).astype(np.float64)  # [T]
    f1 = np.zeros((len(positive), 2, width))
    threshold = np.zeros((len(positive), 2, width), np.float32)
    predicted = np.arange(1, n + 1, dtype=np.float64)[:, None]  # examples above the cut after row i
    for start in range(0, width, chunk):
        cols = slice(start, start + chunk)
        for si, sign in enumerate((1.0, -1.0)):
            v = sign * acts[:, cols]
            order = np.argsort(-v, axis=0, kind="stable")
            sorted_v = np.take_along_axis(v, order, 0)
            # a cut after row i separates distinct values (or is the last row: all positive)
            valid = np.ones_like(sorted_v, bool)
            valid[:-1] = sorted_v[:-1] > sorted_v[1:]
            below = np.concatenate([sorted_v[1:], np.full((1, v.shape[1]), -np.inf, np.float32)])
            cut = np.where(np.isfinite(below), (sorted_v + below) / 2, -np.inf)
            for t in range(len(positive)):
                tp = np.cumsum(positive[t][order], 0, dtype=np.float64)
                score = np.where(valid, 2 * tp / (predicted + n_pos[t]), -1.0)
                best = score.argmax(0)
                f1[t, si, cols] = score[best, np.arange(v.shape[1])]
                threshold[t, si, cols] = cut[best, np.arange(v.shape[1])]
    return f1, threshold


def f1_score(predicted, positive) -> float:
    """2 TP / (2 TP + FP + FN) (0 when there is nothing to find and nothing is predicted)."""
    predicted, positive = np.asarray(predicted, bool), np.asarray(positive, bool)
    denominator = predicted.sum() + positive.sum()
    return float(2 * (predicted & positive).sum() / denominator) if denominator else 0.0


def split_words(n: int, test_fraction: float, seed: int):
    """A random (train, test) split of n examples' indices."""
    order = np.random.RandomState(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def sparse_probe(acts, labels, train, test, tags) -> dict:
    """The best single latent of `acts` [N, W] for each tag (an int of `labels` [N]), picked
    on the `train` indices, scored on `test` -> {test_f1, train_f1, latent, sign,
    threshold}, each a list over `tags`."""
    acts = np.asarray(acts, np.float32)
    positive = np.stack([labels == t for t in tags])
    f1, threshold = best_thresholds(acts[train], positive[:, train])
    out = {"test_f1": [], "train_f1": [], "latent": [], "sign": [], "threshold": []}
    for i in range(len(tags)):
        si, j = np.unravel_index(int(np.argmax(f1[i])), f1[i].shape)
        sign = 1 if si == 0 else -1
        theta = float(threshold[i, si, j])
        out["test_f1"].append(f1_score(sign * acts[test, j] > theta, positive[i, test]))
        out["train_f1"].append(float(f1[i, si, j]))
        out["latent"].append(int(j))
        out["sign"].append(sign)
        out["threshold"].append(theta)
    return out


def predictions(acts, probe, rows) -> np.ndarray:
    """[tags, len(rows)] bool: each tag's selected classifier sign * acts[rows, latent] > threshold."""
    return np.stack([s * np.asarray(acts)[rows, j] > th
                     for j, s, th in zip(probe["latent"], probe["sign"], probe["threshold"])])


def bootstrap_difference(pred_a, pred_b, positive, n: int = 1000, seed: int = 0) -> list[float]:
    """The 2.5% and 97.5% quantiles of mean-over-tags F1(a) - F1(b) over `n` resamples (with
    replacement) of the held-out words; pred_* and positive [tags, words] bool. The
    classifiers stay fixed: the interval is the test split's sampling noise only."""
    idx = np.random.RandomState(seed).randint(0, positive.shape[1], (n, positive.shape[1]))

    def f1(pred):
        tp = (pred & positive)[:, idx].sum(-1)
        denominator = pred[:, idx].sum(-1) + positive[:, idx].sum(-1)
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean(0)

    return np.quantile(f1(pred_a) - f1(pred_b), [0.025, 0.975]).tolist()


# ---------------------------------------------------------------- UPOS: features vs neurons


def word_activations(model, params, tokenizer, path: str, hook: str, which: str = "last",
                     max_sentences: int = 500, batch_size: int = 16):
    """-> (activations [N, d] at `hook`, UPOS labels [N] (ints into probes.UPOS)) at each
    word's first or last token: lmjax.interp.probes.upos_dataset's words and alignment
    (sentences cut to the model's context), at any hook point (it reads the residual
    stream only)."""
    model.check_hook_names((hook,))
    t = model.cfg.max_len
    rows, where, labels = [], [], []
    for s in probes.read_conllu(path, max_sentences):
        ids, index = probes.align_words(tokenizer, s, which)
        ids = ids[:t]
        r = len(rows)
        rows.append(ids + [0] * (t - len(ids)))
        for w, i in enumerate(index):
            if 0 <= i < t and s.upos[w] in probes.UPOS:
                where.append((r, i))
                labels.append(probes.UPOS.index(s.upos[w]))
    rows = np.asarray(rows, np.int32)
    run = jax.jit(lambda p, x: model.run_with_cache(p, x, (hook,))[1][hook])
    acts = []
    for start in tqdm(range(0, len(rows), batch_size), desc="word activations", leave=False):
        chunk = rows[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, t), np.int32)])
        a = np.asarray(run(params, jnp.asarray(chunk)))[: batch_size - pad]
        acts.append(a.reshape(a.shape[0], t, -1))
    acts = np.concatenate(acts)
    where = np.asarray(where).reshape(-1, 2)
    return acts[where[:, 0], where[:, 1]], np.asarray(labels, np.int64)


def make_dictionary(section, d_in: int, hook: str = "") -> Dictionary:
    return Dictionary(section.arch, d_in, section.width, k=section.k, l1=section.l1, l0_coef=section.l0_coef,
                      init_threshold=section.init_threshold, hook_in=hook)


def fit_dictionary(section, source, hook: str = "", progress: bool = False):
    return fit(make_dictionary(section, source.d_in, hook), source, steps=section.steps,
               batch_size=section.batch_size, lr=section.lr, seed=section.seed, progress=progress,
               log_every=max(section.steps // 10, 1))


def encode(dictionary, params, x, batch: int = 4096) -> np.ndarray:
    """The dictionary's latents [N, width] for model-unit inputs x [N, d_in]."""
    run = jax.jit(lambda p, x: dictionary.encode(p, x * dictionary.input_scale))
    return np.concatenate([np.asarray(run(params, jnp.asarray(x[i:i + batch]))) for i in range(0, len(x), batch)])


def load_lm(config, out: str, progress: bool = True):
    """Train the `lm` section in OUT/lm (or load / finish the run at `lm_dir`) -> train summary."""
    workdir = config.lm_dir or os.path.join(os.path.abspath(out), "lm")
    return train_lm(upos.lm_config(config), workdir, progress=progress, quiet=not progress)


def upos_experiment(config, out: str, progress: bool = True) -> tuple[dict, dict]:
    """-> (results, arrays): the per-tag F1 of features and neurons, and the arrays they came
    from (acts, features, labels, train, test, tags) for checking."""
    conllu = reference.resolve(config.conllu, "--config.conllu")
    if not os.path.isfile(conllu):
        raise MissingFileError(f"--config.conllu={conllu}: no such file; give UD English EWT's dev split "
                               "($LMJAX_DATA/ud_english_ewt/en_ewt-ud-dev.conllu)")
    upos.lm_config(config)  # every path checked before the training starts
    t0 = time.perf_counter()
    summary = load_lm(config, out, progress)
    lm_time = time.perf_counter() - t0
    lm, params = summary["run"], summary["state"]["params"]
    model, hook = lm.model, config.upos.hook
    acts, labels = word_activations(model, params, lm.tokenizer, conllu, hook, config.which, config.max_sentences)

    t0 = time.perf_counter()
    seq_len = lm.config.data.seq_len or model.cfg.max_len
    source = ModelSource(model, params, np.asarray(lm.data.train), hook, seq_len=seq_len, seed=config.dictionary.seed)
    seeds = list(config.upos.dictionary_seeds)
    section = config.dictionary
    # the seeds' dictionaries train in one vmapped step on the same token stream
    fitted = fit(make_dictionary(section, source.d_in, hook), source, steps=section.steps,
                 batch_size=section.batch_size, lr=section.lr, seeds=seeds, progress=progress,
                 log_every=max(section.steps // 10, 1))
    fit_time = time.perf_counter() - t0
    val = ModelSource(model, params, np.asarray(lm.data.val), hook, seq_len=seq_len, seed=1)
    val_batch = val.batch(0, config.upos.eval_tokens)

    u = config.upos
    train, test = split_words(len(labels), u.test_fraction, u.seed)
    tags = [t for t in range(len(probes.UPOS))
            if (labels[train] == t).sum() >= u.min_train and (labels[test] == t).sum() >= u.min_test]
    positive = np.stack([labels[test] == t for t in tags])
    t0 = time.perf_counter()
    neurons = sparse_probe(acts, labels, train, test, tags)
    neuron_pred = predictions(acts, neurons, test)
    members, all_feats = [], []
    for i, seed in enumerate(seeds):
        dictionary, dparams = fitted.member(i)
        quality = reconstruction_metrics(dictionary, dparams, [val_batch])
        feats = encode(dictionary, dparams, acts)
        probe = sparse_probe(feats, labels, train, test, tags)
        members.append({
            "seed": seed, "probe": probe, "mean_f1": float(np.mean(probe["test_f1"])),
            # features - neurons, resampling the held-out words
            "mean_f1_difference_ci95": bootstrap_difference(predictions(feats, probe, test), neuron_pred,
                                                            positive, seed=u.seed),
            **{k: quality[k] for k in ("fvu", "explained_variance", "l0", "dead_fraction", "shrinkage", "tokens")},
            "l0_on_words": float((feats != 0).sum(1).mean()),
            "fired_on_words_fraction": float((feats != 0).any(0).mean())})
        all_feats.append(feats)
    probe_time = time.perf_counter() - t0
    names = [probes.UPOS[t] for t in tags]
    f_f1 = np.mean([m["probe"]["test_f1"] for m in members], 0)  # per tag, mean over the seeds
    n_f1 = np.asarray(neurons["test_f1"])
    seed_means = [m["mean_f1"] for m in members]
    results = {
        "hook": hook, "tags": names, "n_words": len(labels), "n_train": len(train),
        "n_test": len(test), "n_neurons": int(acts.shape[1]), "n_features": int(fitted.dictionary.width),
        "tag_counts": {probes.UPOS[t]: [int((labels[train] == t).sum()), int((labels[test] == t).sum())]
                       for t in tags},
        "seeds": seeds, "members": members, "features": members[0]["probe"], "neurons": neurons,
        "features_test_f1_mean_over_seeds": f_f1.tolist(),
        "mean_f1_features_by_seed": seed_means,
        "mean_f1_features": float(np.mean(seed_means)),
        "mean_f1_features_spread": float(np.max(seed_means) - np.min(seed_means)),  # max - min over seeds
        "mean_f1_neurons": float(n_f1.mean()),
        "mean_f1_difference_by_seed": [m - float(n_f1.mean()) for m in seed_means],
        "mean_f1_difference_ci95_by_seed": [m["mean_f1_difference_ci95"] for m in members],
        "tags_features_better": [n for n, a, b in zip(names, f_f1, n_f1) if a > b],
        "tags_neurons_better": [n for n, a, b in zip(names, f_f1, n_f1) if b > a],
        "dictionary": {"arch": section.arch, "width": section.width, "steps": section.steps,
                       "batch_size": section.batch_size, "tokens_per_dictionary": section.steps * section.batch_size,
                       **{k: float(np.mean([m[k] for m in members]))
                          for k in ("fvu", "l0", "dead_fraction", "shrinkage", "l0_on_words")}},
        "lm_val_loss": summary.get("val_loss"), "lm_val_bpb": summary.get("val_bpb"),
        "lm_params": summary.get("params"), "lm_steps": summary.get("end_step"),
        "lm_time_s": round(lm_time, 1), "dictionary_time_s": round(fit_time, 1), "probe_time_s": round(probe_time, 1),
    }
    arrays = {"acts": acts, "features": all_feats[0], "features_by_seed": all_feats, "labels": labels,
              "train": train, "test": test, "tags": tags,
              "model": model, "params": params, "tokenizer": lm.tokenizer, "conllu": conllu}
    return results, arrays


# ---------------------------------------------------------------- grokking: Fourier features


def direction_spectra(embedding, directions) -> np.ndarray:
    """Each direction's Fourier spectrum over the numbers: directions [n, d] -> [n, p//2 + 1],
    row i the spectrum of g_i(a) = embedding[a] . d_i / |d_i| (grokking.fourier_spectrum:
    shares of g_i's squared norm by frequency, summing to 1)."""
    d = np.asarray(directions, np.float64)
    g = np.asarray(embedding, np.float64) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T  # [p, n]
    return np.stack([grokking.fourier_spectrum(g[:, i:i + 1]) for i in range(g.shape[1])])


def frequency_stats(spectra, keys) -> dict:
    """From direction spectra [n, p//2 + 1]: the dominant non-constant frequency of each, the
    fraction whose dominant frequency is a key one, and the share of the non-constant power
    at the dominant frequency (mean), and at the key frequencies (mean)."""
    s = np.asarray(spectra)[:, 1:]
    s = s / np.maximum(s.sum(1, keepdims=True), 1e-300)
    dominant = s.argmax(1) + 1
    keys = sorted(keys)
    return {"dominant": dominant.tolist(), "fraction_key": float(np.isin(dominant, keys).mean()),
            "top_share": float(s.max(1).mean()), "key_share": float(s[:, np.asarray(keys) - 1].sum(1).mean())}


def grid_activations(model, params, p: int, hook: str) -> np.ndarray:
    """`hook`'s activations at the last position ('=') for every input: [p, p, d], entry
    [a, b] the activation on "a b =" (all p^2 pairs, train and test alike)."""
    model.check_hook_names((hook,))
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], 1).astype(np.int32)
    acts = jax.jit(lambda q, x: model.run_with_cache(q, x, (hook,))[1][hook][:, -1])(params, jnp.asarray(tokens))
    return np.asarray(acts, np.float64).reshape(p, p, -1)


def frequency_cluster_shares(grid) -> np.ndarray:
    """Each column's variance over the (a, b) grid by frequency cluster: grid [p, p, n] ->
    [n, p//2 + 1], entry k >= 1 the share of the column's variance (its 2D DFT power with
    the mean removed) at the 2D frequencies of key frequency k in Nanda et al.'s
    decomposition: (+-k, 0) (terms in a), (0, +-k) (terms in b) and (+-k, +-k) (products,
    among them cos / sin(w_k (a + b))), w_k = 2 pi k / p. Column 0 is what no single cluster
    holds (other 2D frequencies, e.g. (k1, k2) with k1 != +-k2). Rows sum to 1 (all zero
    for a constant column)."""
    g = np.asarray(grid, np.float64)
    p = g.shape[0]
    power = np.abs(np.fft.fft2(g - g.mean((0, 1)), axes=(0, 1))) ** 2  # [p, p, n]
    total = power.sum((0, 1))
    k = np.arange(1, p // 2 + 1)
    cluster = (power[k, 0] + power[p - k, 0] + power[0, k] + power[0, p - k]
               + power[k, k] + power[k, p - k] + power[p - k, k] + power[p - k, p - k])  # [p//2, n]
    share = cluster / np.maximum(total, 1e-300)
    return np.concatenate([np.where(total > 0, 1 - share.sum(0), 0)[None], share]).T


def cluster_stats(shares, keys, concentrated: float) -> dict:
    """From frequency_cluster_shares rows [n, p//2 + 1]: each latent's dominant frequency,
    the fraction of latents with at least `concentrated` of their variance in one key
    frequency's cluster, the fraction whose dominant cluster is a key one, the mean share
    in the dominant cluster and the mean share in all key clusters together."""
    s = np.asarray(shares)[:, 1:]
    keys = sorted(keys)
    if not len(s):
        return {"n": 0, "dominant": [], "top_share": [], "fraction_concentrated": None,
                "fraction_dominant_key": None, "mean_top_share": None, "mean_key_share": None}
    dominant, top = s.argmax(1) + 1, s.max(1)
    is_key = np.isin(dominant, keys)
    return {"n": len(s), "dominant": dominant.tolist(), "top_share": top.tolist(),
            "fraction_concentrated": float((is_key & (top >= concentrated)).mean()),
            "fraction_dominant_key": float(is_key.mean()), "mean_top_share": float(top.mean()),
            "mean_key_share": float(s[:, np.asarray(keys) - 1].sum(1).mean())}


def mlp_dictionaries(config, x, grid, keys, width: int, progress: bool = True) -> tuple[list, list, float]:
    """One dictionary per seed of config.grok_mlp_seeds (vmapped) of `width` features on the
    MLP activations x [p^2, d_mlp] -> (per-seed statistics, per-seed feature shares, fit seconds)."""
    section, p, c = config.grok_mlp_dictionary, grid.shape[0], config.concentrated
    seeds = list(config.grok_mlp_seeds)
    t0 = time.perf_counter()
    dictionary = Dictionary(section.arch, x.shape[1], width, k=section.k, l1=section.l1, l0_coef=section.l0_coef,
                            init_threshold=section.init_threshold, hook_in=config.grok_mlp_hook)
    fitted = fit(dictionary,
                 ArraySource(x, seed=section.seed), steps=section.steps, batch_size=section.batch_size,
                 lr=section.lr, seeds=seeds, progress=progress, log_every=max(section.steps // 10, 1))
    fit_time = time.perf_counter() - t0
    members, feature_shares = [], []
    for i, seed in enumerate(seeds):
        dictionary, dparams = fitted.member(i)
        feats = encode(dictionary, dparams, x)
        alive = np.flatnonzero((feats != 0).any(0))
        shares = frequency_cluster_shares(feats[:, alive].reshape(p, p, -1))
        quality = reconstruction_metrics(dictionary, dparams, [(x, None)])
        w_dec = np.asarray(dparams["W_dec"], np.float64)[alive]
        w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
        readout = x @ w_dec.T  # the decoder direction read linearly, like the random directions
        by_c = feats[:, alive].reshape(p, p, -1)
        c_mean = np.stack([by_c[a, (np.arange(p) - a) % p] for a in range(p)]).mean(0)  # [c = a + b, alive]
        members.append({"seed": seed, "width": width, "n_alive": len(alive),
                        **{k: quality[k] for k in ("fvu", "l0", "dead_fraction", "shrinkage")},
                        "firing_fraction": float((feats[:, alive] != 0).mean()),
                        # share of a feature's variance that is a function of c = a + b mod p (mean)
                        "mean_variance_share_of_a_plus_b": float(np.mean(c_mean.var(0) / by_c.reshape(p * p, -1).var(0))),
                        # largest |cosine| of a decoder direction with a neuron's axis (mean): 1 = a neuron
                        "mean_max_neuron_cosine": float(np.abs(w_dec).max(1).mean()),
                        **cluster_stats(shares, keys, c),
                        "decoder_readout": cluster_stats(frequency_cluster_shares(readout.reshape(p, p, -1)), keys, c)})
        feature_shares.append(shares)
    return members, feature_shares, fit_time


STATS = ("fraction_concentrated", "fraction_dominant_key", "mean_top_share", "mean_key_share")


def mlp_experiment(config, run, keys, progress: bool = True) -> tuple[dict, dict]:
    """Dictionaries (each width of config.grok_mlp_widths, each seed) on the grokking model's
    MLP hidden layer at '=' (all p^2 inputs), and the frequency-cluster statistics of their
    alive features, of the live neurons (nonzero variance over the grid) and of `n_random`
    random unit directions of the same space (their linear readouts x . d)."""
    g = config.grokking
    p, hook, c = g.p, config.grok_mlp_hook, config.concentrated
    grid = grid_activations(grokking.make_model(g, p), run["params"], p, hook)
    x = grid.reshape(p * p, -1).astype(np.float32)
    std = x.std(0)
    live = np.flatnonzero(std > 1e-6 * max(float(std.max()), 1e-30))
    random = np.random.RandomState(g.seed + 2).randn(x.shape[1], config.n_random)
    random /= np.linalg.norm(random, axis=0, keepdims=True)
    neuron_shares = frequency_cluster_shares(grid[:, :, live])
    random_shares = frequency_cluster_shares((x @ random).reshape(p, p, -1))
    stats = {"neurons": cluster_stats(neuron_shares, keys, c), "random": cluster_stats(random_shares, keys, c)}
    by_width, feature_shares, fit_time = [], {}, 0.0
    for width in config.grok_mlp_widths:
        members, shares, seconds = mlp_dictionaries(config, x, grid, keys, width, progress)
        fit_time += seconds
        feature_shares[width] = shares
        by_width.append({"width": width, "members": members,
                         **{f"{stat}_features": [m[stat] for m in members] for stat in STATS},
                         **{f"{stat}_decoder_readout": [m["decoder_readout"][stat] for m in members] for stat in STATS}})
    by_c = grid[:, :, live]
    c_mean = np.stack([by_c[a, (np.arange(p) - a) % p] for a in range(p)]).mean(0)
    results = {"hook": hook, "concentrated": c, "d_mlp": int(x.shape[1]), "n_live_neurons": len(live),
               "widths": list(config.grok_mlp_widths), "seeds": list(config.grok_mlp_seeds),
               "steps": config.grok_mlp_dictionary.steps, "by_width": by_width,
               **{f"{stat}_{kind}": stats[kind][stat] for kind in ("neurons", "random") for stat in STATS},
               "neuron_firing_fraction": float((by_c > 0).mean()),
               "neuron_mean_variance_share_of_a_plus_b": float(np.mean(c_mean.var(0) / by_c.reshape(p * p, -1).var(0))),
               "neuron_dominant_frequency": stats["neurons"]["dominant"], "dictionary_time_s": round(fit_time, 1)}
    arrays = {"grid": grid, "live": live, "feature_shares": feature_shares, "neuron_shares": neuron_shares,
              "random_shares": random_shares, "random": random, "params": run["params"]}
    return results, arrays


def grokking_experiment(config, progress: bool = True) -> tuple[dict, dict]:
    """-> (results, arrays): the grokking model, its key frequencies, the dictionary on its
    embedding and the Fourier statistics of its features vs random and basis directions."""
    g = config.grokking
    run = grokking.train(g, progress=progress)
    summary = grokking.summarize(g, run)
    p = g.p
    embedding = np.asarray(run["params"]["embed"][:p], np.float32)
    keys = summary["key_frequencies"]
    section = config.grok_dictionary
    repeats = -(-max(section.batch_size, 4096) // p)  # every number equally often in every epoch
    t0 = time.perf_counter()
    fitted = fit_dictionary(section, ArraySource(np.tile(embedding, (repeats, 1)), seed=section.seed),
                            "hook_embed", progress)
    fit_time = time.perf_counter() - t0
    dictionary, dparams = fitted.dictionary, fitted.params
    feats = encode(dictionary, dparams, embedding)
    alive = np.flatnonzero((feats != 0).any(0))
    w_dec = np.asarray(dparams["W_dec"])[alive]
    quality = reconstruction_metrics(dictionary, dparams, [(embedding, None)])
    spectra = direction_spectra(embedding, w_dec) if len(alive) else np.zeros((0, p // 2 + 1))
    random = np.random.RandomState(config.grokking.seed + 1).randn(config.n_random, embedding.shape[1])
    stats = {"features": frequency_stats(spectra, keys) if len(alive) else None,
             "random": frequency_stats(direction_spectra(embedding, random), keys),
             "basis": frequency_stats(direction_spectra(embedding, np.eye(embedding.shape[1])), keys)}
    dominant = np.asarray(stats["features"]["dominant"] if len(alive) else [], int)
    results = {
        "p": p, "steps": g.steps, "final_train_acc": summary["final_train_acc"],
        "final_test_acc": summary["final_test_acc"], "test_acc_99_step": summary["test_acc_99_step"],
        "key_frequencies": keys, "key_frequency_share": summary["key_frequency_share"],
        "embedding_spectrum": summary["spectrum"], "width": dictionary.width, "n_alive": len(alive),
        "alive": alive.tolist(),
        "dictionary": {"arch": dictionary.arch, "width": dictionary.width, "steps": section.steps,
                       **{k: quality[k] for k in ("fvu", "l0", "dead_fraction", "shrinkage")}},
        "fraction_key_features": stats["features"]["fraction_key"] if len(alive) else None,
        "fraction_key_random": stats["random"]["fraction_key"],
        "fraction_key_basis": stats["basis"]["fraction_key"],
        "top_share_features": stats["features"]["top_share"] if len(alive) else None,
        "top_share_random": stats["random"]["top_share"], "top_share_basis": stats["basis"]["top_share"],
        "key_share_features": stats["features"]["key_share"] if len(alive) else None,
        "key_share_random": stats["random"]["key_share"], "key_share_basis": stats["basis"]["key_share"],
        "feature_dominant_frequency": dominant.tolist(),
        "key_frequencies_covered": sorted({int(k) for k in dominant} & set(keys)),
        "train_time_s": summary["train_time_s"], "dictionary_time_s": round(fit_time, 1),
    }
    mlp_results, mlp_arrays = mlp_experiment(config, run, keys, progress)
    results["mlp"] = mlp_results
    arrays = {"embedding": embedding, "spectra": spectra, "random_spectra": direction_spectra(embedding, random),
              "w_dec": w_dec, "keys": keys, "mlp": mlp_arrays}
    return results, arrays


# ---------------------------------------------------------------- figures


def plot_upos(results, out: str) -> str:
    plt = plotting.pyplot()
    tags = results["tags"]
    x = np.arange(len(tags))
    f, n = results["features_test_f1_mean_over_seeds"], results["neurons"]["test_f1"]
    by_seed = ", ".join(f"{v:.3f}" for v in results["mean_f1_features_by_seed"])
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.bar(x - 0.2, f, width=0.4, label=f"best single feature, mean over {len(results['seeds'])} dictionary seeds "
                                          f"(dots; mean F1 {results['mean_f1_features']:.3f}: {by_seed})")
    for m in results["members"]:
        ax.plot(x - 0.2, m["probe"]["test_f1"], "k.", ms=3)
    ax.bar(x + 0.2, n, width=0.4, color="0.6", label=f"best single neuron (mean {results['mean_f1_neurons']:.3f})")
    ax.set_xticks(x, tags, rotation=30, fontsize=8)
    ax.set(ylabel="held-out F1", ylim=(0, 1),
           title=f"one-latent UPOS probes at {results['hook']}: {results['n_features']} dictionary features vs "
                 f"{results['n_neurons']} neurons ({results['n_words']:,} EWT dev words)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    return plotting.save(fig, os.path.join(out, "features_upos.png"), dpi=90)


def plot_grokking(results, arrays, out: str) -> str:
    """Left: per kind of latent, the fraction concentrated in one key frequency and the mean
    single-cluster share (features: mean over seeds, the seeds as dots). Right: the
    distribution of the single-cluster share (features: the first seed)."""
    plt = plotting.pyplot()
    m, a = results["mlp"], arrays["mlp"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    rows = [("neurons", [m["fraction_concentrated_neurons"]], [m["mean_top_share_neurons"]], "0.4"),
            ("random\ndirections", [m["fraction_concentrated_random"]], [m["mean_top_share_random"]], "0.75")]
    for w in m["by_width"]:
        rows.append((f"features\nwidth {w['width']}", w["fraction_concentrated_features"],
                     w["mean_top_share_features"], None))
        rows.append((f"decoder dir.\nwidth {w['width']}", w["fraction_concentrated_decoder_readout"],
                     w["mean_top_share_decoder_readout"], None))
    x = np.arange(len(rows))
    concentrated = f"fraction with >= {m['concentrated']:.0%} of variance in one key frequency"
    for offset, index, label, hatch in ((-0.2, 1, concentrated, None), (0.2, 2, "mean share in the top frequency", "//")):
        values = [np.mean(r[index]) for r in rows]
        colors = [r[3] or f"C{i % 2}" for i, r in enumerate(rows)]
        ax1.bar(x + offset, values, width=0.38, color=colors, hatch=hatch, edgecolor="k", linewidth=0.3, label=label)
        for i, r in enumerate(rows):
            if len(r[index]) > 1:
                ax1.plot([x[i] + offset] * len(r[index]), r[index], "k.", ms=4)
    ax1.set_xticks(x, [r[0] for r in rows], fontsize=7)
    ax1.set(ylim=(0, 1), ylabel="fraction / share")
    ax1.set_title(f"a + b mod {results['p']}, {m['hook']} at '=' over all p^2 inputs: variance by frequency "
                  f"cluster\n(+-k,0), (0,+-k), (+-k,+-k); key frequencies {sorted(results['key_frequencies'])}",
                  fontsize=9)
    ax1.legend(fontsize=7, loc="upper right")
    bins = np.linspace(0, 1, 26)
    def top(shares):
        return np.asarray(shares)[:, 1:].max(1) if len(shares) else np.zeros(0)

    ax2.hist(top(a["neuron_shares"]), bins=bins, density=True, alpha=0.7, color="0.3", label="neurons")
    ax2.hist(top(a["random_shares"]), bins=bins, density=True, alpha=0.5, color="0.7", label="random directions")
    for i, w in enumerate(m["widths"]):
        ax2.hist(top(a["feature_shares"][w][0]), bins=bins, density=True, histtype="step", lw=1.8, color=f"C{i + 2}",
                 label=f"features, width {w} (seed {m['seeds'][0]})")
    ax2.set(xlabel="share of a latent's variance in its top frequency cluster", ylabel="density")
    ax2.set_title("one frequency per latent?", fontsize=9)
    ax2.legend(fontsize=7)
    return plotting.save(fig, os.path.join(out, "features_grokking.png"), dpi=90)


def run(config, out: str, progress: bool = True) -> tuple[dict, dict]:
    """Both experiments -> (results, {"upos": arrays, "grokking": arrays})."""
    upos_results, upos_arrays = upos_experiment(config, out, progress)
    grok_results, grok_arrays = grokking_experiment(config, progress)
    return {"upos": upos_results, "grokking": grok_results}, {"upos": upos_arrays, "grokking": grok_arrays}


def plot(results, arrays, out: str) -> list[str]:
    return [plot_upos(results["upos"], out), plot_grokking(results["grokking"], arrays["grokking"], out)]


def experiment(config, out: str) -> dict:
    results, arrays = run(config, out)
    results["figures"] = plot(results, arrays, out)
    return results


def main(argv=None, variant: str | None = None) -> dict:
    results, out = _common.reproduce("features", argv, __doc__, experiment, variant)
    u, g = results["upos"], results["grokking"]
    m = g["mlp"]
    widths = "; ".join(f"width {w['width']} {np.mean(w['fraction_concentrated_features']):.0%} "
                       f"(top share {np.mean(w['mean_top_share_features']):.2f})" for w in m["by_width"])
    print(f"UPOS one-latent F1 at {u['hook']} (mean over {len(u['tags'])} tags): features {u['mean_f1_features']:.3f} "
          f"(seeds {', '.join(f'{v:.3f}' for v in u['mean_f1_features_by_seed'])}), neurons {u['mean_f1_neurons']:.3f}; "
          f"grokking MLP at '=': latents with >= {m['concentrated']:.0%} of their variance in one key frequency: "
          f"neurons {m['fraction_concentrated_neurons']:.0%} (top share {m['mean_top_share_neurons']:.2f}), random "
          f"directions {m['fraction_concentrated_random']:.0%} ({m['mean_top_share_random']:.2f}), features {widths}; "
          f"{results['wall_time_s']} s -> {out}")
    return results
