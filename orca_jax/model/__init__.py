"""The LLaMA model: its config, attention kernels and the Flax module."""

from orca_jax.model.attention import dot_product_attention
from orca_jax.model.config import ModelConfig, ModelConfigError
from orca_jax.model.llama import Llama

__all__ = ["Llama", "ModelConfig", "ModelConfigError", "dot_product_attention"]
