"""Dictionaries in and out of the formats of SAELens (6.x) and circuit-tracer.

SAELens: a directory with ``cfg.json`` and ``sae_weights.safetensors``
(``SAE.load_from_disk`` / ``save_model``). Tensors W_enc [d_in, d_sae], b_enc, W_dec
[d_sae, d_out], b_dec, threshold (jumprelu), W_skip [d_out, d_in] (skip transcoders), in
the dtype ``cfg["dtype"]`` names. SAELens's forward is

    pre = (x - b_dec * apply_b_dec_to_input) W_enc + b_enc,   y = act(pre) W_dec + b_dec (+ x W_skip^T)

with act: relu ("standard", "transcoder", "skip_transcoder"), top-k of pre then relu
("topk"), relu(pre) * (pre > threshold) ("jumprelu", "jumprelu_transcoder",
"jumprelu_skip_transcoder"). BatchTopK and Matryoshka are training-only architectures in
SAELens: their inference models are saved as "jumprelu" with the global threshold broadcast
(metadata.training_architecture says what they were trained as); their training checkpoints
("batchtopk", "matryoshka_batchtopk", a scalar ``topk_threshold``) load here too.

circuit-tracer: a directory with ``config.yaml`` (model_kind, feature_input_hook,
feature_output_hook: per-layer hook suffixes, the hook of layer l being
``blocks.{l}.{suffix}``) and, for a set of per-layer transcoders (model_kind
"transcoder_set"), ``layer_{l}.safetensors`` with W_enc [width, d], W_dec [width, d], b_enc,
b_dec, optional ``activation_function.threshold`` [width] and W_skip [d, d] (applied as
x W_skip^T); for a cross-layer transcoder ("cross_layer_transcoder"),
``W_enc_{l}.safetensors`` (W_enc_{l} [width, d], b_enc_{l}, b_dec_{l}, optional
threshold_{l}) and ``W_dec_{l}.safetensors`` (W_dec_{l} [width, L - l, d]). Its activations
are relu or pre * (pre > threshold) (exactly lmjax's JumpReLU). This is the layout of
circuit-tracer's local cache (``load_transcoders_from_cache``) and of its Hub repositories.

lmjax keeps input_scale / output_scale (a CLT: input_scales[l] / output_scales[t], per
layer) beside the weights; both formats work in model units, so export folds them in and
import sets them to 1:

    pre   = (x s - b_dec) W_enc + b_enc = (x - b_dec / s) (s W_enc) + b_enc
    y_raw = (f W_dec + b_dec + x s W_skip) / s_out

(an SAE whose two scales differ, or any target that cannot subtract b_dec from its input,
gets b_enc - b_dec W_enc instead). Each file is written to a temporary name and renamed,
the config last, so a directory with a config is complete.
"""
from __future__ import annotations

import json
import math
import os
import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lmjax.data.safetensors_io import load_arrays, save_arrays
from lmjax.errors import LmjaxError, MissingFileError
from lmjax.sae.architectures import Dictionary
from lmjax.sae.crosslayer import CLT_ARCHS, CrossLayerTranscoder

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
SAELENS_VERSION = "6.0.0"  # the cfg.json layout written here: SAELens >= 6 reads it as is
CT_CONFIG = "config.yaml"
JUMP_FAMILY = ("jumprelu", "batchtopk", "matryoshka")  # inference: pre * (pre > threshold)

# SAELens architecture -> (lmjax arch, transcoder, skip)
SAELENS_ARCHS = {
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "batchtopk": ("batchtopk", False, False),  # training checkpoint
    "matryoshka_batchtopk": ("matryoshka", False, False),  # training checkpoint
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}


_CFG_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
               "bfloat16": ml_dtypes.bfloat16}
_ST_METADATA = {"format": "pt"}  # what torch's safetensors writers put there


def _read(path: str) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file, by name; a missing file is a MissingFileError."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file")
    return load_arrays(path)[0]


def _write(path: str, tensors: dict[str, np.ndarray]) -> None:
    save_arrays(path, tensors, _ST_METADATA)


def _atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def _remove_stale(directory: str, pattern: str, n: int) -> None:
    """Remove files `pattern` (one int group) numbered n or higher: circuit-tracer counts
    layers by globbing, so a longer set saved here before must not linger."""
    rx = re.compile(pattern)
    for name in os.listdir(directory):
        m = rx.fullmatch(name)
        if m and int(m.group(1)) >= n:
            os.remove(os.path.join(directory, name))


def _mkdir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise LmjaxError(f"{path} exists and is not a directory; a dictionary is saved as a directory")
    os.makedirs(path, exist_ok=True)


# -- scales folded into the weights and back

def _np(x, dtype=np.float64):
    return np.asarray(x).astype(dtype)


