"""Sparse dictionaries: SAEs, transcoders and cross-layer transcoders, one interface.

A dictionary maps an activation x [..., d_in] to sparse latents f [..., width] and back to
a prediction y_hat [..., d_out]: of x itself (an SAE, d_out = d_in) or of another hook
point (a transcoder, e.g. MLP input -> MLP output, optionally with a linear skip x W_skip).

    pre   = (x - b_dec) W_enc + b_enc      (SAE; a transcoder does not subtract b_dec)
    f     = act(pre)                       (the architecture's sparsifying activation)
    y_hat = f W_dec + b_dec [+ x W_skip]

Architectures (`arch`):
- relu: f = ReLU(pre); sparsity loss l1 * sum_i f_i ||W_dec,i|| (the L1 weighted by the
  decoder row's norm, so shrinking rows cannot buy sparsity).
- topk: keep each token's k largest ReLU(pre) (Gao et al. 2024), plus the AuxK loss: the
  residual y - y_hat is predicted from the k_aux largest pre-activations of the dead latents,
  weighted 1/32.
- batchtopk: keep the k * B largest over the whole batch of B tokens (Bussmann et al. 2024);
  at inference a single global threshold (`threshold`, estimated during training) decides.
- jumprelu: f = pre H(pre - theta), theta a trained [width] vector parameterised directly;
  its gradient comes from the rectangle-kernel straight-through estimator of bandwidth eps
  (Rajamanoharan et al. 2024). The L0 penalty is the step function itself ("step") or
  tanh(c f_i ||W_dec,i||) ("tanh"); optionally (L0 - target)^2 / target^2 pulls to a target L0.
- matryoshka: BatchTopK whose every prefix of `matryoshka_widths` latents must reconstruct
  on its own (Bussmann et al. 2025; the loss is the mean over prefixes).

Every architecture but relu keeps decoder rows at unit norm: `constrain` renormalises them
after each step and `project_gradient` removes the gradient's component along each row.

Parameters are a dict pytree (see `Dictionary.init`); the dataclass holds only static
hyperparameters, so it is hashable and passes through jit as a static argument. Everything
here works in the dictionary's scaled space (x * input_scale, y * output_scale);
`reconstruct` maps model units in and out.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
L0_PENALTIES = ("step", "tanh")


# -- JumpReLU with straight-through gradients for its threshold -------------------------

def _rect(u):
    """The rectangle kernel K(u) = 1 on |u| < 1/2."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jump(z, theta, eps):
    """z H(z - theta): the JumpReLU."""
    return z * (z > theta).astype(z.dtype)


def _jump_fwd(z, theta, eps):
    return jump(z, theta, eps), (z, theta, eps)


def _jump_bwd(res, g):
    z, theta, eps = res
    gz = g * (z > theta).astype(z.dtype)
    # d/dtheta [z H(z - theta)] ~ -(theta / eps) K((z - theta) / eps)
    gtheta = -(theta / eps) * _rect((z - theta) / eps) * g
    return gz, _sum_to(gtheta, theta.shape), jnp.zeros_like(eps)


jump.defvjp(_jump_fwd, _jump_bwd)


@jax.custom_vjp
def step(z, theta, eps):
    """H(z - theta), whose theta-gradient is -(1 / eps) K((z - theta) / eps)."""
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, eps):
    return step(z, theta, eps), (z, theta, eps)


def _step_bwd(res, g):
    z, theta, eps = res
    gtheta = -(1.0 / eps) * _rect((z - theta) / eps) * g
    return jnp.zeros_like(z), _sum_to(gtheta, theta.shape), jnp.zeros_like(eps)


step.defvjp(_step_fwd, _step_bwd)


def _sum_to(x, shape):
    """Sum the broadcast leading axes of x away, down to `shape`."""
    return x.reshape((-1,) + tuple(shape)).sum(0) if x.shape != tuple(shape) else x


# -- Sparsifying activations --------------------------------------------------------------

