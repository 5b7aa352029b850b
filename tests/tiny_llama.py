"""A tiny random LLaMA made with transformers and imported with `orca-jax convert-weights`, the way a
user brings real weights in: the shared setup of the evaluation tests."""

import pathlib

import torch
import transformers

from orca_jax.model import convert


def converted_tiny_llama(root: pathlib.Path, vocab_size: int, *, window: int, heads: int = 2, kv_heads: int = 2,
                         stddev: float = 0.3, seed: int = 0) -> transformers.LlamaForCausalLM:
    """Write the model to root/hf (safetensors) and its import to root/params; return the torch model.

    Weights are N(0, stddev) everywhere, norms included, so logits are peaked and no layer is the identity.
    """
    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=window,
        tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, stddev)
    model.save_pretrained(root / "hf")
    assert convert.main(["import", "--hf_dir", str(root / "hf"), "--out", str(root / "params")]) == 0
    return model
