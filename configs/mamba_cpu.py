"""Mamba on the embedded corpus at the quickstart's size: the same tokens, parameters and recipe.

Seven Mamba blocks (the paper's block: RMSNorm then the mixer, no MLP; d_model 128,
d_inner 256, d_state 16) hold about the parameters of the quickstart's four transformer
blocks (0.85M vs 0.84M), and see the same 1000 x 16 x 128 bytes of the standard library:

    lmjax train --config configs/mamba_cpu.py --workdir runs/mamba_cpu

Expect: val loss 1.30 nats/byte = 1.88 bits per byte after 1000 steps (the quickstart's
transformer: 1.73 = 2.49), ~8,000 tokens/s, 5 min for the command (tokenized corpus
cached; 8.5 min and ~3,900 tokens/s in a run while other jobs loaded the machine), and a
sample that looks like Python. Measured 2026-11-26 on the shared 2-core AMD EPYC. No
position embedding: the recurrence orders the tokens.
"""
import ml_collections


def get_config(arg=None):
    if arg:
        raise ValueError(f"unknown variant {arg!r}; this config has none")
    c = ml_collections.ConfigDict()
    c.model = dict(mixer="mamba", n_layer=7, d_model=128, mamba_mlp=False, norm="rmsnorm", use_bias=False,
                   pos_embedding="none", max_len=128, d_state=16, d_conv=4, expand=2)
    c.data = dict(source="stdlib", tokenizer="byte")
    c.train = dict(steps=1000, batch_size=16, log_every=20, eval_every=250, eval_batches=10,
                   sample_tokens=240, sample_prompt="def ")
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=250, keep=2)
    return c
