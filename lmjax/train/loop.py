"""The training loop: data, state, steps, evals, logs, checkpoints, preemption.

`train(config, workdir)` resumes automatically from the newest readable checkpoint in the
workdir. Everything a step needs is a pure function of (config, step), so a resumed run
sees exactly the batches and dropout masks an uninterrupted run would have seen; a resume
whose config would change them (`RESUME_FIELDS`) is refused unless allow_changes=True.
One run writes a workdir at a time: train holds its lock (lmjax.train.workdir.WorkdirLock).
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time


import jax
import numpy as np
from tqdm.auto import tqdm

from lmjax import distributed, sharding
from lmjax.config import ConfigError, config_from_dict, model_config
from lmjax.errors import LmjaxError
from lmjax.data import TokenData, corpus, eval_batches
from lmjax.data.mixture import MixtureData, canonical
from lmjax.data.shards import default_cache_dir
from lmjax.model import Transformer
from lmjax.model.accounting import count_params, flops_per_token
from lmjax.train import mfu as mfu_lib
from lmjax.train.checkpoint import Checkpointer, warn
from lmjax.train.optimizer import learning_rate_schedule, make_optimizer
from lmjax.train.steps import auto_grad_accum, init_state, make_eval_step, make_train_step, param_shardings
from lmjax.train.workdir import Workdir, WorkdirBusyError, build, open_workdir
from lmjax.train.run_metrics import RunMetrics
from lmjax.train.writers import MultiWriter


class NonFiniteLossError(LmjaxError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """Everything set up for a run, before the first step."""

    config: object
    workdir: str
    tokenizer: object
    data: TokenData | MixtureData
    model: Transformer
    optimizer: object
    mesh: object
    state: dict
    checkpointer: Checkpointer
    rules: tuple = sharding.LOGICAL_RULES
    notes: tuple = ()  # parameter dimensions replicated because they do not divide the mesh
    eos: int | None = None  # data.documents: the EOS id that separates the batches' documents


def config_json(config) -> dict:
    return json.loads(config.to_json())


class ResumeChangedError(ConfigError):
    """Resuming with a config that would not continue the saved run (see RESUME_FIELDS)."""


# What a resumed run must share with the saved one to continue it: the data its batches
# come from, their shape, and train.steps (the learning-rate schedule is stretched over it).
RESUME_FIELDS = ("data.source", "data.mixture", "data.text_key", "data.tokenizer", "data.val_fraction",
                 "data.seq_len", "data.documents", "train.batch_size", "train.steps")
_SENTENCEPIECE_FIELDS = ("data.spm_vocab_size", "data.spm_model_type", "data.spm_model_path")


def _resume_fields(config) -> dict:
    def get(dotted):
        section, key = dotted.split(".")
        return config[section][key]

    fields = {name: get(name) for name in RESUME_FIELDS}
    fields["data.seq_len"] = config.data.seq_len or config.model.max_len  # 0 means max_len
    fields["data.mixture"] = canonical(config.data.mixture)  # a checkpoint's JSON has lists for tuples
    if config.data.tokenizer == "sentencepiece":
        fields.update((name, get(name)) for name in _SENTENCEPIECE_FIELDS)
    return fields


def _check_resume(config, workdir: str, step: int, stored: dict, vocab_size: int, allow_changes: bool) -> None:
    """Resuming with another model is an error; so is a changed RESUME_FIELDS unless allowed.

    A step-0 checkpoint (`lmjax convert --from_hf`) has taken no step on any data yet, so
    fine-tuning it with a new data.source and train.steps is not a change.
    """
    mine = dataclasses.asdict(model_config(config, vocab_size))
    theirs = dict(stored["model"], vocab_size=stored["model"]["vocab_size"] or vocab_size)
    # scan_layers/remat/dtype change the program, not the model's shape; everything else must match
    ignore = {"scan_layers", "remat", "dtype", "dropout"}
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if k not in ignore and theirs.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"workdir {workdir} holds a checkpoint of a different model ({lines}); "
            "use another --workdir or the checkpoint's config"
        )
    if step == 0 or allow_changes:
        return
    before, now = _resume_fields(config_from_dict(stored)), _resume_fields(config)
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k)]
    if changed:
        kept = before["data.tokenizer"] != now["data.tokenizer"]
        note = " (the checkpoint's tokenizer is kept either way)" if kept else ""
        raise ResumeChangedError(
            f"workdir {workdir} was trained to step {step} with another config: {', '.join(changed)}{note}; a resumed "
            "run would not continue it (other batches or learning-rate schedule). If that is intended, pass "
            "--allow_changes (train(..., allow_changes=True)); else use the saved values or another --workdir")


def documents_eos(config, tokenizer) -> int | None:
    """The EOS id the batches' documents end at when data.documents is on, else None."""
    if not config.data.documents:
        return None
    if tokenizer.eos_id is None:
        raise ConfigError(f"data.documents needs a tokenizer with an end-of-document token; {config.data.tokenizer!r} "
                          "has none (set data.documents=False or use a tokenizer with an EOS)")
    return int(tokenizer.eos_id)


