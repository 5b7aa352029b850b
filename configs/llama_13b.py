"""LLaMA-1 13B, the model Orca fine-tunes, with the added pad token (vocabulary 32001).

    orca-jax convert-weights import --hf_dir <LLaMA-13B in HF format> --vocab_size 32001 \
        --out weights/llama-13b
writes the params and copies the HF directory's tokenizer.model beside them (Meta's download keeps
tokenizer.model one level above the 13B folder: copy it into weights/llama-13b yourself).
"""

import dataclasses

from ml_collections import ConfigDict

from orca_jax.model.config import ModelConfig


def get_config() -> ConfigDict:
    model = ModelConfig(
        vocab_size=32001,  # 32000 sentencepiece pieces + the added pad token
        embed_dim=5120,
        mlp_dim=13824,  # 2/3 * 4 * 5120 rounded up to a multiple of 256
        num_layers=40,
        num_heads=40,
        num_kv_heads=40,
        head_dim=128,
        norm_eps=1e-6,
        max_seq_len=2048,
        remat="full",
    )
    return ConfigDict({
        "model": dataclasses.asdict(model),
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "data": {"batch_size": 128, "seq_len": 2048},
    })
