"""LLaMA-1 7B (Touvron et al. 2023, table 2), with the pad token Orca adds to the vocabulary."""

import dataclasses

from ml_collections import ConfigDict

from orca_jax.model.config import ModelConfig


def get_config() -> ConfigDict:
    model = ModelConfig(
        vocab_size=32001,  # 32000 sentencepiece pieces + the added pad token
        embed_dim=4096,
        mlp_dim=11008,  # 2/3 * 4 * 4096 rounded up to a multiple of 256
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        norm_eps=1e-6,
        max_seq_len=2048,
        remat="full",  # 7B activations at 2048 tokens do not fit beside FSDP-sharded Adam state
    )
    return ConfigDict({
        "model": dataclasses.asdict(model),
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "data": {"batch_size": 64, "seq_len": 2048},
    })
