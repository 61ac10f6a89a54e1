"""The pure pieces of training: state init, train_step, eval_step (all jit-compiled).

The train state is a plain dict {"step", "params", "opt_state"}: a pytree that orbax saves
and restores as is. The step minimises any loss function of (params, batch, key), with any
parameters frozen (make_train_step); by default, next-token cross-entropy over all of them. Randomness (dropout) comes from fold_in(seed, step), so a step is a
pure function of (state, batch) and a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmjax import sharding
from lmjax.errors import LmjaxError
from lmjax.model import Transformer
from lmjax.train.loss import cross_entropy, next_token_loss, same_document  # noqa: F401  (cross_entropy: re-exported)
from lmjax.train.optimizer import freeze, frozen_mask


def _dummy_tokens(model: Transformer):
    return jnp.zeros((1, model.cfg.max_len), jnp.int32)


def param_shardings(model: Transformer, mesh: Mesh, rules=None, *, with_notes: bool = False):
    """NamedShardings of the parameters, from the logical axis names the model declares.

    A dimension that does not divide its mesh axes is replicated (with_notes=True also
    returns the list of those); heads must divide (lmjax.sharding.problems checks it first).
    """
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), _dummy_tokens(model)))
    shardings, notes = sharding.param_shardings(boxed["params"], mesh, rules)
    return (shardings, notes) if with_notes else shardings


def state_shardings(model: Transformer, optimizer: optax.GradientTransformation, mesh: Mesh, rules=None, *,
                    frozen=None):
    """Shardings of {"step", "params", "opt_state"}; optimizer moments follow their parameter.
    With `frozen`, the opt_state is `freeze(optimizer, frozen)`'s (see make_train_step)."""
    if frozen is not None:
        optimizer = freeze(optimizer, frozen)
    params = param_shardings(model, mesh, rules)
    abstract_params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt = _follow_params(abstract_opt, params, sharding.replicated(mesh))
    return {"step": sharding.replicated(mesh), "params": params, "opt_state": opt}


