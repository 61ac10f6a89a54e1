"""Device mesh and logical-axis rules: how named axes map onto devices.

Model code only names logical axes (batch, length, embed, heads, kv_heads, head_dim, mlp,
vocab, layers). The config's `mesh` section says how many devices each mesh axis spans
and which mesh axes each logical axis is split over; this module turns that into a `Mesh`
and `NamedSharding`s. On one device everything lands on that device.

Mesh axes, in order of increasing communication: `data` (replicas that only all-reduce
gradients), `fsdp` (parameters and optimizer state split too, gathered per layer), `tensor`
(matmuls split inside a layer). Each size is a positive int or -1 (all devices left over).
The `dcn_*` sizes split an axis further across slices (TPU multi-slice) or hosts
(multi-node GPU / CPU processes) over the slower data-centre network; the mesh's axis then
spans `dcn_x * x` devices, with the ICI part `x` inside each slice.

Presets (`mesh.preset`) set the three ICI sizes at once:

    dp       data=-1, fsdp=1,  tensor=1                     pure data parallel
    fsdp     data=1,  fsdp=-1, tensor=1                     ZeRO-3 style fully sharded
    fsdp_tp  data=1,  fsdp=-1, tensor=mesh.tensor (2 if 1)  FSDP x tensor parallel

A rule maps a logical axis to a comma-separated list of mesh axes ("" = replicated), e.g.
`--config.mesh.rules.batch=data,fsdp --config.mesh.rules.vocab=`.
"""
from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmjax.errors import LmjaxError

MESH_AXES = ("data", "fsdp", "tensor")
DCN_KEYS = tuple(f"dcn_{a}" for a in MESH_AXES)
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers")

# logical axis -> mesh axes ("" = replicated). The config's mesh.rules starts from these.
DEFAULT_RULES = {
    "batch": "data,fsdp",
    "length": "",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": "",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": "",
}

PRESETS = {
    "dp": {"data": -1, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1},
    "fsdp_tp": {"data": 1, "fsdp": -1, "tensor": None},  # None: mesh.tensor, or 2 when left at 1
}

def _get(cfg, key, default):
    if cfg is None:
        return default
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default


