"""The 1.1B LLaMA shape of the GPU model-step benchmark (TinyLlama's width and depth, full MHA).

Chosen so one H100 holds float32 params, gradients and un-rematerialised activations of 8 x 2048
tokens, and so the numbers compare with the MaxText run recorded in the stack notes.
"""

import dataclasses

from ml_collections import ConfigDict

from orca_jax.model.config import ModelConfig


def get_config() -> ConfigDict:
    model = ModelConfig(
        vocab_size=32000,
        embed_dim=2048,
        mlp_dim=5632,
        num_layers=16,
        num_heads=16,
        num_kv_heads=16,
        head_dim=128,
        norm_eps=1e-5,
        max_seq_len=2048,
        attention="cudnn",
    )
    return ConfigDict({
        "model": dataclasses.asdict(model),
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "batch_size": 8,
        "seq_len": 2048,
    })
