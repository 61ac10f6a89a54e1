"""Induction heads and the in-context-learning phase change (Olsson et al. 2022):
`lmjax repro induction`.

A 2-layer attention-only transformer (the MLPs held at zero: lmjax has no attention-only
switch, and a zero MLP writes nothing) trained on tinyshakespeare characters. Every
`log_every` steps the run measures each head's induction score on [BOS] + r + r (r
random characters) and the in-context-learning score on held-out text: the loss at
token `late` minus the loss at token `early` (Olsson et al.: token 500 minus token 50 of
a long context; here 250 minus 25 of a 256 context, each the mean over +-`window`
positions).

Variants: `lmjax repro induction` (in-context bigrams, context 65), `induction:small` (the
test's setting: context 33, 800 steps), `induction:text` (tinyshakespeare characters: needs
LMJAX_DATA, the folder holding tinyshakespeare/, or --config.data=PATH). The file declares
its own schema (`defaults`, lmjax.config.load_config): `--config.KEY=VALUE` may set any key
below, parsed to its type.
"""
import ml_collections

from lmjax.model import ModelConfig

REPEAT_SOURCES = ("text", "random", "bigram")
EVAL_DATA = ("text", "train")


def defaults():
    c = ml_collections.ConfigDict()
    # the text (the `text` variant, and the filler of text rows): a file, "" = the embedded
    # corpus (stdlib); $LMJAX_DATA is lmjax.data.reference's folder of reference data
    c.data = "$LMJAX_DATA/tinyshakespeare/input.txt"
    c.val_fraction = 0.1
    # A quarter of the training rows repeat a text chunk of random length (the copy's offset
    # varies, so only an induction circuit predicts it); the ICL score is measured on plain
    # held-out text without repeats.
    c.repeat_fraction = 0.25  # share of rows that are [BOS] + s + s + filler
    c.repeat_source = "text"  # s from text windows, "random" symbols, or "bigram" (in-context bigrams)
    c.eval_data = "text"  # ICL score on plain held-out text, or "train": rows like the training mix
    c.repeat_vocab = 0  # random / bigram rows: symbols 0..repeat_vocab-1 (0 = all characters)
    c.seed = 0
    c.model = dict(n_layer=2, d_model=128, n_head=4, d_mlp=4, max_len=256, pos_embedding="learned")
    c.optimizer = dict(lr=3e-3, end_lr=3e-4, schedule="cosine", warmup_steps=50, b2=0.98, weight_decay=0.0,
                       clip_norm=1.0)
    c.steps = 2000
    c.batch_size = 16
    c.log_every = 50
    c.eval_batch = 128  # held-out rows for the in-context-learning score
    c.early, c.late, c.window = 25, 250, 5
    c.induction_n = 100  # length of r in the [BOS] + r + r probe
    c.induction_batch = 16
    c.head_threshold = 0.3  # heads scoring above this share of the top score count as induction heads
    return c


def get_config(arg=None):
    c = defaults()
    # Default: in-context bigrams over 12 symbols (no text), context 65. On tinyshakespeare
    # characters (the `text` variant: 25% of rows repeating a text chunk, context 256,
    # d_model 128) no induction head had formed after 2,000 steps (5.5 min): measured.
    if arg in (None, "", "small"):
        c.repeat_fraction, c.repeat_source, c.repeat_vocab, c.eval_data = 1.0, "bigram", 12, "train"
        c.model.update(d_model=64, n_head=2, max_len=65)
        c.steps, c.log_every, c.batch_size, c.eval_batch = 1500, 50, 64, 256
        c.early, c.late, c.window = 6, 60, 3
        c.induction_n = 32
        c.optimizer.update(lr=3e-3, end_lr=3e-3, schedule="constant", warmup_steps=0, clip_norm=0.0)
    if arg == "small":
        # context 33: the circuit forms at step ~400-500 (seeds 0, 1, 2; at lr 1e-2 or over
        # 24 symbols it often had not formed by step 1500)
        c.model.update(max_len=33)
        c.steps, c.eval_batch = 800, 128
        c.early, c.late, c.window = 3, 29, 2
        c.induction_n = 16
    elif arg not in (None, "", "text"):
        raise ValueError(f"unknown variant {arg!r}; allowed: small, text")
    return c


def problems(c) -> list[str]:
    t = c.model.max_len
    out = ModelConfig(vocab_size=max(c.repeat_vocab, 1) + 1, **c.model).problems()
    checks = [
        (c.repeat_source in REPEAT_SOURCES, "repeat_source", f"{c.repeat_source!r} not in {REPEAT_SOURCES}"),
        (c.eval_data in EVAL_DATA, "eval_data", f"{c.eval_data!r} not in {EVAL_DATA} (plain held-out text, or rows "
                                                "like the training mix)"),
        (0 <= c.repeat_fraction <= 1, "repeat_fraction", f"must be in [0, 1], got {c.repeat_fraction}"),
        (0 < c.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {c.val_fraction}"),
        (0 <= c.early < c.late < t - 1, "early/late", f"need 0 <= early < late < model.max_len - 1; got early="
                                                      f"{c.early}, late={c.late}, max_len={t}"),
        (0 < 2 * c.induction_n + 1 <= t, "induction_n", f"{c.induction_n}: [BOS] + r + r must fit in "
                                                        f"model.max_len={t}"),
        (c.steps > 0 and c.batch_size > 0 and c.log_every > 0 and c.eval_batch > 0 and c.induction_batch > 0,
         "steps/batch_size/log_every/eval_batch/induction_batch", "must be positive"),
    ]
    return out + [f"{field}: {msg}" for ok, field, msg in checks if not ok]
