"""The pure pieces of training: state init, train_step, eval_step (all jit-compiled).

The train state is a plain dict {"step", "params", "opt_state"}: a pytree that orbax saves
and restores as is. Randomness (dropout) comes from fold_in(seed, step), so a step is a
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
from lmjax.model import Transformer
from lmjax.train.loss import cross_entropy  # noqa: F401  (re-exported: the step's loss)


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


def state_shardings(model: Transformer, optimizer: optax.GradientTransformation, mesh: Mesh, rules=None):
    """Shardings of {"step", "params", "opt_state"}; optimizer moments follow their parameter."""
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
    in all-to-alls. 8 simulated CPU devices, 4x256 model, one step, same run (2026-11-26):
    FSDP 291 ms with the annotations vs 957 ms without, FSDP x TP 282 vs 567, one device
    246 ms.
    """
    if mesh is None or mesh.size == 1:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
    stack.enter_context(nn.logical_axis_rules(rules or sharding.LOGICAL_RULES))
    return stack


def init_params(model: Transformer, key):
    return nn.unbox(model.init(key, _dummy_tokens(model))["params"])


def init_state(model: Transformer, optimizer, mesh: Mesh, seed: int, rules=None):
    """Create the train state directly sharded: no host ever holds the whole model."""

    def init(key):
        params = init_params(model, key)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}

    # The key is an argument, not a constant, so that nothing invites XLA to constant-fold
    # the random initialisation at compile time (a constant key: jit(init) of a 350M model
    # still compiling after 100 s on an H200).
    init = jax.jit(init, out_shardings=state_shardings(model, optimizer, mesh, rules))
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
# faster per element on the smaller activations (presumably they stay in cache). Measured on
# 2026-11-26, 2-core AMD EPYC, one step of batch 8 x 256: 6x384 546 -> 462 ms at 512 tokens per
# micro-batch (1024: 491, 256: 549); 12x768 3.49 -> 3.17 s; nanoGPT's shakespeare_char CPU
# model (12 x 64 tokens) 30 -> 21 ms at 384.
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


def make_train_step(model: Transformer, optimizer, *, grad_accum: int = 1, seed: int = 0,
                    mesh: Mesh | None = None, rules=None):
    """-> jitted train_step(state, batch) -> (state, metrics); the state's buffers are donated.

    With a `mesh`, the step is compiled with explicit shardings: the state in and out as
    `state_shardings`, the batch split by the `batch` rule, the metrics replicated.
    With grad_accum > 1 the batch is split into micro-batches whose gradients are averaged
    in a lax.scan: one optimizer step sees the whole batch, at a micro-batch's memory.
    Micro-batch i is rows i, i + grad_accum, ... so that every device holds a share of each.
    """
    stochastic = model.cfg.dropout > 0

    def loss_fn(params, inputs, targets, key):
        with activation_sharding(mesh, rules):
            logits = model.apply(
                {"params": params}, inputs, deterministic=not stochastic, rngs={"dropout": key} if stochastic else None
            )
        return cross_entropy(logits, targets)

    grad_fn = jax.value_and_grad(loss_fn)
    micro_sharding = None
    if mesh is not None:
        micro_sharding = NamedSharding(mesh, PartitionSpec(None, *sharding.batch_spec(rules)))

    def micro(x):
        x = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)
        if micro_sharding is None or x.shape[1] % sharding.batch_divisor(mesh, rules):
            return x
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        inputs, targets = batch["inputs"], batch["targets"]
        if grad_accum == 1:
            loss, grads = grad_fn(state["params"], inputs, targets, key)
        else:

            def accumulate(carry, xs):
                i, (inp, tgt) = xs
                loss, grads = grad_fn(state["params"], inp, tgt, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state["params"]))
            xs = (jnp.arange(grad_accum), (micro(inputs), micro(targets)))
            (loss, grads), _ = jax.lax.scan(accumulate, zeros, xs)
            loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=(0,))
    state_sh = state_shardings(model, optimizer, mesh, rules)
    batch_sh = sharding.batch_sharding(mesh, rules)
    metrics_sh = {"loss": sharding.replicated(mesh), "grad_norm": sharding.replicated(mesh)}
    return jax.jit(train_step, donate_argnums=(0,), in_shardings=(state_sh, {"inputs": batch_sh, "targets": batch_sh}),
                   out_shardings=(state_sh, metrics_sh))


def make_eval_step(model: Transformer, mesh: Mesh | None = None, params_sharding=None, rules=None):
    """-> jitted eval_step(params, batch) -> summed loss (nats) and token count (replicated)."""

    def eval_step(params, batch):
        with activation_sharding(mesh, rules):
            logits = model.apply({"params": params}, batch["inputs"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return {"loss_sum": losses.sum(), "tokens": jnp.asarray(losses.size, jnp.float32)}

    if mesh is None:
        return jax.jit(eval_step)
    batch_sh = sharding.batch_sharding(mesh, rules)
    params_sh = params_sharding if params_sharding is not None else param_shardings(model, mesh, rules)
    out = {"loss_sum": sharding.replicated(mesh), "tokens": sharding.replicated(mesh)}
    return jax.jit(eval_step, in_shardings=(params_sh, {"inputs": batch_sh, "targets": batch_sh}), out_shardings=out)
