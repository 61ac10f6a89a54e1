"""A CPU-scale IsoFLOP sweep on tinyshakespeare (character level): Chinchilla approach 2 and 3.

The base run of every point of the sweep; `lmjax scaling sweep` sets each run's depth,
width and steps (shape rule: lmjax/scaling/sweeps.py). Three budgets x four sizes, about
an hour on 2 CPU cores:

    lmjax scaling sweep --config configs/scaling/cpu_isoflop.py --isoflop 3e12,1e13,3e13 \
        --out runs/isoflop/sweep.json
    lmjax scaling run runs/isoflop/sweep.json --workdir runs/isoflop
    lmjax scaling fit runs/isoflop/runs.csv --approach 2 --loss best_val_loss --out runs/isoflop/fit2.json --plots runs/isoflop
    lmjax scaling fit runs/isoflop/runs.csv --approach 3 --loss best_val_loss --out runs/isoflop/fit3.json --plots runs/isoflop

Expected: IsoFLOP parabolas with interior minima and an optimal tokens-per-parameter
ratio to compare with Chinchilla's ~20 (not yet measured: see the issue's closing note).
N counts block matrices (12 n_layer d_model^2), D the training tokens.
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(n_layer=2, d_model=64, n_head=2, max_len=128, dropout=0.0, use_bias=False)
    c.data = dict(source="../shared/data/tinyshakespeare/input.txt", tokenizer="char", val_fraction=0.1)
    c.train = dict(steps=1000, batch_size=16, log_every=50, eval_every=1_000_000, eval_batches=0,
                   sample_tokens=0)  # eval_every beyond the run: one whole-split eval at the end
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b1=0.9, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=500, keep=1)
    return c
