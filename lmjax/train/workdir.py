"""The one way to open a workdir: its paths, its stored config and tokenizer, its state
restored onto the current mesh, and the lock of the run that writes it.

    WORKDIR/checkpoints/<step>/   state, config and tokenizer of a saved step (checkpoint.py)
    WORKDIR/metrics.jsonl, tb/    the training loop's metrics
    WORKDIR/.lock                 held by the one `lmjax train` writing the workdir

Every command that reads a workdir (train's resume, eval, sample, explain, convert) and
every notebook goes through here. A trained model in one line:

    model, params, tokenizer = open_workdir("runs/qs").load()

A path is resolved once: a local one becomes absolute (`--workdir runs/qs` is relative,
Orbax wants absolute paths), `~` is expanded, a bucket path (gs://...) is kept as it is.
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import os
import socket
from typing import Callable, Iterable, NamedTuple

import jax
from etils import epath

from lmjax import sharding
from lmjax.config import ConfigError, apply_overrides, config_from_dict, model_config
from lmjax.data.shards import is_local
from lmjax.data.tokenizer_json import tokenizer_from_json
from lmjax.errors import LmjaxError, MissingFileError
from lmjax.model import Transformer
from lmjax.train.checkpoint import Checkpointer, warn
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import init_params, init_state, param_shardings, state_shardings

CHECKPOINTS, METRICS, TENSORBOARD, LOCK = "checkpoints", "metrics.jsonl", "tb", ".lock"


class WorkdirError(LmjaxError, NotADirectoryError):
    """A workdir path that cannot be one: it names an existing file."""


class WorkdirBusyError(LmjaxError):
    """Another live `lmjax train` holds the workdir's lock."""


def resolve(workdir) -> epath.Path:
    """The workdir's one spelling: local paths absolute and `~`-expanded, gs://... kept.

    A path that is (or lies under) an existing file is a WorkdirError.
    """
    text = os.fspath(workdir)
    if not is_local(text):
        return epath.Path(text)
    local = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    probe = local
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = "is a file" if probe == local else f"lies under the file {probe}"
        raise WorkdirError(f"workdir {text} {where}; a workdir is a directory: give a new or existing directory")
    return epath.Path(local)


class Loaded(NamedTuple):
    """What a notebook wants from a workdir: `model, params, tokenizer = ...load()`."""

    model: Transformer
    params: dict
    tokenizer: object


@dataclasses.dataclass
class Restored:
    """A checkpoint restored onto the current mesh, with everything needed to use it."""

    step: int
    config: object  # the run's config (with any overrides), validated
    tokenizer: object
    model: Transformer
    mesh: jax.sharding.Mesh
    rules: tuple
    state: dict  # {"step", "params", "opt_state"}, or {"params"} when restored with params_only

    @property
    def params(self):
        return self.state["params"]


