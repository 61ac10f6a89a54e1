"""Checkpointing a training workdir with Orbax.

One checkpoint step is a directory holding three items:

    <directory>/<step>/state/      the arrays (params, optimizer state, step, ...)
    <directory>/<step>/config/     the run's config as JSON
    <directory>/<step>/tokenizer/  the tokenizer description as JSON

so `lmjax sample --workdir DIR` can rebuild everything from the checkpoint alone.
Orbax writes every step under a temporary name (`<step>.orbax-checkpoint-tmp`) and renames
it when complete, so an interrupted save never looks like a checkpoint; keep-last-N deletes
only finished ones. A committed step that cannot be read back (a truncated file, a disk
error) is skipped by `read_newest`, which falls back to the one before with a warning;
the trainer then moves it aside (`set_aside`) so it can save that step again. Nothing in a
checkpoint directory is ever deleted except by keep-last-N and, for the workdir's one
writer (`exclusive=True`), the temporary directories of saves that were killed.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lmjax.errors import LmjaxError, MissingFileError

_STATE, _CONFIG, _TOKENIZER = "state", "config", "tokenizer"
SET_ASIDE = ".unreadable"  # `<step>.unreadable`: not a step name to Orbax (digits only), so never listed
T = TypeVar("T")


class CheckpointMismatchError(LmjaxError):
    """The checkpoint's arrays do not have the shapes of the state it is restored into."""


class UnreadableCheckpointError(LmjaxError):
    """No committed checkpoint in the directory can be read back."""


def warn(message: str) -> None:
    """A one-line warning on stderr (process 0 only: every process would say the same)."""
    if jax.process_index() == 0:
        print(f"lmjax: warning: {message}", file=sys.stderr, flush=True)


