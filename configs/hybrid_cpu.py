"""A Mamba + attention hybrid on the embedded corpus, at the quickstart's size.

Six blocks, "MMMMMA": five Mamba blocks (no MLP) then one attention block with its MLP
(hybrids in practice use about one attention layer per 6-8 SSM layers: Jamba 1:7). No
position embedding at all: the Mamba blocks before the attention layer already order the
tokens. 0.82M parameters (the quickstart: 0.84M), the same 1000 x 16 x 128 bytes:

    lmjax train --config configs/hybrid_cpu.py --workdir runs/hybrid_cpu

Expect: val loss 1.32 nats/byte = 1.90 bits per byte after 1000 steps (the quickstart's
transformer: 1.73 = 2.49; configs/mamba_cpu.py: 1.30 = 1.88), ~10,000 tokens/s, 4 min for
the command (tokenized corpus cached), a sample that looks like Python. Measured
2026-11-26 on the shared 2-core AMD EPYC. Variants: `:jamba` (8 blocks "MMMAMMMM", Jamba's
1:7 ratio and its attention position; 1.0M parameters; not run).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(layer_pattern="MMMMMA", n_layer=6, d_model=128, n_head=4, mamba_mlp=False,
                   pos_embedding="none", max_len=128)
    c.data = dict(source="stdlib", tokenizer="byte")
    c.train = dict(steps=1000, batch_size=16, log_every=20, eval_every=250, eval_batches=10,
                   sample_tokens=240, sample_prompt="def ")
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=250, keep=2)
    if arg == "jamba":
        c.model.update(layer_pattern="MMMAMMMM", n_layer=8)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' or 'jamba'")
    return c
