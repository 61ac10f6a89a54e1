"""shakespeare_char:cpu trained by lmjax and by a nanoGPT-recipe PyTorch model, same run.

    python bench/shakespeare_parity.py [--seeds 0,1,2] [--steps 2000] [--data ../shared/data/tinyshakespeare/input.txt]

The issue's reference is one number, nanoGPT's 1.886, which is one draw of nanoGPT's
estimate_loss (20 batches of 12 random windows) for one seed. Whether lmjax trains as well
as nanoGPT is a question about the mean over seeds of one measurement, so this script
trains both implementations from several seeds on the same tokens and measures both the
same two ways:

- lmjax: `lmjax.train.loop.train` on configs/shakespeare_char.py:cpu (4 layers, d_model
  128, context 64, batch 12, AdamW lr 1e-3 -> 1e-4 cosine, warmup 100, beta2 0.99, weight
  decay 0.1 on matrices, clip 1.0, no biases, exact GELU).
- torch: bench/_torch_gpt.py with nanoGPT's shakespeare_char settings (no biases, exact
  GELU) and nanoGPT's training recipe written out here: torch.randint window offsets,
  AdamW with weight decay on the >= 2-D parameters, nanoGPT's warmup + cosine schedule,
  gradient clipping 1.0, the same number of steps.

For each seed and implementation: the val loss over the whole val split (consecutive
windows, as lmjax evaluates), nanoGPT's 20-batch estimate repeated over 100 draws (mean,
std), and the training wall time. Prints one JSON object; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from _torch_gpt import torch_gpt  # bench/, on sys.path when run as a script
from lmjax.repro.shakespeare import nanogpt_estimates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def lmjax_config(data: str, steps: int, seed: int):
    """configs/shakespeare_char.py:cpu as `lmjax repro shakespeare` runs it, one eval at the end."""
    from lmjax.repro._common import load_repro_config
    from lmjax.repro.shakespeare import training_config

    overrides = [f"data.source={data}", f"train.steps={steps}", f"train.seed={seed}", "train.sample_tokens=0",
                 f"train.eval_every={steps}", f"checkpoint.every={steps}"]
    return training_config(load_repro_config("shakespeare", "cpu", overrides))


def whole_split(window_losses, val: np.ndarray, seq_len: int) -> float:
    """Mean loss over consecutive windows covering the val split (every token predicted once)."""
    n = (len(val) - 1) // seq_len
    starts = np.arange(n) * seq_len
    windows = np.asarray(val[starts[:, None] + np.arange(seq_len + 1)], np.int32)
    return float(np.concatenate([window_losses(windows[i:i + 256]) for i in range(0, n, 256)]).mean())


def run_lmjax(data: str, steps: int, seed: int):
    from lmjax.repro.shakespeare import jax_window_losses
    from lmjax.train.loop import train

    config = lmjax_config(data, steps, seed)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON
        start = time.perf_counter()
        summary = train(config, workdir, progress=False, quiet=True)
        wall = time.perf_counter() - start
    run = summary["run"]
    result = {"train_wall_s": round(wall, 1), "val_loss_lmjax_eval": summary["val_loss"]}
    return result, jax_window_losses(run.model, summary["state"]["params"]), run.data, run.model.cfg.vocab_size


def run_torch(train_tokens: np.ndarray, vocab: int, steps: int, seed: int, threads: int):
    """nanoGPT's shakespeare_char:cpu recipe on bench/_torch_gpt.py's model."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    seq, batch, lr, min_lr, warmup = 64, 12, 1e-3, 1e-4, 100
    model = torch_gpt(torch, bias=False, gelu="none")(vocab, seq, 4, 128, 4)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))

    def lr_at(it):  # nanoGPT's get_lr with lr_decay_iters = max_iters
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (steps - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    data = torch.from_numpy(train_tokens.astype(np.int64))
    start = time.perf_counter()
    for it in range(steps):
        ix = torch.randint(len(data) - seq, (batch,))
        x = torch.stack([data[i:i + seq] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + seq] for i in ix])
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.perf_counter() - start
    model.eval()

    @torch.no_grad()
    def window_losses(windows):
        w = torch.from_numpy(np.asarray(windows, np.int64))
        logits = model.logits(w[:, :-1])
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none").mean(-1).numpy()

    return {"train_wall_s": round(wall, 1)}, window_losses


def summarise(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt"))
    p.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if not os.path.exists(args.data):
        raise SystemExit(f"no tinyshakespeare text at {args.data}; pass --data PATH")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {"lmjax": [], "torch_nanogpt_recipe": []}
    for seed in seeds:
        log(f"seed {seed}: lmjax ...")
        lm, lm_losses, data, vocab = run_lmjax(args.data, args.steps, seed)
        log(f"seed {seed}: torch ...")
        tr, tr_losses = run_torch(np.asarray(data.train), vocab, args.steps, seed, args.torch_threads)
        val = np.asarray(data.val)
        for name, row, losses in (("lmjax", lm, lm_losses), ("torch_nanogpt_recipe", tr, tr_losses)):
            draws = nanogpt_estimates(losses, val, seq_len=64, batch_size=12)
            row.update(seed=seed, val_loss=whole_split(losses, val, 64), estimate_mean=float(draws.mean()),
                       estimate_std=float(draws.std(ddof=1)), estimate_at_or_below_1_886=float((draws <= 1.886).mean()))
            rows[name].append(row)
            log(f"  {name}: val {row['val_loss']:.4f}, nanoGPT-style estimate {row['estimate_mean']:.4f} "
                f"+- {row['estimate_std']:.4f}, training {row['train_wall_s']} s")
    result = {
        "settings": "shakespeare_char:cpu (4x128, context 64, batch 12, 2000 steps); val = whole val split",
        "steps": args.steps, "seeds": seeds, "nanogpt_reported": 1.886,
        "runs": rows,
        "summary": {name: {"val_loss": summarise(r, "val_loss"), "train_wall_s": summarise(r, "train_wall_s")}
                    for name, r in rows.items()},
    }
    a, b = (result["summary"][n]["val_loss"]["mean"] for n in rows)
    result["summary"]["lmjax_minus_torch_val_loss"] = a - b
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
