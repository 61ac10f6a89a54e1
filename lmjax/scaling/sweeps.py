"""Scaling sweeps: plan runs from a base config, run them with resume, collect a CSV.

Plans (JSON files, one entry per run with its config overrides):
- `grid_plan`: every model size x every token budget;
- `isoflop_plan`: at each compute budget C, several sizes N with D = C / (FLOPs per
  token) tokens, 6 N by default (Chinchilla approach 2);
- `isoflop_plan_widths`: the same with the widths of each budget given.

Shape rule (`shape_for`): for a target of block parameters N = 12 n_layer d_model^2, the
depth n_layer = round((N / (12 * 64^2))^(1/3)) (at least 2), i.e. an aspect ratio
d_model / n_layer of about 64 (GPT-2 small and nanoGPT's shakespeare model have 64), then
d_model the multiple of the head dimension (64; 32 below 256 wide; 16 below 128; 8 below 64,
so that CPU-sized sweeps get sizes a factor < 2 apart) closest to sqrt(N / (12 n_layer));
heads = d_model / the head dimension at that width. `shape_of_width` applies the rule to a
given width (depth d_model / 64, at least 2).

`run_sweep` trains the runs one after another in DIR/<run name>: a run whose result file
exists is skipped, an interrupted one resumes from its checkpoint (lmjax train resumes by
itself); each finished run's N, D, C, final and best val loss, bits per byte and wall time
go to DIR/runs.csv, rewritten atomically after every run, with the emergence probes of the
trained model (lmjax/scaling/probes.py: in-context-learning score, best induction-head
score, copy gain on repeated random tokens) unless `probes=False`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import time
from typing import Callable

from lmjax.config import load_config, model_config
from lmjax.data import corpus
from lmjax.errors import LmjaxError
from lmjax.model import accounting
from lmjax.scaling.probes import emergence_probes
from lmjax.train.loop import train

ASPECT = 64  # d_model / n_layer of the shape rule
SWEEP_COLUMNS = ("name", "N", "D", "C", "n_layer", "d_model", "n_head", "steps", "final_val_loss",
                 "best_val_loss", "val_bpb", "wall_s", "icl_score", "induction_score", "induction_head",
                 "copy_gain", "probe_s")


@dataclasses.dataclass
class Shape:
    n_layer: int
    d_model: int
    n_head: int

    @property
    def matmul_params(self) -> int:  # blocks only: 4 d^2 attention + 8 d^2 MLP per layer
        return 12 * self.n_layer * self.d_model**2


def shape_for(target_params: float) -> Shape:
    """The transformer shape for a target of block parameters 12 n_layer d_model^2: depth
    from an aspect ratio d_model / n_layer of 64, then the width that hits the target."""
    if target_params < 12 * 2 * 8**2:
        raise LmjaxError(f"target size {target_params:.3g} is below the smallest shape (2 layers x 8 wide)")
    n_layer = max(2, round((target_params / (12 * ASPECT**2)) ** (1 / 3)))
    exact = math.sqrt(target_params / (12 * n_layer))
    head = _head_dim(exact)
    d_model = max(head, head * round(exact / head))
    return Shape(n_layer, d_model, d_model // _head_dim(d_model))  # 63 -> 64 wide: head dim 16, as for 64


def _head_dim(width: float) -> int:
    return 64 if width >= 256 else 32 if width >= 128 else 16 if width >= 64 else 8


def six_n(shape: Shape) -> float:
    """Kaplan's / Chinchilla's approximation of training FLOPs per token: 6 N."""
    return 6.0 * shape.matmul_params


def _run(name: str, shape: Shape, tokens: float, tokens_per_step: int, flops_per_token=six_n) -> dict:
    steps = max(1, round(tokens / tokens_per_step))
    D = steps * tokens_per_step
    return {"name": name, "n_layer": shape.n_layer, "d_model": shape.d_model, "n_head": shape.n_head,
            "steps": steps, "N": shape.matmul_params, "D": D, "C": flops_per_token(shape) * D,
            "overrides": {"model.n_layer": shape.n_layer, "model.d_model": shape.d_model,
                          "model.n_head": shape.n_head, "train.steps": steps}}


def grid_plan(sizes, token_budgets, tokens_per_step: int) -> list[dict]:
    runs = []
    for size in sizes:
        shape = shape_for(size)
        for tokens in token_budgets:
            runs.append(_run(f"L{shape.n_layer}_d{shape.d_model}_D{tokens:.2g}", shape, tokens, tokens_per_step))
    return runs


def shape_of_width(d_model: int) -> Shape:
    """The shape rule at a given width: depth from the aspect ratio, the rule's head dimension."""
    head = _head_dim(d_model)
    if d_model % head:
        raise LmjaxError(f"width {d_model} is not a multiple of the head dimension {head} the shape rule uses there")
    n_layer = max(2, round(d_model / ASPECT))
    return Shape(n_layer, d_model, d_model // head)


def isoflop_plan_widths(budgets, widths_per_budget, tokens_per_step: int, *,
                        flops_per_token: Callable[[Shape], float] = six_n) -> list[dict]:
    """An IsoFLOP plan with the widths of every budget given (a list of widths per budget):
    to bracket an optimum that a first sweep located."""
    if len(budgets) != len(widths_per_budget):
        raise LmjaxError(f"{len(budgets)} budgets but {len(widths_per_budget)} lists of widths")
    runs = []
    for C, widths in zip(budgets, widths_per_budget):
        if len(set(widths)) < 3:
            raise LmjaxError(f"budget {C:.3g}: an IsoFLOP profile needs at least 3 distinct widths, got {widths}")
        for shape in map(shape_of_width, sorted(set(widths))):
            runs.append(_run(f"C{C:.2g}_L{shape.n_layer}_d{shape.d_model}", shape,
                             C / flops_per_token(shape), tokens_per_step, flops_per_token))
    return runs


def isoflop_plan(budgets, sizes_per_budget: int, tokens_per_step: int, *, spread: float = 4.0,
                 tokens_per_param: float = 20.0, flops_per_token: Callable[[Shape], float] = six_n) -> list[dict]:
    """Per compute budget, `sizes_per_budget` sizes log-spaced over a factor `spread`
    around the size that would see `tokens_per_param` tokens per parameter (at 6N FLOPs per
    token); each run gets D = C / flops_per_token(shape) tokens. The default 6N leaves out
    attention's 12 n_layer d_model seq_len and the output head, which for models a few
    dozen wide are most of the compute: pass the PaLM count (lmjax.model.accounting) so
    that an IsoFLOP profile is one of equal real compute."""
    if sizes_per_budget < 3:
        raise LmjaxError(f"an IsoFLOP profile needs at least 3 sizes per budget, got {sizes_per_budget}")
    runs = []
    for C in budgets:
        center = math.sqrt(C / (6 * tokens_per_param))
        shapes = []  # distinct shapes: at small sizes neighbouring targets can round to one
        for i in range(sizes_per_budget):
            shape = shape_for(center * spread ** (i / (sizes_per_budget - 1) - 0.5))
            if shape not in shapes:
                shapes.append(shape)
        if len(shapes) < 3:
            raise LmjaxError(f"budget {C:.3g}: only {len(shapes)} distinct shapes; raise the budget or the spread")
        for shape in shapes:
            runs.append(_run(f"C{C:.2g}_L{shape.n_layer}_d{shape.d_model}", shape,
                             C / flops_per_token(shape), tokens_per_step, flops_per_token))
    return runs


def write_plan(path: str, base_config: str, runs: list[dict], overrides=()) -> None:
    _atomic_write(path, json.dumps({"config": base_config, "overrides": list(overrides), "runs": runs}, indent=2))


def read_plan(path: str) -> dict:
    with open(path) as f:
        try:
            plan = json.load(f)
        except ValueError as e:  # not JSON (or not UTF-8)
            raise LmjaxError(f"{path}: not a sweep plan (not JSON: {e})") from None
    if not isinstance(plan, dict):
        raise LmjaxError(f"{path}: not a sweep plan (a JSON {type(plan).__name__}, expected an object)")
    missing = {"config", "runs"} - set(plan)
    if missing:
        raise LmjaxError(f"{path}: not a sweep plan (missing {sorted(missing)})")
    return plan


def launch_commands(plan: dict, workdir: str, launcher: str = "") -> list[str]:
    """One command per run: `lmjax train ...`, or with a `launcher` prefix (e.g.
    "python launch/tpu_pod.py run --name sweep --zone us-west4-a --accelerator_type
    v5litepod-16") `PREFIX --workdir DIR/RUN --config CONFIG -- OVERRIDES`."""
    out = []
    for run in plan["runs"]:
        run_dir = workdir.rstrip("/") + "/" + run["name"]
        overrides = [f"--config.{o}" for o in plan.get("overrides", [])]
        overrides += [f"--config.{k}={v}" for k, v in run["overrides"].items()]
        if launcher:
            args = shlex.split(launcher) + ["--workdir", run_dir, "--config", plan["config"], "--", *overrides]
        else:
            args = ["lmjax", "train", "--config", plan["config"], "--workdir", run_dir, *overrides]
        out.append(shlex.join(args))
    return out


def run_sweep(plan: dict, workdir: str, *, say: Callable[[str], None] = print, train_fn=None,
              probes: bool = True) -> list[dict]:
    """Train every run not finished yet; returns the rows of DIR/runs.csv."""
    train_fn = train_fn or train
    rows, spent, flops_done = [], 0.0, 0.0
    todo = [r for r in plan["runs"] if not os.path.exists(_result_path(workdir, r))]
    flops_todo = sum(r["C"] for r in todo)
    for i, run in enumerate(plan["runs"]):
        result_path = _result_path(workdir, run)
        if os.path.exists(result_path):
            with open(result_path) as f:
                rows.append(json.load(f))
            continue
        eta = f", sweep ETA {spent / flops_done * (flops_todo - flops_done) / 60:.1f} min" if flops_done else ""
        say(f"[{i + 1}/{len(plan['runs'])}] {run['name']}: N {run['N']:.3g}, D {run['D']:.3g}{eta}")
        overrides = list(plan.get("overrides", [])) + [f"{k}={v}" for k, v in run["overrides"].items()]
        config = load_config(plan["config"], overrides)
        t0 = time.perf_counter()
        summary = train_fn(config, os.path.join(workdir, run["name"]), progress=False, quiet=True)
        wall = time.perf_counter() - t0
        if not summary.get("finished", True):
            say(f"  {run['name']} stopped at step {summary.get('end_step')} (preempted): rerun to resume")
            break
        row = _row(run, summary, os.path.join(workdir, run["name"]), wall)
        if probes:
            row.update(probe_run(summary))
        _atomic_write(result_path, json.dumps(row))
        rows.append(row)
        spent, flops_done = spent + wall, flops_done + run["C"]
        probed = (f"; ICL score {row['icl_score']:+.3f}, induction {row['induction_score']:.2f} "
                  f"({row['induction_head']})") if probes else ""
        say(f"  val loss {row['final_val_loss']:.4f} (best {row['best_val_loss']:.4f}), {wall:.0f} s{probed}")
        write_csv(os.path.join(workdir, "runs.csv"), rows)
        if summary.get("preempted"):  # SIGTERM during the last step or the final eval: the run
            say("  stopped by SIGTERM after this run: rerun to continue")  # is done, the sweep stops
            break
    write_csv(os.path.join(workdir, "runs.csv"), rows)
    return rows


def probe_run(summary: dict) -> dict:
    """The emergence probes of a run that `train` just finished (its summary holds the run
    and the final state)."""
    run, t0 = summary["run"], time.perf_counter()
    seq_len = run.config.data.seq_len or run.model.cfg.max_len
    out = emergence_probes(run.model, summary["state"]["params"], run.data.val, seq_len,
                           vocab_range=(0, run.tokenizer.vocab_size))
    return {**out, "probe_s": time.perf_counter() - t0}


def _result_path(workdir: str, run: dict) -> str:
    return os.path.join(workdir, run["name"], "sweep_result.json")


def _row(run: dict, summary: dict, run_dir: str, wall: float) -> dict:
    val = [json.loads(line).get("val_loss") for line in _lines(os.path.join(run_dir, "metrics.jsonl"))]
    val = [v for v in val if v is not None]
    final = summary.get("val_loss", val[-1] if val else float("nan"))
    return {**{k: run[k] for k in ("name", "N", "D", "C", "n_layer", "d_model", "n_head", "steps")},
            "final_val_loss": final, "best_val_loss": min(val + [final]), "val_bpb": summary.get("val_bpb"),
            "wall_s": wall}


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f if line.strip()]


def write_csv(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def palm_flops(config):
    """shape -> the training FLOPs per token lmjax train counts for the config at that shape."""
    vocab = vocab_size_of(config)  # the same at every shape (it may read the data source)

    def flops(shape):
        c = config.copy_and_resolve_references()
        c.model.n_layer, c.model.d_model, c.model.n_head = shape.n_layer, shape.d_model, shape.n_head
        cfg = model_config(c, vocab)
        return accounting.flops_per_token(cfg, c.data.seq_len or cfg.max_len)

    return flops


def vocab_size_of(config) -> int:
    """The vocabulary a config's model will have: model.vocab_size, else its tokenizer's,
    built as training builds it (the char tokenizer from the config's data source)."""
    if config.model.vocab_size:
        return config.model.vocab_size
    d = config.data
    if d.tokenizer == "sentencepiece" and not d.spm_model_path:
        return d.spm_vocab_size  # training a sentencepiece model gives exactly this many ids
    return corpus.make_tokenizer(d).vocab_size
