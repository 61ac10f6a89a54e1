"""nanoGPT's shakespeare_char: a character-level transformer on tinyshakespeare.

The data is not ours and lives outside the tree: LMJAX_DATA names the folder that holds
tinyshakespeare/ (in this project's checkout, ../shared/data), or pass
--config.data.source=PATH/input.txt instead:

    export LMJAX_DATA=../shared/data
    lmjax train --config configs/shakespeare_char.py:cpu --workdir runs/shakespeare_cpu
    lmjax train --config configs/shakespeare_char.py --workdir runs/shakespeare

Variants (nanoGPT's settings; first 90% of the characters train, last 10% validate):
- default (GPU): 6 layers, 6 heads, d_model 384, context 256, batch 64, dropout 0.2,
  lr 1e-3 -> 1e-4 over 5000 steps, warmup 100, beta2 0.99, bfloat16 compute. nanoGPT reaches a best val
  loss of 1.4697 on one A100.
- `:cpu`: 4 layers, 4 heads, d_model 128, context 64, batch 12, 2000 steps, lr decay to
  2000, no dropout. nanoGPT reaches ~1.88 (its own estimate; 1.898 over the whole val
  split; bench/README.md has the timings).
  lmjax: docs/reproductions.md and docs/measured.md have its measured val loss and wall time.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(n_layer=6, d_model=384, n_head=6, max_len=256, dropout=0.2, use_bias=False,
                   tie_embeddings=True, dtype="bfloat16")  # nanoGPT autocasts to bf16 on GPU
    c.data = dict(source="$LMJAX_DATA/tinyshakespeare/input.txt", tokenizer="char", val_fraction=0.1)
    c.train = dict(steps=5000, batch_size=64, log_every=10, eval_every=250, eval_batches=200,
                   sample_tokens=500, sample_prompt="\n")
    c.optimizer = dict(lr=1e-3, end_lr=1e-4, warmup_steps=100, b1=0.9, b2=0.99,
                       weight_decay=0.1, clip_norm=1.0)
    c.checkpoint = dict(every=1000, keep=2)
    if arg == "cpu":
        c.model.update(n_layer=4, n_head=4, d_model=128, max_len=64, dropout=0.0, dtype="float32")
        c.train.update(steps=2000, batch_size=12, eval_every=250, eval_batches=0)  # 0 = the whole val split
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (GPU) or 'cpu'")
    return c