def _raw_weights(d: Dictionary, params: dict, allow_b_dec_to_input: bool):
    """The dictionary's weights in model units (float64): (tensors, apply_b_dec_to_input)."""
    _check_params(d, params)
    s_in, s_out = float(d.input_scale), float(d.output_scale)
    w_enc, b_enc = _np(params["W_enc"]) * s_in, _np(params["b_enc"])
    b_dec = _np(params["b_dec"])
    out = {"W_enc": w_enc, "W_dec": _np(params["W_dec"]) / s_out, "b_dec": b_dec / s_out}
    apply = bool(d.b_dec_to_input)
    if apply and not (allow_b_dec_to_input and (math.isclose(s_in, s_out, rel_tol=1e-6) or not b_dec.any())):
        # (x s - b_dec) W_enc = (x s) W_enc - b_dec W_enc: the subtraction moves into b_enc
        b_enc = b_enc - b_dec @ _np(params["W_enc"])
        apply = False
    out["b_enc"] = b_enc
    if "threshold" in params and d.arch in JUMP_FAMILY:
        out["threshold"] = _np(params["threshold"])
    if d.skip:
        out["W_skip"] = _np(params["W_skip"]) * (s_in / s_out)
    return out, apply


def _check_params(d: Dictionary, params: dict) -> None:
    shapes = {"W_enc": (d.d_in, d.width), "b_enc": (d.width,), "W_dec": (d.width, d.d_out), "b_dec": (d.d_out,)}
    if d.arch in JUMP_FAMILY:
        shapes["threshold"] = (d.width,)
    if d.skip:
        shapes["W_skip"] = (d.d_in, d.d_out)
    for name, shape in shapes.items():
        if name not in params:
            what = f"a {d.arch} dictionary" + (" with a skip" if d.skip else "")
            raise LmjaxError(f"params lack {name!r}, which {what} needs")
        if tuple(np.shape(params[name])) != shape:
            raise LmjaxError(f"params[{name!r}] has shape {list(np.shape(params[name]))}; the dictionary "
                             f"(d_in={d.d_in}, width={d.width}, d_out={d.d_out}) needs {list(shape)}")


def _float_dtype(params: dict, dtype=None):
    dt = np.dtype(dtype) if dtype is not None else np.asarray(params["W_enc"]).dtype
    if dt not in (np.float32, np.float64, np.float16, ml_dtypes.bfloat16):
        raise LmjaxError(f"cannot save a dictionary in dtype {dt}; allowed: float32, float64, float16, bfloat16")
    return dt


def _cfg_dtype_name(dt) -> str:
    return {np.dtype(v): k for k, v in _CFG_DTYPES.items()}[np.dtype(dt)]


def _to_jnp(tensors: dict, dtype) -> dict:
    return {k: jnp.asarray(np.asarray(v).astype(dtype if dtype is not None else v.dtype)) for k, v in tensors.items()}


def _expect(path: str, tensors: dict, name: str, shape: tuple) -> np.ndarray:
    if name not in tensors:
        raise LmjaxError(f"{path}: tensor {name!r} is missing (it has {sorted(tensors)})")
    a = tensors[name]
    if a.shape != tuple(shape):
        raise LmjaxError(f"{path}: tensor {name!r} has shape {list(a.shape)}, expected {list(shape)}")
    return a


# -- SAELens