def topk_mask(pre, k: int, k_traced=None):
    """1 where an entry is among its row's k largest, else 0 (a tie at the k-th value keeps
    both: measure zero for real-valued pre-activations). A comparison with the k-th value,
    not a scatter of indices: it differentiates as a mask. `k_traced` (<= k, a traced
    integer) keeps fewer: one compiled program for a sweep of k.

    The k-th value is the min of top_k's values, not values[..., -1]: XLA's simplifier
    rewrites a slice of top_k's values into a slice of a full sort of every row, ~30x
    slower on its CPU backend (4096 x 12288, k 32: 7.1 s against 0.23 s on a 2-core Intel
    Xeon); a min keeps the single TopK."""
    values = jax.lax.top_k(pre, k)[0]
    if k_traced is not None:
        values = jnp.where(jnp.arange(k) < k_traced, values, jnp.inf)
    return (pre >= jnp.min(values, -1, keepdims=True)).astype(pre.dtype)


def topk_activation(pre, k: int, k_traced=None):
    return jax.nn.relu(pre) * jax.lax.stop_gradient(topk_mask(pre, k, k_traced))


def batchtopk_activation(pre, k: int, k_traced=None):
    """Keep the k * B largest ReLU(pre) over the whole batch (all leading axes) -> (f, the
    smallest kept positive value: this batch's estimate of the inference threshold)."""
    r = jax.nn.relu(pre)
    flat = r.reshape(-1)
    rows = flat.shape[0] // pre.shape[-1]
    values, idx = jax.lax.top_k(flat, k * rows)
    if k_traced is not None:
        values = jnp.where(jnp.arange(k * rows) < k_traced * rows, values, 0.0)
    f = jnp.zeros_like(flat).at[idx].set(values).reshape(pre.shape)
    positive = values > 0
    smallest = jnp.min(jnp.where(positive, values, jnp.inf))
    return f, jnp.where(jnp.isfinite(smallest), smallest, 0.0)


