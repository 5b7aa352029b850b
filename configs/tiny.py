"""A LLaMA small enough for CPU tests: every code path (GQA, scan, packing) at toy size."""

import dataclasses

from ml_collections import ConfigDict

from orca_jax.model.config import ModelConfig


def get_config() -> ConfigDict:
    model = ModelConfig(
        vocab_size=512,  # a sentencepiece model trained in tests fits in 512 pieces
        embed_dim=64,
        mlp_dim=160,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,  # grouped-query attention, so the grouping is always exercised
        head_dim=16,
        max_seq_len=256,
        compute_dtype="float32",  # CPUs have no fast bfloat16 and tests compare at float32 precision
    )
    return ConfigDict({
        "model": dataclasses.asdict(model),
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "data": {"batch_size": 8, "seq_len": 128},
    })
