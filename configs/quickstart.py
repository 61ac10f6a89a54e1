"""Quickstart: a small byte-level transformer on the embedded default corpus.

The corpus is the source of the running Python's standard library: real text, present on
every machine, no download. Two minutes on a 2-core laptop CPU.

    lmjax train --config configs/quickstart.py --workdir runs/quickstart

Expect: train loss falling from ~5.6 (ln 259, uniform over bytes) to ~1.6 nats/byte, val
bits per byte ~2.3, and a sample that looks like Python (measured on a 2-core AMD EPYC,
see the README for the current figures).
"""
import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.model = dict(n_layer=4, d_model=128, n_head=4, max_len=128, dropout=0.0)
    c.data = dict(source="stdlib", tokenizer="byte")
    c.train = dict(steps=1000, batch_size=16, log_every=20, eval_every=250, eval_batches=10,
                   sample_tokens=240, sample_prompt="def ")
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=250, keep=2)
    return c
