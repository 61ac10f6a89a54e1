"""Linear part-of-speech probes by layer on UD English EWT: `lmjax repro upos`.

A byte-level model trained briefly on tinyshakespeare (the `lm` section is an ordinary
lmjax training config, run with lmjax.train.loop), then linear UPOS probes on the residual
stream after each layer at each word's last byte, on the EWT dev split; against the same
architecture at its random initialisation, the majority-class baseline and shuffled-label
probes (Hewitt & Liang's control). Both data files are reference data that lmjax does not
ship: LMJAX_DATA names the folder holding tinyshakespeare/ and ud_english_ewt/ (or give
--config.lm.data.source=PATH and --config.conllu=PATH).

Variants: `lmjax repro upos:small` (the test's setting: a 2-layer model, 150 steps, 150
sentences). The file declares its own schema (`defaults`, lmjax.config.load_config): any
key below may be overridden, and `lm` has every key of a training config
(--config.lm.model.n_layer=2, --config.lm.train.seed=1, ...).
"""
import ml_collections

from lmjax.config import config_problems, default_config, merge

WHICH = ("last", "first")  # lmjax.interp.probes.align_words


def defaults():
    c = ml_collections.ConfigDict()
    c.lm = merge(default_config(), dict(
        model=dict(n_layer=4, d_model=128, n_head=4, max_len=128, dropout=0.0),
        data=dict(source="$LMJAX_DATA/tinyshakespeare/input.txt", tokenizer="byte"),
        train=dict(steps=1500, batch_size=16, log_every=50, eval_every=500, eval_batches=10, sample_tokens=0),
        optimizer=dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1),
        checkpoint=dict(every=1500, keep=1),
    ), where="configs/repro/upos.py (lm)")
    c.conllu = "$LMJAX_DATA/ud_english_ewt/en_ewt-ud-dev.conllu"
    c.max_sentences = 1500
    c.which = "last"  # the word's last sub-token (byte): the model has read the whole word there
    c.probe_steps = 300
    c.probe_lr = 0.05
    c.probe_l2 = 1e-4
    c.seed = 0
    return c


def get_config(arg=None):
    c = defaults()
    if arg == "small":
        c.lm.model.update(n_layer=2, d_model=64, n_head=2, max_len=64)
        c.lm.train.update(steps=150, batch_size=16, eval_every=150, eval_batches=2)
        c.lm.checkpoint.update(every=150)
        c.max_sentences = 150
        c.probe_steps = 150
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: small")
    return c


def problems(c) -> list[str]:
    out = [f"lm.{p}" for p in config_problems(c.lm)]
    if c.which not in WHICH:
        out.append(f"which: {c.which!r} not in {WHICH}")
    if not (c.max_sentences > 0 and c.probe_steps > 0 and c.probe_lr > 0 and c.probe_l2 >= 0):
        out.append("max_sentences/probe_steps/probe_lr: must be positive, probe_l2 >= 0")
    return out
