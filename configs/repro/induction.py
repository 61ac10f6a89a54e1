"""Induction heads and the in-context-learning phase change (Olsson et al. 2022):
`lmjax repro induction`.

A 2-layer attention-only transformer (the MLPs held at zero: lmjax has no attention-only
switch, and a zero MLP writes nothing) trained on tinyshakespeare characters. Every
`log_every` steps the run measures each head's induction score on [BOS] + r + r (r
random characters) and the in-context-learning score on held-out text: the loss at
token `late` minus the loss at token `early` (Olsson et al.: token 500 minus token 50 of
a long context; here 250 minus 25 of a 256 context, each the mean over +-`window`
positions).

Variants: `small` (the test's setting: context 64, a few hundred steps).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = "/work/shared/data/tinyshakespeare/input.txt"  # "" = the embedded corpus (stdlib)
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