def save_saelens(dictionary: Dictionary, params: dict, path: str, *, model_name: str | None = None,
                 dtype=None, metadata: dict | None = None) -> str:
    """Write `dictionary` as an SAELens directory (cfg.json + sae_weights.safetensors) at `path`.

    SAEs: relu -> "standard", topk -> "topk", jumprelu -> "jumprelu", batchtopk and
    matryoshka -> "jumprelu" (their inference rule; metadata.training_architecture and
    training_architecture_details.k keep what they are, as SAELens itself does).
    Transcoders: relu -> "transcoder" / "skip_transcoder", the threshold family ->
    "jumprelu_transcoder" / "jumprelu_skip_transcoder"; SAELens has no top-k transcoder.
    `dtype` defaults to the parameters' dtype; `metadata` adds SAELens metadata fields.
    Returns `path`.
    """
    d = dictionary
    transcoder = d.is_transcoder
    if d.arch == "topk" and transcoder:
        raise LmjaxError("SAELens has no top-k transcoder (its transcoders are relu or jumprelu); "
                         "save this one with save_circuit_tracer or as an lmjax checkpoint")
    raw, apply = _raw_weights(d, params, allow_b_dec_to_input=not transcoder)
    if d.arch in JUMP_FAMILY and (raw["threshold"] < 0).any():
        raise LmjaxError("a negative JumpReLU threshold passes negative pre-activations, which SAELens's "
                         "relu(pre) * (pre > threshold) cannot represent; clamp the thresholds at 0 first")
    family = "jumprelu" if d.arch in JUMP_FAMILY else d.arch
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[family]
    if transcoder:
        arch = ("jumprelu_" if family == "jumprelu" else "") + ("skip_transcoder" if d.skip else "transcoder")
    dt = _float_dtype(params, dtype)
    meta = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
            "hook_name": d.hook_in or None, "hook_head_index": None, "model_name": model_name}
    if transcoder:
        meta["hook_name_out"] = d.hook_out or None
    if d.arch in ("batchtopk", "matryoshka"):
        meta["training_architecture"] = "batchtopk" if d.arch == "batchtopk" else "matryoshka_batchtopk"
        details = {"k": d.k}
        if d.arch == "matryoshka":
            details["matryoshka_widths"] = list(d.matryoshka_widths)
        meta["training_architecture_details"] = details
    meta.update(metadata or {})
    cfg = {"architecture": arch, "d_in": d.d_in, "d_sae": d.width, "dtype": _cfg_dtype_name(dt), "device": "cpu",
           "apply_b_dec_to_input": apply, "normalize_activations": "none",
           "reshape_activations": "hook_z" if d.hook_in.endswith("hook_z") else "none", "metadata": meta}
    if transcoder:
        cfg["d_out"] = d.d_out
    if arch == "topk":
        cfg.update(k=d.k, rescale_acts_by_decoder_norm=False)
    tensors = {k: v.astype(dt) for k, v in raw.items()}
    if "W_skip" in tensors:
        tensors["W_skip"] = np.ascontiguousarray(tensors["W_skip"].T)  # SAELens: [d_out, d_in]
    _mkdir(path)
    _write(os.path.join(path, SAELENS_WEIGHTS), tensors)
    _write_text(os.path.join(path, SAELENS_CFG), json.dumps(cfg, indent=2))
    return path