def setup(config, workdir, *, with_data: bool = True, writer: bool = False, allow_changes: bool = False) -> Run:
    """Tokenizer, token shards, model, mesh and (restored or fresh) sharded state.

    with_data=False skips the token shards. writer=True: this process writes the workdir
    (it holds the lock): Orbax removes the temporary directories of killed saves, and
    committed steps newer than the one resumed from, which could not be read, are moved
    aside (`<step>.unreadable`) so that the run can save those steps again.
    allow_changes: resume even if RESUME_FIELDS differ from the checkpoint's config (only
    a writer is held to them).
    """
    wd = open_workdir(workdir)
    wd.path.mkdir(parents=True, exist_ok=True)
    checkpointer = wd.checkpointer(keep=config.checkpoint.keep, save_every=config.checkpoint.every,
                                   async_save=config.checkpoint.async_save, exclusive=writer)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    found = corpus.sources(config.data) if with_data or checkpointer.latest_step() is None else None
    if checkpointer.latest_step() is None:
        tokenizer = corpus.make_tokenizer(config.data, found)
        model, mesh, rules = build(config, tokenizer.vocab_size, batch_size=config.train.batch_size)
        state = None  # initialised after the data checks below
    else:
        def check(step, stored, tokenizer):  # a reader (eval) may change all but the model: it continues no run
            _check_resume(config, wd.given, step, stored, tokenizer.vocab_size, allow_changes or not writer)

        # Straight into this run's shardings: the checkpoint may come from another mesh shape.
        restored = wd.restore(config, batch_size=config.train.batch_size, checkpointer=checkpointer, check=check)
        tokenizer, model, mesh, rules, state = (restored.tokenizer, restored.model, restored.mesh, restored.rules,
                                                restored.state)
        newer = [s for s in checkpointer.all_steps() if s > restored.step]  # each one failed to read
        for bad in newer if writer else ():
            warn(f"moved unreadable checkpoint step {bad} aside to {checkpointer.set_aside(bad)}; "
                 f"training continues from step {restored.step}")
    eos = documents_eos(config, tokenizer)  # before any compiling: a tokenizer without EOS is a config error
    data = None
    if with_data:
        data = corpus.token_data(config.data, tokenizer, config.data.cache_dir or default_cache_dir(),
                                 progress=jax.process_index() == 0, group=distributed.process_group(), found=found)
        problem = data.windows_problem(config.data.seq_len or model.cfg.max_len, config.train.batch_size)
        if problem:
            raise ConfigError(f"data: {problem}; use more text, a smaller data.seq_len or train.batch_size")
    _, notes = param_shardings(model, mesh, rules, with_notes=True)
    if state is None:
        state = init_state(model, optimizer, mesh, config.train.seed, rules)
    return Run(config, wd.given, tokenizer, data, model, optimizer, mesh, state, checkpointer, rules, tuple(notes),
               eos)


def _global_batch(run: Run, global_rows: int, load_rows) -> dict:
    """The global batch; this process reads only the rows its devices hold."""
    return sharding.assemble_batch(sharding.batch_sharding(run.mesh, run.rules), global_rows, load_rows)


def evaluate(run: Run, eval_step, params) -> dict[str, float]:
    """Val loss (nats/token), perplexity, and bits per byte over the configured val batches;
    for a mixture also `val_loss/NAME` and `val_bpb/NAME` per source (each over its own val
    split, the totals over all of them).

    Bits per byte divides the summed loss by the UTF-8 bytes of the predicted tokens, so it
    compares across tokenizers and with published bits-per-character figures.
    """
    c = run.config
    seq_len = c.data.seq_len or run.model.cfg.max_len
    token_bytes = run.tokenizer.token_bytes()
    out, sums = {}, np.zeros(3)  # loss, tokens, bytes over every split
    for name, val in run.data.val_splits().items():
        split = np.zeros(3)
        for batch in eval_batches(val, batch_size=c.train.batch_size, seq_len=seq_len,
                                  max_batches=c.train.eval_batches or None, eos=run.eos):
            got = eval_step(params, _global_batch(run, c.train.batch_size,
                                                  lambda a, b: {k: v[a:b] for k, v in batch.items()}))
            split += (float(got["loss_sum"]), float(got["tokens"]), _predicted_bytes(token_bytes, batch))
        sums += split
        if name:
            out[f"val_loss/{name}"] = split[0] / split[1]
            out[f"val_bpb/{name}"] = split[0] / math.log(2) / max(split[2], 1)
    loss = sums[0] / sums[1]
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_bpb": sums[0] / math.log(2) / max(sums[2], 1),
            **out}


