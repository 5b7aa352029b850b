"""Meta's original LLaMA release: params.json and consolidated.NN.pth, one file per model-parallel rank.

Two things differ from Hugging Face checkpoints:
- Model parallelism: 13B ships as two ranks. Column-parallel weights (wq, wk, wv, w1, w3, output) are
  split along out_features (dim 0), row-parallel ones (wo, w2) along in_features (dim 1), the embedding
  along its width (dim 1); norms are replicated. The ranks are concatenated back here.
- Rotary layout: Meta rotates interleaved pairs (2i, 2i+1) of each head, our model (like HF) pairs i with
  i + head_dim/2. So the rows of wq and wk are permuted within each head: row 2i goes to i and row 2i+1
  to head_dim/2 + i. Scores are unchanged because q and k get the same permutation.

The .pth files are memory-mapped, and re-opened whenever reading moves to another layer, so resident
file pages stay near one layer's worth instead of growing to the whole checkpoint.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from typing import Any

import ml_dtypes
import numpy as np

from orca_jax.model.config import ModelConfig
from orca_jax.model.weight_layout import ConversionError, ParamLayout

PARAMS_FILE = "params.json"
SHARD_PATTERN = "consolidated.*.pth"

# key -> (Meta tensor name, dim the model-parallel ranks split, whether rows are rotary-interleaved)
META_NAMES: dict[str, tuple[str, int | None, bool]] = {
    "embedding": ("tok_embeddings.weight", 1, False),
    "attention_norm": ("layers.{layer}.attention_norm.weight", None, False),
    "query": ("layers.{layer}.attention.wq.weight", 0, True),
    "key": ("layers.{layer}.attention.wk.weight", 0, True),
    "value": ("layers.{layer}.attention.wv.weight", 0, False),
    "out": ("layers.{layer}.attention.wo.weight", 1, False),
    "mlp_norm": ("layers.{layer}.ffn_norm.weight", None, False),
    "gate": ("layers.{layer}.feed_forward.w1.weight", 0, False),
    "up": ("layers.{layer}.feed_forward.w3.weight", 0, False),
    "down": ("layers.{layer}.feed_forward.w2.weight", 1, False),
    "final_norm": ("norm.weight", None, False),
    "lm_head": ("output.weight", 0, False),
}


def interleaved_to_rotate_half(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Permute [heads * head_dim, in] projection rows from Meta's pairing to HF's, per head."""
    out_features, in_features = rows.shape
    per_head = rows.reshape(out_features // head_dim, head_dim // 2, 2, in_features)
    return per_head.transpose(0, 2, 1, 3).reshape(out_features, in_features)


_NOTHING_LOADED = object()


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError("reading Meta .pth checkpoints needs PyTorch: pip install torch") from None
    return torch


class MetaCheckpoint:
    """A directory with Meta's params.json and consolidated.*.pth, read one tensor at a time."""

    def __init__(self, meta_dir: str | pathlib.Path, max_seq_len: int = 2048):
        self.dir = pathlib.Path(meta_dir)
        params_path = self.dir / PARAMS_FILE
        if not params_path.is_file():
            raise ConversionError(f"{params_path} does not exist: not a Meta LLaMA checkpoint directory")
        self.shard_paths = sorted(self.dir.glob(SHARD_PATTERN))
        if not self.shard_paths:
            raise ConversionError(f"{self.dir}: no {SHARD_PATTERN} files next to {PARAMS_FILE}")
        self._loaded_layer: object = _NOTHING_LOADED
        self._shards: list[dict[str, Any]] = []
        try:
            params = json.loads(params_path.read_text())
        except json.JSONDecodeError as err:
            raise ConversionError(f"{params_path}: not valid JSON ({err})") from None
        # The vocabulary and MLP width come from the tensors: params.json has vocab_size -1 (meaning "ask
        # the tokenizer") and only the rounding rule for the MLP width.
        vocab_size = self._joined("embedding", None).shape[0]
        mlp_dim = self._joined("gate", 0).shape[0]
        try:
            dim, num_heads = params["dim"], params["n_heads"]
            self.model_config = ModelConfig(
                vocab_size=vocab_size, embed_dim=dim, mlp_dim=mlp_dim, num_layers=params["n_layers"],
                num_heads=num_heads, num_kv_heads=params.get("n_kv_heads") or num_heads,
                head_dim=dim // num_heads, rope_theta=float(params.get("rope_theta", 10000.0)),
                norm_eps=float(params["norm_eps"]), max_seq_len=max_seq_len)
        except (KeyError, TypeError, ValueError) as err:
            raise ConversionError(f"{params_path}: cannot describe a LLaMA ({err!r})") from None

    def _state_dicts(self, layer: int | None) -> list[dict[str, Any]]:
        if layer != self._loaded_layer:
            torch = _torch()
            self._shards = []  # unmap the previous layer's pages before mapping again
            try:
                self._shards = [torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                                for path in self.shard_paths]
            except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
                raise ConversionError(f"{self.dir}: cannot load {SHARD_PATTERN} ({err})") from None
            self._loaded_layer = layer
        return self._shards

    def _joined(self, key: str, layer: int | None) -> np.ndarray:
        """The tensor for `key` (at `layer`) with the model-parallel ranks concatenated, as NumPy."""
        template, split_dim, _ = META_NAMES[key]
        name = template.format(layer=layer)
        pieces = []
        for path, shard in zip(self.shard_paths, self._state_dicts(layer)):
            if name not in shard:
                raise ConversionError(f"{path}: tensor {name} is missing")
            pieces.append(shard[name])
            if split_dim is None:
                break
        torch = _torch()
        try:
            tensor = torch.cat(pieces, dim=split_dim) if len(pieces) > 1 else pieces[0]
        except RuntimeError as err:
            raise ConversionError(f"{self.dir}: tensor {name} does not concatenate across "
                                  f"{[path.name for path in self.shard_paths]} ({err})") from None
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; reinterpret the bits
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()

    def describe(self, layout: ParamLayout, layer: int | None) -> str:
        name = META_NAMES[layout.key][0].format(layer=layer)
        return f"{self.dir / SHARD_PATTERN}: tensor {name}"

    def read(self, layout: ParamLayout, layer: int | None) -> np.ndarray:
        """The tensor for `layout` (at `layer`) in HF's torch layout: ranks joined, rotary rows permuted."""
        tensor = self._joined(layout.key, layer)
        layout.check_torch_tensor(tensor, self.model_config, self.describe(layout, layer))
        rotary = META_NAMES[layout.key][2]
        return interleaved_to_rotate_half(tensor, self.model_config.head_dim) if rotary else tensor