def parse_axes(value) -> tuple[str, ...]:
    """A rule's value ("data,fsdp", "fsdp", "", None, or a sequence) -> mesh axis names."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(a.strip() for a in value.split(",") if a.strip())
    return tuple(value)


def rule_problems(rules: Mapping) -> list[str]:
    """Config problems in a rules mapping (unknown names, repeated mesh axes)."""
    problems = []
    for logical, value in rules.items():
        axes = parse_axes(value)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            problems.append(f"mesh.rules.{logical}: unknown mesh axes {unknown}; allowed: {list(MESH_AXES)} "
                            "(comma-separated, '' = replicated)")
        if len(set(axes)) != len(axes):
            problems.append(f"mesh.rules.{logical}: a mesh axis is repeated in {value!r}")
    return problems


def logical_rules(mesh_cfg=None) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Flax-style rules ((logical, mesh axes or None), ...) from the config (defaults if absent)."""
    rules = dict(DEFAULT_RULES)
    given = _get(mesh_cfg, "rules", None)
    if given is not None:
        rules.update(dict(given))
    out = []
    for logical, value in rules.items():
        axes = parse_axes(value)
        out.append((logical, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(out)


LOGICAL_RULES = logical_rules()


def ici_sizes(mesh_cfg) -> dict[str, int]:
    """The per-slice sizes of (data, fsdp, tensor) after applying the preset (-1 = fill)."""
    sizes = {a: int(_get(mesh_cfg, a, -1 if a == "data" else 1)) for a in MESH_AXES}
    preset = _get(mesh_cfg, "preset", "") or ""
    if preset:
        if preset not in PRESETS:
            raise LmjaxError(f"mesh.preset: {preset!r} not in {sorted(PRESETS)} ('' = use mesh.data/fsdp/tensor)")
        tensor = sizes["tensor"]
        sizes = dict(PRESETS[preset])
        if sizes["tensor"] is None:
            sizes["tensor"] = tensor if tensor != 1 else 2
    return sizes


def dcn_sizes(mesh_cfg) -> dict[str, int]:
    return {a: int(_get(mesh_cfg, f"dcn_{a}", 1)) for a in MESH_AXES}


def preset_problems(mesh_cfg) -> list[str]:
    """A preset sets data/fsdp (and tensor, except fsdp_tp) itself: setting them too is an error."""
    preset = _get(mesh_cfg, "preset", "") or ""
    if not preset:
        return []
    if preset not in PRESETS:
        return [f"mesh.preset: {preset!r} not in {sorted(PRESETS)} ('' = use mesh.data/fsdp/tensor)"]
    clash = [a for a, d in (("data", -1), ("fsdp", 1)) if _get(mesh_cfg, a, d) != d]
    if preset != "fsdp_tp" and _get(mesh_cfg, "tensor", 1) != 1:
        clash.append("tensor")
    if clash:
        return [f"mesh.preset: {preset!r} sets {'/'.join(clash)} itself; set either the preset or "
                f"mesh.{'/'.join(clash)}, not both"]
    if preset == "fsdp_tp" and _get(mesh_cfg, "tensor", 1) < 1:
        return ["mesh.tensor: preset 'fsdp_tp' needs a positive tensor width (or leave it at 1 for 2)"]
    return []


def _fill(sizes: dict[str, int], n_devices: int, what: str) -> dict[str, int]:
    unit = "slices/processes" if what else "devices"
    fills = [a for a, s in sizes.items() if s == -1]
    names = "/".join(f"mesh.{what}{a}" for a in sizes)
    if len(fills) > 1:
        raise LmjaxError(f"{names}: at most one may be -1 (fill), got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    sizes = dict(sizes)
    if fills:
        if n_devices % known:
            raise LmjaxError(f"{names}: {n_devices} {unit} are not divisible by the fixed sizes' product "
                             f"{known} ({sizes})")
        sizes[fills[0]] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise LmjaxError(f"{names}: {sizes} needs {math.prod(sizes.values())} {unit}, but {n_devices} "
                         "are present")
    return sizes


def _granules(devices) -> tuple[bool, int]:
    """(process_is_granule, count): DCN groups are TPU slices when there are several, else processes."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        return False, len(slices)
    return True, len({d.process_index for d in devices})


def mesh_shape(mesh_cfg, n_devices: int, n_granules: int = 1) -> tuple[int, int, int]:
    """The full (data, fsdp, tensor) sizes on `n_devices` devices in `n_granules` slices/hosts."""
    dcn = dcn_sizes(mesh_cfg)
    ici = ici_sizes(mesh_cfg)
    if math.prod(dcn.values()) == 1 and -1 not in dcn.values():
        return tuple(_fill(ici, n_devices, "").values())
    dcn = _fill(dcn, n_granules, "dcn_")
    n_slices = math.prod(dcn.values())
    if n_devices % n_slices:
        raise LmjaxError(f"mesh.dcn_*: {n_devices} devices do not split into {n_slices} slices")
    ici = _fill(ici, n_devices // n_slices, "")
    return tuple(dcn[a] * ici[a] for a in MESH_AXES)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The device mesh (axes data, fsdp, tensor) the config asks for, on all (or the given) devices."""
    return Mesh(device_grid(mesh_cfg, jax.devices() if devices is None else devices), MESH_AXES)


def device_grid(mesh_cfg, devices) -> np.ndarray:
    """The devices arranged as the [data, fsdp, tensor] grid of the mesh.

    One slice: jax's topology-aware layout (on TPU; a reshape elsewhere). Several (dcn_*
    sizes > 1): the DCN part of each axis varies across slices / processes, the ICI part
    within one, so only the DCN-split axes talk over the slow network.
    """
    from jax.experimental import mesh_utils

    devices = list(devices)
    dcn = dcn_sizes(mesh_cfg)
    if math.prod(dcn.values()) == 1 and -1 not in dcn.values():
        shape = mesh_shape(mesh_cfg, len(devices))
        try:
            return mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            return np.asarray(devices).reshape(shape)
    process_is_granule, n_granules = _granules(devices)
    dcn = _fill(dcn, n_granules, "dcn_")
    n_slices = math.prod(dcn.values())
    if n_slices != n_granules:
        kind = "processes" if process_is_granule else "TPU slices"
        raise LmjaxError(f"mesh.dcn_*: {dcn} needs {n_slices} slices/hosts, but the devices span "
                         f"{n_granules} {kind}")
    ici = _fill(ici_sizes(mesh_cfg), len(devices) // n_slices, "")
    return mesh_utils.create_hybrid_device_mesh(
        [ici[a] for a in MESH_AXES], [dcn[a] for a in MESH_AXES], devices, process_is_granule=process_is_granule)


def _axes_of(logical: str, rules) -> tuple[str, ...]:
    for name, value in rules:
        if name == logical:
            return parse_axes(value)
    return ()


def ways(mesh: Mesh, logical: str, rules=None) -> int:
    """Into how many pieces the rules split a logical axis on this mesh."""
    return math.prod(mesh.shape[a] for a in _axes_of(logical, rules or LOGICAL_RULES))


def logical_spec(names, rules=None) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(names), rules or LOGICAL_RULES)


def logical_shardings(logical_specs, mesh: Mesh, rules=None):
    """A pytree of logical PartitionSpecs -> NamedShardings on `mesh` (no divisibility checks)."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules or LOGICAL_RULES)


def param_shardings(boxed_params, mesh: Mesh, rules=None):
    """(NamedShardings, notes) for a tree of flax `Partitioned` boxes around ShapeDtypeStructs.

    A dimension whose size does not divide the mesh axes it maps to is replicated instead
    (`notes` lists those as 'path: dim d (logical) size s not divisible by n -> replicated').
    Heads are checked earlier (`problems`): they must divide.
    """
    rules = rules or LOGICAL_RULES
    notes = []

    def one(path, box):
        names = tuple(getattr(box, "names", ()))
        value = getattr(box, "value", box)
        spec = list(logical_spec(names, rules)) if names else []
        spec += [None] * (len(value.shape) - len(spec))
        for d, axes in enumerate(spec):
            if axes is None:
                continue
            n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if value.shape[d] % n:
                notes.append(f"{jax.tree_util.keystr(path)}: dim {d} ({names[d]}) of size {value.shape[d]} "
                             f"does not divide {n} -> replicated")
                spec[d] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    is_box = lambda x: isinstance(x, nn.Partitioned)
    shardings = jax.tree_util.tree_map_with_path(one, boxed_params, is_leaf=is_box)
    return shardings, notes


def batch_spec(rules=None) -> PartitionSpec:
    """The spec of a [batch, length, ...] array (trailing replicated axes dropped, so it also
    fits a [batch] array when length is replicated)."""
    spec = list(logical_spec(("batch", "length"), rules or LOGICAL_RULES))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def batch_sharding(mesh: Mesh, rules=None) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh, rules=None) -> int:
    """The global batch must be a multiple of this (the data-parallel width)."""
    return ways(mesh, "batch", rules)


def problems(mesh: Mesh, *, batch_size: int, n_head: int, n_kv_head: int, rules=None) -> list[str]:
    """What does not divide the mesh, as one line per problem naming the fields.

    (A micro-batch, batch_size / grad_accum, that does not divide the data-parallel width
    still runs: XLA then spreads it over the devices as it can.)"""
    rules = rules or LOGICAL_RULES
    out = []
    shape = dict(mesh.shape)
    dp = batch_divisor(mesh, rules)
    if batch_size % dp:
        out.append(f"train.batch_size={batch_size} is not divisible by the data-parallel width {dp} "
                   f"(mesh {shape}, batch -> {_axes_of('batch', rules)})")
    for logical, field, n in (("heads", "model.n_head", n_head), ("kv_heads", "model.n_kv_head", n_kv_head)):
        k = ways(mesh, logical, rules)
        if n % k:
            out.append(f"{field}={n} is not divisible by the {logical} split {k} (mesh {shape}, "
                       f"{logical} -> {_axes_of(logical, rules)}); change mesh.tensor or {field}")
    return out


def describe(mesh: Mesh) -> str:
    return "x".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)


def assemble_batch(sharding: NamedSharding, global_rows: int, load_rows) -> dict:
    """A global batch (a dict of [global_rows, ...] arrays) in which this process fills only
    the rows its own devices hold.

    `load_rows(start, stop)` returns a dict of numpy arrays holding rows [start, stop) of
    the global batch; it is called once per distinct row range that this process's devices
    need, so each process reads only its share of the data, for any mesh.
    """
    spec = tuple(sharding.spec)
    rows_only = NamedSharding(sharding.mesh, PartitionSpec(*spec[:1]))
    ranges = {}
    for device, index in rows_only.addressable_devices_indices_map((global_rows,)).items():
        start, stop, _ = index[0].indices(global_rows)
        ranges.setdefault((start, stop), None)
    loaded = {r: load_rows(*r) for r in ranges}
    out = {}
    for key, example in next(iter(loaded.values())).items():
        shape = (global_rows, *np.shape(example)[1:])
        pieces = []
        for device, index in sharding.addressable_devices_indices_map(shape).items():
            start, stop, _ = index[0].indices(global_rows)
            pieces.append(jax.device_put(loaded[(start, stop)][key][(slice(None), *index[1:])], device))
        out[key] = jax.make_array_from_single_device_arrays(shape, sharding, pieces)
    return out
