"""The training loop: data, state, steps, evals, logs, checkpoints, preemption.

`train(config, workdir)` resumes automatically from the newest checkpoint in the workdir.
Everything a step needs is a pure function of (config, step), so a resumed run sees
exactly the batches and dropout masks an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import hashlib
import shutil

import jax
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from lmjax import distributed, sharding
from lmjax.config import ConfigError, model_config
from lmjax.errors import LmjaxError
from lmjax.data import TokenData, eval_batches, prepare_tokens, text_source
from lmjax.data.batches import train_rows
from lmjax.data.shards import is_local
from lmjax.data.tokenizer_json import tokenizer_from_json
from lmjax.data.tokenizers import build_tokenizer
from lmjax.model import Transformer
from lmjax.model.accounting import count_params, flops_per_token
from lmjax.train import mfu as mfu_lib
from lmjax.train.checkpoint import Checkpointer
from lmjax.train.optimizer import learning_rate_schedule, make_optimizer
from lmjax.train.steps import (auto_grad_accum, init_state, make_eval_step, make_train_step, param_shardings,
                                state_shardings)
from lmjax.train.writers import JsonlWriter, MultiWriter, TensorBoardWriter


class NonFiniteLossError(LmjaxError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """Everything set up for a run, before the first step."""

    config: object
    workdir: str
    tokenizer: object
    data: TokenData
    model: Transformer
    optimizer: object
    mesh: object
    state: dict
    checkpointer: Checkpointer
    rules: tuple = sharding.LOGICAL_RULES
    notes: tuple = ()  # parameter dimensions replicated because they do not divide the mesh


def default_cache_dir() -> str:
    return os.environ.get("LMJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmjax")


def config_json(config) -> dict:
    return json.loads(config.to_json())


def _tokenizer_for(config, checkpointer: Checkpointer, source):
    """The checkpoint's tokenizer when resuming, else a new one built from the config."""
    if checkpointer.latest_step() is not None:
        _, tok = checkpointer.restore_meta()
        return tokenizer_from_json(tok)
    d = config.data
    return build_tokenizer(
        d.tokenizer,
        texts=source.documents,
        vocab_size=d.spm_vocab_size,
        model_type=d.spm_model_type,
        model_path=d.spm_model_path or None,
    )


def _check_same_model(config, checkpointer: Checkpointer, vocab_size: int):
    """Resuming a workdir trained with another model is an error, before anything is loaded."""
    if checkpointer.latest_step() is None:
        return
    saved, _ = checkpointer.restore_meta()
    mine = dataclasses.asdict(model_config(config, vocab_size))
    theirs = dict(saved["model"], vocab_size=saved["model"]["vocab_size"] or vocab_size)
    # scan_layers/remat/dtype change the program, not the model's shape; everything else must match
    ignore = {"scan_layers", "remat", "dtype", "dropout"}
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if k not in ignore and theirs.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"workdir {checkpointer.directory} holds a checkpoint of a different model ({lines}); "
            "use another --workdir or the checkpoint's config"
        )