def _reason(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    first = first.split(" See full TensorStore details")[0]  # the rest is a repr of the whole store spec
    return f"{type(error).__name__}: {first[:200]}"


def _path_str(path) -> str:
    """'params/blocks_0/attn/kernel' for a jax key path (dict keys, attrs, indices alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
    # Orbax metadata stores a namedtuple as a list of dicts, while the target has attributes;
    # both flatten to the same '/'-joined names, so comparing by name is structure-agnostic.
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): tuple(getattr(x, "shape", np.shape(x))) for p, x in leaves}


def _concrete_sharding(sharding):
    """A sharding Orbax can place arrays with.

    `jax.eval_shape` gives either no sharding (unsharded inputs) or a NamedSharding over an
    AbstractMesh (sharded inputs); neither names devices, so map them onto real ones.
    """
    if sharding is None:
        # jax's default placement (this process's first device: in a multi-process run
        # jax.devices()[0] belongs to process 0 only)
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = getattr(sharding, "mesh", None)
    if isinstance(mesh, jax.sharding.AbstractMesh):
        current = jax.sharding.get_mesh()  # the mesh set by `jax.set_mesh`, if any
        if not current.empty and current.abstract_mesh == mesh:
            concrete = current
        elif int(np.prod(mesh.axis_sizes)) == jax.device_count():
            concrete = jax.make_mesh(mesh.axis_sizes, mesh.axis_names, axis_types=mesh.axis_types)
        else:
            raise LmjaxError(
                f"cannot place restored arrays on abstract mesh {mesh}: its size does not match "
                f"the {jax.device_count()} devices; pass concrete shardings (jax.ShapeDtypeStruct("
                "..., sharding=NamedSharding(mesh, spec))) or set the mesh with jax.set_mesh")
        return jax.sharding.NamedSharding(concrete, sharding.spec)
    return sharding


def _abstract_leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_concrete_sharding(x.sharding))
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)  # numpy arrays / python scalars as templates: default device
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_concrete_sharding(None))


class Checkpointer:
    """Orbax CheckpointManager for a training workdir: async saves, keep-last-N, config + tokenizer inside every checkpoint."""

    def __init__(self, directory: str, *, keep: int = 3, save_every: int = 1000, async_save: bool = True,
                 exclusive: bool = False):
        """`exclusive`: this process is the directory's only writer (it holds the workdir lock),
        so the temporary directories that killed saves left behind are removed on open."""
        if keep < 1 or save_every < 1:
            raise LmjaxError(f"keep and save_every must be >= 1, got keep={keep}, save_every={save_every}")
        self.directory = epath.Path(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            # Created on first save, so a reader of a mistyped path leaves no empty dirs behind.
            create=False,
            # A reader never deletes tmp dirs: the writer may be filling one right now.
            cleanup_tmp_directories=exclusive,
        )
        handlers = {_STATE: ocp.StandardCheckpointHandler(),
                    _CONFIG: ocp.JsonCheckpointHandler(),
                    _TOKENIZER: ocp.JsonCheckpointHandler()}
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- queries -------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """Newest checkpoint step (including a save this object has in flight), or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    # -- saving --------------------------------------------------------------------------

    def save(self, step: int, state, *, config: dict, tokenizer: dict, force: bool = False) -> bool:
        """Save `state` (a pytree of arrays) with its config and tokenizer; True if a save started.

        Returns False without saving when `step` is not a multiple of `save_every` (unless
        `force`) or when a checkpoint of `step` already exists. With async saves this returns
        once the arrays are copied off the devices, so the caller may donate `state` next.
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        if step in self._mngr.all_steps():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _CONFIG: ocp.args.JsonSave(config),
            _TOKENIZER: ocp.args.JsonSave(tokenizer),
        })
        # force=True: our own save_every decides; Orbax's policy would silently skip a step
        # while an earlier async save is still running, or any step below the newest one.
        return bool(self._mngr.save(step, args=args, force=True))

    def wait(self) -> None:
        """Block until async saves are finished (and old checkpoints are pruned)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- restoring -----------------------------------------------------------------------

    def _resolve_step(self, step: int | None) -> int:
        self.wait()  # never read a step that this process is still writing
        steps = self._mngr.all_steps()
        if not steps:
            raise MissingFileError(f"no checkpoint found in {self.directory}")
        if step is None:
            return self._mngr.latest_step()
        if step not in steps:
            raise MissingFileError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {sorted(steps)}")
        return int(step)

    def restore(self, abstract_state, step: int | None = None, *, partial: bool = False):
        """Restore the arrays of `step` (latest if None) into the structure of `abstract_state`.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct (ideally with .sharding) or of
        concrete arrays; the result has its tree structure and shardings, whatever mesh the
        checkpoint was saved from (Orbax reads each device's piece). A checkpoint whose
        array shapes differ (another model) is a CheckpointMismatchError naming the leaves.
        partial=True reads only the subtrees `abstract_state` has, e.g. {"params": ...}
        without the optimizer state (a third of the bytes with Adam).
        """
        step = self._resolve_step(step)
        target = jax.tree.map(_abstract_leaf, abstract_state)
        self._check_shapes(step, target, partial=partial)
        if partial:
            # The state item is written by StandardCheckpointHandler, a PyTree handler that
            # offers no partial restore; the PyTree one reads the same files and does.
            with ocp.PyTreeCheckpointer() as reader:
                return reader.restore(self.directory / str(step) / _STATE, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        restored = self._mngr.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}))
        return restored[_STATE]

    def restore_meta(self, step: int | None = None) -> tuple[dict, dict]:
        """(config, tokenizer) JSON dicts of `step` (latest if None), without reading arrays."""
        step = self._resolve_step(step)
        meta = self._mngr.restore(step, args=ocp.args.Composite(**{
            _CONFIG: ocp.args.JsonRestore(), _TOKENIZER: ocp.args.JsonRestore()}))
        return meta[_CONFIG], meta[_TOKENIZER]

    # -- unreadable checkpoints ----------------------------------------------------------

    def read_newest(self, read: Callable[[int], T], *, step: int | None = None, at_most: int | None = None,
                    on_unreadable: Callable[[str], None] = warn) -> tuple[int, T]:
        """(step, read(step)) for the newest step (<= at_most) that `read` can read, or for `step`.

        A step whose read fails is reported in one line through `on_unreadable` and the one
        before it is tried; nothing is deleted. A given `step` is read or refused, never
        replaced. An LmjaxError from `read` (another model, a changed config) is about the
        caller's input, not the files: it propagates at once. No readable step is an
        UnreadableCheckpointError naming each step's problem.
        """
        if step is not None:
            steps = [self._resolve_step(step)]
        else:
            self.wait()
            steps = sorted((s for s in self._mngr.all_steps() if at_most is None or s <= at_most), reverse=True)
            if not steps:
                raise MissingFileError(f"no checkpoint found in {self.directory}")
        problems = []
        for at in steps:
            try:
                value = read(at)
            except LmjaxError:
                raise
            except Exception as e:  # noqa: BLE001  (tensorstore, json and orbax raise all kinds)
                problems.append((at, _reason(e)))
                continue
            for bad, reason in problems:
                on_unreadable(f"checkpoint step {bad} in {self.directory} is unreadable ({reason}); "
                              f"using step {at}, the newest readable one (nothing was deleted)")
            return at, value
        listed = "; ".join(f"step {bad}: {reason}" for bad, reason in problems)
        raise UnreadableCheckpointError(
            f"no readable checkpoint {'of step ' + str(step) + ' ' if step is not None else ''}in {self.directory} "
            f"({listed}); the files are left as they are: restore them from a copy, or use another --workdir")

    def set_aside(self, step: int) -> epath.Path:
        """Rename an unreadable committed step to `<step>.unreadable[.N]` so that it can be
        saved again (its files are kept for inspection); returns the new path."""
        self.wait()
        source = self.directory / str(step)
        target, n = self.directory / f"{step}{SET_ASIDE}", 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}{SET_ASIDE}.{n}"
        source.rename(target)
        self._mngr.reload()
        return target

    def _check_shapes(self, step: int, target, *, partial: bool = False) -> None:
        # Compare against the checkpoint's metadata first: Orbax's own error for a mismatch is a
        # deep traceback, this one says which parameters differ.
        meta = self._mngr.item_metadata(step)[_STATE]
        saved = _shapes(getattr(meta, "tree", meta))
        wanted = _shapes(target)
        if partial:  # only the top-level subtrees asked for ("params", ...)
            tops = {name.split("/")[0] for name in wanted}
            saved = {name: shape for name, shape in saved.items() if name.split("/")[0] in tops}
        problems = []
        for name in sorted(saved.keys() | wanted.keys()):
            if name not in saved:
                problems.append(f"{name}: missing from the checkpoint (expected {wanted[name]})")
            elif name not in wanted:
                problems.append(f"{name}: in the checkpoint {saved[name]} but not expected")
            elif saved[name] != wanted[name]:
                problems.append(f"{name}: checkpoint {saved[name]} vs expected {wanted[name]}")
        if problems:
            shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} does not match the expected state: its "
                f"parameter shapes differ (a different model or config?):\n  {shown}")
