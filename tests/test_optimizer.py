"""The stage optimizer: schedule shape, weight-decay mask, clipping, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orca_jax.train.optimizer import (
    OptimizerConfig,
    OptimizerConfigError,
    learning_rate_schedule,
    make_optimizer,
    weight_decay_mask,
)

PARAMS = {
    "embedder": {"embedding": jnp.ones((8, 4))},
    "layers": {"attention_norm": {"scale": jnp.ones((2, 4))}, "mlp": {"up": jnp.ones((2, 4, 6))}},
    "final_norm": {"scale": jnp.ones((4,))},
}


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_warms_up_linearly_then_decays_to_the_end_value(decay):
    config = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, decay=decay, end_learning_rate_fraction=0.1)
    schedule = learning_rate_schedule(config, total_steps=50)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 5e-4, 1e-3], rtol=1e-6)
    later = np.array([schedule(step) for step in range(10, 51)])
    assert np.all(np.diff(later) <= 1e-12), "the learning rate rises after warmup"
    expected_end = 1e-3 if decay == "constant" else 1e-4
    np.testing.assert_allclose(later[-1], expected_end, rtol=1e-5)
    if decay == "cosine":  # halfway through the decay, cosine sits at the mean of peak and end
        np.testing.assert_allclose(schedule(30), (1e-3 + 1e-4) / 2, rtol=1e-5)


def test_weight_decay_spares_norm_scales_only():
    mask = weight_decay_mask(PARAMS)
    assert mask == {"embedder": {"embedding": True},
                    "layers": {"attention_norm": {"scale": False}, "mlp": {"up": True}},
                    "final_norm": {"scale": False}}
    # With zero gradients the only update is the decay itself.
    config = OptimizerConfig(learning_rate=0.1, weight_decay=0.5, decay="constant", clip_norm=0.0)
    optimizer = make_optimizer(config, total_steps=10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = optimizer.update(zeros, optimizer.init(PARAMS), PARAMS)
    assert float(jnp.abs(updates["final_norm"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["layers"]["attention_norm"]["scale"]).max()) == 0.0
    np.testing.assert_allclose(updates["layers"]["mlp"]["up"], -0.1 * 0.5, rtol=1e-6)


def test_gradients_are_clipped_by_global_norm():
    config = OptimizerConfig(learning_rate=1.0, decay="constant", clip_norm=1.0)
    params = {"w": jnp.zeros((3,))}
    huge = {"w": jnp.array([300.0, 400.0, 0.0])}
    clipped = {"w": huge["w"] / 500.0}
    with_clip = make_optimizer(config, 10)
    plain_adam = optax.adamw(1.0, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=0.0)
    got, _ = with_clip.update(huge, with_clip.init(params), params)
    want, _ = plain_adam.update(clipped, plain_adam.init(params), params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"decay": "step"}, "optimizer.decay"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"grad_accum_steps": 0}, "grad_accum_steps"),
    ({"clip_norm": -1.0}, "clip_norm"),
])
def test_bad_settings_are_named(fields, message):
    with pytest.raises(OptimizerConfigError, match=message):
        OptimizerConfig(**fields)


def test_unknown_field_and_too_long_warmup_are_errors():
    with pytest.raises(OptimizerConfigError, match="unknown optimizer fields"):
        OptimizerConfig.from_config({"learning_rate": 1e-3, "momentum": 0.9})
    with pytest.raises(OptimizerConfigError, match="warmup_steps=10"):
        learning_rate_schedule(OptimizerConfig(warmup_steps=10), total_steps=10)
