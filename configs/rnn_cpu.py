"""Classical baselines on the embedded corpus at the quickstart's size: "RNNs and CNNs on
text" as a config switch.

    lmjax train --config configs/rnn_cpu.py --workdir runs/lstm_cpu          # LSTM
    lmjax train --config configs/rnn_cpu.py:gru --workdir runs/gru_cpu       # GRU
    lmjax train --config configs/rnn_cpu.py:conv --workdir runs/conv_cpu     # gated causal CNN

Three blocks, each a mixer (LSTM / GRU with a 128-wide state, or a gated causal
convolution of width 4, Dauphin et al. 2017) then an MLP; no position embedding (the
recurrence or the convolution orders the tokens). 0.87M / 0.78M / 0.87M parameters (the
quickstart: 0.84M), the same 1000 x 16 x 128 bytes and recipe.

Expect, after 1000 steps (val loss in nats/byte = bits per byte; tokens/s; wall time of
the command with the tokenized corpus cached), measured 2026-11-26 on the shared 2-core
AMD EPYC, all with a sample that looks like Python:

    lstm   1.45 = 2.09   ~16,000 tokens/s   2.3 min
    gru    1.43 = 2.06   ~21,000 tokens/s   1.8 min
    conv   1.48 = 2.14   ~30,000 tokens/s   1.3 min

(the quickstart's transformer: 1.73 = 2.49 in ~2.5 min; configs/mamba_cpu.py: 1.30 = 1.88).
"""
import ml_collections


def get_config(arg=None):
    mixer = arg or "lstm"
    if mixer not in ("lstm", "gru", "conv"):
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (lstm), 'gru' or 'conv'")
    c = ml_collections.ConfigDict()
    c.model = dict(mixer=mixer, n_layer=3, d_model=128, pos_embedding="none", max_len=128, conv_width=4)
    c.data = dict(source="stdlib", tokenizer="byte")
    c.train = dict(steps=1000, batch_size=16, log_every=20, eval_every=250, eval_batches=10,
                   sample_tokens=240, sample_prompt="def ")
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=250, keep=2)
    return c
