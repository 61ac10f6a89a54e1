"""Training sparse dictionaries: one jit-compiled step for one or many dictionaries at once.

`fit(dictionary, source, steps=..., ...)` trains with Adam. Each step:

    loss, grads = value_and_grad(dictionary.loss)(params, x, y, dead)
    grads       = dictionary.project_gradient(params, grads)   # unit-norm decoder rows
    params      = dictionary.constrain(adam(params, grads))    # renormalise; BatchTopK threshold

Many dictionaries train in the same compiled step by `jax.vmap` over a leading member axis:
different seeds (`seeds`), different traced hyperparameters (`hypers`: k up to the
dictionary's k, l1, l0_coef), or different inputs (a source whose batches carry a member
axis, e.g. every layer's residual stream). Under a mesh the batch is split over the `data`
axis and the latents over `fsdp` x `tensor`.

Batches are a pure function of (seed, step), so with a `workdir` a stopped run resumes
bitwise (Orbax checkpoints of params, Adam state and the dead-latent counters), and the
metrics go to metrics.jsonl and TensorBoard like a model's training run. A latent counts as
dead once it has not fired for `dead_window` tokens (default 10M, OpenAI's and EleutherAI's
N); AuxK uses the latents dead by `aux_window` tokens (default: the same).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from lmjax.errors import LmjaxError
from lmjax.sae.architectures import Dictionary
from lmjax.sae.store import open_run, save_dictionaries

BATCH_AXES = ("data",)
LATENT_AXES = ("fsdp", "tensor")
DEFAULT_DEAD_WINDOW = 10_000_000


# -- Sources of activations: batch(step, batch_size) is a pure function of (seed, step) ---

class ArraySource:
    """Batches drawn from arrays in memory (or memory-mapped), reshuffled every epoch.

    x [n, d_in] (or [members, n, d_in] with `member_axis=True`: one input per dictionary),
    y likewise for a transcoder's targets (None: an SAE)."""

    def __init__(self, x, y=None, *, seed: int = 0, member_axis: bool = False):
        self.x, self.y, self.seed, self.member_axis = x, y, seed, member_axis
        n_axis = 1 if member_axis else 0
        self.n = int(np.shape(x)[n_axis])
        if y is not None and int(np.shape(y)[n_axis]) != self.n:
            raise LmjaxError(f"x has {self.n} rows but y has {np.shape(y)[n_axis]}; a transcoder needs one target per input")
        self.d_in = int(np.shape(x)[-1])
        self.d_out = int(np.shape(y)[-1]) if y is not None else self.d_in
        self._epoch_order = (None, None)

    def _rows(self, step: int, batch_size: int) -> np.ndarray:
        per_epoch = max(self.n // batch_size, 1)
        epoch, offset = divmod(step, per_epoch)
        if self._epoch_order[0] != epoch:  # one permutation per epoch, not per step
            self._epoch_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        order = self._epoch_order[1]
        return np.sort(order[offset * batch_size:(offset + 1) * batch_size])  # sorted: fast memmap reads

    def batch(self, step: int, batch_size: int):
        if batch_size > self.n:
            raise LmjaxError(f"batch_size={batch_size} is larger than the {self.n} activations available")
        rows = self._rows(step, batch_size)
        take = (lambda a: np.asarray(a[:, rows])) if self.member_axis else (lambda a: np.asarray(a[rows]))
        return take(self.x), (None if self.y is None else take(self.y))

    def sample(self, n: int):
        return self.batch(0, min(n, self.n))


class GeneratorSource:
    """Fresh batches from `sample(key, batch_size) -> x` or `-> (x, y)` (toy data), with
    key = fold_in(key(seed), step)."""

    def __init__(self, sample, *, seed: int = 0, member_axis: bool = False):
        self._sample, self.seed, self.member_axis = sample, seed, member_axis
        x, y = self.batch(0, 2)
        self.d_in = int(x.shape[-1])
        self.d_out = int(y.shape[-1]) if y is not None else self.d_in

    def batch(self, step: int, batch_size: int):
        out = self._sample(jax.random.fold_in(jax.random.key(self.seed), step), batch_size)
        x, y = out if isinstance(out, tuple) else (out, None)
        return np.asarray(x), (None if y is None else np.asarray(y))

    def sample(self, n: int):
        return self.batch(2**30, n)


# -- The result -----------------------------------------------------------------------------

@dataclasses.dataclass
class Fitted:
    """Trained dictionaries: `dictionaries[i]` with `params` (stacked over a leading member
    axis when there are several), the logged metrics, and the final state."""

    dictionaries: list
    params: Any
    history: list
    state: Any = None

    @property
    def dictionary(self):
        return self.dictionaries[0]

    def member(self, i: int):
        """(dictionary, params) of member i."""
        if len(self.dictionaries) == 1:
            return self.dictionaries[0], self.params
        return self.dictionaries[i], jax.tree.map(lambda a: a[i], self.params)


# -- The step -------------------------------------------------------------------------------

def make_optimizer(lr: float, steps: int, *, warmup_steps: int = 0, decay_fraction: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, clip_norm: Optional[float] = None):
    """Adam with an optional linear warmup and a linear decay to 0 over the last
    `decay_fraction` of the steps (constant in between). clip_norm: first scale the
    gradient down to this global norm (SAELens always clips at 1.0); under vmap each
    member's norm is its own."""
    if clip_norm is not None and not clip_norm > 0:
        raise LmjaxError(f"clip_norm must be a positive number or None; got {clip_norm}")
    decay = int(round(steps * decay_fraction))
    stable = max(steps - warmup_steps - decay, 0)
    parts, bounds = [], []
    if warmup_steps:
        parts.append(optax.linear_schedule(0.0, lr, warmup_steps))
        bounds.append(warmup_steps)
    parts.append(optax.constant_schedule(lr))
    if decay:
        bounds.append(warmup_steps + stable)
        parts.append(optax.linear_schedule(lr, 0.0, decay))
    schedule = optax.join_schedules(parts, bounds) if bounds else parts[0]
    adam = optax.adam(schedule, b1=b1, b2=b2)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def make_step(dictionary, optimizer, *, n_members: int, member_inputs: bool, aux_window: int, jit: bool = True):
    """The compiled step (state, x, y, hypers) -> (state, metrics) for `n_members`
    vmapped dictionaries; state = {params, opt, since_fired, step} with a member axis."""

    def one(params, opt_state, since, x, y, hyper, *, with_aux: bool):
        dead = since >= aux_window if with_aux else None
        (loss, aux), grads = jax.value_and_grad(dictionary.loss, has_aux=True)(params, x, y, dead, hyper)
        grads = dictionary.project_gradient(params, grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = dictionary.constrain(optax.apply_updates(params, updates), aux)
        tokens = x.shape[0]
        since = jnp.where(aux["fired"] > 0, 0, since + tokens)
        metrics = {"loss": loss, "mse": aux["mse"], "l0": aux["l0"]}
        if "sparsity" in aux:
            metrics["sparsity"] = aux["sparsity"]
        if uses_aux:
            metrics["aux_loss"] = aux.get("aux_loss", jnp.zeros((), loss.dtype))
        return params, opt_state, since, metrics

    in_axes = (0, 0, 0, 0 if member_inputs else None, 0 if member_inputs else None, 0)
    uses_aux = getattr(dictionary, "arch", "") in ("topk", "batchtopk", "matryoshka") and not hasattr(dictionary,
                                                                                                        "hooks_out")

    def members(with_aux):
        return jax.vmap(functools.partial(one, with_aux=with_aux), in_axes=in_axes)

    def step_fn(state, x, y, hypers):
        args = (state["params"], state["opt"], state["since_fired"], x, y, hypers)
        if uses_aux:
            # AuxK costs a second top-k and decode; while no latent of any member is dead it
            # adds exactly nothing, so the step skips it (a cond outside the vmap: inside, both
            # branches would run).
            any_dead = jnp.any(state["since_fired"] >= aux_window)
            params, opt, since, metrics = jax.lax.cond(any_dead, members(True), members(False), *args)
        else:
            params, opt, since, metrics = members(False)(*args)
        return {"params": params, "opt": opt, "since_fired": since, "step": state["step"] + 1}, metrics

    return jax.jit(step_fn, donate_argnums=(0,)) if jit else step_fn


def _member_hypers(dictionary: Dictionary, hypers, n: int):
    """The traced hyperparameters {name: [n]} of the members (k, l1, l0_coef)."""
    allowed = ("k", "l1", "l0_coef")
    if hypers is None:
        return {}
    if len(hypers) != n:
        raise LmjaxError(f"{len(hypers)} hyperparameter sets for {n} dictionaries; give one per dictionary")
    keys = sorted({k for h in hypers for k in h})
    bad = [k for k in keys if k not in allowed]
    if bad:
        raise LmjaxError(f"hyperparameter(s) {bad} cannot vary within one compiled step; allowed: {', '.join(allowed)}")
    out = {}
    for key in keys:
        values = [h.get(key, getattr(dictionary, key)) for h in hypers]
        if key == "k":
            if any(not 1 <= int(v) <= dictionary.k for v in values):
                raise LmjaxError(f"every member's k must be between 1 and the dictionary's k={dictionary.k}; got {values}")
            out[key] = jnp.asarray(values, jnp.int32)
        else:
            out[key] = jnp.asarray(values, jnp.float32)
    return out


def _state_shardings(mesh, state, member_inputs):
    """NamedShardings of the state (the latent axis over fsdp x tensor, in the parameters
    and in Adam's moments alike) and of a batch (its rows over data)."""
    latent = tuple(a for a in LATENT_AXES if mesh.shape.get(a, 1) > 1) or None
    rows = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1) or None
    latent_dim = {"W_enc": -1, "b_enc": -1, "threshold": -1, "W_dec": -2}

    def spec(path, leaf):
        dims = [None] * np.ndim(leaf)
        name = next((getattr(k, "key") for k in reversed(path) if isinstance(getattr(k, "key", None), str)), None)
        if name in latent_dim and np.ndim(leaf) >= 2:
            dims[latent_dim[name]] = latent
        elif name == "since_fired":
            dims[-1] = latent
        return NamedSharding(mesh, PartitionSpec(*dims))

    x_spec = PartitionSpec(None, rows) if member_inputs else PartitionSpec(rows)
    return jax.tree_util.tree_map_with_path(spec, state), NamedSharding(mesh, x_spec)


def fit(dictionary: Dictionary, source, *, steps: int, batch_size: int = 4096, lr: float = 4e-4,
        seed: int = 0, seeds: Optional[Sequence[int]] = None, hypers: Optional[Sequence[dict]] = None,
        scale: bool = True, dead_window: int = DEFAULT_DEAD_WINDOW, aux_window: Optional[int] = None,
        warmup_steps: int = 0, decay_fraction: float = 0.0, clip_norm: Optional[float] = None,
        log_every: int = 100, workdir: Optional[str] = None,
        save_every: int = 1000, progress: bool = True, mesh=None, init_b_dec: str = "mean",
        config: Optional[dict] = None) -> Fitted:
    """Train `dictionary` (or one per seed / per hyperparameter set / per source member, all
    in one vmapped step) on `source` for `steps` steps of `batch_size` tokens.

    scale: set input_scale / output_scale so that E||x s|| = sqrt(d) on a sample of the source.
    init_b_dec: "mean" starts b_dec at the mean of the targets (scaled), "zero" at 0.
    clip_norm: clip each member's gradient to this global norm before Adam (None: no clip).
    workdir: checkpoints (resumed automatically, bitwise), metrics.jsonl and tb/ go there.
    """
    if steps < 1 or batch_size < 1:
        raise LmjaxError(f"steps and batch_size must be >= 1; got steps={steps}, batch_size={batch_size}")
    if source.d_in != dictionary.d_in or source.d_out != dictionary.d_out:
        raise LmjaxError(f"the source gives d_in={source.d_in}, d_out={source.d_out} but the dictionary "
                         f"expects d_in={dictionary.d_in}, d_out={dictionary.d_out}")
    member_inputs = bool(getattr(source, "member_axis", False))
    n_from_source = int(source.batch(0, 1)[0].shape[0]) if member_inputs else None
    seeds = list(seeds) if seeds is not None else None
    n = max(len(seeds or [0]), len(hypers or [0]), n_from_source or 1)
    if seeds is None:
        seeds = [seed + i for i in range(n)]
    if len(seeds) != n:
        raise LmjaxError(f"{len(seeds)} seeds for {n} dictionaries; give one per dictionary")
    member_hypers = _member_hypers(dictionary, hypers, n)
    aux_window = dead_window if aux_window is None else aux_window

    # Scaling and b_dec's start, from a sample of the source.
    x0, y0 = source.sample(min(8192, 16 * batch_size))
    if scale:
        dictionary = dictionary.with_scales(x0[0] if member_inputs else x0,
                                            None if y0 is None else (y0[0] if member_inputs else y0))
    optimizer = make_optimizer(lr, steps, warmup_steps=warmup_steps, decay_fraction=decay_fraction,
                               clip_norm=clip_norm)

    def init_member(i):
        params = dictionary.init(jax.random.key(seeds[i]))
        if init_b_dec == "mean":
            target = (x0 if y0 is None else y0)
            target = target[i] if member_inputs else target
            params["b_dec"] = jnp.asarray(dictionary.scale_targets(np.mean(np.asarray(target, np.float64), 0)),
                                          jnp.float32)
        return params

    members = [init_member(i) for i in range(n)]
    params = jax.tree.map(lambda *a: jnp.stack(a), *members)
    state = {"params": params, "opt": jax.vmap(optimizer.init)(params),
             "since_fired": jnp.zeros((n, dictionary.n_latents), jnp.int32), "step": jnp.zeros((), jnp.int32)}
    x_sh = None
    if mesh is not None:
        state_sh, x_sh = _state_shardings(mesh, state, member_inputs)
        state = jax.device_put(state, state_sh)
    step_fn = make_step(dictionary, optimizer, n_members=n, member_inputs=member_inputs, aux_window=aux_window)

    writer = checkpointer = None
    start = 0
    run_config = {"dictionary": dictionary.to_dict(), "steps": steps, "batch_size": batch_size, "lr": lr,
                  "seeds": seeds, "hypers": list(hypers or []), "dead_window": dead_window, "aux_window": aux_window,
                  "warmup_steps": warmup_steps, "decay_fraction": decay_fraction, **(config or {})}
    if clip_norm is not None:  # absent when unset: run directories written before it still resume
        run_config["clip_norm"] = clip_norm
    if workdir is not None:
        checkpointer, writer, restored = open_run(workdir, state, run_config, save_every=save_every)
        if restored is not None:
            state = restored
            start = int(state["step"])

    history = []
    bar = _progress(steps, start, progress)
    try:
        for step in range(start, steps):
            x, y = source.batch(step, batch_size)
            x = dictionary.scale_inputs(np.asarray(x, np.float32))
            y = None if y is None else dictionary.scale_targets(np.asarray(y, np.float32))
            if x_sh is not None:
                x = jax.device_put(x, x_sh)
                y = None if y is None else jax.device_put(y, x_sh)
            state, metrics = step_fn(state, x, y, member_hypers)
            done = step + 1
            if done % log_every == 0 or done == steps:
                row = _log_row(done, metrics, state, dead_window)
                history.append(row)
                if writer is not None:
                    writer.write_scalars(done, {k: v for k, v in row.items() if k != "step"})
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_fraction']:.3f}")
            if checkpointer is not None and (done % save_every == 0 or done == steps):
                checkpointer.save(done, state, config=run_config, tokenizer={}, force=done == steps)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.wait()
            checkpointer.close()
        if writer is not None:
            writer.close()
    dictionaries = [_member_dictionary(dictionary, member_hypers, i) for i in range(n)]
    params = state["params"] if n > 1 else jax.tree.map(lambda a: a[0], state["params"])
    if workdir is not None:
        save_dictionaries(workdir, dictionaries, params)
    return Fitted(dictionaries, params, history, state)


def _member_dictionary(dictionary: Dictionary, hypers: dict, i: int) -> Dictionary:
    changes = {k: (int(v[i]) if k == "k" else float(v[i])) for k, v in hypers.items()}
    return dataclasses.replace(dictionary, **changes) if changes else dictionary


def _log_row(step: int, metrics: dict, state: dict, dead_window: int) -> dict:
    """The logged means over members (and per-member values when there are several)."""
    values = jax.device_get(metrics)
    dead = np.asarray(jax.device_get(state["since_fired"]) >= dead_window)
    row = {"step": step}
    for key, v in values.items():
        v = np.asarray(v)
        row[key] = float(v.mean())
        if v.size > 1:
            row.update({f"{key}/{i}": float(x) for i, x in enumerate(v)})
    row["dead_fraction"] = float(dead.mean())
    return row


def _progress(steps: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # local: only a run with a progress bar needs it
    return tqdm(total=steps, initial=start, desc="dictionary", unit="step", dynamic_ncols=True)
