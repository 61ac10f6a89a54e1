"""Multi-query associative recall (Arora et al. 2023, "Zoology"): attention vs Mamba vs hybrid.

    lmjax repro recall --out runs/repro/recall
    lmjax repro recall --variant small --out /tmp/recall_small   # the test's setting

Three two-block models at d_model 64 (a conv + attention model in Zoology's layout, a
Mamba model with a small state, d_state 4 and expand 1, and a Mamba + attention hybrid)
learn MQAR on a mixture of 1-32 key-value pairs and are scored on held-out rows at each
count in task.eval_pairs. Expect (12 min on the shared 2-core CPU, 2400 steps): ~0.98-0.99
at 2-4 pairs for the two models with attention, 0.82-0.91 at 32; Mamba 0.45 at 2 pairs
falling to 0.04 at 32 (chance 1/128). Full table: lmjax/repro/recall.py's docstring.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    # Token ids: 0 = padding, keys 1 .. vocab/2 - 1, values vocab/2 .. vocab - 1.
    c.task = dict(vocab_size=256, train_pairs=(1, 2, 4, 8, 16, 32), eval_pairs=(2, 4, 8, 16, 32),
                  eval_sequences=256)
    common = dict(n_layer=2, d_model=64, n_head=2, dropout=0.0, mixer="attention", pos_embedding="none")
    # A small Mamba state: d_state 4 x d_inner 64 = 256 numbers per layer. The associative scan
    # is the faster one at this size.
    ssm = dict(d_state=4, expand=1, d_conv=4, ssm_scan="associative")
    c.models = dict(
        transformer=dict(common, layer_pattern="CA", conv_width=4),  # Zoology's layout: short conv, then attention
        mamba=dict(common, layer_pattern="MM", **ssm),
        hybrid=dict(common, layer_pattern="MA", **ssm),
    )
    c.train = dict(steps=2400, batch_size=32, lr=3e-3, end_lr=3e-4, warmup_steps=50, weight_decay=0.1, seed=0,
                   log_every=25)
    if arg == "small":
        c.task.update(vocab_size=64, train_pairs=(1, 2, 4, 8), eval_pairs=(4, 8), eval_sequences=128)
        c.train.update(steps=500, warmup_steps=20)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (full) or 'small'")
    return c
