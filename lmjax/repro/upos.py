"""Linear part-of-speech probes by layer on UD English EWT.

Published: linear probes on a trained language model's hidden states recover UPOS tags far
above the majority-class baseline, best in the lower-middle layers, and well above the same
probes on a randomly initialised model of the same architecture (Hewitt & Liang 2019;
Tenney et al. 2019; Belinkov 2022's survey: the random-init control is the baseline that
separates what training added from what the architecture and the token identities give).

lmjax (configs/repro/upos.py): a byte-level model (4 layers, d_model 128, 0.84M params,
context 128) trained for 1,500 steps of 16 x 128 bytes on tinyshakespeare (val 1.73
nats/byte = 2.50 bits/byte); probes at each word's last byte on the first 1,500 sentences
of EWT dev (17,952 words, a random 25% held out). Test accuracy by point (embeddings,
after layers 0-3): trained 0.444, 0.691, 0.712, 0.715, 0.712 (best after layer 2); the
same architecture at random init 0.433, 0.448, 0.456, 0.453, 0.455; majority class
(NOUN) 0.158; shuffled-label probes 0.147-0.154. At the embeddings (the last byte's
identity and position) trained and random agree; every layer of the trained model adds
~0.26 over the random one. Wall time 8 min 56 s for the command (training 1,500 steps
included) on the shared 2-core CPU under load (load average ~8); docs/repro/upos_by_layer.png.

Command: `lmjax repro upos --out runs/repro/upos` (figure upos_by_layer.png and
results.json; the trained model's checkpoint stays in OUT/lm); `upos:small` for the
test's setting. LMJAX_DATA names the folder holding tinyshakespeare/ and ud_english_ewt/
(or --config.lm.data.source=PATH --config.conllu=PATH).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from lmjax import plotting
from lmjax.config import validate
from lmjax.data import reference
from lmjax.errors import MissingFileError
from lmjax.interp import probes
from lmjax.repro import _common
from lmjax.train.loop import train as train_lm
from lmjax.train.steps import init_params


def lm_config(config):
    """The `lm` section, a training config (configs/repro/upos.py's schema), validated, with
    its data path resolved ($LMJAX_DATA/...)."""
    lm = config.lm.copy_and_resolve_references()
    validate(lm)
    lm.data.source = reference.resolve(lm.data.source, "--config.lm.data.source")
    return lm


def probe_model(model, params, tokenizer, config, conllu: str):
    feats, labels, names = probes.upos_dataset(model, params, tokenizer, conllu, which=config.which,
                                               max_sentences=config.max_sentences)
    result = probes.train_probes(feats, labels, names=names, steps=config.probe_steps, lr=config.probe_lr,
                                 l2=config.probe_l2, seed=config.seed)
    return result, labels


def run(config, out: str, progress: bool = True) -> dict:
    conllu = reference.resolve(config.conllu, "--config.conllu")
    if not os.path.isfile(conllu):
        raise MissingFileError(f"--config.conllu={conllu}: no such file; give UD English EWT's dev split "
                         "($LMJAX_DATA/ud_english_ewt/en_ewt-ud-dev.conllu)")
    lm_cfg = lm_config(config)  # every path checked before the training starts
    summary = train_lm(lm_cfg, os.path.join(os.path.abspath(out), "lm"), progress=progress, quiet=not progress)
    lm, state = summary["run"], summary["state"]
    model, tokenizer = lm.model, lm.tokenizer
    trained, labels = probe_model(model, state["params"], tokenizer, config, conllu)
    random_params = init_params(model, jax.random.key(config.seed + 1))
    control, _ = probe_model(model, random_params, tokenizer, config, conllu)
    counts = np.bincount(labels, minlength=len(probes.UPOS))
    return {
        "layers": trained.labels,
        "trained_test_acc": trained.test_acc, "trained_train_acc": trained.train_acc,
        "random_init_test_acc": control.test_acc,
        "shuffled_label_acc": trained.control_acc, "random_init_shuffled_label_acc": control.control_acc,
        "majority_baseline": trained.chance,
        "majority_tag": probes.UPOS[int(np.argmax(counts))],
        "n_words": int(len(labels)), "n_sentences": config.max_sentences,
        "tag_counts": {probes.UPOS[i]: int(n) for i, n in enumerate(counts) if n},
        "lm_val_loss": summary.get("val_loss"), "lm_val_bpb": summary.get("val_bpb"),
        "lm_params": summary.get("params"), "lm_steps": summary.get("end_step"),
        "best_layer": trained.labels[int(np.argmax(trained.test_acc))],
        "best_trained_acc": float(np.max(trained.test_acc)),
        "best_random_init_acc": float(np.max(control.test_acc)),
    }


def plot(results, out: str) -> list[str]:
    plt = plotting.pyplot()
    x = np.arange(len(results["layers"]))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(x, results["trained_test_acc"], "o-", label="trained model")
    ax.plot(x, results["random_init_test_acc"], "s--", label="random-init model")
    ax.plot(x, results["shuffled_label_acc"], ":", color="0.5", label="shuffled labels (trained)")
    ax.axhline(results["majority_baseline"], color="C3", lw=1,
               label=f"majority class ({results['majority_tag']})")
    ax.set_xticks(x, results["layers"], rotation=20, fontsize=8)
    ax.set(ylabel="UPOS test accuracy", ylim=(0, 1),
           title=f"linear UPOS probes, UD English EWT dev ({results['n_words']:,} words)")
    ax.legend(fontsize=8, loc="lower right")
    return [plotting.save(fig, os.path.join(out, "upos_by_layer.png"), dpi=90)]


def experiment(config, out: str) -> dict:
    results = run(config, out)
    results["figures"] = plot(results, out)
    return results


def main(argv=None, variant: str | None = None) -> dict:
    results, out = _common.reproduce("upos", argv, __doc__, experiment, variant)
    acc = lambda a: " ".join(f"{v:.3f}" for v in a)  # noqa: E731
    print(f"UPOS probe accuracy by layer ({', '.join(results['layers'])}): trained {acc(results['trained_test_acc'])}; "
          f"random init {acc(results['random_init_test_acc'])}; majority {results['majority_baseline']:.3f}; "
          f"{results['wall_time_s']} s -> {out}")
    return results
