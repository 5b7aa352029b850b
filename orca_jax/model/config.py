"""The shape and numerics of a LLaMA model, as one frozen dataclass.

Kept free of ml_collections so the model (and the GPU benchmark) import without it; config files hold a
`model` ConfigDict with these field names and `ModelConfig.from_config` turns it into this object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from orca_jax.config import typed_block
from orca_jax.errors import UserError

REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class ModelConfigError(UserError):
    """A model config field that cannot describe a LLaMA; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the decoder. Defaults are LLaMA-1 7B."""

    vocab_size: int = 32000
    """Rows of the embedding and columns of lm_head (32001 once the pad token is added)."""
    embed_dim: int = 4096
    """Width of the residual stream."""
    mlp_dim: int = 11008
    """Hidden width of the SwiGLU MLP (gate and up projections)."""
    num_layers: int = 32
    num_heads: int = 32
    """Query heads."""
    num_kv_heads: int = 32
    """Key/value heads; fewer than num_heads is grouped-query attention (LLaMA-2 70B uses 8)."""
    head_dim: int = 128
    rope_theta: float = 10000.0
    """Base of the rotary embedding frequencies."""
    norm_eps: float = 1e-6
    """Epsilon inside RMSNorm's square root (LLaMA-1: 1e-6, LLaMA-2: 1e-5)."""
    max_seq_len: int = 2048
    """Longest sequence the model is trained for; longer inputs are an error."""
    param_dtype: str = "float32"
    """Storage dtype of the parameters (and so of the gradients and optimizer state)."""
    compute_dtype: str = "bfloat16"
    """Dtype of matmul inputs and activations; norms, softmax and logits stay float32."""
    remat: str = "none"
    """Per-layer rematerialisation: 'none' keeps all activations, 'full' recomputes the layer in the
    backward pass, 'save_dots' keeps only matmul outputs."""
    scan_layers: bool = True
    """True compiles one layer body inside a loop; False unrolls the loop (slower to compile, lets XLA
    schedule across layers). The parameter tree is the same either way."""
    attention: str = "xla"
    """Attention kernel: 'xla' (any backend), 'cudnn' (NVIDIA GPU), 'splash' (TPU Pallas)."""

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(f"model.num_heads={self.num_heads} is not a multiple of "
                                   f"model.num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ModelConfigError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ModelConfigError("model.norm_eps and model.rope_theta must be positive")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in FLOAT_DTYPES:
                raise ModelConfigError(f"model.{name}={getattr(self, name)!r}: choose one of {FLOAT_DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ModelConfigError(f"model.remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ModelConfigError(
                f"model.attention={self.attention!r}: choose one of {ATTENTION_IMPLEMENTATIONS}")
        if self.attention == "cudnn" and self.compute_dtype == "float32":
            raise ModelConfigError("model.attention='cudnn' needs compute_dtype bfloat16 or float16: "
                                   "cuDNN's fused attention has no float32 kernel")

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> ModelConfig:
        """Build from a config's `model` block (ConfigDict or dict); unknown fields are an error."""
        return typed_block(cls, model_config, ModelConfigError, "model config")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def params_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def compute_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)