def build(config, vocab_size: int, *, batch_size: int | None = None):
    """(model, mesh, rules) of `config` on this machine's devices, checked before anything compiles.

    batch_size: also check that it divides the data-parallel width (training and eval do;
    sampling from a checkpoint does not use the config's batch).
    """
    cfg = model_config(config, vocab_size)
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
    rules = sharding.logical_rules(config.mesh)
    try:
        mesh = sharding.make_mesh(config.mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problems = sharding.problems(mesh, n_head=cfg.n_head, n_kv_head=cfg.kv_heads, rules=rules,
                                 batch_size=sharding.batch_divisor(mesh, rules) if batch_size is None else batch_size)
    if problems:
        raise ConfigError("; ".join(problems))
    return Transformer(cfg), mesh, rules


def abstract_state(model, optimizer, mesh, rules, *, params_only: bool = False):
    """ShapeDtypeStructs of the train state (or of {"params"}) with this mesh's shardings."""
    if params_only:
        shapes = {"params": jax.eval_shape(lambda: init_params(model, jax.random.key(0)))}
        shardings = {"params": param_shardings(model, mesh, rules)}
    else:
        shapes = jax.eval_shape(lambda: init_state(model, optimizer, mesh, 0, rules))
        shardings = state_shardings(model, optimizer, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


class Workdir:
    """A training workdir: where its files are and what its checkpoints hold."""

    def __init__(self, workdir):
        self.given = os.fspath(workdir)  # as the user wrote it, for messages
        self.path = resolve(workdir)

    def __repr__(self):
        return f"Workdir({os.fspath(self.path)!r})"

    def __fspath__(self):
        return os.fspath(self.path)

    @property
    def is_local(self) -> bool:
        return is_local(os.fspath(self.path))

    @property
    def checkpoints(self) -> epath.Path:
        return self.path / CHECKPOINTS

    @property
    def metrics(self) -> epath.Path:
        return self.path / METRICS

    @property
    def tensorboard(self) -> epath.Path:
        return self.path / TENSORBOARD

    def checkpointer(self, *, keep: int = 3, save_every: int = 1000, async_save: bool = True,
                     exclusive: bool = False) -> Checkpointer:
        """The Orbax checkpointer of WORKDIR/checkpoints (`exclusive`: see Checkpointer)."""
        return Checkpointer(os.fspath(self.checkpoints), keep=keep, save_every=save_every, async_save=async_save,
                            exclusive=exclusive)

    def steps(self) -> list[int]:
        with self.checkpointer() as ckpt:
            return ckpt.all_steps()

    def latest_step(self) -> int | None:
        with self.checkpointer() as ckpt:
            return ckpt.latest_step()

    def _require_checkpoint(self, ckpt: Checkpointer) -> None:
        if ckpt.latest_step() is None:
            raise MissingFileError(f"no checkpoint in {self.given}/{CHECKPOINTS}: train first "
                                   f"(lmjax train --config CONFIG --workdir {self.given})")

    # -- the stored config and tokenizer ---------------------------------------------------

    def meta(self, step: int | None = None, *, on_unreadable: Callable[[str], None] = warn) -> tuple[int, dict, dict]:
        """(step, config JSON, tokenizer JSON) of `step`, or of the newest readable step."""
        with self.checkpointer() as ckpt:
            self._require_checkpoint(ckpt)
            step, (config, tokenizer) = ckpt.read_newest(ckpt.restore_meta, step=step, on_unreadable=on_unreadable)
        return step, config, tokenizer

    def config(self, overrides: Iterable[str] = (), *, step: int | None = None):
        """The run's stored config with `section.key=value` overrides, validated like training's."""
        _, config, _ = self.meta(step)
        return apply_overrides(config_from_dict(config), overrides)

    def tokenizer(self, step: int | None = None):
        _, _, tokenizer = self.meta(step)
        return tokenizer_from_json(tokenizer)

    # -- arrays ----------------------------------------------------------------------------

    def restore(self, config=None, *, overrides: Iterable[str] = (), step: int | None = None,
                params_only: bool = False, batch_size: int | None = None, checkpointer: Checkpointer | None = None,
                check: Callable[[int, dict, object], None] | None = None,
                on_unreadable: Callable[[str], None] = warn) -> Restored:
        """Restore `step` (default: the newest readable one) onto the mesh of the config.

        config: the config to build the model and mesh from (default: the stored one, with
        `overrides`); params_only: read {"params"} without the optimizer state; batch_size:
        also check that it divides the mesh (see `build`); check(step, stored config JSON,
        tokenizer): raise an LmjaxError to refuse a step before its arrays are read (the
        resume checks). An unreadable newest step falls back to the one before, with a warning.
        """
        own = checkpointer is None
        ckpt = self.checkpointer() if own else checkpointer
        try:
            self._require_checkpoint(ckpt)

            def read(at: int) -> Restored:
                stored, tokenizer_json = ckpt.restore_meta(at)
                tokenizer = tokenizer_from_json(tokenizer_json)
                if check is not None:
                    check(at, stored, tokenizer)
                run_config = config if config is not None else apply_overrides(config_from_dict(stored), overrides)
                model, mesh, rules = build(run_config, tokenizer.vocab_size, batch_size=batch_size)
                optimizer = None if params_only else make_optimizer(run_config.optimizer, run_config.train.steps)
                target = abstract_state(model, optimizer, mesh, rules, params_only=params_only)
                state = ckpt.restore(target, at, partial=params_only)
                return Restored(at, run_config, tokenizer, model, mesh, rules, state)

            return ckpt.read_newest(read, step=step, on_unreadable=on_unreadable)[1]
        finally:
            if own:
                ckpt.close()

    def load(self, overrides: Iterable[str] = (), *, step: int | None = None) -> Loaded:
        """(model, params, tokenizer) of the newest readable checkpoint (or `step`), params only."""
        r = self.restore(overrides=overrides, step=step, params_only=True)
        return Loaded(r.model, r.params, r.tokenizer)

    # -- the writer's lock -----------------------------------------------------------------

    def lock(self) -> "WorkdirLock":
        """The lock `lmjax train` holds while it writes this workdir (see WorkdirLock)."""
        return WorkdirLock(self)


def open_workdir(workdir) -> Workdir:
    """Open a workdir (nothing is read until asked): `open_workdir("runs/qs").load()`."""
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


class WorkdirLock:
    """An exclusive lock on a workdir, held by the one run that writes it.

    flock(2) on WORKDIR/.lock: the kernel releases it when its holder exits, however it
    exits (kill -9, a crash, a lost node on NFS once its lease expires), so a dead run never
    leaves it stuck; there is nothing to clean up by hand. The file says who holds it (host,
    pid, start), for the message of a refused second run. A workdir on a bucket (gs://...)
    is not locked: object stores have no lock that a dead process gives back, so `acquire`
    returns False there and the caller says so; run one `lmjax train` per bucket workdir.
    """

    def __init__(self, workdir: Workdir):
        self.workdir = workdir
        self.path = workdir.path / LOCK
        self._fd = None

    def acquire(self) -> bool:
        """Take the lock (True), or False for a bucket workdir; WorkdirBusyError if it is held."""
        if not self.workdir.is_local:
            return False
        self.workdir.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkdirBusyError(
                f"workdir {self.workdir.given} is in use by another `lmjax train` ({holder}); wait for it to end or "
                "stop it (a run that died holds no lock), or use another --workdir") from None
        os.ftruncate(fd, 0)
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