def load_saelens(path: str, *, dtype=None, scale: float | None = None) -> tuple[Dictionary, dict]:
    """Read an SAELens directory -> (Dictionary, params), scales 1 (the weights are in model units).

    Reads every architecture `save_saelens` writes plus SAELens's training checkpoints of
    topk / batchtopk / matryoshka_batchtopk (decoder-norm rescaling folded into the
    weights; the EMA topk_threshold becomes the inference threshold) and pre-6.0 configs.
    A "jumprelu" trained as batchtopk / matryoshka (metadata.training_architecture) comes
    back as that architecture. SAELens's jumprelu is relu(pre) * (pre > threshold), which is
    lmjax's pre * (pre > max(threshold, 0)): negative thresholds are clamped at 0.
    normalize_activations "expected_average_only_in" (inputs multiplied by a constant that
    SAELens keeps outside the SAE) needs that constant: `scale`, or the scaling_factor of an
    activation_scaler.json beside the weights; it becomes input_scale = output_scale.
    `scale`, given, is that constant whatever the config says. `dtype` casts the parameters
    (default: as stored).
    """
    cfg_path = os.path.join(path, SAELENS_CFG)
    weights_path = os.path.join(path, SAELENS_WEIGHTS)
    for p in (cfg_path, weights_path):
        if not os.path.isfile(p):
            raise MissingFileError(f"{p}: no such file (an SAELens directory holds {SAELENS_CFG} and "
                                   f"{SAELENS_WEIGHTS})")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise LmjaxError(f"{cfg_path}: not a readable SAELens config ({e})") from None
    meta = dict(cfg.get("metadata") or {})
    arch = cfg.get("architecture")
    if arch is None:  # SAELens < 6: activation_fn(_str) says relu or topk
        act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        arch = "topk" if act == "topk" else "standard"
        cfg.setdefault("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch not in SAELENS_ARCHS:
        raise LmjaxError(f"{cfg_path}: SAELens architecture {arch!r} has no lmjax equivalent; "
                         f"lmjax reads: {', '.join(SAELENS_ARCHS)}")
    lm_arch, transcoder, skip = SAELENS_ARCHS[arch]
    try:
        d_in, width = int(cfg["d_in"]), int(cfg["d_sae"])
        d_out = int(cfg.get("d_out", d_in)) if transcoder else d_in
    except (KeyError, TypeError, ValueError) as e:
        raise LmjaxError(f"{cfg_path}: needs integer d_in and d_sae ({e!r} missing or not an integer)") from None
    hook_in = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    hook_out = (meta.get("hook_name_out") or cfg.get("hook_name_out") or "") if transcoder else hook_in
    head = meta.get("hook_head_index", cfg.get("hook_head_index"))
    if head is not None:
        raise LmjaxError(f"{cfg_path}: the SAE reads one attention head (hook_head_index={head}), which lmjax "
                         "dictionaries do not select")
    in_scale = _saelens_scale(path, cfg, cfg_path, scale)

    t = _read(weights_path)
    w_enc = _expect(weights_path, t, "W_enc", (d_in, width)).astype(np.float64)
    b_enc = _expect(weights_path, t, "b_enc", (width,)).astype(np.float64)
    w_dec = _expect(weights_path, t, "W_dec", (width, d_out)).astype(np.float64)
    b_dec = _expect(weights_path, t, "b_dec", (d_out,))
    stored = t["W_enc"].dtype
    known = {"W_enc", "b_enc", "W_dec", "b_dec"}
    for name in ("scaling_factor", "finetuning_scaling_factor"):  # SAELens < 6: f * scaling_factor before W_dec
        if name in t:
            w_dec = w_dec * _expect(weights_path, t, name, (width,)).astype(np.float64)[:, None]
            known.add(name)
    params = {}
    threshold = None
    if lm_arch == "jumprelu":
        if "log_threshold" in t:
            threshold = np.exp(_expect(weights_path, t, "log_threshold", (width,)).astype(np.float64))
            known.add("log_threshold")
        else:
            threshold = _expect(weights_path, t, "threshold", (width,)).astype(np.float64)
            known.add("threshold")
        threshold = np.maximum(threshold, 0.0)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        thr = _expect(weights_path, t, "topk_threshold", ())
        threshold = np.full(width, float(thr), np.float64)
        known.add("topk_threshold")
    rescale = cfg.get("rescale_acts_by_decoder_norm", arch in ("batchtopk", "matryoshka_batchtopk"))
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk") and rescale:
        # topk(pre * n) decoded as (f / n) W_dec: fold the norms n into encoder and decoder
        n = np.maximum(np.linalg.norm(w_dec, axis=-1), 1e-8)
        w_enc, b_enc, w_dec = w_enc * n[None, :], b_enc * n, w_dec / n[:, None]
    if skip:
        params["W_skip"] = _expect(weights_path, t, "W_skip", (d_out, d_in)).T
        known.add("W_skip")
    unknown = sorted(set(t) - known)
    if unknown:
        raise LmjaxError(f"{weights_path}: unexpected tensors {unknown} for architecture {arch!r}")

    k = 32
    widths = ()
    details = meta.get("training_architecture_details") or {}
    trained_as = meta.get("training_architecture")
    if lm_arch == "topk":
        k = cfg.get("k")
    elif arch == "batchtopk" or (lm_arch == "jumprelu" and trained_as == "batchtopk"):
        lm_arch, k = "batchtopk", cfg.get("k", details.get("k"))
    elif arch == "matryoshka_batchtopk" or (lm_arch == "jumprelu" and trained_as == "matryoshka_batchtopk"):
        lm_arch, k = "matryoshka", cfg.get("k", details.get("k"))
        widths = [int(w) for w in cfg.get("matryoshka_widths", details.get("matryoshka_widths")) or ()]
        if widths and widths[-1] != width:
            widths.append(width)  # SAELens adds the full width as the last level too
        if not widths or widths != sorted(set(widths)):
            lm_arch = "batchtopk"  # nested widths lmjax cannot hold: the inference rule is the same
    if lm_arch in ("topk", "batchtopk", "matryoshka"):
        if k is None:
            if lm_arch == "topk":
                raise LmjaxError(f"{cfg_path}: a topk SAE needs k")
            lm_arch = "jumprelu"
            k = 32
        k = min(max(1, int(round(float(k)))), width)  # BatchTopK's k is a mean, may be fractional
    if threshold is not None:
        params["threshold"] = threshold
    params.update(W_enc=w_enc, b_enc=b_enc, W_dec=w_dec, b_dec=b_dec)
    try:
        d = Dictionary(lm_arch, d_in, width, d_out=d_out, k=k, skip=skip,
                       b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", not transcoder)) and not transcoder,
                       hook_in=hook_in, hook_out=hook_out or hook_in, input_scale=in_scale, output_scale=in_scale,
                       matryoshka_widths=tuple(widths) if lm_arch == "matryoshka" else ())
    except LmjaxError as e:
        raise LmjaxError(f"{cfg_path}: {e}") from None
    return d, _to_jnp(params, stored if dtype is None else dtype)


def _saelens_scale(path: str, cfg: dict, cfg_path: str, scale: float | None) -> float:
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:  # SAELens < 6: a bool
        norm = "expected_average_only_in" if norm else "none"
    if norm == "none":
        return 1.0 if scale is None else float(scale)
    if norm != "expected_average_only_in":
        raise LmjaxError(f"{cfg_path}: normalize_activations={norm!r} normalises each input at run time, which "
                         "an lmjax dictionary (one constant input scale) cannot do; allowed: none, "
                         "expected_average_only_in")
    if scale is not None:
        return float(scale)
    scaler = os.path.join(path, SAELENS_SCALER)
    if os.path.isfile(scaler):
        with open(scaler, encoding="utf-8") as f:
            s = json.load(f)
        if s.get("has_whitening"):
            raise LmjaxError(f"{scaler}: the activations were whitened, which an lmjax dictionary cannot hold")
        if s.get("scaling_factor"):
            return float(s["scaling_factor"])
    raise LmjaxError(f"{cfg_path}: normalize_activations='expected_average_only_in' multiplies inputs by a "
                     f"constant SAELens keeps elsewhere, and there is no {SAELENS_SCALER} here; pass scale=")


# -- circuit-tracer

def _yaml():
    import yaml  # PyYAML arrives with ml-collections (a runtime dependency); only these two functions need it
    return yaml


def _suffix(name: str, layer: int) -> str | None:
    """The per-layer hook suffix X of blocks.{layer}.X (None when `name` is not that)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    return m.group(2) if m and int(m.group(1)) == layer else None


def _common_suffix(names: list[str], what: str, given: str | None) -> str:
    if given:
        return given
    if not any(names):
        raise LmjaxError(f"the dictionaries have no {what} hook names; pass feature_{what}_hook= "
                         "(e.g. 'ln2.hook_normalized', 'hook_mlp_out')")
    found = set()
    for layer, name in enumerate(names):
        s = _suffix(name, layer)
        if s is None:
            raise LmjaxError(f"layer {layer}'s {what} hook is {name!r}; circuit-tracer needs blocks.{layer}.<hook>, "
                             "the same <hook> on every layer")
        found.add(s)
    if len(found) > 1:
        raise LmjaxError(f"the {what} hooks differ between layers ({sorted(found)}); circuit-tracer has one per set")
    return found.pop()


def save_circuit_tracer(dictionaries, params, path: str, *, feature_input_hook: str | None = None,
                        feature_output_hook: str | None = None, model_name: str | None = None,
                        scan: str | None = None, dtype=None) -> str:
    """Write per-layer transcoders (a list of `Dictionary`, layer l at index l, with a list of
    params) or a `CrossLayerTranscoder` (with its params) as a circuit-tracer directory.

    circuit-tracer's transcoders are relu or JumpReLU (pre * (pre > threshold)): relu and
    the threshold family (jumprelu, batchtopk, matryoshka: BatchTopK's inference rule is
    its threshold) are written, top-k is not (its loaders build no top-k transcoder). A
    transcoder maps d_model to d_model (d_in == d_out), all layers share one width and
    one hook pair; a CLT cannot carry a skip (circuit-tracer's CLT files hold no W_skip).
    The hooks default to the suffix X of the dictionaries' blocks.{l}.X names. Returns `path`.
    """
    if isinstance(dictionaries, Dictionary):
        raise LmjaxError("save_circuit_tracer takes a list of per-layer Dictionary objects (layer l at index l) "
                         "or a CrossLayerTranscoder; wrap a single layer-0 transcoder in a list")
    if not isinstance(dictionaries, (list, tuple, CrossLayerTranscoder)):
        raise LmjaxError("save_circuit_tracer takes a list of Dictionary objects or a CrossLayerTranscoder, "
                         f"not a {type(dictionaries).__name__}")
    _mkdir(path)
    if isinstance(dictionaries, CrossLayerTranscoder):
        config, lm = _save_clt(dictionaries, params, path, feature_input_hook, feature_output_hook, dtype)
    else:
        config, lm = _save_transcoder_set(list(dictionaries), list(params), path, feature_input_hook,
                                          feature_output_hook, dtype)
    if model_name:
        config["model_name"] = model_name
    if scan:
        config["scan"] = scan
    config["lmjax"] = lm  # what circuit-tracer ignores: the architecture behind each threshold
    _write_text(os.path.join(path, CT_CONFIG), _yaml().safe_dump(config, sort_keys=False))
    return path


def _ct_arch_check(arch: str, what: str) -> None:
    if arch not in ("relu",) + JUMP_FAMILY:
        raise LmjaxError(f"{what} is {arch}; circuit-tracer's transcoders are relu or jumprelu (lmjax's relu, "
                         "jumprelu, batchtopk and matryoshka map onto them; top-k does not)")


def _save_transcoder_set(dicts, plist, path, in_hook, out_hook, dtype):
    if not dicts or len(dicts) != len(plist):
        raise LmjaxError(f"need one params dict per transcoder: got {len(dicts)} transcoders and {len(plist)} params")
    for layer, d in enumerate(dicts):
        if not isinstance(d, Dictionary):
            raise LmjaxError(f"entry {layer} is a {type(d).__name__}, not a Dictionary")
        _ct_arch_check(d.arch, f"layer {layer}'s transcoder")
        if d.d_in != d.d_out:
            raise LmjaxError(f"layer {layer}: d_in={d.d_in} != d_out={d.d_out}; circuit-tracer's transcoders map "
                             "the residual width to itself")
    if len({d.width for d in dicts}) > 1 or len({d.d_in for d in dicts}) > 1 or len({d.skip for d in dicts}) > 1:
        raise LmjaxError("circuit-tracer's TranscoderSet needs one width, one d_model and skip on all layers or none; "
                         f"got widths {[d.width for d in dicts]}, d_in {[d.d_in for d in dicts]}, "
                         f"skip {[d.skip for d in dicts]}")
    config = {"model_kind": "transcoder_set",
              "feature_input_hook": _common_suffix([d.hook_in for d in dicts], "input", in_hook),
              "feature_output_hook": _common_suffix([d.hook_out for d in dicts], "output", out_hook)}
    for layer, (d, p) in enumerate(zip(dicts, plist)):
        dt = _float_dtype(p, dtype)
        raw, _ = _raw_weights(d, p, allow_b_dec_to_input=False)
        tensors = {"W_enc": raw["W_enc"].T, "W_dec": raw["W_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
        if "threshold" in raw:
            tensors["activation_function.threshold"] = raw["threshold"]
        if d.skip:
            tensors["W_skip"] = raw["W_skip"].T  # applied as x @ W_skip.T
        _write(os.path.join(path, f"layer_{layer}.safetensors"),
                          {k: v.astype(dt) for k, v in tensors.items()})
    _remove_stale(path, r"layer_(\d+)\.safetensors", len(dicts))
    lm = {"arch": [d.arch for d in dicts], "k": [d.k for d in dicts],
          "matryoshka_widths": [list(d.matryoshka_widths) for d in dicts]}
    return config, lm


def _save_clt(clt: CrossLayerTranscoder, p, path, in_hook, out_hook, dtype):
    _ct_arch_check(clt.arch, "the cross-layer transcoder")
    if "W_skip" in p:
        raise LmjaxError("circuit-tracer's CLT files hold no W_skip (load_clt never reads one); "
                         "a CLT with a skip cannot be saved in its format")
    n, d, width = clt.n_layers, clt.d_in, clt.width
    if clt.d_out != d:
        raise LmjaxError(f"the CLT maps d_in={d} to d_out={clt.d_out}; circuit-tracer's CLT maps d_model to itself")
    want = {"W_enc": (n, d, width), "b_enc": (n, width), "b_dec": (n, d)}
    if clt.arch in JUMP_FAMILY:
        want["threshold"] = (n, width)
    for name, shape in want.items():
        if name not in p or tuple(np.shape(p[name])) != shape:
            got = list(np.shape(p[name])) if name in p else "missing"
            raise LmjaxError(f"CLT params[{name!r}] is {got}; the CLT (n_layers={n}, d_in={d}, width={width}) "
                             f"needs {list(shape)}")
    w_decs = p.get("W_dec", ())
    if len(w_decs) != n or any(tuple(np.shape(w)) != (width, n - l, d) for l, w in enumerate(w_decs)):
        raise LmjaxError(f"CLT params['W_dec'] must be {n} arrays, entry l of shape [{width}, {n} - l, {d}]; got "
                         f"{[list(np.shape(w)) for w in w_decs]}")
    if not (in_hook or clt.hooks_in) or not (out_hook or clt.hooks_out):
        raise LmjaxError("the CLT has no hooks_in / hooks_out; pass feature_input_hook= and feature_output_hook= "
                         "(e.g. 'hook_resid_mid', 'hook_mlp_out')")
    config = {"model_kind": "cross_layer_transcoder",
              "feature_input_hook": _common_suffix(list(clt.hooks_in), "input", in_hook),
              "feature_output_hook": _common_suffix(list(clt.hooks_out), "output", out_hook)}
    s_in, s_out = np.asarray(clt.input_scales, np.float64), np.asarray(clt.output_scales, np.float64)
    dt = _float_dtype(p, dtype)
    for l in range(n):
        # pre = (x s_in[l]) W_enc[l] + b_enc[l]; y_raw[t] = (sum_l f_l W_dec_l[:, t - l] + b_dec[t]) / s_out[t]
        enc = {f"W_enc_{l}": (_np(p["W_enc"][l]) * s_in[l]).T, f"b_enc_{l}": _np(p["b_enc"][l]),
               f"b_dec_{l}": _np(p["b_dec"][l]) / s_out[l]}
        if clt.arch in JUMP_FAMILY:
            enc[f"threshold_{l}"] = _np(p["threshold"][l])
        _write(os.path.join(path, f"W_enc_{l}.safetensors"), {k: v.astype(dt) for k, v in enc.items()})
        w_dec = _np(w_decs[l]) / s_out[l:][None, :, None]  # layer l's features write to l..n-1
        _write(os.path.join(path, f"W_dec_{l}.safetensors"), {f"W_dec_{l}": w_dec.astype(dt)})
    for pattern in (r"W_enc_(\d+)\.safetensors", r"W_dec_(\d+)\.safetensors"):
        _remove_stale(path, pattern, n)
    return config, {"arch": clt.arch, "k": clt.k}


def _numbered(path: str, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    found = {int(m.group(1)): name for name in os.listdir(path) if (m := rx.fullmatch(name))}
    if sorted(found) != list(range(len(found))):
        raise LmjaxError(f"{path}: files {pattern} numbered {sorted(found)}; circuit-tracer needs 0..n-1 without gaps")
    return [os.path.join(path, found[i]) for i in range(len(found))]


def load_circuit_tracer(path: str, *, dtype=None, feature_input_hook: str | None = None,
                        feature_output_hook: str | None = None):
    """Read a circuit-tracer directory.

    A transcoder set -> (list of `Dictionary`, list of params), layer l at index l, with
    hook_in / hook_out blocks.{l}.<feature_input_hook / feature_output_hook>; a cross-layer
    transcoder -> (`CrossLayerTranscoder`, params), hooks_in / hooks_out those names for
    every layer. Scales are 1. Without a config.yaml the
    kind comes from the file names and the hooks from the arguments. Reads local
    safetensors only: hf:// paths in a config's `transcoders` list must be downloaded
    first (circuit_tracer.utils.caching.save_transcoders_to_cache writes this layout), and
    Gemma Scope's npz / GemmaScope-2 files are not read. `dtype` casts (default: as stored).
    """
    if not os.path.isdir(path):
        raise MissingFileError(f"{path}: no such directory (a circuit-tracer transcoder is a directory)")
    cfg_path = os.path.join(path, CT_CONFIG)
    cfg = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            try:
                cfg = _yaml().safe_load(f) or {}
            except _yaml().YAMLError as e:
                raise LmjaxError(f"{cfg_path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(cfg, dict):
            raise LmjaxError(f"{cfg_path}: not a YAML mapping")
    kind = cfg.get("model_kind")
    if kind is None:
        names = os.listdir(path)
        kind = ("cross_layer_transcoder" if "W_enc_0.safetensors" in names else
                "transcoder_set" if "layer_0.safetensors" in names else None)
        if kind is None:
            raise MissingFileError(f"{path}: no {CT_CONFIG}, layer_0.safetensors or W_enc_0.safetensors")
    hooks = (feature_input_hook or cfg.get("feature_input_hook") or "",
             feature_output_hook or cfg.get("feature_output_hook") or "")
    lm = cfg.get("lmjax") or {}
    if kind == "transcoder_set":
        return _load_transcoder_set(path, cfg, hooks, lm, dtype)
    if kind == "cross_layer_transcoder":
        return _load_clt(path, hooks, lm, dtype)
    raise LmjaxError(f"{cfg_path}: model_kind {kind!r}; allowed: transcoder_set, cross_layer_transcoder")


def _layer_hook(suffix: str, layer: int) -> str:
    return f"blocks.{layer}.{suffix}" if suffix else ""


def _load_transcoder_set(path, cfg, hooks, lm, dtype):
    if cfg.get("transcoders"):
        files = []
        for entry in cfg["transcoders"]:
            if str(entry).startswith("hf://"):
                raise LmjaxError(f"{os.path.join(path, CT_CONFIG)} names {entry}: lmjax reads local files only; "
                                 "download the set first (circuit_tracer.utils.caching.save_transcoders_to_cache)")
            files.append(entry if os.path.isabs(entry) else os.path.join(path, entry))
    else:
        files = _numbered(path, r"layer_(\d+)\.safetensors")
        if not files:
            raise MissingFileError(f"{path}: no layer_0.safetensors (a transcoder_set holds layer_{{l}}.safetensors)")
    dicts, plist = [], []
    for layer, file in enumerate(files):
        if not file.endswith(".safetensors"):
            raise LmjaxError(f"{file}: lmjax reads circuit-tracer's safetensors transcoders, not this file type")
        t = _read(file)
        if "w_enc" in t:
            raise LmjaxError(f"{file}: a GemmaScope-2 checkpoint (w_enc, affine_skip_connection), which lmjax "
                             "does not read")
        if "log_thresholds" in t:
            raise LmjaxError(f"{file}: log_thresholds, which circuit-tracer itself refuses")
        for name in ("b_enc", "b_dec"):
            if name not in t or t[name].ndim != 1:
                raise LmjaxError(f"{file}: needs a 1-d tensor {name!r} (it has {sorted(t)})")
        width, d = t["b_enc"].shape[0], t["b_dec"].shape[0]
        p = {"W_enc": _expect(file, t, "W_enc", (width, d)).T, "b_enc": t["b_enc"],
             "W_dec": _expect(file, t, "W_dec", (width, d)), "b_dec": t["b_dec"]}
        known = {"W_enc", "b_enc", "W_dec", "b_dec"}
        arch = "relu"
        if "activation_function.threshold" in t:
            p["threshold"] = _expect(file, t, "activation_function.threshold", (width,))
            known.add("activation_function.threshold")
            arch = "jumprelu"
        skip = "W_skip" in t
        if skip:
            p["W_skip"] = _expect(file, t, "W_skip", (d, d)).T
            known.add("W_skip")
        unknown = sorted(set(t) - known)
        if unknown:
            raise LmjaxError(f"{file}: unexpected tensors {unknown}")
        arch, k, widths = _lmjax_arch(lm, layer, arch, width)
        dicts.append(Dictionary(arch, d, width, d_out=d, k=k, skip=skip, b_dec_to_input=False,
                                hook_in=_layer_hook(hooks[0], layer), hook_out=_layer_hook(hooks[1], layer),
                                matryoshka_widths=widths))
        plist.append(_to_jnp(p, t["W_enc"].dtype if dtype is None else dtype))
    return dicts, plist


def _lmjax_arch(lm: dict, layer: int | None, arch: str, width: int):
    """(arch, k, matryoshka_widths): batchtopk / matryoshka restored from config.yaml's lmjax
    block (they were saved as their threshold rule); per layer (lists) for a set."""
    def pick(key, default):
        v = lm.get(key, default)
        if layer is None:
            return v
        return v[layer] if isinstance(v, list) and layer < len(v) else default
    want, k, widths = pick("arch", arch), pick("k", 32), tuple(pick("matryoshka_widths", ()) or ())
    if arch == "jumprelu" and want in ("batchtopk", "matryoshka"):
        widths = widths if want == "matryoshka" else ()
        try:
            Dictionary(want, 1, width, k=int(k), matryoshka_widths=widths)  # valid for lmjax?
            return want, int(k), widths
        except (LmjaxError, TypeError, ValueError):
            pass
    return arch, 32, ()


def _load_clt(path, hooks, lm, dtype):
    enc_files = _numbered(path, r"W_enc_(\d+)\.safetensors")
    if not enc_files:
        raise MissingFileError(f"{path}: no W_enc_0.safetensors (a cross_layer_transcoder holds W_enc_{{l}} and "
                               "W_dec_{l}.safetensors)")
    n = len(enc_files)
    w_enc, b_enc, b_dec, thr, w_dec = [], [], [], [], []
    for l, file in enumerate(enc_files):
        t = _read(file)
        if l == 0:  # layer 0 fixes width and d_model, as in circuit-tracer's load_clt
            if "W_enc_0" not in t or t["W_enc_0"].ndim != 2:
                raise LmjaxError(f"{file}: needs a tensor 'W_enc_0' of shape [width, d_model] (it has {sorted(t)})")
            (width, d), stored = t["W_enc_0"].shape, t["W_enc_0"].dtype
        w_enc.append(_expect(file, t, f"W_enc_{l}", (width, d)).T)
        b_enc.append(_expect(file, t, f"b_enc_{l}", (width,)))
        b_dec.append(_expect(file, t, f"b_dec_{l}", (d,)))
        if f"threshold_{l}" in t:
            thr.append(_expect(file, t, f"threshold_{l}", (width,)))
        elif thr:
            raise LmjaxError(f"{file}: threshold_{l} is missing, but the layers before have thresholds")
        dec_file = os.path.join(path, f"W_dec_{l}.safetensors")
        w_dec.append(_expect(dec_file, _read(dec_file), f"W_dec_{l}", (width, n - l, d)))
    if thr and len(thr) != n:
        raise LmjaxError(f"{path}: only the first {len(thr)} of {n} layers have thresholds")
    target = stored if dtype is None else dtype
    params = _to_jnp({"W_enc": np.stack(w_enc), "b_enc": np.stack(b_enc), "b_dec": np.stack(b_dec)}, target)
    params["W_dec"] = tuple(jnp.asarray(w.astype(target)) for w in w_dec)
    arch = "jumprelu" if thr else "relu"
    if thr:
        params["threshold"] = jnp.asarray(np.stack(thr).astype(target))
    arch, k, _ = _lmjax_arch(lm, None, arch, width)
    if arch not in CLT_ARCHS:  # a hand-edited lmjax block (matryoshka): the threshold rule is what runs
        arch, k = "jumprelu", 32
    clt = CrossLayerTranscoder(arch, n, d, width, d_out=d, k=k,
                               hooks_in=tuple(_layer_hook(hooks[0], l) for l in range(n)) if hooks[0] else (),
                               hooks_out=tuple(_layer_hook(hooks[1], l) for l in range(n)) if hooks[1] else ())
    return clt, params
