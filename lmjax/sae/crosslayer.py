"""The cross-layer transcoder (Ameisen et al. 2025): features read the residual stream at
layer l and write, through their own decoders, to the MLP outputs of layers l..L-1.

With x_l the input at layer l (`hooks_in[l]`, e.g. blocks.l.hook_resid_mid) and y_t the
output at layer t (`hooks_out[t]`, e.g. blocks.t.hook_mlp_out):

    f_l   = act(x_l W_enc[l] + b_enc[l])                       [width] per layer
    y_t   = sum_{l <= t} f_l W_dec_l[:, t - l] + b_dec[t]      W_dec_l: [width, L - l, d_out]

Losses: the sum over layers of mean ||y_t - y_hat_t||^2, plus the architecture's sparsity
penalty with each feature's decoder norm taken over all the layers it writes to (relu:
l1 * sum f ||W_dec||; jumprelu: the step or tanh L0). TopK and BatchTopK act per layer
with the same k. Scales are per layer (residual norms grow with depth): input_scales[l],
output_scales[t].
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.sae.architectures import Dictionary, jump, scale_for, step

CLT_ARCHS = ("relu", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class CrossLayerTranscoder:
    arch: str
    n_layers: int
    d_in: int
    width: int  # features per layer
    d_out: int | None = None
    k: int = 32
    hooks_in: tuple = ()
    hooks_out: tuple = ()
    input_scales: tuple = ()
    output_scales: tuple = ()
    l1: float = 5.0
    l0_coef: float = 1.0
    l0_penalty: str = "step"
    tanh_scale: float = 4.0
    bandwidth: float = 0.05
    init_threshold: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "d_out", self.d_in if self.d_out is None else self.d_out)
        for name in ("hooks_in", "hooks_out", "input_scales", "output_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("input_scales", "output_scales"):
            if not getattr(self, name):
                object.__setattr__(self, name, (1.0,) * self.n_layers)
        if self.arch not in CLT_ARCHS:
            raise LmjaxError(f"unknown cross-layer transcoder arch {self.arch!r}; allowed: {', '.join(CLT_ARCHS)}")
        for name in ("hooks_in", "hooks_out", "input_scales", "output_scales"):
            value = getattr(self, name)
            if value and len(value) != self.n_layers:
                raise LmjaxError(f"{name} has {len(value)} entries for n_layers={self.n_layers}")
        self.layer  # checks k, width, penalty

    @property
    def layer(self) -> Dictionary:
        """The per-layer activation (same arch, k, thresholds)."""
        return Dictionary(self.arch, self.d_in, self.width, self.d_out, k=self.k, l1=self.l1, l0_coef=self.l0_coef,
                          l0_penalty=self.l0_penalty, tanh_scale=self.tanh_scale, bandwidth=self.bandwidth,
                          init_threshold=self.init_threshold, b_dec_to_input=False)

    @property
    def n_latents(self) -> int:
        return self.n_layers * self.width

    @property
    def unit_norm_decoder(self) -> bool:
        return self.arch in ("topk", "batchtopk")

    # -- parameters

    def init(self, key) -> dict:
        L, w = self.n_layers, self.width
        keys = jax.random.split(key, L + 1)
        scale = 1.0 / math.sqrt(L)  # a feature writes to up to L layers
        w_dec = tuple(jax.random.normal(keys[l], (w, L - l, self.d_out)) * scale / math.sqrt(self.d_out)
                      for l in range(L))
        w_enc = jax.random.normal(keys[L], (L, self.d_in, w)) / math.sqrt(self.d_in)
        params = {"W_enc": w_enc, "b_enc": jnp.zeros((L, w)), "W_dec": w_dec, "b_dec": jnp.zeros((L, self.d_out))}
        if self.arch in ("jumprelu", "batchtopk"):
            params["threshold"] = jnp.full((L, w), self.init_threshold if self.arch == "jumprelu" else 0.0)
        return params

    def decoder_norms(self, params):
        """[L, width]: each feature's decoder norm over every layer it writes to."""
        return jnp.stack([jnp.sqrt(jnp.sum(w ** 2, axis=(1, 2))) for w in params["W_dec"]])

    # -- forward (scaled space)

    def pre_acts(self, params, x):
        return jnp.einsum("...ld,ldw->...lw", x, params["W_enc"]) + params["b_enc"]

    def activate(self, params, pre, *, train: bool = False):
        aux = {}
        if self.arch == "relu":
            f = jax.nn.relu(pre)
        elif self.arch == "jumprelu":
            f = jump(pre, params["threshold"], jnp.float32(self.bandwidth))
        elif self.arch == "topk":
            f = self.layer.activate({}, pre)[0]
        elif train:  # batchtopk per layer: the batch's top k*B of each layer
            moved = jnp.moveaxis(pre, -2, 0)
            fs, th = jax.vmap(lambda p: self.layer.activate({}, p, train=True)[0:2])(moved)
            f = jnp.moveaxis(fs, 0, -2)
            aux["threshold_estimate"] = th["threshold_estimate"][:, None]
        else:
            f = pre * (pre > params["threshold"]).astype(pre.dtype)
        return f, aux

    def encode(self, params, x):
        """x [..., L, d_in] -> f [..., L, width]."""
        return self.activate(params, self.pre_acts(params, x))[0]

    def decode(self, params, f, x=None):
        """f [..., L, width] -> y_hat [..., L, d_out]."""
        L = self.n_layers
        y = params["b_dec"]
        for l in range(L):
            contrib = jnp.einsum("...w,wtd->...td", f[..., l, :], params["W_dec"][l])
            pad = [(0, 0)] * (contrib.ndim - 2) + [(l, 0), (0, 0)]
            y = y + jnp.pad(contrib, pad)
        return y

    def __call__(self, params, x):
        return self.decode(params, self.encode(params, x))

    def reconstruct(self, params, x_raw):
        return self(params, self.scale_inputs(x_raw)) / jnp.asarray(self.output_scales, jnp.float32)[:, None]

    # -- training (the interface lmjax.sae.training.fit uses)

    def loss(self, params, x, y=None, dead=None, hyper=None):
        hyper = hyper or {}
        y = x if y is None else y
        pre = self.pre_acts(params, x)
        f, aux = self.activate(params, pre, train=True)
        y_hat = self.decode(params, f)
        mse = jnp.mean(jnp.sum((y - y_hat) ** 2, axis=(-2, -1)))
        fired = f != 0
        aux.update(mse=mse, l0=jnp.mean(jnp.sum(fired, -1)), fired=jnp.sum(fired, 0).reshape(-1))
        loss = mse
        norms = self.decoder_norms(params)
        if self.arch == "relu":
            aux["sparsity"] = jnp.mean(jnp.sum(f * norms, axis=(-2, -1)))
            loss = loss + hyper.get("l1", self.l1) * aux["sparsity"]
        elif self.arch == "jumprelu":
            eps = jnp.float32(self.bandwidth)
            if self.l0_penalty == "step":
                aux["sparsity"] = jnp.mean(jnp.sum(step(pre, params["threshold"], eps), axis=(-2, -1)))
            else:
                aux["sparsity"] = jnp.mean(jnp.sum(jnp.tanh(self.tanh_scale * f * norms), axis=(-2, -1)))
            loss = loss + hyper.get("l0_coef", self.l0_coef) * aux["sparsity"]
        return loss, aux

    def project_gradient(self, params, grads):
        if not self.unit_norm_decoder:
            return grads
        norms = self.decoder_norms(params)
        new = []
        for l, (w, g) in enumerate(zip(params["W_dec"], grads["W_dec"])):
            along = jnp.sum(g * w, axis=(1, 2), keepdims=True) / jnp.maximum(norms[l], 1e-12)[:, None, None] ** 2
            new.append(g - along * w)
        return {**grads, "W_dec": tuple(new)}

    def constrain(self, params, aux=None):
        out = dict(params)
        if self.unit_norm_decoder:
            norms = self.decoder_norms(params)
            out["W_dec"] = tuple(w / jnp.maximum(norms[l], 1e-12)[:, None, None] for l, w in enumerate(params["W_dec"]))
        if aux is not None and "threshold_estimate" in aux:
            old = params["threshold"]
            new = jnp.where(jnp.all(old == 0), aux["threshold_estimate"], 0.99 * old + 0.01 * aux["threshold_estimate"])
            out["threshold"] = jnp.broadcast_to(new, old.shape)
        return out

    # -- scales and files

    def with_scales(self, x, y=None) -> "CrossLayerTranscoder":
        """Per-layer scales from samples x [n, L, d_in], y [n, L, d_out]."""
        y = x if y is None else y
        return dataclasses.replace(self, input_scales=tuple(scale_for(x[:, l]) for l in range(self.n_layers)),
                                   output_scales=tuple(scale_for(y[:, l]) for l in range(self.n_layers)))

    def scale_inputs(self, x):
        return x * np.asarray(self.input_scales, np.float32)[:, None]

    def scale_targets(self, y):
        return y * np.asarray(self.output_scales, np.float32)[:, None]

    def params_to_arrays(self, params) -> dict:
        out = {k: v for k, v in params.items() if k != "W_dec"}
        out.update({f"W_dec_{l}": w for l, w in enumerate(params["W_dec"])})
        return out

    def params_from_arrays(self, arrays) -> dict:
        arrays = dict(arrays)
        missing = [f"W_dec_{l}" for l in range(self.n_layers) if f"W_dec_{l}" not in arrays]
        if missing:
            raise LmjaxError(f"the cross-layer transcoder's file lacks {missing}")
        w_dec = tuple(jnp.asarray(arrays.pop(f"W_dec_{l}"), jnp.float32) for l in range(self.n_layers))
        params = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}
        params["W_dec"] = w_dec
        want = jax.eval_shape(self.init, jax.random.key(0))
        if jax.tree.map(lambda a: a.shape, want) != jax.tree.map(lambda a: a.shape, params):
            raise LmjaxError("the cross-layer transcoder's parameter shapes do not match its config")
        return params

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CrossLayerTranscoder":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise LmjaxError(f"unknown cross-layer transcoder field(s) {unknown}")
        return cls(**d)
