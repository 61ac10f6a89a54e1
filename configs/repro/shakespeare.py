"""nanoGPT's shakespeare_char through the reproduction convention (lmjax/repro/shakespeare.py).

    export LMJAX_DATA=../shared/data   # the folder holding tinyshakespeare/input.txt
    lmjax repro shakespeare --out runs/repro/shakespeare           # CPU variant, ~2000 steps
    lmjax repro shakespeare:gpu --out runs/repro/shakespeare_gpu   # nanoGPT's GPU config

The config is configs/shakespeare_char.py's (`cpu` by default, `gpu` = its default, GPU
variant), a training config, so every `--config.SECTION.KEY=V` of `lmjax train` applies
(--config.data.source=PATH instead of LMJAX_DATA). `small`: the reduced setting of
tests/test_repro_b.py (a few steps, a tiny model).
"""
import os

from lmjax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ("cpu", "gpu", "small")


def get_config(arg=None):
    variant = arg or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; allowed: 'cpu' (default), 'gpu' or 'small'")
    c = load_config(os.path.join(ROOT, "configs", "shakespeare_char.py") + ("" if variant == "gpu" else ":cpu"))
    c.train.sample_tokens = 300
    if variant == "small":
        c.model.update(n_layer=1, d_model=32, n_head=2, max_len=32)
        c.train.update(steps=20, batch_size=8, log_every=5, eval_every=20, eval_batches=4, sample_tokens=0)
        c.optimizer.update(warmup_steps=5)
    return c
