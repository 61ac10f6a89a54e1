"""Multi-query associative recall (Arora et al. 2023, "Zoology"): attention vs Mamba vs hybrid.

    lmjax repro recall --out runs/repro/recall

Three two-block models of about the same size (d_model 64) learn MQAR on a mixture of
key-value counts, then are scored on held-out sequences at each count in task.eval_pairs.
The Mamba model's state is kept small (d_state 1, expand 1: 64 numbers per layer) so that
recall capacity, not training, is what limits it. `:small` is the reduced setting that
tests/test_repro_b.py runs. The results (measured on the shared 2-core CPU) are in the
docstring of lmjax/repro/recall.py.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    # Token ids: 0 = padding, keys 1 .. vocab/2 - 1, values vocab/2 .. vocab - 1.
    c.task = dict(vocab_size=256, train_pairs=(1, 2, 4, 8, 16, 32), eval_pairs=(2, 4, 8, 16, 32),
                  eval_sequences=256)
    common = dict(n_layer=2, d_model=64, n_head=2, dropout=0.0, mixer="attention")
    c.models = dict(
        transformer=dict(common, layer_pattern="CA", pos_embedding="none", conv_width=4),
        mamba=dict(common, layer_pattern="MM", pos_embedding="none", d_state=4, expand=1, d_conv=4, ssm_scan="associative"),
        hybrid=dict(common, layer_pattern="MA", pos_embedding="none", d_state=4, expand=1, d_conv=4, ssm_scan="associative"),
    )
    c.train = dict(steps=800, batch_size=32, lr=3e-3, end_lr=3e-4, warmup_steps=50, weight_decay=0.1, seed=0,
                   log_every=25)
    if arg == "small":
        c.task.update(vocab_size=64, train_pairs=(1, 2, 4, 8), eval_pairs=(4, 8), eval_sequences=128)
        for m in c.models.values():
            m.update(d_model=32)
        c.train.update(steps=300, warmup_steps=20)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (full) or 'small'")
    return c
