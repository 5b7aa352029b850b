"""Hugging Face LLaMA checkpoints: config.json and (sharded) safetensors, read and written per tensor.

Reading uses safetensors' `pread` backend, one tensor per call, so host memory holds the tensor being
converted and nothing else of the file (a memory map would keep every page it touched resident).
Writing streams too: a file's header is laid out from the tensors' shapes and dtypes, then each
tensor is produced and written alone (`write_safetensors_file`), so a shard is never held whole.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from safetensors import SafetensorError, safe_open

from orca_jax.model.config import ModelConfig
from orca_jax.model.weight_layout import ConversionError, ParamLayout, checkpoint_order

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

HF_NAMES = {
    "embedding": "model.embed_tokens.weight",
    "attention_norm": "model.layers.{layer}.input_layernorm.weight",
    "query": "model.layers.{layer}.self_attn.q_proj.weight",
    "key": "model.layers.{layer}.self_attn.k_proj.weight",
    "value": "model.layers.{layer}.self_attn.v_proj.weight",
    "out": "model.layers.{layer}.self_attn.o_proj.weight",
    "mlp_norm": "model.layers.{layer}.post_attention_layernorm.weight",
    "gate": "model.layers.{layer}.mlp.gate_proj.weight",
    "up": "model.layers.{layer}.mlp.up_proj.weight",
    "down": "model.layers.{layer}.mlp.down_proj.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}
# Older exports carry the rotary frequencies as a buffer; they follow from rope_theta, so skip them.
IGNORED_SUFFIX = ".self_attn.rotary_emb.inv_freq"


def hf_name(layout: ParamLayout, layer: int | None) -> str:
    return HF_NAMES[layout.key].format(layer=layer)


def model_config_from_hf(hf_config: dict[str, Any], where: str) -> ModelConfig:
    """Our ModelConfig for an HF LlamaConfig dict; `where` (the file) prefixes every error."""
    if hf_config.get("model_type") != "llama":
        raise ConversionError(f"{where}: model_type {hf_config.get('model_type')!r} is not 'llama'")
    rope_type = hf_config.get("rope_parameters", {}).get("rope_type", "default")
    unsupported = {
        "hidden_act": hf_config.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(hf_config.get("attention_bias")),
        "mlp_bias": bool(hf_config.get("mlp_bias")),
        "rope_scaling": hf_config.get("rope_scaling") is not None,
        "rope_parameters.rope_type": rope_type != "default",
    }
    for field, is_unsupported in unsupported.items():
        if is_unsupported:
            raise ConversionError(f"{where}: {field} is not supported by our LLaMA")
    missing = [field for field in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "vocab_size") if field not in hf_config]
    if missing:
        raise ConversionError(f"{where}: missing fields {missing}")
    num_heads = hf_config["num_attention_heads"]
    # transformers 5 nests rope_theta under rope_parameters; earlier versions keep it top level.
    rope_theta = hf_config.get("rope_parameters", {}).get("rope_theta", hf_config.get("rope_theta", 10000.0))
    try:
        return ModelConfig(
            vocab_size=hf_config["vocab_size"],
            embed_dim=hf_config["hidden_size"],
            mlp_dim=hf_config["intermediate_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf_config.get("num_key_value_heads") or num_heads,
            head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // num_heads,
            rope_theta=float(rope_theta),
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            max_seq_len=hf_config.get("max_position_embeddings", 2048),
        )
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from None


def hf_config_from_model(config: ModelConfig, dtype: np.dtype) -> dict[str, Any]:
    """config.json contents for transformers.LlamaForCausalLM with our model's shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_seq_len,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": np.dtype(dtype).name,
    }


def open_safetensors(path: pathlib.Path, use: Callable):
    """`use(file)` on the opened safetensors file; a ConversionError naming the file if it is unreadable."""
    try:
        with safe_open(path, framework="numpy", backend="pread") as file:
            return use(file)
    except (SafetensorError, OSError) as err:
        raise ConversionError(f"{path}: cannot read safetensors file ({err})") from None


