"""nanoGPT's shakespeare_char (Karpathy's nanoGPT README): a character-level transformer
on tinyshakespeare, first 90% of the characters to train and the last 10% to validate.

Published (nanoGPT): the GPU config (6 layers, 6 heads, d_model 384, context 256, batch
64, dropout 0.2, 5000 steps) reaches a best val loss of 1.4697 nats/char in about 3 min on
one A100; the CPU variant (4 layers, 4 heads, d_model 128, context 64, batch 12, 2000
steps, no dropout) reaches about 1.88 in about 3 min.

lmjax: this script drives lmjax's own training loop (lmjax.train.loop.train) on
configs/shakespeare_char.py, then writes the loss curves (shakespeare.png), a sample and
results.json (final and best val loss, wall time, tokens/s). The val loss is over the
whole val split (eval_batches 0), every 250 steps.

    lmjax repro shakespeare --out runs/repro/shakespeare                    # CPU variant
    lmjax repro shakespeare --variant gpu --out runs/repro/shakespeare_gpu  # GPU config

- CPU variant (0.80M parameters), measured 2026-11-26 on the shared 2-core AMD EPYC under
  heavy load from other jobs (load average ~10): val loss 1.8988 at step 2000 (nanoGPT:
  ~1.88), 252 s for the command (245 s training, ~10,600 tokens/s); figure
  docs/repro/shakespeare.png. Earlier sessions measured 1.899 and 1.910 with `lmjax train`.
- GPU config: not run in this session (no GPU lent); an earlier session measured, on one
  NVIDIA H200 with `lmjax train`, best val 1.4271 at step 2000 (1.654 after 5000 steps: it
  overfits), 76 s for the whole command, 7.9 ms/step (nanoGPT: best 1.4697 on an A100).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from lmjax.config import merge, default_config, validate
from lmjax.repro import _common

NANOGPT_VAL = {"cpu": 1.88, "gpu": 1.4697, "small": None}


def training_config(config):
    """The repro config (sections of an lmjax training config) merged over the defaults and validated."""
    full = merge(default_config(), config.to_dict(), where="configs/repro/shakespeare.py")
    validate(full)
    return full


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def curves(records: list[dict]) -> dict[str, list]:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return {"train": train, "val": val}


def run(config, workdir: str, *, progress: bool = True) -> dict:
    from lmjax.sample import sample
    from lmjax.train.loop import train

    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileExistsError(f"{workdir} already holds a run (training would resume and the wall time would "
                              "mean nothing); use another --out or remove it")
    start = time.perf_counter()
    summary = train(config, workdir, progress=progress, quiet=not progress)
    wall = time.perf_counter() - start
    c = curves(read_metrics(workdir))
    run_ = summary["run"]
    text = ""
    if config.train.sample_tokens:
        [text] = sample(summary["state"]["params"], run_.model, run_.tokenizer, config.train.sample_prompt,
                        max_new_tokens=min(config.train.sample_tokens, run_.model.cfg.max_len - 1),
                        temperature=config.train.sample_temperature, seed=config.train.seed)
    return {
        "final_val_loss": summary["val_loss"],
        "best_val_loss": min(v for _, v in c["val"]),
        "final_train_loss": c["train"][-1][1],
        "steps": summary["end_step"],
        "params": summary["params"],
        "tokens_per_s": summary.get("tokens_per_s"),
        "train_wall_time_s": round(wall, 1),
        "curves": c,
        "sample": config.train.sample_prompt + text,
    }


def plot(results: dict, reference: float | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=100)
    for name, style in (("train", "-"), ("val", "o-")):
        if results["curves"][name]:
            steps, losses = zip(*results["curves"][name])
            ax.plot(steps, losses, style, label=f"lmjax {name}", ms=3)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", label=f"nanoGPT best val {reference}")
    ax.set(xlabel="step", ylabel="loss (nats/char)", title="shakespeare_char", ylim=(None, min(4.5, ax.get_ylim()[1])))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    argv = list(argv or [])
    config, out = _common.parse_args("shakespeare", argv, __doc__)
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--variant", default=None)
    variant = peek.parse_known_args(argv)[0].variant or "cpu"
    config = training_config(config)
    results = {"variant": variant, "nanogpt_val_loss": NANOGPT_VAL.get(variant)}
    with _common.stopwatch(results):
        results.update(run(config, os.path.join(out, "workdir")))
    _common.savefig(plot(results, results["nanogpt_val_loss"]), out, "shakespeare.png")
    _common.write_results(out, results, config)
    print(f"val loss {results['final_val_loss']:.4f} (best {results['best_val_loss']:.4f}; nanoGPT "
          f"{results['nanogpt_val_loss']}) after {results['steps']} steps, {results['wall_time_s']:.0f} s; "
          f"wrote {out}/shakespeare.png, results.json")
    return results


if __name__ == "__main__":
    main()
