"""Induction heads and the in-context-learning phase change (Olsson et al. 2022).

Published: small attention-only transformers (2+ layers) go through a phase change early
in training: within a short window of steps, induction heads form (a layer-1 head that
attends to the token after an earlier copy of the current token) and the in-context-
learning score (loss at token 500 minus loss at token 50) drops sharply, then stays flat;
one-layer models show neither. Ablating the induction heads removes most of the in-context
gain (Olsson et al. Figs. 1, 3, "Argument 2/3").

lmjax (configs/repro/induction.py): a 2-layer attention-only model (d_model 64, 2 heads
per layer, context 65, MLPs held at zero) on sequences with repeats: in-context bigrams
over 12 symbols (each row has its own random successor map, followed with probability
0.7), Adam lr 3e-3, batch 64, 1,500 steps. Phase change: the ICL score (loss at token 60
minus token 6, held-out rows) sits near -0.12..-0.26 until step ~200 and falls to -0.65 by
step 300 (-0.70 at the end); in the same 100 steps both layer-1 heads' induction scores
(on [BOS] + r + r, r of 32 random symbols) jump from 0.11 to 0.26 (layer-0 heads: <= 0.02;
over 12 symbols each token of r has several earlier copies, so even a perfect induction
head's attention is split and the stripe score stays well below 1). Mean-ablating the two induction heads: ICL score -0.701 ->
-0.003 (99.6% of the in-context gain gone); loss on the repeated half of [BOS] + r + r
1.82 -> 2.49 nats, equal to the first half's 2.49 (100% of the repeat gain gone). Wall
time 1 min 55 s on the shared 2-core CPU under load (load average ~8);
docs/repro/induction_{phase,ablation}.png.

On text the circuit did not form in this budget: the `text` variant (tinyshakespeare
characters, context 256, d_model 128, 4 heads, 25% of rows repeating a text chunk of
random length, 2,000 steps, 5.6 min) ended at val loss 2.09 nats/char with every head's
induction score <= 0.01 and an ICL score of +0.07 (later tokens no better than early ones).

Command: `lmjax repro induction --out runs/repro/induction` (figures induction_phase.png,
induction_ablation.png and results.json); `lmjax repro induction:text` for the text run
(LMJAX_DATA names the folder holding tinyshakespeare/, or --config.data=PATH).
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.tree_util import Partial
from tqdm.auto import tqdm

from lmjax import plotting
from lmjax.data import reference
from lmjax.data.sources import text_source
from lmjax.data.tokenizers import CharTokenizer
from lmjax.errors import MissingFileError
from lmjax.interp import ablation, heads
from lmjax.interp.metrics import NextTokenLoss
from lmjax.model import ModelConfig, Transformer
from lmjax.repro import _common
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import init_params, make_train_step, new_state


def load_text(path: str) -> str:
    """The training text: a file ($LMJAX_DATA/... resolved), or "" for the embedded corpus
    (the standard library's source)."""
    if path:
        path = reference.resolve(path, "--config.data")
        if not os.path.isfile(path):
            raise MissingFileError(f"--config.data={path}: no such file; give a text file, or '' for the embedded corpus")
        with open(path, encoding="utf-8") as f:
            return f.read()
    source = text_source("stdlib")
    parts, size = [], 0
    for p in source.paths:
        with open(p, encoding="utf-8", errors="ignore") as f:
            parts.append(f.read())
        size += len(parts[-1])
        if size > 2_000_000:
            break
    return "".join(parts)


def text_rows(tokens: np.ndarray, rng, n: int, t: int, bos: int) -> np.ndarray:
    """n rows [BOS] + a random window of t - 1 tokens."""
    starts = rng.randint(0, len(tokens) - t, n)
    rows = tokens[starts[:, None] + np.arange(t - 1)]
    return np.concatenate([np.full((n, 1), bos), rows], axis=1).astype(np.int32)


def repeat_rows(tokens: np.ndarray, rng, n: int, t: int, bos: int, random_vocab: int = 0) -> np.ndarray:
    """n rows [BOS] + s + s + filler, s of a random length k in [(t - 1) // 8, (t - 1) // 2]
    (the copy's offset varies, so no positional head solves it). s and the filler are text
    windows, or with `random_vocab` uniform random tokens below it."""
    if random_vocab:
        rows = np.concatenate([np.full((n, 1), bos), rng.randint(0, random_vocab, (n, t - 1))], axis=1)
        rows = rows.astype(np.int32)
    else:
        rows = text_rows(tokens, rng, n, t, bos)
    ks = rng.randint((t - 1) // 8, (t - 1) // 2 + 1, n)
    for row, k in zip(rows, ks):
        row[1 + k:1 + 2 * k] = row[1:1 + k]
    return rows


def bigram_rows(rng, n: int, t: int, bos: int, vocab: int, keep: float = 0.7) -> np.ndarray:
    """n rows of in-context bigrams (Bietti et al. 2023): each row draws its own random map
    f over `vocab` tokens and continues x_{i+1} = f(x_i) with probability `keep` (else a
    fresh random token). A successor is predictable only from the token's earlier
    occurrence in the same row: the job of a previous-token head plus an induction head."""
    f = rng.randint(0, vocab, (n, vocab))
    fresh = rng.randint(0, vocab, (n, t - 1))
    kept = rng.rand(n, t - 1) < keep
    rows = np.empty((n, t - 1), np.int32)
    rows[:, 0] = fresh[:, 0]
    for i in range(1, t - 1):
        rows[:, i] = np.where(kept[:, i], f[np.arange(n), rows[:, i - 1]], fresh[:, i])
    return np.concatenate([np.full((n, 1), bos, np.int32), rows], axis=1)


def make_rows(config, tokens, rng, n, t, bos, n_chars):
    """Training (or held-out) rows: text windows, a `repeat_fraction` share of them with a
    repeated chunk; `repeat_source` "random" draws those rows from random characters,
    "bigram" makes them in-context bigram rows."""
    if config.repeat_fraction >= 1 and config.repeat_source == "bigram":
        return bigram_rows(rng, n, t, bos, config.repeat_vocab or n_chars)
    if config.repeat_fraction >= 1 and config.repeat_source == "random":
        return repeat_rows(tokens, rng, n, t, bos, config.repeat_vocab or n_chars)
    rows = text_rows(tokens, rng, n, t, bos)
    if config.repeat_fraction > 0:
        which = rng.rand(n) < config.repeat_fraction
        vocab = config.repeat_vocab or n_chars
        if config.repeat_source == "bigram":
            rows[which] = bigram_rows(rng, int(which.sum()), t, bos, vocab)
        else:
            rows[which] = repeat_rows(tokens, rng, int(which.sum()), t, bos, vocab * (config.repeat_source == "random"))
    return rows


def position_losses(model, params, tokens):
    """Mean next-token loss at each predicting position [t - 1] over the batch."""
    logits = model.apply({"params": params}, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0].mean(0)


def icl_score(losses, early: int, late: int, window: int) -> float:
    """Loss at token `late` minus loss at token `early` (each the mean over +-window positions)."""
    losses = np.asarray(losses)
    at = lambda i: losses[max(0, i - window):i + window + 1].mean()  # noqa: E731
    return float(at(late) - at(early))


def _icl_metric(early, late, window, tokens, logits):
    """Per-row ICL score on `tokens` for ablation.ablate (a jax.tree_util.Partial metric)."""
    nll = NextTokenLoss(tokens)
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    per = -jnp.take_along_axis(logp, nll.tokens[:, 1:, None], -1)[..., 0]
    late_loss = per[:, max(0, late - window):late + window + 1].mean(-1)
    early_loss = per[:, max(0, early - window):early + window + 1].mean(-1)
    return late_loss - early_loss


def setup(config):
    if config.repeat_fraction >= 1 and config.repeat_source != "text" and config.repeat_vocab:
        # all rows synthetic: the vocabulary is the symbols + BOS, no text at all (unused
        # vocabulary rows slow the circuit's formation several-fold: measured)
        n_sym = config.repeat_vocab
        empty = np.zeros(0, np.int32)
        return n_sym, n_sym, empty, empty, Transformer(ModelConfig(vocab_size=n_sym + 1, **config.model))
    text = load_text(config.data)
    tokenizer = CharTokenizer.from_texts([text])
    ids = np.asarray(tokenizer.encode_array(text), np.int32)
    split = int(len(ids) * (1 - config.val_fraction))
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **config.model)
    return tokenizer.bos_id, len(tokenizer.chars), ids[:split], ids[split:], Transformer(cfg)


def train(config, progress: bool = True) -> dict:
    """Train the attention-only model (a config checked by configs/repro/induction.py's
    `problems`), measuring the heads and the ICL score every `log_every` steps."""
    bos, n_chars, train_ids, val_ids, model = setup(config)
    t = model.cfg.max_len
    rng = np.random.RandomState(config.seed)
    val_rng = np.random.RandomState(config.seed + 1)
    val = jnp.asarray(text_rows(val_ids, val_rng, config.eval_batch, t, bos) if config.eval_data == "text"
                      else make_rows(config, val_ids, val_rng, config.eval_batch, t, bos, n_chars))
    probe_vocab = config.repeat_vocab if config.repeat_source != "text" and config.repeat_vocab else n_chars
    params = _common.attention_only(init_params(model, jax.random.key(config.seed)))
    o = ml_collections.ConfigDict(dict(b1=0.9, eps=1e-8, **config.optimizer))
    optimizer = make_optimizer(o, config.steps)

    def loss_fn(p, tokens, key):
        return NextTokenLoss(tokens)(model.apply({"params": p}, tokens)).mean()

    # the zeroed MLPs stay zero; scanned inside `chunk`'s jit
    step = make_train_step(model, optimizer, loss_fn=loss_fn, frozen=_common.is_mlp_path, jit=False)

    def body(state, tokens):
        state, metrics = step(state, tokens)
        return state, metrics["loss"]

    chunk = jax.jit(lambda state, batches: jax.lax.scan(body, state, batches))
    eval_losses = jax.jit(lambda p: position_losses(model, p, val))

    def measure(step_no, p):
        scores = heads.induction_score(model, p, n=config.induction_n, batch=config.induction_batch, bos=bos,
                                       vocab_range=(0, probe_vocab), seed=123)
        losses = np.asarray(eval_losses(p))
        log["step"].append(step_no)
        log["induction"].append(np.stack([scores[l] for l in range(model.cfg.n_layer)]).tolist())
        log["icl"].append(icl_score(losses, config.early, config.late, config.window))
        log["val_loss"].append(float(losses.mean()))
        return losses

    log = {"step": [], "induction": [], "icl": [], "val_loss": [], "train_loss": []}
    state = new_state(params, optimizer, frozen=_common.is_mlp_path)
    first_losses = measure(0, params)
    t0 = time.perf_counter()
    for start in tqdm(range(0, config.steps, config.log_every), desc="induction", disable=not progress,
                      mininterval=2.0):
        n = min(config.log_every, config.steps - start)
        batches = make_rows(config, train_ids, rng, n * config.batch_size, t, bos, n_chars)
        state, losses = chunk(state, jnp.asarray(batches.reshape(n, config.batch_size, t)))
        log["train_loss"].append(float(np.mean(losses)))
        last_losses = measure(start + n, state["params"])
    return dict(model=model, params=state["params"], bos=bos, val=val, log=log, probe_vocab=probe_vocab,
                first_losses=first_losses, last_losses=last_losses, train_time_s=time.perf_counter() - t0)


def phase_change(log, width: float = 0.25) -> dict:
    """The window of `width` x the run over which the ICL score falls most, and that fall's
    share of the whole fall (from step 0 to the score's minimum): a phase change puts most
    of the fall into a short window."""
    steps, icl = np.asarray(log["step"]), np.asarray(log["icl"])
    total = icl[0] - icl.min()
    if len(steps) < 3 or total <= 0:
        return {"step": None, "window": None, "share_of_drop_in_window": None}
    span = width * steps[-1]
    best = (0.0, 0, 0)
    for i in range(len(steps)):
        j = int(np.searchsorted(steps, steps[i] + span, side="right")) - 1
        if j > i and icl[i] - icl[j] > best[0]:
            best = (icl[i] - icl[j], i, j)
    fall, i, j = best
    mid = icl[i] - fall / 2  # the step where the fall within the window is half done
    k = i + int(np.argmax(icl[i:j + 1] <= mid))
    return {"step": int(steps[k]), "window": [int(steps[i]), int(steps[j])],
            "share_of_drop_in_window": float(fall / total)}


def ablations(config, run) -> dict:
    """Mean-ablate the induction heads (and, as a control, the other layer-1 heads): their
    effect on the ICL score on text and on the loss of the repeated half of [BOS] + r + r."""
    model, params, val, n = run["model"], run["params"], run["val"], config.induction_n
    final = np.asarray(run["log"]["induction"][-1])  # [layer, head]
    last = model.cfg.n_layer - 1
    top = float(final[last].max())
    ind_heads = [(last, h) for h in range(model.cfg.n_head) if final[last, h] >= config.head_threshold * top]
    other = [(last, h) for h in range(model.cfg.n_head) if (last, h) not in ind_heads]
    rep = heads.repeated_tokens(run["probe_vocab"], n, 64, run["bos"], seed=7)
    icl = Partial(functools.partial(_icl_metric, config.early, config.late, config.window), val)
    second, first = NextTokenLoss(jnp.asarray(rep), n + 1), NextTokenLoss(jnp.asarray(rep), 1, n)

    def effect(which):
        if not which:
            return None
        kw = dict(heads=which, method="mean", reference=val)
        a_icl = ablation.ablate(model, params, val, icl, **kw)
        a_second = ablation.ablate(model, params, rep, second, **kw)
        a_first = ablation.ablate(model, params, rep, first, **kw)
        return {"heads": [f"L{l}H{h}" for l, h in which], "icl_before": a_icl.before, "icl_after": a_icl.after,
                "repeat_half_loss_before": a_second.before, "repeat_half_loss_after": a_second.after,
                "first_half_loss_before": a_first.before, "first_half_loss_after": a_first.after}

    out = {"induction_heads": effect(ind_heads), "other_heads": effect(other)}
    with_heads = out["induction_heads"]
    if with_heads:
        gain_before = with_heads["first_half_loss_before"] - with_heads["repeat_half_loss_before"]
        gain_after = with_heads["first_half_loss_after"] - with_heads["repeat_half_loss_after"]
        out["repeat_gain_removed"] = float(1 - gain_after / gain_before) if gain_before > 0 else None
        out["icl_gain_removed"] = (float(1 - with_heads["icl_after"] / with_heads["icl_before"])
                                   if with_heads["icl_before"] < 0 else None)
    return out


def summarize(config, run) -> dict:
    log = run["log"]
    ind = np.asarray(log["induction"])  # [evals, layer, head]
    last = ind.shape[1] - 1
    best = int(np.argmax(ind[-1, last]))
    return {
        "steps": config.steps, "context": run["model"].cfg.max_len, "early": config.early, "late": config.late,
        "icl_score_start": log["icl"][0], "icl_score_end": log["icl"][-1],
        "icl_score_min": float(np.min(log["icl"])),
        "best_head": f"L{last}H{best}", "best_head_induction_end": float(ind[-1, last, best]),
        "max_layer0_induction_end": float(ind[-1, :last].max()) if last else None,
        "phase_change": phase_change(log), "log": log,
        "position_loss_start": np.asarray(run["first_losses"]).tolist(),
        "position_loss_end": np.asarray(run["last_losses"]).tolist(),
        "train_time_s": round(run["train_time_s"], 1),
    }


def plot(results, out: str) -> list[str]:
    plt = plotting.pyplot()
    log = results["log"]
    steps, ind = np.asarray(log["step"]), np.asarray(log["induction"])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.6))
    for l in range(ind.shape[1]):
        for h in range(ind.shape[2]):
            ax1.plot(steps, ind[:, l, h], label=f"L{l}H{h}", ls="-" if l else ":")
    ax1.set(xlabel="step", ylabel="induction score", title="induction score of every head")
    ax1.legend(fontsize=7, ncol=2)
    ax2.plot(steps, log["icl"], color="C3")
    ax2.set(xlabel="step", ylabel="nats", title=f"ICL score: loss@{results['late']} - loss@{results['early']}")
    window = results["phase_change"]["window"]
    for ax in (ax1, ax2):
        if window is not None:
            ax.axvspan(*window, color="0.9", zorder=0)
    ax3.plot(results["position_loss_start"], color="0.6", label="step 0")
    ax3.plot(results["position_loss_end"], color="C0", label=f"step {results['steps']}")
    ax3.set(xlabel="token index", ylabel="val loss (nats)", title="loss by position in the context",
            ylim=(None, max(results["position_loss_end"]) + 0.5))
    ax3.legend()
    paths = [plotting.save(fig, os.path.join(out, "induction_phase.png"), dpi=90)]

    ab = results["ablation"]
    rows = [(k, ab[k]) for k in ("induction_heads", "other_heads") if ab.get(k)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(rows))
    ax1.bar(x - 0.2, [r["icl_before"] for _, r in rows], 0.4, label="intact", color="0.6")
    ax1.bar(x + 0.2, [r["icl_after"] for _, r in rows], 0.4, label="ablated")
    ax1.set_xticks(x, [f"{k.replace('_', ' ')}\n{','.join(r['heads'])}" for k, r in rows], fontsize=8)
    for i, (_, r) in enumerate(rows):
        ax1.annotate(f"{r['icl_after']:.3f}", (i + 0.2, r["icl_after"]), ha="center", va="top", fontsize=8)
    ax1.set(ylabel="ICL score (nats)", title="mean-ablation: ICL score on held-out rows")
    ax1.legend()
    labels = ["first half", "repeated half"]
    for i, (k, r) in enumerate(rows):
        ax2.bar(np.arange(2) + 0.27 * (i + 1) - 0.27, [r["first_half_loss_after"], r["repeat_half_loss_after"]], 0.27,
                label=f"{k.replace('_', ' ')} ablated")
    r0 = rows[0][1]
    ax2.bar(np.arange(2) - 0.27, [r0["first_half_loss_before"], r0["repeat_half_loss_before"]], 0.27,
            label="intact", color="0.6")
    ax2.set_xticks(np.arange(2), labels)
    ax2.set(ylabel="loss (nats)", title="[BOS] + r + r, r random symbols")
    ax2.legend(fontsize=8)
    paths.append(plotting.save(fig, os.path.join(out, "induction_ablation.png"), dpi=90))
    return paths


def experiment(config, out: str) -> dict:
    run = train(config)
    results = summarize(config, run)
    results["ablation"] = ablations(config, run)
    results["figures"] = plot(results, out)
    return results


def main(argv=None, variant: str | None = None) -> dict:
    results, out = _common.reproduce("induction", argv, __doc__, experiment, variant)
    ab = results["ablation"]
    print(f"ICL score {results['icl_score_start']:.3f} -> {results['icl_score_end']:.3f} nats; "
          f"{results['best_head']} induction score {results['best_head_induction_end']:.2f}; phase change at step "
          f"{results['phase_change']['step']}; ablating {ab['induction_heads']['heads'] if ab['induction_heads'] else []}: "
          f"ICL {ab['induction_heads']['icl_before']:.3f} -> {ab['induction_heads']['icl_after']:.3f}, "
          f"repeat-half loss {ab['induction_heads']['repeat_half_loss_before']:.3f} -> "
          f"{ab['induction_heads']['repeat_half_loss_after']:.3f}; {results['wall_time_s']} s -> {out}")
    return results
