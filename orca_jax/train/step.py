"""The loss and the jitted train and eval steps, with explicit shardings from the mesh rules.

Gradient accumulation is a `lax.scan` over microbatches inside the one jitted step, not
`optax.MultiSteps`: the loss must be the mean over the response tokens of the whole global batch, and
microbatches hold different numbers of response tokens, so averaging per-microbatch means (what
MultiSteps does) would weight tokens unequally. Inside the scan every microbatch's summed loss is
divided by the global batch's token count, so the summed gradients are exactly the global ones, and
one call is one optimizer step (the loop, the schedule and checkpoints all count the same steps).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from orca_jax import parallel
from orca_jax.data.packing import ROW_FIELDS
from orca_jax.model import Llama, ModelConfig, llama

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any


def abstract_state(params_abstract, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """The train state's ShapeDtypeStructs: moments shard like their parameters, scalars replicate.

    This is both the jitted step's in/out sharding and the target that checkpoint restores land on.
    """
    opt_shapes = jax.eval_shape(optimizer.init, params_abstract)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_abstract = optax.tree_map_params(
        optimizer, lambda shape, param: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=param.sharding),
        opt_shapes, params_abstract,
        transform_non_params=lambda shape: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=replicated))
    return TrainState(params=params_abstract, opt_state=opt_abstract)


def shardings_of(abstract_tree):
    return jax.tree.map(lambda leaf: leaf.sharding, abstract_tree)


def init_sharded_params(model_config: ModelConfig, rng: jax.Array, params_abstract):
    """Random parameters (shapes from `parallel.abstract_params`), created directly in their shards."""
    mesh = jax.tree.leaves(params_abstract)[0].sharding.mesh
    with parallel.activate(mesh):
        return jax.jit(lambda rng: nn.unbox(llama.init_params(model_config, rng)),
                       out_shardings=shardings_of(params_abstract))(rng)


def init_state(params, optimizer: optax.GradientTransformation, state_abstract: TrainState) -> TrainState:
    """A fresh optimizer state for `params` (every stage starts one)."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings_of(state_abstract.opt_state))(params)
    return TrainState(params=params, opt_state=opt_state)


def weighted_xent(model: Llama, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(sum of weight * cross-entropy, sum of weights) over the batch, both float32 scalars."""
    logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    weights = batch["loss_weights"]
    return jnp.sum(xent * weights), jnp.sum(weights)


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[B, L] -> [num_microbatches, B / num_microbatches, L], microbatch k taking rows k, k+n, ....

    Strided rather than contiguous so that every microbatch keeps rows on every data shard.
    """
    def split(x):
        rows = x.shape[0] // num_microbatches
        x = x.reshape(rows, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch", "length"))
    return jax.tree.map(split, batch)


def train_step(model: Llama, optimizer: optax.GradientTransformation, num_microbatches: int,
               state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    total_weight = jnp.maximum(jnp.sum(batch["loss_weights"]), 1.0)

    def microbatch_loss(params, microbatch):
        loss_sum, _ = weighted_xent(model, params, microbatch)
        return loss_sum / total_weight

    def accumulate(grads, microbatch):
        loss, micro_grads = jax.value_and_grad(microbatch_loss)(state.params, microbatch)
        return jax.tree.map(jnp.add, grads, micro_grads), loss

    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    grads, losses = jax.lax.scan(accumulate, zero_grads, split_microbatches(batch, num_microbatches))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": jnp.sum(losses),
        "grad_norm": optax.tree.norm(grads),
        "response_tokens": jnp.sum(batch["loss_weights"]),
        "real_tokens": jnp.sum(batch["segment_ids"] > 0),
    }
    return TrainState(params=params, opt_state=opt_state), metrics


def eval_step(model: Llama, params, batch: Batch) -> dict[str, jax.Array]:
    loss_sum, weight = weighted_xent(model, params, batch)
    return {"loss_sum": loss_sum, "response_tokens": weight}


class CompiledSteps:
    """The train and eval steps of one stage, jitted with explicit in/out shardings.

    The train state is donated: its buffers are reused for the new state, so a step never holds two
    copies of the parameters and optimizer moments.
    """

    def __init__(self, model_config: ModelConfig, optimizer: optax.GradientTransformation,
                 num_microbatches: int, mesh: Mesh, state_abstract: TrainState):
        self.mesh = mesh
        shardings = shardings_of(state_abstract)
        model = Llama(model_config)
        batch_sharding = {key: parallel.batch_sharding(mesh) for key in ROW_FIELDS}
        replicated = NamedSharding(mesh, PartitionSpec())
        self.jitted_train = jax.jit(functools.partial(train_step, model, optimizer, num_microbatches),
                                    in_shardings=(shardings, batch_sharding),
                                    out_shardings=(shardings, replicated), donate_argnums=0)
        """The jitted train step itself, for ahead-of-time lowering (benchmarks/tpu_fit.py)."""
        self._eval = jax.jit(functools.partial(eval_step, model),
                             in_shardings=(shardings.params, batch_sharding), out_shardings=replicated)

    def train(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with parallel.activate(self.mesh):
            return self.jitted_train(state, batch)

    def eval(self, params, batch: Batch) -> dict[str, jax.Array]:
        with parallel.activate(self.mesh):
            return self._eval(params, batch)
