"""`orca-jax convert-weights`: LLaMA checkpoints (Hugging Face safetensors, Meta .pth) <-> our params.

Import streams: each source tensor is read alone and copied into a preallocated [layers, ...] array
of the storage dtype (by default the source's, so a bf16 checkpoint stays bf16 and restore_params
casts later), so peak host memory is about the checkpoint's size plus one tensor.

Growing the vocabulary (LLaMA's 32000 pieces + the pad token = 32001) appends embedding rows and
lm_head columns, each set to the mean of the existing ones. The mean embedding is a neutral input;
the mean lm_head column gives the new token an average logit, so it is neither favoured nor ruled
out before training (the pad token is never a target, so training only pushes its logit down).

Export writes a complete Hugging Face model directory: safetensors (sharded with an index above
--max_shard_mb), config.json, and with --tokenizer (or --config, whose data.tokenizer and data.template
it reads) the tokenizer files, chat templates and generation_config.json of model/hf_tokenizer.py.
Import copies the checkpoint directory's tokenizer.model next to the params when there is one.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol

import jax.numpy as jnp
import numpy as np

from orca_jax import config as config_lib
from orca_jax.data.templates import TEMPLATES
from orca_jax.errors import UserError
from orca_jax.model import hf_tokenizer, params_io
from orca_jax.model.config import FLOAT_DTYPES, ModelConfig
from orca_jax.model.hf_checkpoint import (
    HfCheckpoint,
    TensorToWrite,
    hf_config_from_model,
    hf_name,
    write_hf_config,
    write_safetensors,
)
from orca_jax.model.meta_checkpoint import MetaCheckpoint
from orca_jax.model.weight_layout import PARAM_LAYOUT, ConversionError, ParamLayout, checkpoint_order

DEFAULT_MAX_SHARD_MB = 5000.0


class SourceCheckpoint(Protocol):
    """What import needs from a checkpoint format (HfCheckpoint, MetaCheckpoint)."""

    model_config: ModelConfig

    def read(self, layout: ParamLayout, layer: int | None) -> np.ndarray:
        """The torch-layout ([out, in]) tensor in HF's rotary layout, its shape already checked;
        ConversionError naming the file and tensor otherwise."""


def _get(tree: dict, path: Sequence[str]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _vocab_slice(layout: ParamLayout, vocab_size: int, start: int = 0) -> tuple[slice, ...]:
    """Index of tokens [start, vocab_size) along the parameter's vocab axis."""
    index = [slice(None)] * 2
    index[layout.vocab_axis] = slice(start, vocab_size)
    return tuple(index)


def build_params(source: SourceCheckpoint, vocab_size: int | None = None,
                 dtype: str | None = None) -> tuple[dict, ModelConfig]:
    """Our parameter tree (NumPy) and ModelConfig from `source`, optionally with a larger vocabulary.

    dtype: storage dtype of the arrays; None keeps each tensor's source dtype.
    """
    source_config = source.model_config
    vocab_size = vocab_size or source_config.vocab_size
    if vocab_size < source_config.vocab_size:
        raise ConversionError(f"vocab_size {vocab_size} is smaller than the checkpoint's "
                              f"{source_config.vocab_size}; import keeps every row")
    config = source_config.replace(vocab_size=vocab_size)
    params: dict = {}
    for layout, layer in checkpoint_order(config.num_layers):
        tensor = source.read(layout, layer)
        if layer in (None, 0):  # the first tensor of this parameter: allocate the whole stack
            _set(params, layout.path,
                 np.empty(layout.shape(config), dtype=jnp.dtype(dtype) if dtype else tensor.dtype))
        target = _get(params, layout.path)
        destination = target[layer] if layout.layered else target
        if layout.vocab_axis is not None:
            destination = destination[_vocab_slice(layout, source_config.vocab_size)]
        destination[...] = layout.from_torch(tensor, destination.shape)
    for layout in PARAM_LAYOUT:
        if layout.vocab_axis is not None and vocab_size > source_config.vocab_size:
            table = _get(params, layout.path)
            mean = table[_vocab_slice(layout, source_config.vocab_size)].mean(
                axis=layout.vocab_axis, dtype=np.float32, keepdims=True)
            table[_vocab_slice(layout, vocab_size, start=source_config.vocab_size)] = mean
    return params, config


def import_checkpoint(source: SourceCheckpoint, out_dir: str | pathlib.Path, vocab_size: int | None = None,
                      dtype: str | None = None) -> ModelConfig:
    """Convert `source` and save it with params_io under `out_dir`; returns the saved ModelConfig.

    The source directory's tokenizer.model (if any) is copied beside the params, where training
    configs point `data.tokenizer`."""
    params_io.check_not_saved(out_dir)
    params, config = build_params(source, vocab_size, dtype)
    params_io.save_params(out_dir, params, config)
    if getattr(source, "dir", None) is not None:
        hf_tokenizer.copy_sentencepiece(source.dir, out_dir)
    return config


