"""Model FLOPs of a LLaMA training step, counted as in the PaLM paper's appendix B (for MFU).

Per token, forward + backward:
  * 6 * N for the weight matmuls, N = the parameters that multiply activations: per layer the query,
    key, value, out, gate, up and down kernels, plus lm_head. The input embedding (a gather) and the
    RMSNorm scales (elementwise) are not counted.
  * 12 * L * H * Q * T for attention (QK^T and AV, L layers, H query heads of width Q, T tokens of
    context), halved to 6 * L * H * Q * T because a causal mask leaves half the score matrix unused.
Rematerialisation is not counted: MFU measures useful model work, not what the hardware executed.
This matches MaxText's count for the same shape (93.85 TFLOP per 8 x 2048-token step of the 1.1B model).
"""

from __future__ import annotations

from orca_jax.model.config import ModelConfig


def matmul_param_count(config: ModelConfig) -> int:
    """N above: parameters that enter a matmul (embedding and norms excluded, lm_head included)."""
    attention = config.embed_dim * config.head_dim * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * config.embed_dim * config.mlp_dim
    return config.num_layers * (attention + mlp) + config.embed_dim * config.vocab_size


def train_flops_per_token(config: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Forward + backward FLOPs per token for sequences of `seq_len` tokens."""
    attention_factor = 6 if causal else 12
    attention = attention_factor * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6 * matmul_param_count(config) + attention


def train_flops_per_step(config: ModelConfig, batch_size: int, seq_len: int) -> float:
    """FLOPs of one training step over batch_size rows of seq_len tokens (causal attention)."""
    return batch_size * seq_len * train_flops_per_token(config, seq_len)
