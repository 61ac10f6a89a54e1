"""Multi-query associative recall (Arora et al. 2023, "Zoology"): attention vs Mamba vs hybrid.

    lmjax repro recall --out runs/repro/recall
    lmjax repro recall:small --out /tmp/recall_small   # the test's setting

Three two-block models at d_model 64 (a conv + attention model in Zoology's layout, a
Mamba model with a small state, d_state 4 and expand 1, and a Mamba + attention hybrid)
learn MQAR on a mixture of 1-32 key-value pairs and are scored on held-out rows at each
count in task.eval_pairs. Expect (12 min on the shared 2-core CPU, 2400 steps): ~0.98-0.99
at 2-4 pairs for the two models with attention, 0.82-0.91 at 32; Mamba 0.45 at 2 pairs
falling to 0.04 at 32 (chance 1/128). Full table: lmjax/repro/recall.py's docstring.

The file declares its own schema (`defaults`, lmjax.config.load_config): `--config.KEY=VALUE`
may set any key below, parsed to its type (e.g. --config.models.mamba.d_state=8).
"""
import ml_collections

from lmjax.model import ModelConfig


def defaults():
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
    return c


def get_config(arg=None):
    c = defaults()
    if arg == "small":
        c.task.update(vocab_size=64, train_pairs=(1, 2, 4, 8), eval_pairs=(4, 8), eval_sequences=128)
        c.train.update(steps=500, warmup_steps=20)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (full) or 'small'")
    return c


def problems(c) -> list[str]:
    t = c.task
    out = []
    pairs = tuple(t.train_pairs) + tuple(t.eval_pairs)
    keys = t.vocab_size // 2 - 1  # ids 1 .. vocab/2 - 1
    if not pairs or min(pairs) < 1 or max(pairs) > keys:
        out.append(f"task.train_pairs/eval_pairs: every count must be in [1, {keys}] (the keys that "
                   f"task.vocab_size={t.vocab_size} holds), got {pairs}")
    else:
        for name, m in c.models.items():
            cfg = ModelConfig.from_dict(dict(m, vocab_size=t.vocab_size, max_len=4 * max(pairs)))
            out += [f"models.{name}: {p}" for p in cfg.problems()]
    tr = c.train
    if not (tr.steps > 0 and tr.batch_size > 0 and tr.log_every > 0 and t.eval_sequences > 0):
        out.append("train.steps/batch_size/log_every, task.eval_sequences: must be positive")
    if not 0 <= tr.end_lr <= tr.lr:
        out.append(f"train.end_lr: must be in [0, train.lr], got {tr.end_lr}")
    return out