def _follow_params(tree, param_shardings, default):
    """Give each leaf of an optimizer state the sharding of the parameter it mirrors.

    Optimizer moments (mu, nu, ...) repeat the parameter tree under some prefix, so a
    leaf whose key path ends with a parameter's key path takes that parameter's sharding;
    counters and other leaves are replicated.
    """
    by_path = {tuple(path): s for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def pick(path, leaf):
        for i in range(len(path)):
            if tuple(path[i:]) in by_path:
                return by_path[tuple(path[i:])]
        return default

    return jax.tree_util.tree_map_with_path(pick, tree)


def activation_sharding(mesh: Mesh | None, rules=None):
    """A context in which the model's own activation annotations take effect on `mesh`.

    The model names logical axes only (nn.with_logical_constraint: each Block's residual
    sums are (batch, length, embed)); inside this context, while a step is traced, the
    `rules` map them to the mesh, e.g. split over the batch only under FSDP. Without it
    XLA may split these activations along d_model like the FSDP parameters and pay for it
    in all-to-alls: without the annotations an FSDP step on 8 simulated CPU devices took
    ~3x as long (timings: bench/README.md).
    """
    if mesh is None or mesh.size == 1:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
    stack.enter_context(nn.logical_axis_rules(rules or sharding.LOGICAL_RULES))
    return stack


def init_params(model: Transformer, key):
    return nn.unbox(model.init(key, _dummy_tokens(model))["params"])


def new_state(params, optimizer, frozen=None) -> dict:
    """The train state {"step": 0, "params", "opt_state"} of `params`, for make_train_step
    with the same `optimizer` and `frozen`."""
    if frozen is not None:
        optimizer = freeze(optimizer, frozen)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def init_state(model: Transformer, optimizer, mesh: Mesh, seed: int, rules=None, *, frozen=None):
    """Create the train state directly sharded: no host ever holds the whole model."""

    def init(key):
        return new_state(init_params(model, key), optimizer, frozen)

    # The key is an argument, not a constant, so that nothing invites XLA to constant-fold
    # the random initialisation at compile time (a constant key: jit(init) of a 350M model
    # still compiling after 100 s on an H200).
    init = jax.jit(init, out_shardings=state_shardings(model, optimizer, mesh, rules, frozen=frozen))
    with _threefry_as_gpu_kernel():
        return init(jax.random.key(seed))


@contextlib.contextmanager
def _threefry_as_gpu_kernel():
    """On GPU, draw random bits with jaxlib's prebuilt threefry kernel instead of compiling
    XLA's: the same bits, but XLA compiles one large threefry fusion per parameter shape.
    jit(init) of a 350M model on an H100: 58 s -> 7-11 s."""
    flag = "jax_threefry_gpu_kernel_lowering"
    before = getattr(jax.config, flag)
    jax.config.update(flag, before or jax.default_backend() == "gpu")
    try:
        yield
    finally:
        jax.config.update(flag, before)


# On a CPU, a step over micro-batches of about this many tokens per device is faster than
# one pass over the whole batch: XLA:CPU's elementwise passes (GELU, norms, softmax) ran 2-4x
# faster per element on the smaller activations (presumably they stay in cache). 512 was the
# fastest of 256 / 512 / 1024 tokens (timings: bench/README.md).
CPU_MICRO_BATCH_TOKENS = 512


def auto_grad_accum(batch_size: int, seq_len: int, data_parallel: int = 1, platform: str | None = None) -> int:
    """What `train.grad_accum = 0` means: the number of micro-batches per optimizer step.

    On CPU, the fewest micro-batches that bring each device's share down to
    CPU_MICRO_BATCH_TOKENS tokens (whole rows, and every micro-batch still divides over the
    `data_parallel` devices); on accelerators, 1. The optimizer step is the same either way:
    the gradient is the mean over the whole batch.
    """
    if (platform or jax.default_backend()) != "cpu":
        return 1
    rows = max(batch_size // data_parallel, 1)  # per device
    for accum in range(1, rows + 1):
        if rows % accum == 0 and rows // accum * seq_len <= CPU_MICRO_BATCH_TOKENS:
            return accum
    return rows  # one row per micro-batch is as small as it gets


def make_train_step(model: Transformer, optimizer, *, loss_fn=None, frozen=None, grad_accum: int = 1, seed: int = 0,
                    mesh: Mesh | None = None, rules=None, jit: bool = True):
    """-> jitted train_step(state, batch) -> (state, metrics); the state's buffers are donated.

    loss_fn(params, batch, key) -> loss, or (loss, aux) with aux a dict of scalar metrics:
    what the step minimises. `batch` is the step's batch as given (a dict of arrays whose
    leading axis is the batch), `key` a PRNG key for this step (and micro-batch), e.g. for
    dropout. Default: lmjax.train.loss.next_token_loss(model), the mean next-token
    cross-entropy of batch["inputs"] -> batch["targets"]. The metrics are {"loss",
    "grad_norm"} plus aux.

    frozen: parameters that never move, as a pytree of bools shaped like the parameters or a
    predicate on a leaf's key path (lmjax.train.optimizer.frozen_mask); the step runs
    `freeze(optimizer, frozen)`, so the state's opt_state must come from that too
    (`new_state(params, optimizer, frozen)` / `init_state(..., frozen=)`). grad_norm is then
    the free parameters' gradient norm.

    With a `mesh`, the step is compiled with explicit shardings: the state in and out as
    `state_shardings`, every batch leaf split by the `batch` rule, the metrics replicated.
    With grad_accum > 1 the batch is split into micro-batches whose gradients (and losses and
    aux metrics) are averaged in a lax.scan: one optimizer step at a micro-batch's memory.
    Micro-batch i is rows i, i + grad_accum, ... of every batch leaf, so that every device
    holds a share of each; the average equals the whole batch's gradient when the loss is a
    mean over rows of equal weight (a loss normalised per micro-batch, e.g. by a mask's sum,
    weighs each micro-batch equally instead).

    jit=False returns the step unjitted (no donation, no shardings), to run inside a
    caller's own jit, e.g. a lax.scan over many steps.
    """
    if loss_fn is None:
        loss_fn = next_token_loss(model)
    if frozen is not None:
        optimizer = freeze(optimizer, frozen)

    def with_aux(params, batch, key):
        out = loss_fn(params, batch, key)
        loss, aux = out if isinstance(out, tuple) else (out, {})
        return loss, dict(aux)

    grad_fn = jax.value_and_grad(with_aux, has_aux=True)
    micro_sharding = None
    if mesh is not None:
        micro_sharding = NamedSharding(mesh, PartitionSpec(None, *sharding.batch_spec(rules)))

    def micro(x):
        x = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)
        if (micro_sharding is None or x.ndim < len(micro_sharding.spec)
                or x.shape[1] % sharding.batch_divisor(mesh, rules)):
            return x
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def gradients(params, batch, key):
        """-> (loss, aux, grads), averaged over the micro-batches."""
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(params, batch, key)
            return loss, aux, grads

        def accumulate(carry, xs):
            i, micro_batch = xs
            (loss, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        xs = (jnp.arange(grad_accum), jax.tree.map(micro, batch))
        shapes = jax.eval_shape(with_aux, params, jax.tree.map(lambda x: x[0], xs[1]), key)  # (loss, aux)
        zeros = (*jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), jax.tree.map(jnp.zeros_like, params))
        (loss, aux, grads), _ = jax.lax.scan(accumulate, zeros, xs)
        return jax.tree.map(lambda x: x / grad_accum, (loss, aux, grads))

    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        params = state["params"]
        if frozen is not None:
            _check_opt_state(state["opt_state"], optimizer, params)
        with activation_sharding(mesh, rules):
            loss, aux, grads = gradients(params, batch, key)
        if frozen is not None:  # what the optimizer will use; XLA drops the frozen leaves' gradients
            mask = frozen_mask(params, frozen)
            grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, mask)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    if not jit:
        return train_step
    if mesh is None:
        return jax.jit(train_step, donate_argnums=(0,))
    state_sh = state_shardings(model, optimizer, mesh, rules)
    # a single sharding for a whole subtree (a pytree prefix): every batch leaf, every metric
    return jax.jit(train_step, donate_argnums=(0,), in_shardings=(state_sh, sharding.batch_sharding(mesh, rules)),
                   out_shardings=(state_sh, sharding.replicated(mesh)))


