"""How each parameter of our tree relates to the PyTorch LLaMA tensor it is converted from.

PyTorch checkpoints (Hugging Face and Meta alike) store one tensor per layer, and every projection as
an `nn.Linear` weight of shape [out_features, in_features]. Our tree stacks layers on a leading axis and
keeps the input axes first with the head axes split out ([embed, heads, head_dim] for the query), so a
torch weight becomes ours by a transpose and a reshape; embeddings and norm scales need neither.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from orca_jax.errors import UserError
from orca_jax.model.config import FLOAT_DTYPES, ModelConfig


class ConversionError(UserError):
    """A checkpoint that cannot be converted; the message names the file and the tensor."""


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    key: str
    """Short name shared with the checkpoint formats' name tables."""
    path: tuple[str, ...]
    """Where the parameter sits in our tree."""
    in_axes: int | None
    """How many of our (per-layer) axes make up torch's in_features; the rest are out_features.
    None: the torch tensor already has our per-layer shape (embedding, norm scales)."""
    layered: bool
    """Stacked over layers (leading 'layers' axis) rather than one tensor for the model."""
    vocab_axis: int | None = None
    """The axis indexing tokens, which a vocabulary resize grows."""

    def shape(self, config: ModelConfig) -> tuple[int, ...]:
        """Our shape of this parameter, with the leading layers axis when layered."""
        c = config
        per_layer = {
            "embedding": (c.vocab_size, c.embed_dim),
            "attention_norm": (c.embed_dim,),
            "query": (c.embed_dim, c.num_heads, c.head_dim),
            "key": (c.embed_dim, c.num_kv_heads, c.head_dim),
            "value": (c.embed_dim, c.num_kv_heads, c.head_dim),
            "out": (c.num_heads, c.head_dim, c.embed_dim),
            "mlp_norm": (c.embed_dim,),
            "gate": (c.embed_dim, c.mlp_dim),
            "up": (c.embed_dim, c.mlp_dim),
            "down": (c.mlp_dim, c.embed_dim),
            "final_norm": (c.embed_dim,),
            "lm_head": (c.embed_dim, c.vocab_size),
        }[self.key]
        return (c.num_layers, *per_layer) if self.layered else per_layer

    def torch_shape(self, config: ModelConfig) -> tuple[int, ...]:
        """Shape of one (per-layer) tensor in a PyTorch checkpoint."""
        ours = self.shape(config)[1:] if self.layered else self.shape(config)
        if self.in_axes is None:
            return ours
        return math.prod(ours[self.in_axes:]), math.prod(ours[:self.in_axes])

    def check_torch_tensor(self, tensor: np.ndarray, config: ModelConfig, where: str) -> None:
        """Raise ConversionError naming `where` unless `tensor` is a float tensor of the torch shape."""
        if tuple(tensor.shape) != self.torch_shape(config):
            raise ConversionError(f"{where}: shape {tuple(tensor.shape)}, but the model's config wants "
                                  f"{self.torch_shape(config)}")
        if np.dtype(tensor.dtype).name not in FLOAT_DTYPES:
            raise ConversionError(f"{where}: dtype {tensor.dtype} is not one of {FLOAT_DTYPES}")

    def from_torch(self, tensor: np.ndarray, per_layer_shape: tuple[int, ...]) -> np.ndarray:
        """A view of a torch-layout tensor in our per-layer layout (no copy)."""
        return tensor.reshape(per_layer_shape) if self.in_axes is None else tensor.T.reshape(per_layer_shape)

    def to_torch(self, ours: np.ndarray) -> np.ndarray:
        """One per-layer array of ours as a contiguous torch-layout tensor."""
        if self.in_axes is None:
            return np.ascontiguousarray(ours)
        return np.ascontiguousarray(ours.reshape(math.prod(ours.shape[:self.in_axes]), -1).T)


PARAM_LAYOUT: tuple[ParamLayout, ...] = (
    ParamLayout("embedding", ("embedder", "embedding"), None, layered=False, vocab_axis=0),
    ParamLayout("attention_norm", ("layers", "attention_norm", "scale"), None, layered=True),
    ParamLayout("query", ("layers", "attention", "query"), 1, layered=True),
    ParamLayout("key", ("layers", "attention", "key"), 1, layered=True),
    ParamLayout("value", ("layers", "attention", "value"), 1, layered=True),
    ParamLayout("out", ("layers", "attention", "out"), 2, layered=True),
    ParamLayout("mlp_norm", ("layers", "mlp_norm", "scale"), None, layered=True),
    ParamLayout("gate", ("layers", "mlp", "gate"), 1, layered=True),
    ParamLayout("up", ("layers", "mlp", "up"), 1, layered=True),
    ParamLayout("down", ("layers", "mlp", "down"), 1, layered=True),
    ParamLayout("final_norm", ("final_norm", "scale"), None, layered=False),
    ParamLayout("lm_head", ("lm_head", "kernel"), 1, layered=False, vocab_axis=1),
)


def checkpoint_order(num_layers: int) -> Iterator[tuple[ParamLayout, int | None]]:
    """(parameter, layer) in the order checkpoints store them: embedding, layer by layer, final norm, head.

    Reading in file order keeps disk access sequential; writing in it keeps each layer in one shard.
    """
    by_key = {layout.key: layout for layout in PARAM_LAYOUT}
    yield by_key["embedding"], None
    for layer in range(num_layers):
        for layout in PARAM_LAYOUT:
            if layout.layered:
                yield layout, layer
    yield by_key["final_norm"], None
    yield by_key["lm_head"], None
