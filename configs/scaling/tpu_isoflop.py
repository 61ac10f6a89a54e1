r"""A pod-scale IsoFLOP sweep (TPU v5e-16): plan it, then emit one launch command per run.

    lmjax scaling sweep --config configs/scaling/tpu_isoflop.py --isoflop 1e19,3e19,1e20,3e20 \
        --sizes_per_budget 5 --out sweep.json
    lmjax scaling run sweep.json --workdir gs://BUCKET/isoflop --emit \
        --launcher "python launch/tpu_pod.py run --name isoflop --zone us-west4-a --accelerator_type v5litepod-16 --spot"

Each emitted line runs one point of the sweep on the pod (launch/README.md: create or
reuse the slice, install, train on all workers, restart after preemption); collect each
run's metrics.jsonl into a CSV of N, D, loss and fit it with `lmjax scaling fit`.
GPT-2 BPE-sized sentencepiece vocabulary on a corpus in the bucket; FSDP over the slice.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(n_layer=12, d_model=768, n_head=12, max_len=1024, dropout=0.0, use_bias=False,
                   norm="rmsnorm", pos_embedding="rope", mlp="swiglu", tie_embeddings=False,
                   dtype="bfloat16", scan_layers=True, remat="dots")
    c.data = dict(source="gs://BUCKET/corpus/*.txt", tokenizer="sentencepiece", spm_vocab_size=32768,
                  cache_dir="gs://BUCKET/lmjax-cache")
    c.train = dict(steps=10000, batch_size=256, log_every=50, eval_every=1000, eval_batches=50, sample_tokens=0)
    c.optimizer = dict(lr=3e-4, end_lr=3e-5, warmup_steps=1000, b1=0.9, b2=0.95, weight_decay=0.1)
    c.checkpoint = dict(every=1000, keep=2)
    c.mesh = dict(preset="fsdp")
    return c
