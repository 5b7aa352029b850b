"""Mesh construction, its errors, the logical-axis rules and the `activate` context."""

import jax
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from orca_jax import parallel
from orca_jax.parallel import MeshShapeError


@pytest.mark.parametrize("requested, filled", [
    ((-1, 1, 1), (8, 1, 1)), ((1, -1, 1), (1, 8, 1)), ((2, -1, 2), (2, 2, 2)), ((2, 4, 1), (2, 4, 1)),
])
def test_minus_one_fills_the_remaining_devices(requested, filled):
    assert parallel.resolve_mesh_shape(*requested, device_count=8) == filled


@pytest.mark.parametrize("requested, message", [
    ((-1, -1, 1), "at most one axis may be -1"),
    ((3, -1, 1), "not divisible by 3"),
    ((2, 2, 1), "needs 4 devices, have 8"),
    ((0, 8, 1), "positive or -1"),
])
def test_bad_mesh_shapes_are_explained(requested, message):
    with pytest.raises(MeshShapeError, match=message):
        parallel.resolve_mesh_shape(*requested, device_count=8)


def test_mesh_from_config_and_device_subsets():
    mesh = parallel.mesh_from_config(parallel.MeshConfig.from_config(ConfigDict({"data": 2, "fsdp": -1, "tensor": 2})))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    single = parallel.make_mesh(-1, 1, 1, devices=jax.devices()[:1])
    assert dict(single.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_rules_put_batch_on_data_and_fsdp_and_weights_on_fsdp_and_tensor():
    assert parallel.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert parallel.logical_to_spec(("layers", "embed", "heads", "head_dim")) == P(None, "fsdp", "tensor", None)
    assert parallel.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert parallel.logical_to_spec(("batch", "length", "vocab")) == P(("data", "fsdp"), None, "tensor")


def test_check_divisible_names_the_dimension():
    mesh = parallel.make_mesh(2, 2, 2)
    parallel.check_divisible("batch_size", 8, mesh, ("data", "fsdp"))
    with pytest.raises(MeshShapeError, match="batch_size=6 .* total size 4"):
        parallel.check_divisible("batch_size", 6, mesh, ("data", "fsdp"))


def test_activate_sets_mesh_and_rules_then_restores():
    mesh = parallel.make_mesh(1, 4, 2)
    with parallel.activate(mesh):
        assert dict(jax.sharding.get_abstract_mesh().shape) == {"data": 1, "fsdp": 4, "tensor": 2}
        assert tuple(nn.get_logical_axis_rules()) == parallel.LOGICAL_AXIS_RULES
    assert jax.sharding.get_abstract_mesh().empty
    assert not nn.get_logical_axis_rules()
