"""LLaMA-2 13B: the LLaMA-1 13B shape with a 4096-token context and RMSNorm epsilon 1e-5.

Import it as configs/llama_13b.py says (`--vocab_size 32001` adds the pad token; the HF directory's
tokenizer.model is copied next to the params).
"""

import dataclasses

from ml_collections import ConfigDict

from orca_jax.model.config import ModelConfig


def get_config() -> ConfigDict:
    model = ModelConfig(
        vocab_size=32001,  # 32000 sentencepiece pieces + the added pad token
        embed_dim=5120,
        mlp_dim=13824,
        num_layers=40,
        num_heads=40,
        num_kv_heads=40,  # only the 70B model uses grouped-query attention (8 kv heads)
        head_dim=128,
        norm_eps=1e-5,
        max_seq_len=4096,
        remat="full",
    )
    return ConfigDict({
        "model": dataclasses.asdict(model),
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "data": {"batch_size": 64, "seq_len": 4096},
    })