def setup(config, workdir: str, *, with_data: bool = True) -> Run:
    """Tokenizer, token shards, model, mesh and (restored or fresh) sharded state.

    with_data=False skips the token shards (sampling from a checkpoint needs none).
    """
    _workdir(workdir).mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(
        os.fspath(_workdir(workdir) / "checkpoints"),
        keep=config.checkpoint.keep,
        save_every=config.checkpoint.every,
        async_save=config.checkpoint.async_save,
    )
    source = text_source(config.data.source) if with_data or checkpointer.latest_step() is None else None
    tokenizer = _tokenizer_for(config, checkpointer, source)
    _check_same_model(config, checkpointer, tokenizer.vocab_size)
    cfg = model_config(config, tokenizer.vocab_size)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    rules = sharding.logical_rules(config.mesh)
    try:
        mesh = sharding.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problems = sharding.problems(mesh, batch_size=config.train.batch_size, n_head=cfg.n_head, n_kv_head=cfg.kv_heads, rules=rules)
    if problems:
        raise ConfigError("; ".join(problems))
    data = None
    if with_data:
        data = prepare_tokens(
            source, tokenizer, config.data.cache_dir or default_cache_dir(), val_fraction=config.data.val_fraction,
            progress=jax.process_index() == 0, group=distributed.process_group(),
        )
        seq_len = config.data.seq_len or cfg.max_len
        for split, tokens, rows in (("train", data.train, 1), ("val", data.val, config.train.batch_size)):
            if len(tokens) < rows * seq_len + 1:
                raise ConfigError(
                    f"data: the {split} split has {len(tokens)} tokens, fewer than {rows} window(s) of "
                    f"{seq_len} + 1; use more text, a smaller data.seq_len or train.batch_size"
                )
    model = Transformer(cfg)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    _, notes = param_shardings(model, mesh, rules, with_notes=True)
    if checkpointer.latest_step() is None:
        state = init_state(model, optimizer, mesh, config.train.seed, rules)
    else:
        # Restore straight into this run's shardings: the checkpoint may come from another mesh shape.
        abstract = jax.eval_shape(lambda: init_state(model, optimizer, mesh, config.train.seed, rules))
        shardings = state_shardings(model, optimizer, mesh, rules)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        state = checkpointer.restore(abstract)
    return Run(config, workdir, tokenizer, data, model, optimizer, mesh, state, checkpointer, rules, tuple(notes))


def _workdir(workdir) -> epath.Path:
    text = os.fspath(workdir)
    # Orbax (tensorstore) wants absolute local paths: `--workdir runs/qs` is relative.
    return epath.Path(os.path.abspath(os.path.expanduser(text)) if is_local(text) else text)


def _global_batch(run: Run, global_rows: int, load_rows) -> dict:
    """The global batch; this process reads only the rows its devices hold."""
    return sharding.assemble_batch(sharding.batch_sharding(run.mesh, run.rules), global_rows, load_rows)


def evaluate(run: Run, eval_step, params) -> dict[str, float]:
    """Val loss (nats/token), perplexity, and bits per byte over the configured val batches.

    Bits per byte divides the summed loss by the UTF-8 bytes of the predicted tokens, so it
    compares across tokenizers and with published bits-per-character figures.
    """
    c = run.config
    seq_len = c.data.seq_len or run.model.cfg.max_len
    token_bytes = run.tokenizer.token_bytes()
    total, count, n_bytes = 0.0, 0.0, 0
    batches = eval_batches(run.data.val, batch_size=c.train.batch_size, seq_len=seq_len,
                           max_batches=c.train.eval_batches or None)
    for batch in batches:
        out = eval_step(params, _global_batch(run, c.train.batch_size,
                                              lambda a, b: {k: v[a:b] for k, v in batch.items()}))
        n_bytes += int(token_bytes[batch["targets"]].sum())
        total += float(out["loss_sum"])
        count += float(out["tokens"])
    loss = total / count
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        "val_bpb": total / math.log(2) / max(n_bytes, 1),
    }