def _check_opt_state(opt_state, optimizer, params):
    expected = jax.tree.structure(jax.eval_shape(optimizer.init, params))
    if jax.tree.structure(opt_state) != expected:
        raise LmjaxError("the state's opt_state is not that of freeze(optimizer, frozen): make the state with "
                         "new_state(params, optimizer, frozen) or init_state(..., frozen=frozen)")


def make_eval_step(model: Transformer, mesh: Mesh | None = None, params_sharding=None, rules=None):
    """-> jitted eval_step(params, batch) -> summed loss (nats) and token count (replicated).

    A packed batch (with "segment_ids") counts only the targets inside their input's
    document, as the training loss does (lmjax.train.loss.next_token_loss)."""

    def eval_step(params, batch):
        with activation_sharding(mesh, rules):
            logits = model.apply({"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        if "segment_ids" in batch:
            inside = same_document(batch)
            return {"loss_sum": (losses * inside).sum(), "tokens": inside.sum()}
        return {"loss_sum": losses.sum(), "tokens": jnp.asarray(losses.size, jnp.float32)}

    if mesh is None:
        return jax.jit(eval_step)
    batch_sh = sharding.batch_sharding(mesh, rules)
    params_sh = params_sharding if params_sharding is not None else param_shardings(model, mesh, rules)
    out = {"loss_sum": sharding.replicated(mesh), "tokens": sharding.replicated(mesh)}
    # one sharding for every batch leaf (a pytree prefix), packed batches' ids included
    return jax.jit(eval_step, in_shardings=(params_sh, batch_sh), out_shardings=out)
