"""nanoGPT's shakespeare_char through the reproduction convention (lmjax/repro/shakespeare.py).

    lmjax repro shakespeare --out runs/repro/shakespeare                  # CPU variant, ~2000 steps
    lmjax repro shakespeare --variant gpu --out runs/repro/shakespeare_gpu  # nanoGPT's GPU config

The config is configs/shakespeare_char.py's (`cpu` by default, `gpu` = its default, GPU
variant) as an lmjax training config, so every `--config.SECTION.KEY=V` of `lmjax train`
applies. The data path is resolved against the project root (../shared/data/...). `small`:
the reduced setting of tests/test_repro_b.py (a few steps, a tiny model).
"""
import importlib.util
import os

from lmjax.config import default_config, merge

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(arg=None):
    variant = arg or "cpu"
    if variant not in ("cpu", "gpu", "small"):
        raise ValueError(f"unknown variant {arg!r}; allowed: 'cpu' (default), 'gpu' or 'small'")
    path = os.path.join(ROOT, "configs", "shakespeare_char.py")
    spec = importlib.util.spec_from_file_location("lmjax_shakespeare_char", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(None if variant == "gpu" else "cpu")
    source = c.data.source
    if not os.path.isabs(source):
        c.data.source = os.path.normpath(os.path.join(ROOT, source))
    c.train.sample_tokens = 300
    if variant == "small":
        c.model.update(n_layer=1, d_model=32, n_head=2, max_len=32)
        c.train.update(steps=20, batch_size=8, log_every=5, eval_every=20, eval_batches=4, sample_tokens=0)
        c.optimizer.update(warmup_steps=5)
    # Over lmjax's defaults, so that every key of `lmjax train` (train.seed, ...) can be overridden.
    return merge(default_config(), c.to_dict(), where=path)