@dataclasses.dataclass(frozen=True)
class Dictionary:
    """An SAE (d_out = d_in, hook_out = hook_in) or a transcoder; static hyperparameters only."""

    arch: str
    d_in: int
    width: int
    d_out: Optional[int] = None  # None: an SAE (d_out = d_in)
    k: int = 32  # topk / batchtopk / matryoshka: latents kept per token
    skip: bool = False  # transcoder: a linear skip x W_skip
    b_dec_to_input: Optional[bool] = None  # None: True for an SAE, False for a transcoder
    hook_in: str = ""
    hook_out: str = ""
    input_scale: float = 1.0
    output_scale: float = 1.0
    # losses
    l1: float = 5.0  # relu: L1 coefficient
    aux_k: int = 256  # topk family: dead latents used by AuxK
    aux_coef: float = 1 / 32
    l0_coef: float = 1.0  # jumprelu: L0 penalty coefficient
    l0_penalty: str = "step"  # jumprelu: "step" or "tanh"
    tanh_scale: float = 4.0  # jumprelu tanh penalty: tanh(c f ||W_dec||)
    target_l0: Optional[float] = None  # jumprelu: quadratic pull toward this L0
    target_coef: float = 1.0
    # jumprelu: eps of the rectangle kernel and theta's start. Inputs here have E||x|| = sqrt(d),
    # sqrt(d) times Gemma Scope's unit scale: its eps 0.001 there is ~0.05 here at d ~ 2k.
    bandwidth: float = 0.05
    init_threshold: float = 0.1
    matryoshka_widths: tuple = ()  # prefix sizes, the last = width (default: width/8, /4, /2, 1)
    threshold_momentum: float = 0.99  # batchtopk family: EMA of the per-batch threshold

    def __post_init__(self):
        d_out = self.d_in if self.d_out is None else self.d_out
        object.__setattr__(self, "d_out", d_out)
        object.__setattr__(self, "hook_out", self.hook_out or self.hook_in)
        if self.b_dec_to_input is None:
            object.__setattr__(self, "b_dec_to_input", not self.is_transcoder)
        if self.arch == "matryoshka" and not self.matryoshka_widths:
            widths = sorted({max(1, self.width // 8), max(1, self.width // 4), max(1, self.width // 2), self.width})
            object.__setattr__(self, "matryoshka_widths", tuple(widths))
        object.__setattr__(self, "matryoshka_widths", tuple(int(w) for w in self.matryoshka_widths))
        self.check()

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out != self.hook_in or self.d_out != self.d_in or self.skip

    def check(self) -> None:
        """One-line errors for impossible hyperparameters, before anything compiles."""
        if self.arch not in ARCHS:
            raise LmjaxError(f"unknown dictionary arch {self.arch!r}; the architectures: {', '.join(ARCHS)}")
        for name in ("d_in", "width", "d_out"):
            if int(getattr(self, name)) < 1:
                raise LmjaxError(f"{name} must be a positive integer; got {getattr(self, name)}")
        if self.arch in ("topk", "batchtopk", "matryoshka") and not 1 <= self.k <= self.width:
            raise LmjaxError(f"k={self.k} must be between 1 and width={self.width}")
        if self.l0_penalty not in L0_PENALTIES:
            raise LmjaxError(f"l0_penalty={self.l0_penalty!r}; allowed: {', '.join(L0_PENALTIES)}")
        if self.arch == "matryoshka":
            w = self.matryoshka_widths
            if list(w) != sorted(set(w)) or w[-1] != self.width or w[0] < 1:
                raise LmjaxError(f"matryoshka_widths={w} must increase strictly and end at width={self.width}")
        if self.skip and self.b_dec_to_input:
            raise LmjaxError("a transcoder with a skip cannot subtract b_dec from its input (b_dec_to_input)")

    # -- parameters

    def init(self, key) -> dict:
        """Decoder rows are random unit directions (norm 0.1 for relu, whose L1 is weighted by
        the norm); the encoder starts as the decoder's transpose where the shapes allow (an
        SAE), else as an independent draw of the same scale; biases start at zero."""
        k_dec, k_enc = jax.random.split(key)
        w_dec = jax.random.normal(k_dec, (self.width, self.d_out), jnp.float32)
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
        if self.arch == "relu":
            w_dec = 0.1 * w_dec
        if self.d_out == self.d_in:
            w_enc = w_dec.T
        else:
            w_enc = jax.random.normal(k_enc, (self.d_in, self.width), jnp.float32)
            w_enc = w_enc / jnp.linalg.norm(w_enc, axis=0, keepdims=True) * (0.1 if self.arch == "relu" else 1.0)
        params = {"W_enc": w_enc, "b_enc": jnp.zeros(self.width), "W_dec": w_dec, "b_dec": jnp.zeros(self.d_out)}
        if self.arch == "jumprelu":
            params["threshold"] = jnp.full(self.width, self.init_threshold, jnp.float32)
        if self.arch in ("batchtopk", "matryoshka"):
            params["threshold"] = jnp.zeros(self.width, jnp.float32)
        if self.skip:
            params["W_skip"] = jnp.zeros((self.d_in, self.d_out), jnp.float32)
        return params

    # -- the forward pass (scaled space)

    def pre_acts(self, params, x):
        if self.b_dec_to_input:
            x = x - params["b_dec"]
        return x @ params["W_enc"] + params["b_enc"]

    def activate(self, params, pre, *, train: bool = False, hyper=None):
        """pre -> (f, aux): the architecture's sparse code; `train` selects BatchTopK's batch
        rule over its inference threshold. `hyper` may hold a traced `k` (<= self.k)."""
        aux = {}
        k_traced = (hyper or {}).get("k")
        if self.arch == "relu":
            f = jax.nn.relu(pre)
        elif self.arch == "topk":
            f = topk_activation(pre, self.k, k_traced)
        elif self.arch == "jumprelu":
            f = jump(pre, params["threshold"], jnp.float32(self.bandwidth))
        elif train:  # batchtopk, matryoshka
            f, aux["threshold_estimate"] = batchtopk_activation(pre, self.k, k_traced)
        else:
            f = pre * (pre > params["threshold"]).astype(pre.dtype)
        return f, aux

    def encode(self, params, x):
        """x [..., d_in] -> latents f [..., width] (inference form)."""
        return self.activate(params, self.pre_acts(params, x))[0]

    def decode(self, params, f, x=None):
        """f [..., width] -> y_hat [..., d_out]; `x` is needed when the transcoder has a skip."""
        y = f @ params["W_dec"] + params["b_dec"]
        if self.skip:
            if x is None:
                raise LmjaxError("this transcoder has a linear skip: decode(params, f, x) needs its input x")
            y = y + x @ params["W_skip"]
        return y

    def __call__(self, params, x):
        return self.decode(params, self.encode(params, x), x)

    def reconstruct(self, params, x_raw):
        """The prediction of the output hook, in the model's units, from its input in them."""
        return self(params, x_raw * self.input_scale) / self.output_scale

    # -- training

    def loss(self, params, x, y=None, dead=None, hyper=None):
        """-> (loss, aux) on a batch x [B, d_in] (y [B, d_out] for a transcoder; None: y = x).
        The reconstruction term is the mean over tokens of ||y - y_hat||^2. `dead` [width] marks
        the latents AuxK may use (topk family). `hyper` overrides `k`, `l1`, `l0_coef` with
        traced values (a vmapped sweep). aux: mse, l0, fired [width] (tokens that fired each
        latent), and for BatchTopK the batch's threshold estimate."""
        y = x if y is None else y
        hyper = hyper or {}
        if self.arch == "topk" and dead is None:
            return self._sparse_topk_loss(params, x, y, hyper)
        pre = self.pre_acts(params, x)
        f, aux = self.activate(params, pre, train=True, hyper=hyper)
        y_hat = self.decode(params, f, x)
        mse = jnp.mean(jnp.sum((y - y_hat) ** 2, -1))
        fired = (f != 0)
        aux.update(mse=mse, l0=jnp.mean(jnp.sum(fired, -1)), fired=jnp.sum(fired.reshape(-1, self.width), 0))
        loss = mse
        row_norm = jnp.linalg.norm(params["W_dec"], axis=-1)
        if self.arch == "relu":
            sparsity = jnp.mean(jnp.sum(f * row_norm, -1))
            aux["sparsity"] = sparsity
            loss = loss + hyper.get("l1", self.l1) * sparsity
        elif self.arch == "jumprelu":
            if self.l0_penalty == "step":
                l0 = jnp.mean(jnp.sum(step(pre, params["threshold"], jnp.float32(self.bandwidth)), -1))
                sparsity = l0
            else:
                l0 = jnp.mean(jnp.sum(step(pre, params["threshold"], jnp.float32(self.bandwidth)), -1))
                sparsity = jnp.mean(jnp.sum(jnp.tanh(self.tanh_scale * f * row_norm), -1))
            aux["sparsity"] = sparsity
            loss = loss + hyper.get("l0_coef", self.l0_coef) * sparsity
            if self.target_l0 is not None:
                loss = loss + self.target_coef * ((l0 - self.target_l0) / self.target_l0) ** 2
        if self.arch == "matryoshka":
            losses = [jnp.mean(jnp.sum((y - (f[..., :m] @ params["W_dec"][:m] + params["b_dec"])) ** 2, -1))
                      for m in self.matryoshka_widths[:-1]]
            loss = (sum(losses) + mse) / len(self.matryoshka_widths)
        if self.arch in ("topk", "batchtopk", "matryoshka") and dead is not None:
            aux_loss = self._aux_k_loss(params, pre, y - y_hat, dead)
            aux["aux_loss"] = aux_loss
            loss = loss + self.aux_coef * aux_loss
        return loss, aux

    def _sparse_topk_loss(self, params, x, y, hyper):
        """TopK's loss (without AuxK) computed on the k selected latents only: the dense
        pre-activations pick them (no gradient), then their pre-activations are recomputed
        from gathered encoder columns and decoded from gathered decoder rows. The same loss
        and gradients as the dense path, but the backward pass is gathers and scatter-adds
        of [B, k, d] instead of three dense [B, width] x [width, d] products (as OpenAI's
        sparse kernels)."""
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(self.pre_acts(params, x)), self.k)  # [B, k]
        x_in = x - params["b_dec"] if self.b_dec_to_input else x
        pre = jnp.einsum("bd,bkd->bk", x_in, jnp.take(params["W_enc"].T, idx, axis=0)) + params["b_enc"][idx]
        f = jax.nn.relu(pre)
        if "k" in hyper:
            f = jnp.where(jnp.arange(self.k) < hyper["k"], f, 0.0)
        y_hat = jnp.einsum("bk,bkd->bd", f, jnp.take(params["W_dec"], idx, axis=0)) + params["b_dec"]
        if self.skip:
            y_hat = y_hat + x @ params["W_skip"]
        mse = jnp.mean(jnp.sum((y - y_hat) ** 2, -1))
        fired = (f != 0)
        counts = jnp.zeros(self.width, jnp.int32).at[idx.reshape(-1)].add(fired.reshape(-1).astype(jnp.int32))
        return mse, {"mse": mse, "l0": jnp.mean(jnp.sum(fired, -1)), "fired": counts}

    def _aux_k_loss(self, params, pre, residual, dead):
        """||e - e_hat||^2 with e_hat decoded (no bias) from the k_aux largest pre-activations
        among dead latents; zero when none is dead."""
        n_aux = min(self.aux_k, self.width)
        masked = jnp.where(dead, pre, -jnp.inf)
        f_aux = jax.nn.relu(jnp.where(jnp.isfinite(masked), masked, 0.0)) * topk_mask(masked, n_aux) * dead
        e_hat = f_aux @ params["W_dec"]
        err = jnp.mean(jnp.sum((jax.lax.stop_gradient(residual) - e_hat) ** 2, -1))
        return jnp.where(jnp.any(dead), err, 0.0)

    @property
    def unit_norm_decoder(self) -> bool:
        return self.arch != "relu"

    def project_gradient(self, params, grads):
        """Remove each decoder row's gradient component along the row (unit-norm rows)."""
        if not self.unit_norm_decoder:
            return grads
        w, g = params["W_dec"], grads["W_dec"]
        g = g - jnp.sum(g * w, -1, keepdims=True) * w / jnp.maximum(jnp.sum(w * w, -1, keepdims=True), 1e-12)
        return {**grads, "W_dec": g}

    def constrain(self, params, aux=None):
        """After an optimizer step: decoder rows back to unit norm; BatchTopK's inference
        threshold moved toward this batch's estimate."""
        out = dict(params)
        if self.unit_norm_decoder:
            w = params["W_dec"]
            out["W_dec"] = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
        if aux is not None and "threshold_estimate" in aux:
            m = self.threshold_momentum
            old = params["threshold"]
            first = jnp.all(old == 0)
            new = jnp.where(first, aux["threshold_estimate"], m * old + (1 - m) * aux["threshold_estimate"])
            out["threshold"] = jnp.broadcast_to(new, old.shape)
        return out

    def params_to_arrays(self, params) -> dict:
        """The parameters as {name: array}, for a safetensors file."""
        return dict(params)

    def params_from_arrays(self, arrays) -> dict:
        expected = set(self.init_shapes())
        if set(arrays) != expected:
            raise LmjaxError(f"the dictionary's parameters are {sorted(expected)}, the file has {sorted(arrays)}")
        params = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}
        shapes = self.init_shapes()
        wrong = [f"{k} {tuple(v.shape)} (expected {shapes[k]})" for k, v in params.items() if tuple(v.shape) != shapes[k]]
        if wrong:
            raise LmjaxError(f"parameter shapes do not match the dictionary: {', '.join(wrong)}")
        return params

    def init_shapes(self) -> dict:
        return {k: tuple(v.shape) for k, v in jax.eval_shape(self.init, jax.random.key(0)).items()}

    @property
    def n_latents(self) -> int:
        return self.width

    def with_scales(self, x, y=None) -> "Dictionary":
        """A copy whose scales make E||x s|| = sqrt(d) on the sample x [n, d_in] (y [n, d_out])."""
        s_in = scale_for(x)
        return dataclasses.replace(self, input_scale=s_in, output_scale=s_in if y is None else scale_for(y))

    def scale_inputs(self, x):
        return x * np.float32(self.input_scale)

    def scale_targets(self, y):
        return y * np.float32(self.output_scale)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Dictionary":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise LmjaxError(f"unknown dictionary field(s) {unknown}; the fields: {sorted(fields)}")
        d = dict(d)
        if "matryoshka_widths" in d:
            d["matryoshka_widths"] = tuple(d["matryoshka_widths"])
        return cls(**d)


def scale_for(x, d: int | None = None) -> float:
    """The factor s with E||s x|| = sqrt(d) over the sample x [n, d]."""
    d = x.shape[-1] if d is None else d
    mean_norm = float(jnp.mean(jnp.linalg.norm(jnp.asarray(x, jnp.float32), axis=-1)))
    if not mean_norm > 0:
        raise LmjaxError("cannot scale activations whose mean norm is 0 (is the hook point always zero?)")
    return math.sqrt(d) / mean_norm
