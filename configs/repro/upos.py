"""Linear part-of-speech probes by layer on UD English EWT: `lmjax repro upos`.

A byte-level model trained briefly on tinyshakespeare (the `lm` section is an ordinary
lmjax training config, run with lmjax.train.loop), then linear UPOS probes on the residual
stream after each layer at each word's last byte, on the EWT dev split (read in place from
../shared/data); against the same architecture at its random initialisation, the
majority-class baseline and shuffled-label probes (Hewitt & Liang's control).

Variants: `small` (the test's setting: a 2-layer model, 150 steps, 150 sentences).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.lm = dict(
        model=dict(n_layer=4, d_model=128, n_head=4, max_len=128, dropout=0.0),
        data=dict(source="/work/shared/data/tinyshakespeare/input.txt", tokenizer="byte"),
        train=dict(steps=1500, batch_size=16, log_every=50, eval_every=500, eval_batches=10, sample_tokens=0),
        optimizer=dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1),
        checkpoint=dict(every=1500, keep=1),
    )
    c.conllu = "/work/shared/data/ud_english_ewt/en_ewt-ud-dev.conllu"
    c.max_sentences = 1500
    c.which = "last"  # the word's last sub-token (byte): the model has read the whole word there
    c.probe_steps = 300
    c.probe_lr = 0.05
    c.probe_l2 = 1e-4
    c.seed = 0
    if arg == "small":
        c.lm.model.update(n_layer=2, d_model=64, n_head=2, max_len=64)
        c.lm.train.update(steps=150, batch_size=16, eval_every=150, eval_batches=2)
        c.lm.checkpoint.update(every=150)
        c.max_sentences = 150
        c.probe_steps = 150
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: small")
    return c
