"""The device mesh and the one table that maps logical axis names to mesh axes.

Model code names every parameter and activation axis logically ('embed', 'heads', ...); only this
module knows how those names land on the physical mesh ('data', 'fsdp', 'tensor'). Changing a
parallelism strategy means editing LOGICAL_AXIS_RULES, never the model. Decoding has its own small
table, DECODE_AXIS_RULES; the functions below take `rules=` to use it (training keeps the default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from orca_jax.config import typed_block
from orca_jax.errors import UserError
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import init_params

MESH_AXES = ("data", "fsdp", "tensor")

# Order matters: flax assigns each mesh axis at most once per array, trying rules top to bottom.
# So on activations [batch, length, embed], 'batch' takes data+fsdp first and 'embed' falls back
# to replicated, while on parameters (no batch axis) 'embed' is FSDP-sharded.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("embed", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)

# Evaluation (decoding) rules. A decode step is memory-bound and moves one token per row, so the
# training rules' FSDP sharding of 'embed' would all-gather every weight for every generated token.
# Here the weights are split only over 'tensor' (heads, kv_heads and mlp: per layer, two small
# all-reduces of [batch, 1, embed] activations) and 'embed' stays whole; rows split over 'data' and
# 'fsdp' (an fsdp axis acts as more data parallelism: parameters are replicated across it). The
# vocabulary stays whole too: the padded 32001-row table divides no mesh axis, and in bf16 it is
# 0.3 GB of a 13B model's 26 GB. The cache's kv_heads split like the weights', its rows like the batch.
DECODE_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


class MeshShapeError(UserError):
    """The requested mesh does not fit the devices, or a shape does not divide the mesh."""


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, device_count: int) -> tuple[int, int, int]:
    """Fill the single -1 entry so the product equals device_count; error clearly otherwise."""
    shape = [data, fsdp, tensor]
    unknown = [i for i, size in enumerate(shape) if size == -1]
    if len(unknown) > 1:
        raise MeshShapeError(f"mesh {tuple(shape)}: at most one axis may be -1")
    if any(size == 0 or size < -1 for size in shape):
        raise MeshShapeError(f"mesh {tuple(shape)}: sizes must be positive or -1")
    known = math.prod(size for size in shape if size != -1)
    if unknown:
        if device_count % known:
            raise MeshShapeError(
                f"mesh {dict(zip(MESH_AXES, shape))}: {device_count} devices are not divisible by {known}")
        shape[unknown[0]] = device_count // known
    if math.prod(shape) != device_count:
        raise MeshShapeError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, have {device_count}")
    return tuple(shape)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all), -1 meaning 'the rest'."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    if len(devices) == len(jax.devices()):
        # Let JAX order devices for the physical topology (matters on TPU pods).
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` block of a config: device counts along each mesh axis, one of them may be -1 (the rest)."""

    data: int = -1
    """Pure data parallelism: replicas that each hold whole (tensor-split) parameters."""
    fsdp: int = 1
    """Data parallelism with parameters, gradients and optimizer state sharded across it."""
    tensor: int = 1
    """Tensor (model) parallelism: heads, MLP and vocabulary split across it."""

    def __post_init__(self):
        for name in MESH_AXES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value == 0 or value < -1:
                raise MeshShapeError(f"mesh.{name} must be a positive integer or -1, got {value!r}")

    @classmethod
    def from_config(cls, block) -> MeshConfig:
        return cls() if block is None else typed_block(cls, block, MeshShapeError, "mesh config")


def mesh_from_config(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the mesh a config's `mesh` block names."""
    return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Iterator[Mesh]:
    """Make `mesh` the current mesh and `rules` (default LOGICAL_AXIS_RULES) the active rules.

    Trace and run jitted model code inside this: the model's logical activation constraints resolve
    through the rules and only take effect when a mesh is current (`jax.set_mesh`, which replaces the
    deprecated `with mesh:`), and splash attention's shard_map finds its mesh the same way.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def logical_to_spec(logical_axes: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def param_shardings(mesh: Mesh, boxed_tree, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a tree of nn.LogicallyPartitioned leaves (e.g. from jax.eval_shape(init))."""
    specs = nn.get_partition_spec(boxed_tree)
    specs = nn.logical_to_mesh(specs, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, length] input array: rows split over data and fsdp."""
    return logical_sharding(mesh, ("batch", "length"))


def check_divisible(name: str, size: int, mesh: Mesh, mesh_axes: str | tuple[str, ...] | None) -> None:
    """Raise MeshShapeError naming the dimension when `size` does not divide over `mesh_axes`."""
    if mesh_axes is None:
        return
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
    parts = math.prod(mesh.shape[a] for a in axes)
    if size % parts:
        raise MeshShapeError(f"{name}={size} is not divisible by mesh axes {axes} of total size {parts}")


def abstract_params(model_config: ModelConfig, mesh: Mesh, dtype: str | None = None) -> Any:
    """ShapeDtypeStructs of the model's parameters, sharded on `mesh` by the logical-axis rules.

    `dtype` defaults to the config's param_dtype. Nothing is allocated.
    """
    boxed = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    shardings = param_shardings(mesh, boxed)
    dtype = jnp.dtype(dtype or model_config.param_dtype)
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=sharding),
                        nn.unbox(boxed), shardings)