class _Preemption:
    """SIGTERM (preemption, `kill`, scancel) asks the loop to save and stop at the next step.

    With several processes they must all stop at the same step, whichever of them got the
    signal: JAX's preemption sync service (started by jax.distributed.initialize) catches
    SIGTERM on any process and agrees on a step with the others; `check(step)`, called at
    every step on every process, turns true there.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._synced = False

    def __enter__(self):
        if jax.process_count() > 1:
            from jax._src import distributed as jax_distributed  # the service jax.distributed started

            if getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None:
                self._synced = True  # keep its SIGTERM handler; don't install ours
                return self

        def handler(signum, frame):
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no handler, no preemption saves
            self._previous = None
        return self

    def check(self, step: int) -> bool:
        if self._synced and not self.requested:
            from jax.experimental import multihost_utils

            self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir: str, *, stop_at_step: int | None = None, progress: bool = True, quiet: bool = False) -> dict:
    """Train (or resume) until config.train.steps; returns a summary of the run.

    stop_at_step: stop (with a checkpoint) once this step is reached, as if preempted there.
    """
    lead = jax.process_index() == 0  # only process 0 prints, logs metrics and shows progress
    say = print if lead and not quiet else (lambda *a: None)
    progress = progress and lead
    run = setup(config, workdir)
    c, model, state = run.config, run.model, run.state
    start = int(state["step"])
    total = c.train.steps
    end = min(total, stop_at_step) if stop_at_step is not None else total
    seq_len = c.data.seq_len or model.cfg.max_len
    fpt = flops_per_token(model.cfg, seq_len)
    peak, peak_source = mfu_lib.peak_flops_per_device()
    n_params = count_params(state["params"])
    meta = {"config": config_json(c), "tokenizer": run.tokenizer.to_json()}
    say(
        f"lmjax: {n_params / 1e6:.2f}M params, {fpt / 1e6:.1f} MFLOPs/token, "
        f"{len(run.data.train):,} train / {len(run.data.val):,} val tokens, mesh {sharding.describe(run.mesh)}"
        f"{f' over {jax.process_count()} processes' if jax.process_count() > 1 else ''}, "
        f"peak {peak / 1e9:.0f} GFLOP/s/device ({peak_source})"
    )
    for note in run.notes:
        say(f"sharding: {note}")
    if start:
        say(f"resuming from step {start} in {workdir}")

    grad_accum = c.train.grad_accum or auto_grad_accum(c.train.batch_size, seq_len,
                                                       sharding.batch_divisor(run.mesh, run.rules))
    if grad_accum > 1:
        say(f"{grad_accum} micro-batches of {c.train.batch_size // grad_accum} rows per optimizer step"
            f"{' (train.grad_accum=0: auto)' if not c.train.grad_accum else ''}")
    train_step = make_train_step(model, run.optimizer, grad_accum=grad_accum, seed=c.train.seed,
                                 mesh=run.mesh, rules=run.rules)
    eval_step = make_eval_step(model, run.mesh, jax.tree.map(lambda x: x.sharding, state["params"]), run.rules)
    writer = _MetricsWriter(workdir) if lead else _NullWriter()

    def batch_at(step):
        return _global_batch(run, c.train.batch_size, lambda a, b: train_rows(
            run.data.train, seed=c.train.seed, step=step, batch_size=c.train.batch_size, seq_len=seq_len,
            start=a, stop=b))

    summary = {"start_step": start, "params": n_params, "flops_per_token": fpt, "peak_flops": peak}
    last_good = run.checkpointer.latest_step()
    pending = None  # (step, metrics) not yet fetched: fetching one step late keeps the device busy
    window = {"t": time.perf_counter(), "step": start, "loss": []}

    def settle(step, metrics):
        """Fetch a step's metrics; stop on NaN/inf before anything is saved from it."""
        loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            run.checkpointer.wait()
            raise NonFiniteLossError(
                f"non-finite loss {loss} / grad norm {gnorm} at step {step}; last good checkpoint: "
                f"step {last_good} in {run.checkpointer.directory}. Lower optimizer.lr or check the data."
            )
        window["loss"].append(loss)
        summary["last_loss"] = loss

    def log(step, bar):
        dt = time.perf_counter() - window["t"]
        steps = step - window["step"]
        if not steps:
            return
        tokens_per_s = steps * c.train.batch_size * seq_len / dt
        scalars = {
            "loss": float(np.mean(window["loss"])),
            "tokens_per_s": tokens_per_s,
            "step_time_s": dt / steps,
            "mfu": mfu_lib.mfu(tokens_per_s, fpt),
            "lr": float(run_lr(step)),
        }
        writer.write_scalars(step, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{scalars['mfu']:.1%}")
        summary.update(tokens_per_s=tokens_per_s, mfu=scalars["mfu"])
        window.update(t=time.perf_counter(), step=step, loss=[])

    run_lr = learning_rate_schedule(c.optimizer, total)

    def save(step, force=False):
        nonlocal last_good
        if run.checkpointer.save(step, state, config=meta["config"], tokenizer=meta["tokenizer"], force=force):
            last_good = step

    with _Preemption() as preempt, tqdm(total=end, initial=start, disable=not progress, desc="train",
                                         dynamic_ncols=True, mininterval=1.0) as bar:
        step = start
        while step < end:
            state, metrics = train_step(state, batch_at(step))
            if step == start:  # the first call compiled: keep that out of tokens/s
                window.update(t=time.perf_counter(), step=start + 1)
            if pending:
                settle(*pending)
            pending = (step + 1, metrics)
            step += 1
            bar.update(1)
            preempt.check(step)
            boundary = step % c.train.log_every == 0 or step == end
            if boundary or run.checkpointer.should_save(step) or step % c.train.eval_every == 0 or preempt.requested:
                settle(*pending)
                pending = None
            if boundary:
                log(step, bar)
            if step % c.train.eval_every == 0 or step == total:
                ev = evaluate(run, eval_step, state["params"])
                writer.write_scalars(step, ev)
                summary.update(ev)
                if lead:
                    bar.write(f"step {step}: val loss {ev['val_loss']:.4f}, val bpb {ev['val_bpb']:.4f}")
                window["t"] = time.perf_counter()  # keep eval time out of tokens/s
            if run.checkpointer.should_save(step):
                save(step)
                writer.sync()
            if preempt.requested:
                break
    if pending:
        settle(*pending)
    save(step, force=True)
    run.checkpointer.wait()
    writer.close()
    summary.update(end_step=step, preempted=preempt.requested, finished=step >= total)
    if preempt.requested:
        say(f"stopped by SIGTERM at step {step}; checkpoint saved. Run the same command to resume.")
    summary["run"] = run
    summary["state"] = state
    return summary



class _NullWriter:
    def write_scalars(self, step, scalars):
        pass

    def sync(self):
        pass

    def close(self):
        pass


class _MetricsWriter:
    """metrics.jsonl and TensorBoard files in the workdir.

    A workdir on a bucket (objects there can't be appended to) gets them through a local
    mirror under the token cache directory: existing metrics are fetched first, and the
    files are copied up at every checkpoint and at the end.
    """

    def __init__(self, workdir):
        self.remote = None if is_local(os.fspath(workdir)) else _workdir(workdir)
        local = os.fspath(_workdir(workdir)) if self.remote is None else os.path.join(
            default_cache_dir(), "workdirs", hashlib.sha256(os.fspath(workdir).encode()).hexdigest()[:16])
        self.local = local
        if self.remote is not None:
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local)
            if (self.remote / "metrics.jsonl").exists():
                (self.remote / "metrics.jsonl").copy(epath.Path(local) / "metrics.jsonl")
        self._writer = MultiWriter([JsonlWriter(os.path.join(local, "metrics.jsonl")),
                                    TensorBoardWriter(os.path.join(local, "tb"))])

    def write_scalars(self, step, scalars):
        self._writer.write_scalars(step, scalars)

    def sync(self):
        if self.remote is None:
            return
        self._writer.flush()
        (self.remote / "tb").mkdir(parents=True, exist_ok=True)
        (epath.Path(self.local) / "metrics.jsonl").copy(self.remote / "metrics.jsonl", overwrite=True)
        for f in (epath.Path(self.local) / "tb").iterdir():
            f.copy(self.remote / "tb" / f.name, overwrite=True)

    def close(self):
        self.sync()
        self._writer.close()