def export_hf(params_dir: str | pathlib.Path, out_dir: str | pathlib.Path, vocab_size: int | None = None,
              dtype: str | None = None,
              max_shard_bytes: int = int(DEFAULT_MAX_SHARD_MB * 2**20),
              tokenizer: str | pathlib.Path | None = None, template: str = "orca") -> list[str]:
    """Write the params under `params_dir` (a params directory, or a training checkpoint's step
    directory) as an HF LLaMA checkpoint that LlamaForCausalLM loads.

    vocab_size: keep only the first vocab_size tokens (e.g. 32000 to drop the added pad token).
    dtype: storage dtype of the safetensors; None keeps the saved dtype.
    tokenizer: the run's sentencepiece model; with it the directory also loads with AutoTokenizer,
    its default chat template being `template` (the one the run trained with). Returns the files written.
    """
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"{out_dir} is not empty; export writes into a new or empty directory so that "
                              "no stale shard is left beside the new ones")
    config = params_io.stored_model_config(params_dir)  # a params directory or a training step directory
    if config is None:
        raise ConversionError(f"{params_dir}: neither {params_io.CONFIG_FILE} nor a training checkpoint's "
                              "meta item records the model config")
    vocab_size = vocab_size or config.vocab_size
    if vocab_size > config.vocab_size:
        raise ConversionError(f"vocab_size {vocab_size} is larger than the model's {config.vocab_size}")
    params = params_io.restore_params(params_dir)
    config = config.replace(vocab_size=vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)

    def tensor_to_write(layout: ParamLayout, layer: int | None) -> TensorToWrite:
        array = _get(params, layout.path)
        array = array[layer] if layout.layered else array
        if layout.vocab_axis is not None:
            array = array[_vocab_slice(layout, vocab_size)]
        out_dtype = jnp.dtype(dtype) if dtype else array.dtype
        return TensorToWrite(hf_name(layout, layer), layout.torch_shape(config), out_dtype,
                             lambda: layout.to_torch(array).astype(out_dtype, copy=False))

    tensors = [tensor_to_write(layout, layer) for layout, layer in checkpoint_order(config.num_layers)]
    token_ids = {}
    if tokenizer is not None:  # first: a tokenizer that does not fit fails before gigabytes are written
        token_ids = hf_tokenizer.write_hf_tokenizer(tokenizer, out_dir, template, vocab_size)
    files = write_safetensors(out_dir, tensors, max_shard_bytes)
    write_hf_config(out_dir, {**hf_config_from_model(config, tensors[0].dtype), **token_ids})
    return files


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orca-jax convert-weights", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    importer = commands.add_parser("import", help="HF or Meta checkpoint -> params directory")
    source = importer.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf_dir", type=pathlib.Path, help="HF directory: config.json + *.safetensors")
    source.add_argument("--meta_dir", type=pathlib.Path,
                        help="Meta directory: params.json + consolidated.*.pth")
    importer.add_argument("--out", type=pathlib.Path, required=True, help="params directory to create")
    importer.add_argument("--vocab_size", "--tokenizer_vocab", dest="vocab_size", type=int, default=None,
                          help="grow the vocabulary to the tokenizer's size (32001 = LLaMA + pad)")
    importer.add_argument("--dtype", choices=FLOAT_DTYPES, default=None,
                          help="storage dtype (default: the checkpoint's)")
    importer.add_argument("--max_seq_len", type=int, default=None,
                          help="model context (default: HF max_position_embeddings; Meta: 2048)")

    exporter = commands.add_parser("export", help="params directory -> HF safetensors + config.json")
    exporter.add_argument("--params", type=pathlib.Path, required=True,
                          help="params directory, or a training checkpoint step (WORKDIR/checkpoints/STEP)")
    exporter.add_argument("--out", type=pathlib.Path, required=True, help="HF directory to write")
    exporter.add_argument("--vocab_size", type=int, default=None,
                          help="keep only the first N tokens (32000 drops the added pad)")
    exporter.add_argument("--dtype", choices=FLOAT_DTYPES, default=None,
                          help="storage dtype (default: the params')")
    exporter.add_argument("--max_shard_mb", type=float, default=DEFAULT_MAX_SHARD_MB,
                          help="largest safetensors file before splitting into shards with an index")
    exporter.add_argument("--tokenizer", type=pathlib.Path, default=None,
                          help="the run's sentencepiece .model: also write the HF tokenizer files")
    exporter.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                          help="prompt template the run trained with = the default chat template "
                               "(default: the config's data.template, else orca)")
    exporter.add_argument("--config", default=None,
                          help="training config (.py) whose data.tokenizer / data.template to use")
    return parser


def tokenizer_and_template(args: argparse.Namespace) -> tuple[pathlib.Path | None, str]:
    """--tokenizer / --template, falling back to the training config's data block (--config); also
    used by `weight-diff make` for a params-directory target."""
    tokenizer, template = args.tokenizer, args.template
    if args.config:
        try:
            data = config_lib.load_config(args.config).get("data", None) or {}
        except config_lib.ConfigError as err:
            raise ConversionError(str(err)) from None
        tokenizer = tokenizer or (pathlib.Path(data["tokenizer"]) if data.get("tokenizer") else None)
        template = template or data.get("template", None)
        if tokenizer is None:
            raise ConversionError(f"{args.config}: no data.tokenizer; pass --tokenizer")
    return tokenizer, template or "orca"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "import":
            if args.hf_dir:
                source = HfCheckpoint(args.hf_dir, max_seq_len=args.max_seq_len)
            else:
                source = MetaCheckpoint(args.meta_dir, max_seq_len=args.max_seq_len or 2048)
            config = import_checkpoint(source, args.out, args.vocab_size, args.dtype)
            print(f"wrote {args.out}: {config}")
        else:
            tokenizer, template = tokenizer_and_template(args)
            files = export_hf(args.params, args.out, args.vocab_size, args.dtype,
                              int(args.max_shard_mb * 2**20), tokenizer, template)
            extra = f" (tokenizer, chat template {template!r})" if tokenizer else " (no tokenizer: pass --tokenizer)"
            print(f"wrote {args.out}: config.json, {', '.join(files)}{extra}")
    except UserError as err:
        print(f"orca-jax convert-weights: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
