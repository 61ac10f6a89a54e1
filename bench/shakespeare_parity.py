"""shakespeare_char:cpu trained by lmjax and by a nanoGPT-recipe PyTorch model, same run.

    python bench/shakespeare_parity.py [--seeds 0,1,2] [--steps 2000] [--data ../shared/data/tinyshakespeare/input.txt]
        [--nanogpt PATH/TO/nanoGPT] [--skip_recipe]

The issue's reference is one number, nanoGPT's 1.886, which is one draw of nanoGPT's
estimate_loss (20 batches of 12 random windows) for one seed. Whether lmjax trains as well
as nanoGPT is a question about the mean over seeds of one measurement, so this script
trains both implementations from several seeds on the same tokens and measures both the
same two ways (and, with --nanogpt PATH, nanoGPT's own code from a checkout of it):

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
import pickle
import shutil
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
    return result, jax_window_losses(run.model, summary["state"]["params"]), run.data, run.tokenizer


def torch_window_losses(logits_fn):
    """Mean next-token loss per window of a PyTorch model: windows [n, t + 1] -> [n];
    logits_fn(inputs [n, t] int64) -> logits [n, t, vocab]."""
    import torch

    @torch.no_grad()
    def losses(windows):
        w = torch.from_numpy(np.asarray(windows, np.int64))
        logits = logits_fn(w[:, :-1])
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none").mean(-1).numpy()

    return losses


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
    return {"train_wall_s": round(wall, 1)}, torch_window_losses(model.logits)


NANOGPT_CPU_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                     "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def run_nanogpt(nanogpt_dir: str, text_path: str, steps: int, seed: int, threads: int):
    """nanoGPT's own code, its README's CPU command, on a copy of a nanoGPT checkout.

    The copy differs from the checkout in one line: the seed, 1337 + `seed` instead of the
    fixed 1337, so that seed 0 is exactly the README run. The final model is always saved
    (always_save_checkpoint, no effect on training) and then measured here like lmjax's.
    -> (row, window_losses, nanoGPT's character -> id map)
    """
    import subprocess

    import torch

    torch.set_num_threads(threads)
    work = tempfile.mkdtemp(prefix="nanogpt_")
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py"):
        os.makedirs(os.path.join(work, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(nanogpt_dir, name)) as f:
            text = f.read()
        if name == "train.py":
            fixed = "torch.manual_seed(1337 + seed_offset)"
            if fixed not in text:
                raise SystemExit(f"{nanogpt_dir}/train.py has no '{fixed}' line to vary the seed in")
            text = text.replace(fixed, f"torch.manual_seed({1337 + seed} + seed_offset)")
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    data_dir = os.path.join(work, "data", "shakespeare_char")
    with open(text_path) as src, open(os.path.join(data_dir, "input.txt"), "w") as dst:
        dst.write(src.read())  # present, so prepare.py does not download it
    subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, stdout=subprocess.DEVNULL)
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU_FLAGS,
           f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={min(250, steps)}",
           "--always_save_checkpoint=True", "--out_dir=out"]  # eval_interval: the config's 250, or one at the end
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    printed = [line for line in out.splitlines() if line.startswith(f"step {steps}:")]

    sys.path.insert(0, work)
    try:
        from model import GPT, GPTConfig  # nanoGPT's model.py
    finally:
        sys.path.remove(work)
        sys.modules.pop("model", None)
    ckpt = torch.load(os.path.join(work, "out", "ckpt.pt"), map_location="cpu", weights_only=False)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count; stdout is the JSON
        model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    # given targets, nanoGPT's forward returns the logits of every position
    window_losses = torch_window_losses(lambda x: model(x.contiguous(), torch.zeros_like(x))[0])
    with open(os.path.join(data_dir, "meta.pkl"), "rb") as f:
        stoi = pickle.load(f)["stoi"]
    shutil.rmtree(work)
    row = {"train_wall_s": round(wall, 1), "iter": int(ckpt["iter_num"]),
           "printed": printed[0] if printed else None, "command": " ".join(cmd[1:])}
    return row, window_losses, stoi


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
    p.add_argument("--nanogpt", default="",
                   help="a checkout of github.com/karpathy/nanoGPT: also train with nanoGPT's own code (its "
                        "README's CPU command; seed 0 = its fixed seed 1337) and measure it the same way")
    p.add_argument("--skip_recipe", action="store_true", help="do not train the nanoGPT-recipe PyTorch model")
    args = p.parse_args(argv)
    if not os.path.exists(args.data):
        raise SystemExit(f"no tinyshakespeare text at {args.data}; pass --data PATH")
    if args.nanogpt and not os.path.exists(os.path.join(args.nanogpt, "train.py")):
        raise SystemExit(f"--nanogpt {args.nanogpt}: no train.py there (want a karpathy/nanoGPT checkout)")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {"lmjax": []}
    if not args.skip_recipe:
        rows["torch_nanogpt_recipe"] = []
    if args.nanogpt:
        rows["nanogpt"] = []
    for seed in seeds:
        log(f"seed {seed}: lmjax ...")
        lm, lm_losses, data, tokenizer = run_lmjax(args.data, args.steps, seed)
        val = np.asarray(data.val)
        runs = [("lmjax", lm, lm_losses, val)]
        if not args.skip_recipe:
            log(f"seed {seed}: torch ...")
            runs.append(("torch_nanogpt_recipe", *run_torch(np.asarray(data.train), tokenizer.vocab_size, args.steps,
                                                             seed, args.torch_threads), val))
        if args.nanogpt:
            log(f"seed {seed}: nanoGPT ...")
            ng, ng_losses, stoi = run_nanogpt(args.nanogpt, args.data, args.steps, seed, args.torch_threads)
            # lmjax's val text in nanoGPT's character ids. (nanoGPT's own val split starts one
            # character earlier: lmjax ends the text with EOS, which moves its 90% cut by one.)
            ng_val = np.array([stoi[c] for c in tokenizer.decode(val.tolist())], np.int32)
            runs.append(("nanogpt", ng, ng_losses, ng_val))
        for name, row, losses, val in runs:
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
    mine = result["summary"]["lmjax"]["val_loss"]["mean"]
    for name in rows:
        if name != "lmjax":
            result["summary"][f"lmjax_minus_{name}_val_loss"] = mine - result["summary"][name]["val_loss"]["mean"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
