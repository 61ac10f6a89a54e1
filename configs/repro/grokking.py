"""Grokking modular addition (Power et al. 2022; Nanda et al. 2023): `lmjax repro grokking`.

Nanda et al.'s setting: a 1-layer transformer (d_model 128, 4 heads, d_mlp 512, ReLU) on
"a b =" -> (a + b) mod 113, 30% of the 113^2 pairs for training, full batch, AdamW
lr 1e-3, weight decay 1.0, betas (0.9, 0.98). lmjax's block keeps its LayerNorms (it has
no norm-free option).

Variants: `lmjax repro grokking:small` (the test's setting: p = 23, a narrower model,
fewer steps). The file declares its own schema (`defaults`, lmjax.config.load_config):
`--config.KEY=VALUE` may set any key below, parsed to its type.
"""
import ml_collections

from lmjax.model import ModelConfig


def defaults():
    c = ml_collections.ConfigDict()
    c.p = 113  # the modulus; tokens 0..p-1 are numbers, p is "="
    c.train_fraction = 0.3
    c.seed = 0
    # Half Nanda et al.'s width (d_model 128, d_mlp 512) and twice the learning rate: a
    # full-batch step at their size took 0.34 s on the shared 2-core CPU, and grokking at
    # lr 1e-3 takes ~10k steps. Override model.d_model=128 model.d_mlp=512 optimizer.lr=1e-3
    # steps=15000 for their setting.
    c.model = dict(n_layer=1, d_model=64, n_head=4, d_mlp=256, mlp="relu", tie_embeddings=False,
                   init_std=0.02)
    c.optimizer = dict(lr=2e-3, weight_decay=1.0, b1=0.9, b2=0.98, warmup_steps=10)
    c.steps = 2000
    c.eval_every = 50  # test accuracy is measured once per compiled chunk of this many steps
    c.key_frequencies = 6  # how many top frequencies the spectrum summary counts
    return c


def get_config(arg=None):
    c = defaults()
    if arg == "small":
        c.p = 23
        c.model.update(d_model=32, n_head=4, d_mlp=128)
        c.train_fraction = 0.5
        c.steps = 1200
        c.eval_every = 50
        c.key_frequencies = 3
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: small")
    return c


def problems(c) -> list[str]:
    out = ModelConfig(vocab_size=c.p + 1, max_len=3, **c.model).problems()
    o = c.optimizer
    checks = [
        (c.p >= 2, "p", f"must be >= 2, got {c.p}"),
        (0 < c.train_fraction < 1, "train_fraction", f"must be in (0, 1), got {c.train_fraction}"),
        (c.steps > 0 and c.eval_every > 0, "steps/eval_every", f"must be positive, got {c.steps}, {c.eval_every}"),
        (1 <= c.key_frequencies <= c.p // 2, "key_frequencies", f"must be in [1, p // 2 = {c.p // 2}], got "
                                                                f"{c.key_frequencies}"),
        (o.lr > 0 and o.weight_decay >= 0 and o.warmup_steps >= 0, "optimizer.lr/weight_decay/warmup_steps",
         "lr must be > 0, weight_decay and warmup_steps >= 0"),
        (0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optimizer.b1/b2", f"must be in [0, 1), got {o.b1}, {o.b2}"),
    ]
    return out + [f"{field}: {msg}" for ok, field, msg in checks if not ok]