def _predicted_bytes(token_bytes, batch) -> int:
    """UTF-8 bytes of the targets the loss counts: a packed batch leaves out those opening the next document."""
    counted = token_bytes[batch["targets"]]
    if "segment_ids" in batch:
        counted = counted * (batch["segment_ids"] == batch["target_segment_ids"])
    return int(counted.sum())


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


def _lock(wd: Workdir, say):
    """Take the workdir's lock (process 0 takes it for the whole run; every process learns the
    outcome, so all of them refuse together), or say why a bucket workdir is not locked."""
    lock, busy = wd.lock(), None
    if jax.process_index() == 0:
        try:
            if not lock.acquire():
                say(f"note: {wd.given} is not on a local disk, so it is not locked; "
                    "run one `lmjax train` on it at a time")
        except WorkdirBusyError as e:
            busy = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # multi-process runs only

        if int(multihost_utils.broadcast_one_to_all(np.int32(busy is not None))) and busy is None:
            busy = WorkdirBusyError(f"workdir {wd.given} is in use by another `lmjax train` (found by process 0)")
    if busy is not None:
        raise busy
    return lock


def train(config, workdir: str, *, stop_at_step: int | None = None, progress: bool = True, quiet: bool = False,
          allow_changes: bool = False) -> dict:
    """Train (or resume) until config.train.steps; returns a summary of the run.

    stop_at_step: stop (with a checkpoint) once this step is reached, as if preempted there.
    allow_changes: resume even if data.source, the tokenizer, data.seq_len, train.batch_size
    or train.steps differ from the checkpoint's config (RESUME_FIELDS); otherwise an error.
    A second run on a workdir that another live run is training in is a WorkdirBusyError.
    """
    lead = jax.process_index() == 0  # only process 0 prints, logs metrics and shows progress
    say = print if lead and not quiet else (lambda *a: None)
    wd = open_workdir(workdir)
    lock = _lock(wd, say)
    try:
        return _train(setup(config, wd, writer=True, allow_changes=allow_changes), stop_at_step=stop_at_step,
                      progress=progress and lead, say=say)
    finally:
        lock.release()


def _train(run: Run, *, stop_at_step, progress, say) -> dict:
    lead = jax.process_index() == 0
    c, model, state = run.config, run.model, run.state
    start = int(state["step"])
    total = c.train.steps
    end = min(total, stop_at_step) if stop_at_step is not None else total
    seq_len = c.data.seq_len or model.cfg.max_len
    fpt = flops_per_token(model.cfg, seq_len)
    peak, peak_source = mfu_lib.peak_flops_per_device()
    n_params = count_params(state["params"])
    meta = {"config": config_json(c), "tokenizer": run.tokenizer.to_json()}
    workdir = run.workdir
    say(
        f"lmjax: {n_params / 1e6:.2f}M params, {fpt / 1e6:.1f} MFLOPs/token, "
        f"{run.data.summary()}, mesh {sharding.describe(run.mesh)}"
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
    writer = RunMetrics(workdir, c.data.cache_dir or default_cache_dir()) if lead else MultiWriter([])

    def batch_at(step):
        return _global_batch(run, c.train.batch_size, lambda a, b: run.data.train_rows(
            seed=c.train.seed, step=step, batch_size=c.train.batch_size, seq_len=seq_len, start=a, stop=b,
            eos=run.eos))

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
                    per_source = ", ".join(f"{k[len('val_bpb/'):]} {v:.4f}" for k, v in ev.items()
                                           if k.startswith("val_bpb/"))
                    bar.write(f"step {step}: val loss {ev['val_loss']:.4f}, val bpb {ev['val_bpb']:.4f}"
                              + (f" (bpb by source: {per_source})" if per_source else ""))
                window["t"] = time.perf_counter()  # keep eval time out of tokens/s
            if run.checkpointer.should_save(step):
                save(step)
                writer.flush()  # a bucket workdir gets its metrics with each checkpoint
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
