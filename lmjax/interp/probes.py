"""Linear probes: what can a logistic regression read off the activations, layer by layer?

A probe's accuracy says a property is *linearly decodable* at a layer, not that the model
uses it (patching answers that). So every probe comes with a control: the same probe
trained on shuffled labels (Hewitt & Liang 2019's point: a probe powerful enough to
memorise labels says little) and a held-out test split; accuracy by layer is the curve.

Training: multinomial logistic regression on standardised features, full batch, Adam with
an L2 penalty, a fixed number of steps in one `lax.scan`, vmapped over layers and over
(real, shuffled) labels: one compiled call trains every probe.

Data: `read_conllu` reads Universal Dependencies treebanks (word forms and UPOS tags);
`align_words` maps each word to a model token (its first or last sub-token) from the
tokenizer's token lengths; `upos_dataset` caches residual-stream activations at those
tokens. Runs on $LMJAX_DATA/ud_english_ewt/ (read in place; lmjax.data.reference).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lmjax.errors import LmjaxError
from lmjax.interp import compiling, weights

UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X")


@dataclasses.dataclass
class ProbeResult:
    labels: list[str]  # one per probed point (e.g. residual stream after each layer)
    train_acc: np.ndarray  # [P]
    test_acc: np.ndarray  # [P]
    control_acc: np.ndarray  # [P] test accuracy of the shuffled-label control
    chance: float  # share of the most frequent class in the test split
    weights: np.ndarray | None = None  # [P, d, classes] in standardised units


def _fit(x, y, n_classes, steps, lr, l2):
    """One probe: x [N, d] standardised, y [N] -> (weights, bias)."""
    d = x.shape[-1]
    params = (jnp.zeros((d, n_classes)), jnp.zeros(n_classes))
    opt = optax.adam(lr)

    def loss(p):
        logits = x @ p[0] + p[1]
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1).mean()
        return nll + l2 * jnp.sum(p[0] ** 2)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


@compiling.jit(static_argnames=("n_classes", "steps"))
def _train_all(x_train, x_test, y_train, y_test, n_classes, steps, lr, l2):
    """x_* [P, N, d]; y_* [2, N] (real, shuffled) -> accuracies [P, 2] and weights."""
    mean = x_train.mean(1, keepdims=True)
    std = x_train.std(1, keepdims=True) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    def one(xtr, xte, ytr, yte):
        w, b = _fit(xtr, ytr, n_classes, steps, lr, l2)
        acc = lambda x, y: jnp.mean(jnp.argmax(x @ w + b, -1) == y)
        return acc(xtr, ytr), acc(xte, yte), w

    per_label = jax.vmap(one, in_axes=(None, None, 0, 0))
    return jax.vmap(per_label, in_axes=(0, 0, None, None))(x_train, x_test, y_train, y_test)


def train_probes(features, labels, *, names=None, test_fraction: float = 0.25, steps: int = 300,
                 lr: float = 0.05, l2: float = 1e-4, seed: int = 0) -> ProbeResult:
    """Probe `features` [P, N, d] (or [N, d]) for integer `labels` [N]; returns accuracy by P."""
    x = np.asarray(features, np.float32)
    if x.ndim == 2:
        x = x[None]
    y = np.asarray(labels)
    classes, y = np.unique(y, return_inverse=True)
    n = len(y)
    rng = np.random.RandomState(seed)
    order = rng.permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    test, train = order[:n_test], order[n_test:]
    shuffled = y[rng.permutation(n)]  # the control: same label distribution, no relation to x
    y_train = np.stack([y[train], shuffled[train]])
    y_test = np.stack([y[test], shuffled[test]])
    train_acc, test_acc, w = _train_all(jnp.asarray(x[:, train]), jnp.asarray(x[:, test]), jnp.asarray(y_train),
                                        jnp.asarray(y_test), len(classes), steps, lr, l2)
    train_acc, test_acc = np.asarray(train_acc), np.asarray(test_acc)
    chance = float(np.bincount(y[test]).max() / len(test))
    names = list(names) if names is not None else [str(i) for i in range(x.shape[0])]
    return ProbeResult(names, train_acc[:, 0], test_acc[:, 0], test_acc[:, 1], chance, np.asarray(w[:, 0]))


# ---------------------------------------------------------------- CoNLL-U and token alignment


@dataclasses.dataclass
class Sentence:
    text: str
    words: list[str]
    upos: list[str]


def read_conllu(path: str, max_sentences: int | None = None) -> list[Sentence]:
    """Sentences of a CoNLL-U file: the `# text` line and the syntactic words with UPOS tags
    (multiword-token ranges like `3-4` and empty nodes like `5.1` are skipped)."""
    out, text, words, tags = [], None, [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# text = "):
                text = line[len("# text = "):]
            elif line.startswith("#"):
                continue
            elif not line.strip():
                if words:
                    out.append(Sentence(text if text is not None else " ".join(words), words, tags))
                    if max_sentences is not None and len(out) >= max_sentences:
                        return out
                text, words, tags = None, [], []
            else:
                cols = line.split("\t")
                if "-" in cols[0] or "." in cols[0]:
                    continue
                words.append(cols[1])
                tags.append(cols[3])
    if words:
        out.append(Sentence(text if text is not None else " ".join(words), words, tags))
    return out[:max_sentences]


def align_words(tokenizer, sentence: Sentence, which: str = "last", add_bos: bool = True):
    """-> (token ids, [word] token index or -1) mapping each word to its first or last sub-token.

    Token spans come from the tokenizer's per-token byte lengths; words are found in order
    in the sentence text. A word not found (or a text the tokenizer normalises, so that the
    lengths do not add up) maps to -1."""
    if which not in ("first", "last"):
        raise LmjaxError(f"which must be 'first' or 'last', got {which!r}")
    lengths = _token_lengths(tokenizer)
    ids = tokenizer.encode(sentence.text)
    ends = np.cumsum(lengths[np.asarray(ids, np.int64)]) if ids else np.zeros(0, np.int64)
    starts = ends - lengths[np.asarray(ids, np.int64)] if ids else ends
    raw = sentence.text.encode("utf-8")
    offset = 1 if add_bos and tokenizer.bos_id is not None else 0
    index = np.full(len(sentence.words), -1)
    if not len(ends) or ends[-1] != len(raw):
        return ([tokenizer.bos_id] if offset else []) + ids, index
    cursor = 0
    for i, word in enumerate(sentence.words):
        w = word.encode("utf-8")
        at = raw.find(w, cursor)
        if at < 0:
            continue
        s, e = at, at + len(w)
        cursor = e
        covering = np.nonzero((ends > s) & (starts < e))[0]
        if len(covering):
            index[i] = (covering[0] if which == "first" else covering[-1]) + offset
    return ([tokenizer.bos_id] if offset else []) + ids, index


@functools.lru_cache(maxsize=8)
def _lengths_cached(tokenizer):
    return np.asarray(tokenizer.token_bytes(), np.int64)


def _token_lengths(tokenizer):
    try:
        return _lengths_cached(tokenizer)
    except TypeError:  # unhashable tokenizer
        return np.asarray(tokenizer.token_bytes(), np.int64)


@compiling.jit(static_argnames=("model", "names"))
def _resid(model, params, tokens, names):
    _, cache = model.run_with_cache(params, tokens, names)
    return jnp.stack([cache[n] for n in names])


def upos_dataset(model, params, tokenizer, path: str, which: str = "last", max_sentences: int = 500,
                 batch_size: int = 16):
    """-> (features [P, N, d] at the residual points, UPOS labels [N] (ints into UPOS), point
    labels). Sentences longer than the model's context are cut (their later words dropped)."""
    points = weights.residual_points(model)
    names = tuple(n for _, n in points)
    sentences = read_conllu(path, max_sentences)
    t = model.cfg.max_len
    rows, where, labels = [], [], []
    for s in sentences:
        ids, index = align_words(tokenizer, s, which)
        ids = ids[:t]
        r = len(rows)
        rows.append(ids + [0] * (t - len(ids)))
        for w, i in enumerate(index):
            if 0 <= i < t and s.upos[w] in UPOS:
                where.append((r, i))
                labels.append(UPOS.index(s.upos[w]))
    rows = np.asarray(rows, np.int32)
    feats = []
    for start in tqdm(range(0, len(rows), batch_size), desc="cache activations", leave=False):
        chunk = rows[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, t), np.int32)])
        feats.append(np.asarray(_resid(model, params, jnp.asarray(chunk), names))[:, : batch_size - pad])
    acts = np.concatenate(feats, axis=1)  # [P, sentences, t, d]
    where = np.asarray(where)
    return acts[:, where[:, 0], where[:, 1]], np.asarray(labels), [label for label, _ in points]
