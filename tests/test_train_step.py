"""The jitted train step: token-weighted loss, gradient accumulation, donation, and meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.model import Llama, ModelConfig
from orca_jax.train import step as train_step
from orca_jax.train.optimizer import OptimizerConfig, make_optimizer

SEQ_LEN = 64
BATCH = 8


@pytest.fixture(scope="module")
def model_config(repo_root) -> ModelConfig:
    return ModelConfig.from_config(load_config(str(repo_root / "configs" / "tiny.py")).model)


def packed_batch(seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Rows of 1-3 packed examples and trailing padding, with a random response mask."""
    rng = np.random.default_rng(seed)
    batch = {name: np.zeros((BATCH, SEQ_LEN), np.int32) for name in ("inputs", "targets", "segment_ids", "positions")}
    batch["loss_weights"] = np.zeros((BATCH, SEQ_LEN), np.float32)
    for row in range(BATCH):
        start = 0
        for segment in range(1, rng.integers(1, 4) + 1):
            length = int(rng.integers(8, SEQ_LEN // 3))
            span = slice(start, start + length)
            batch["inputs"][row, span] = rng.integers(3, vocab_size, length)
            batch["targets"][row, span] = rng.integers(3, vocab_size, length)
            batch["segment_ids"][row, span] = segment
            batch["positions"][row, span] = np.arange(length)
            batch["loss_weights"][row, span] = rng.random(length) < 0.6
            start += length
    return batch


class Trainer:
    """Compiled steps plus a kept initial state, so each test compiles once per (mesh, accumulation)."""

    def __init__(self, model_config, mesh, grad_accum_steps: int):
        self.mesh = mesh
        optimizer_config = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, grad_accum_steps=grad_accum_steps)
        optimizer = make_optimizer(optimizer_config, total_steps=20)
        params_abstract = parallel.abstract_params(model_config, mesh)
        state_abstract = train_step.abstract_state(params_abstract, optimizer, mesh)
        params = train_step.init_sharded_params(model_config, jax.random.key(0), params_abstract)
        self._initial = train_step.init_state(params, optimizer, state_abstract)
        self.steps = train_step.CompiledSteps(model_config, optimizer, grad_accum_steps, mesh, state_abstract)

    def fresh_state(self):
        """A copy of the initial state (the step donates, and so consumes, what it is given)."""
        return jax.tree.map(jnp.copy, self._initial)


@pytest.fixture(scope="module")
def one_device(model_config) -> Trainer:
    return Trainer(model_config, parallel.make_mesh(devices=jax.devices()[:1]), grad_accum_steps=1)


@pytest.fixture(scope="module")
def eight_devices(model_config) -> Trainer:
    return Trainer(model_config, parallel.make_mesh(2, 2, 2), grad_accum_steps=1)


def on_mesh(batch, mesh):
    return {name: jax.device_put(array, parallel.batch_sharding(mesh)) for name, array in batch.items()}


def test_loss_is_the_mean_over_response_tokens_of_the_whole_batch(model_config, one_device):
    state, mesh = one_device.fresh_state(), one_device.mesh
    batch = packed_batch(0, model_config.vocab_size)
    logits = np.asarray(Llama(model_config).apply({"params": state.params}, batch["inputs"], batch["positions"],
                                                  batch["segment_ids"]), np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    xent = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
    expected = (xent * batch["loss_weights"]).sum() / batch["loss_weights"].sum()

    evaluated = jax.device_get(one_device.steps.eval(state.params, on_mesh(batch, mesh)))
    _, metrics = one_device.steps.train(state, on_mesh(batch, mesh))
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(evaluated["loss_sum"] / evaluated["response_tokens"], expected, rtol=1e-5)
    assert int(metrics["real_tokens"]) == int(np.count_nonzero(batch["segment_ids"]))


def test_gradient_accumulation_matches_one_big_batch(model_config, one_device):
    """Microbatches hold different numbers of response tokens; the token-weighted sum still gives the
    global batch's gradient (a mean of per-microbatch means would not)."""
    batch = packed_batch(1, model_config.vocab_size)
    batch["loss_weights"][: BATCH // 2] *= 0.0  # make the microbatches very unequal
    batch["loss_weights"][0, :5] = 1.0
    results = {}
    for accum, trainer in ((1, one_device), (4, Trainer(model_config, one_device.mesh, grad_accum_steps=4))):
        state, metrics = trainer.steps.train(trainer.fresh_state(), on_mesh(batch, trainer.mesh))
        results[accum] = (jax.device_get(state.params), jax.device_get(metrics))
    np.testing.assert_allclose(results[4][1]["loss"], results[1][1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(results[4][1]["grad_norm"], results[1][1]["grad_norm"], rtol=1e-4)
    for got, want in zip(jax.tree.leaves(results[4][0]), jax.tree.leaves(results[1][0])):
        # Adam's first update is about lr * sign(gradient): float noise on near-zero gradients moves
        # a parameter by up to lr, so compare at a fraction of it.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-4)


def test_state_is_donated_and_sharded_as_the_rules_say(model_config, eight_devices):
    state = eight_devices.fresh_state()
    old_embedding = state.params["embedder"]["embedding"]
    new_state, _ = eight_devices.steps.train(state, on_mesh(packed_batch(2, model_config.vocab_size),
                                                            eight_devices.mesh))
    assert old_embedding.is_deleted(), "the train state was not donated"
    embedding = new_state.params["embedder"]["embedding"]
    assert embedding.sharding.spec == parallel.logical_to_spec(("vocab", "embed"))
    first_moment = new_state.opt_state[1][0].mu["embedder"]["embedding"]
    assert first_moment.sharding == embedding.sharding


def test_eight_devices_follow_the_one_device_loss_curve(model_config, one_device, eight_devices):
    curves = {}
    for name, trainer in (("one", one_device), ("2x2x2", eight_devices)):
        state, losses = trainer.fresh_state(), []
        for seed in (10, 11, 10, 11, 10, 11):  # seen twice or more, so the loss has something to fall on
            state, metrics = trainer.steps.train(state, on_mesh(packed_batch(seed, model_config.vocab_size),
                                                                trainer.mesh))
            losses.append(float(metrics["loss"]))
        curves[name] = losses
    assert curves["one"][-1] < curves["one"][1] - 0.05, "the loss did not fall"
    np.testing.assert_allclose(curves["2x2x2"], curves["one"], rtol=2e-4)
