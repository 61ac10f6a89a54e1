r"""A CPU-scale IsoFLOP sweep on tinyshakespeare (character level): Chinchilla approaches 2 and 3.

The base run of every point of the sweep; `lmjax scaling sweep` sets each run's depth,
width, heads and steps (shape rule: lmjax/scaling/sweeps.py). 3 compute budgets x 5-7
widths, 18 runs, each with its emergence probes (ICL score, best induction score, copy gain):

    lmjax scaling sweep --config configs/scaling/cpu_isoflop.py --isoflop 3e11,1e12,3e12 \
        --widths 8,16,24,32,40,48/8,16,24,32,40,48,64/16,24,32,40,48 --flops palm \
        --out runs/isoflop_cpu/sweep.json
    lmjax scaling run runs/isoflop_cpu/sweep.json --workdir runs/isoflop_cpu
    lmjax scaling fit runs/isoflop_cpu/runs.csv --approach 2 --c C --loss final_val_loss \
        --out runs/isoflop_cpu/fit2.json --plots runs/isoflop_cpu
    lmjax scaling fit runs/isoflop_cpu/runs.csv --approach 3 --loss final_val_loss --bootstrap 200 \
        --out runs/isoflop_cpu/fit3.json --plots runs/isoflop_cpu
    lmjax scaling emergence runs/isoflop_cpu/runs.csv --out runs/isoflop_cpu/emergence.png

Conventions: C counts PaLM FLOPs (6 N_matmul + 12 n_layer d_model seq_len per token, what
`lmjax train` reports; --flops palm): at 8-64 wide, 6N undercounts a run's compute 4x to
1.4x, which favours the small models (plans with C = 6ND find the smallest model best at
every budget). N = block matrices, 12 n_layer d_model^2; D = training tokens
(the train split is ~1M characters, so the larger D are many epochs). Every model is 2
layers, head dim 8 (16 at 64 wide); batch 32 x 128. The widths are explicit because the
centring rule (--tokens_per_param 300 --spread 16 --sizes_per_budget 7) puts the optimum at
the small end of its plan: the explicit list adds d8 at 1e12 and d16 at 3e12 and leaves out
d64/d80 at 3e12. C1e+12_L2_d64 has 8 heads of 8, not the shape rule's 4 of 16 (the CSV
records its heads).

Measured (2-core shared CPU, load average ~8-12 from other jobs), seed 0 as above and seed 1
with --config.train.seed=1 (results: docs/isoflop_cpu_runs.csv, docs/isoflop_cpu_runs_seed1.csv,
their mean docs/isoflop_cpu_runs_mean.csv, fitted with `--loss loss`; figures
docs/isoflop_cpu*.png, the IsoFLOP and allocation plots from the mean):
- every budget has an interior minimum in both seeds; the two seeds' losses differ by
  0.020 nats (sd; at most 0.043), as much as neighbouring widths do near the optimum.
- approach 2 (a parabola per budget over all its runs) on the mean of the 2 seeds:
  N_opt = 5.8e3, 1.5e4, 3.1e4 at C = 3e11, 1e12, 3e12; N_opt ~ C^0.73 (leave-one-run-out
  range 0.68-0.78; seed 0 alone 0.64, seed 1 alone 0.88), D_opt ~ C^0.46 (0.41-0.50; seeds
  0.52 and 0.33); D_opt / N_opt = 579, 397, 311 tokens per block parameter: 15-30x
  Chinchilla's ~20 (whose a ~ b ~ 0.5), falling as compute grows.
- approach 3 on the 36 runs (4500 L-BFGS starts + 200 bootstraps, 10.5 s): E 0.05 [0, 1.03]
  (not identified: the losses 2.0-2.6 are far from any floor), alpha 0.28 [0.11, 0.44],
  beta 0.13 [0.09, 0.32]; its own PaLM-FLOP optimum is 170-560 tokens per parameter.
- no induction heads at this scale: best induction score 0.010-0.015 in every run (uniform
  attention scores ~0.014); the ICL score is -0.09 to +0.04 nats at 3e11 and 1e12, and
  -0.06 to -0.13 at 3e12 (late context starts to help).
- wall: 39.4 min (seed 0) and 23.4 min (seed 1) summed over each sweep's 18 runs, probes
  included (1.5 min in seed 0).
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = dict(n_layer=2, d_model=64, n_head=2, max_len=128, dropout=0.0, use_bias=False)
    c.data = dict(source="$LMJAX_DATA/tinyshakespeare/input.txt", tokenizer="char", val_fraction=0.1)
    c.train = dict(steps=1000, batch_size=32, log_every=50, eval_every=1_000_000, eval_batches=0,
                   sample_tokens=0)  # eval_every beyond the run: one whole-split eval at the end
    c.optimizer = dict(lr=2e-3, end_lr=2e-4, warmup_steps=50, b1=0.9, b2=0.99, weight_decay=0.1)
    c.checkpoint = dict(every=500, keep=1)
    return c
