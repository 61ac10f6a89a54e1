"""Device mesh and logical-axis rules: how named parameter axes map onto devices.

Model code only names logical axes; this module turns those names into NamedShardings on
a mesh with axes (data, fsdp, tensor). On one CPU everything lands on one device.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes); unnamed logical axes are replicated.
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
    """Resolve -1 (fill) in the configured (data, fsdp, tensor) sizes."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh: at most one axis may be -1 (fill), got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if n_devices % known:
            raise ValueError(f"mesh: {n_devices} devices are not divisible by the fixed axes' product {known}")
        sizes[fills[0]] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(
            f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but {n_devices} are present"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(logical_specs, mesh: Mesh):
    """A pytree of logical PartitionSpecs -> NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the data-parallel width)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