def weight_map(directory: pathlib.Path) -> dict[str, str]:
    """Tensor name -> file name of a safetensors directory: from the index when sharded, else from the
    single file's header."""
    directory = pathlib.Path(directory)
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            return dict(json.loads(index_path.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConversionError(f"{index_path}: no readable weight_map ({err!r})") from None
    if (directory / SINGLE_FILE).is_file():
        return {name: SINGLE_FILE for name in open_safetensors(directory / SINGLE_FILE, lambda f: f.keys())}
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory")
    found = sorted(path.name for path in directory.iterdir())
    raise ConversionError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found (directory holds "
                          f"{found}); only safetensors checkpoints are supported")


class HfCheckpoint:
    """A Hugging Face checkpoint directory, read one tensor at a time."""

    def __init__(self, hf_dir: str | pathlib.Path, max_seq_len: int | None = None):
        """max_seq_len: the model's context; default config.json's max_position_embeddings."""
        self.dir = pathlib.Path(hf_dir)
        config_path = self.dir / CONFIG_FILE
        if not config_path.is_file():
            raise ConversionError(f"{config_path} does not exist: not a Hugging Face checkpoint directory")
        try:
            self.hf_config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ConversionError(f"{config_path}: not valid JSON ({err})") from None
        self.model_config = model_config_from_hf(self.hf_config, str(config_path))
        if max_seq_len:
            self.model_config = self.model_config.replace(max_seq_len=max_seq_len)
        self.weight_map = self._weight_map()
        self.tied_embeddings = bool(self.hf_config.get("tie_word_embeddings", False))
        self._check_no_extra_tensors()

    def _weight_map(self) -> dict[str, str]:
        return weight_map(self.dir)

    def _open(self, file_name: str, use: Callable):
        return open_safetensors(self.dir / file_name, use)

    def _check_no_extra_tensors(self) -> None:
        """Fail on tensors we would silently drop, e.g. the biases of a variant we do not model."""
        num_layers = self.model_config.num_layers
        expected = {self._name(layout, layer) for layout, layer in checkpoint_order(num_layers)}
        unexpected = sorted(name for name in set(self.weight_map) - expected
                            if not name.endswith(IGNORED_SUFFIX))
        if unexpected:
            raise ConversionError(f"{self.dir}: tensors that are not part of a {num_layers}-layer LLaMA: "
                                  f"{unexpected[:5]}")

    def describe(self, layout: ParamLayout, layer: int | None) -> str:
        name = self._name(layout, layer)
        return f"{self.dir / self.weight_map.get(name, '?')}: tensor {name}"

    def _name(self, layout: ParamLayout, layer: int | None) -> str:
        # A tied lm_head is the embedding read as an [out=vocab, in=embed] projection: the same tensor.
        if layout.key == "lm_head" and self.tied_embeddings:
            return HF_NAMES["embedding"]
        return hf_name(layout, layer)

    def read(self, layout: ParamLayout, layer: int | None) -> np.ndarray:
        """The torch-layout tensor for `layout` (at `layer`), checked against the config's shape."""
        name = self._name(layout, layer)
        if name not in self.weight_map:
            raise ConversionError(f"{self.dir}: tensor {name} is missing from the checkpoint")
        file_name = self.weight_map[name]

        def get(file):
            if name not in file.keys():
                raise ConversionError(f"{self.dir / file_name}: tensor {name} is missing "
                                      f"(the index says it is in this file)")
            return file.get_tensor(name)

        tensor = self._open(file_name, get)
        layout.check_torch_tensor(tensor, self.model_config, self.describe(layout, layer))
        return tensor


class TensorToWrite(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    make_array: Callable[[], np.ndarray]
    """Produces the contiguous array when its shard is written, so only one shard is in memory."""


def write_hf_config(out_dir: pathlib.Path, hf_config: dict[str, Any]) -> None:
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")


# safetensors dtype codes (the format's spec) for the NumPy dtypes checkpoints use.
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                      "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64",
                      "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}


def write_safetensors_file(path: pathlib.Path, tensors: Sequence[TensorToWrite],
                           metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, its tensors produced and written one at a time.

    The header (8-byte little-endian length, JSON padded with spaces to a multiple of 8) holds every
    tensor's dtype, shape and byte range, all known before any data; the data follows in header order.
    """
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for tensor in tensors:
        nbytes = math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
        header[tensor.name] = {"dtype": SAFETENSORS_DTYPES[np.dtype(tensor.dtype).name],
                               "shape": list(tensor.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as file:
        file.write(len(header_bytes).to_bytes(8, "little"))
        file.write(header_bytes)
        for tensor in tensors:
            array = np.ascontiguousarray(tensor.make_array())
            if array.shape != tuple(tensor.shape) or array.dtype != np.dtype(tensor.dtype):
                raise ConversionError(f"{path}: tensor {tensor.name} came out as {array.dtype}{list(array.shape)}, "
                                      f"its header says {np.dtype(tensor.dtype)}{list(tensor.shape)}")
            file.write(memoryview(array.reshape(-1).view(np.uint8)))


def plan_shards(tensors: Sequence[TensorToWrite], max_shard_bytes: int,
                prefix: str = "model") -> list[tuple[str, list[TensorToWrite]]]:
    """Group `tensors` in order into files of at most max_shard_bytes (a larger tensor gets its own),
    named as `save_pretrained` names them: `{prefix}.safetensors`, or `{prefix}-0000i-of-0000n.safetensors`."""
    shards: list[list[TensorToWrite]] = [[]]
    shard_bytes = 0
    for tensor in tensors:
        nbytes = math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(tensor)
        shard_bytes += nbytes
    names = ([f"{prefix}.safetensors"] if len(shards) == 1 else
             [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    return list(zip(names, shards))


def write_safetensors(out_dir: pathlib.Path, tensors: Sequence[TensorToWrite],
                      max_shard_bytes: int) -> list[str]:
    """Write `tensors` into safetensors files of at most max_shard_bytes (see plan_shards).

    Several shards get `model.safetensors.index.json`, as `save_pretrained` writes it. Returns file names.
    """
    shards = plan_shards(tensors, max_shard_bytes)
    for file_name, shard in shards:
        write_safetensors_file(out_dir / file_name, shard, metadata={"format": "pt"})
    if len(shards) > 1:
        write_index(out_dir, shards)
    return [file_name for file_name, _ in shards]


def write_index(out_dir: pathlib.Path, shards: Sequence[tuple[str, Sequence[TensorToWrite]]]) -> None:
    """model.safetensors.index.json for `shards` (file name, tensors)."""
    weight_map = {tensor.name: file_name for file_name, shard in shards for tensor in shard}
    total_bytes = sum(math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
                      for _, shard in shards for tensor in shard)
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
