r"""Mamba-130M: the paper's smallest language model shape (Gu & Dao 2023, GPT-3-small sized).

24 Mamba blocks without MLPs (two Mamba blocks stand for one attention + MLP layer),
d_model 768, d_inner 1536, d_state 16, d_conv 4, dt_rank 48, RMSNorm, no biases, tied
embeddings, vocabulary 50280 (GPT-NeoX's 50277 padded to a multiple of 8): 129.1M
parameters (lmjax.model.accounting.param_count). Context 2048, batch 256 x 2048 = 0.5M
tokens per step, 4800 steps = 2.5B tokens (about 20 tokens per parameter), AdamW
(b2 0.95, weight decay 0.1 but not on A_log and D, clip 1.0), cosine to 1e-5. The peak
learning rate, 1.5e-3, is a conventional choice for this size, not the paper's (its
appendix gives its recipe). bfloat16 compute; the selective scan always runs in float32.

    lmjax train --config configs/mamba_130m.py --workdir gs://BUCKET/mamba_130m \
        --config.data.source=PATH_TO_TEXT --config.mesh.preset=fsdp

An accelerator job: on a 2-core CPU one step takes hours. The tokenizer is a 32k
SentencePiece BPE trained on the data (the embedding keeps the paper's 50280 rows; ids
beyond the tokenizer's are never used). The full-size run has not been measured, so no
loss or time is stated for it. `:tiny` shrinks everything (2 x 64, byte tokens, 50 steps) to check the
config runs end to end on a CPU: 11 s for the command (val loss 3.33 nats/byte).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(mixer="mamba", n_layer=24, d_model=768, mamba_mlp=False, norm="rmsnorm", use_bias=False,
                   tie_embeddings=True, pos_embedding="none", vocab_size=50280, max_len=2048, d_state=16,
                   d_conv=4, expand=2, dtype="bfloat16", remat="dots", scan_layers=True)
    c.data = dict(source="stdlib", tokenizer="sentencepiece", spm_vocab_size=32000)
    c.train = dict(steps=4800, batch_size=256, log_every=10, eval_every=500, eval_batches=20,
                   sample_tokens=200, sample_prompt="def ")
    c.optimizer = dict(lr=1.5e-3, end_lr=1e-5, warmup_steps=250, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
    c.checkpoint = dict(every=500, keep=3)
    if arg == "tiny":
        c.model.update(n_layer=2, d_model=64, max_len=128, vocab_size=0, dtype="float32", remat="none")
        c.data.update(tokenizer="byte")
        c.train.update(steps=50, batch_size=8, eval_every=25, eval_batches=2, sample_tokens=40)
        c.optimizer.update(lr=3e-3, warmup_steps=10)
        c.checkpoint.update(every=50)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: '' (the paper's shape) or 'tiny'")
    return c
