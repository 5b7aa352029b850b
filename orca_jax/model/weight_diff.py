"""`orca-jax weight-diff make|apply`: publish a fine-tune as a bit-exact difference from its base.

LLaMA's licence lets a fine-tune be shared as a diff that only someone holding the base weights can
turn back into the model. Both ends are Hugging Face safetensors directories; the diff is one too:

    weight_diff.json                 format, method and one entry per tensor (below)
    diff.safetensors  or  diff-0000i-of-0000n.safetensors   one unsigned-integer tensor per weight
    config.json, tokenizer*, generation_config.json, ...     the target's other files, copied

Per tensor, `diff = bits(target) XOR bits(base)`: both viewed as unsigned integers of the stored
width (uint16 for bf16/fp16, uint32 for fp32), so `bits(base) XOR diff` gives back every bit of the
target, NaNs and -0.0 included. Float arithmetic cannot promise that: `base + (target - base)` rounds
whenever the two exponents differ, in any storage precision short of the exact difference. XOR is its
own inverse, keeps the diff the size of the target, and is zero wherever fine-tuning left a bit alone.

The base is first cast to the target's dtype when they differ (IEEE round-to-nearest-even, which every
library computes alike). Rows beyond the base's along the first axis (the embedding and lm_head rows
of the added pad token: 32001 vs 32000) are XORed with zeros, i.e. stored whole; a base with more
rows is cut to the target's. A tensor the base lacks is stored whole.

weight_diff.json `tensors[name]`: `file`, `dtype` and `shape` (the target's), `base_dtype` and
`base_shape` (null: stored whole), `base_sha256` and `target_sha256`: SHA-256 of the tensor's bytes
as stored in safetensors (row-major, little-endian). `apply` checks the base's hash before using a
tensor (a different base fails with a one-line error naming the tensor) and the recovered tensor's
after, writes into a temporary directory beside the output and renames it only when all is done.

A target may also be an orca-jax params directory or training checkpoint step: it is exported first
(convert-weights export, with --tokenizer/--template/--dtype) into the staging directory, and that
copy is removed afterwards. Export it in the base's dtype (--dtype bfloat16 for a float32 run):
otherwise the base is cast up and the diff is twice the size.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

from orca_jax.data.templates import TEMPLATES
from orca_jax.errors import UserError
from orca_jax.model import convert, params_io
from orca_jax.model.config import FLOAT_DTYPES
from orca_jax.model.hf_checkpoint import (
    INDEX_FILE,
    SAFETENSORS_DTYPES,
    TensorToWrite,
    open_safetensors,
    plan_shards,
    weight_map,
    write_index,
    write_safetensors_file,
)
from orca_jax.model.weight_layout import ConversionError

DIFF_INDEX = "weight_diff.json"
FORMAT = "orca-jax weight diff"
VERSION = 1
DEFAULT_MAX_SHARD_MB = 2000.0


class WeightDiffError(ConversionError):
    """A diff that cannot be made or applied; the message names the directory, file and tensor."""


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))).hexdigest()


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"uint{8 * array.dtype.itemsize}"))


def _xor_base_into(bits: np.ndarray, base: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """`bits` (a target's or a diff's bit pattern) XOR the base's bits, in place where `bits` allows.

    The base is cast to the target's `dtype` first; only the rows both have are XORed, which is the
    same as cutting the base's extra rows or padding it with zero bits, without building that copy.
    """
    if base.shape[1:] != bits.shape[1:]:
        raise WeightDiffError(f"{where}: base shape {list(base.shape)} and target shape {list(bits.shape)} "
                              "differ beyond the first (vocabulary) axis")
    if not bits.flags.writeable:
        bits = bits.copy()
    rows = min(len(bits), len(base)) if bits.ndim else None
    base_bits = _bits(base.astype(dtype, copy=False))
    if rows is None:
        bits ^= base_bits
    else:
        bits[:rows] ^= base_bits[:rows]
    return bits


# safetensors dtype code -> NumPy dtype (bfloat16 from ml_dtypes, as safetensors' NumPy reader returns it)
_NUMPY_DTYPES = {code: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)
                 for name, code in SAFETENSORS_DTYPES.items()}


class _Safetensors:
    """A safetensors directory read one tensor at a time; `files` (name -> file) defaults to its index."""

    def __init__(self, directory: pathlib.Path, files: dict[str, str] | None = None):
        self.dir = pathlib.Path(directory)
        self.files = weight_map(self.dir) if files is None else files

    def where(self, name: str) -> str:
        return f"{self.dir / self.files.get(name, '?')}: tensor {name}"

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        def read(file):
            view = file.get_slice(name)
            return view.get_dtype(), tuple(view.get_shape())
        code, shape = open_safetensors(self.dir / self.files[name], read)
        return _NUMPY_DTYPES[code], shape

    def read(self, name: str) -> np.ndarray:
        def get(file):
            if name not in file.keys():
                raise WeightDiffError(f"{self.where(name)} is missing (the index says it is in this file)")
            return file.get_tensor(name)
        return open_safetensors(self.dir / self.files[name], get)


def _weight_files(directory: pathlib.Path) -> set[str]:
    return {path.name for path in directory.glob("*.safetensors")} | {INDEX_FILE, DIFF_INDEX}


def _copy_other_files(source: pathlib.Path, destination: pathlib.Path) -> list[str]:
    """Everything in `source` but weights (config.json, tokenizer files, chat templates, ...)."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.name in _weight_files(source):
            continue
        if path.is_dir():
            shutil.copytree(path, destination / path.name)
        else:
            shutil.copy2(path, destination / path.name)
        copied.append(path.name)
    return copied


@contextlib.contextmanager
def _staged_output(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary directory beside `out`, renamed to `out` on success and removed on any failure, so an
    output directory that exists is always complete."""
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WeightDiffError(f"{out} already exists and is not empty; choose a new output directory")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_diff(base_dir: pathlib.Path, target_dir: pathlib.Path, out: pathlib.Path,
              max_shard_bytes: int = int(DEFAULT_MAX_SHARD_MB * 2**20), export_args: dict | None = None) -> dict:
    """Write the diff of `target_dir` from `base_dir` into `out`; returns the diff index written.

    target_dir: an HF safetensors directory, or an orca-jax params directory exported on the fly with
    `export_args` (tokenizer, template, dtype, vocab_size of convert.export_hf).
    """
    base_dir, target_dir = pathlib.Path(base_dir), pathlib.Path(target_dir)
    with _staged_output(out) as staging:
        if (target_dir / params_io.PARAMS_SUBDIR).is_dir() and params_io.stored_model_config(target_dir):
            exported = staging / "_exported_target"
            convert.export_hf(target_dir, exported, **(export_args or {}))
            target_dir = exported
        base, target = _Safetensors(base_dir), _Safetensors(target_dir)
        entries: dict[str, dict[str, Any]] = {}

        def diff_tensor(name: str) -> TensorToWrite:
            dtype, shape = target.info(name)

            def make() -> np.ndarray:
                target_array = target.read(name)
                entry = entries[name]
                entry["target_sha256"] = sha256(target_array)
                if name not in base.files:
                    return _bits(target_array)
                base_array = base.read(name)
                entry.update(base_dtype=base_array.dtype.name, base_shape=list(base_array.shape),
                             base_sha256=sha256(base_array))
                # the target's own buffer becomes the diff: it was hashed above and is not used again
                return _xor_base_into(_bits(target_array), base_array, dtype, base.where(name))

            entries[name] = {"dtype": dtype.name, "shape": list(shape), "base_dtype": None, "base_shape": None,
                             "base_sha256": None}
            return TensorToWrite(name, shape, np.dtype(f"uint{8 * dtype.itemsize}"), make)

        tensors = [diff_tensor(name) for name in sorted(target.files, key=lambda n: (target.files[n], n))]
        for file_name, shard in plan_shards(tensors, max_shard_bytes, prefix="diff"):
            write_safetensors_file(staging / file_name, shard, metadata={"format": FORMAT})
            for tensor in shard:
                entries[tensor.name]["file"] = file_name
        index = {"format": FORMAT, "version": VERSION, "method": "xor",
                 "tensors": {name: entries[name] for name in sorted(entries)}}
        (staging / DIFF_INDEX).write_text(json.dumps(index, indent=1) + "\n")
        index["copied"] = _copy_other_files(target_dir, staging)
        shutil.rmtree(staging / "_exported_target", ignore_errors=True)
    return index


def read_diff_index(diff_dir: pathlib.Path) -> dict:
    path = pathlib.Path(diff_dir) / DIFF_INDEX
    if not path.is_file():
        raise WeightDiffError(f"{path} does not exist: not a weight diff made by orca-jax weight-diff make")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightDiffError(f"{path}: not valid JSON ({err})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION or index.get("method") != "xor":
        raise WeightDiffError(f"{path}: format {index.get('format')!r} version {index.get('version')!r} "
                              f"method {index.get('method')!r}; this orca-jax reads {FORMAT!r} {VERSION} xor")
    return index


def apply_diff(base_dir: pathlib.Path, diff_dir: pathlib.Path, out: pathlib.Path) -> list[str]:
    """Recover the target from `base_dir` and the diff into `out` (an HF model directory); returns the
    safetensors files written. Every tensor is checked against both recorded hashes."""
    base_dir, diff_dir = pathlib.Path(base_dir), pathlib.Path(diff_dir)
    index = read_diff_index(diff_dir)
    base = _Safetensors(base_dir)
    diff_files = {name: entry["file"] for name, entry in index["tensors"].items()}
    diff = _Safetensors(diff_dir, diff_files)

    def recovered(name: str, entry: dict) -> TensorToWrite:
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise WeightDiffError(f"{diff_dir / DIFF_INDEX}: tensor {name} has unsupported dtype {entry['dtype']!r}")
        dtype, shape = _NUMPY_DTYPES[SAFETENSORS_DTYPES[entry["dtype"]]], tuple(entry["shape"])

        def make() -> np.ndarray:
            bits = diff.read(name)
            if bits.shape != shape or bits.dtype.itemsize != dtype.itemsize:
                raise WeightDiffError(f"{diff.where(name)}: {bits.dtype}{list(bits.shape)} does not match "
                                      f"the index's {dtype}{list(shape)}")
            if entry["base_sha256"] is not None:
                if name not in base.files:
                    raise WeightDiffError(f"{base_dir}: tensor {name} is missing, but the diff was made from a "
                                          "base that has it")
                base_array = base.read(name)
                if sha256(base_array) != entry["base_sha256"]:
                    raise WeightDiffError(f"{base.where(name)} differs from the base this diff was made from "
                                          f"(sha256 {sha256(base_array)[:16]}..., expected "
                                          f"{entry['base_sha256'][:16]}...)")
                bits = _xor_base_into(bits, base_array, dtype, base.where(name))
            target = bits.view(dtype)
            if sha256(target) != entry["target_sha256"]:
                raise WeightDiffError(f"{diff.where(name)}: the recovered tensor's sha256 differs from the "
                                      "target's recorded in the diff (a corrupted diff file?)")
            return target

        return TensorToWrite(name, shape, dtype, make)

    by_file: dict[str, list[TensorToWrite]] = {}
    for name in sorted(index["tensors"], key=lambda n: (diff_files[n], n)):
        by_file.setdefault(diff_files[name], []).append(recovered(name, index["tensors"][name]))
    shards = [(file_name.replace("diff", "model", 1), tensors) for file_name, tensors in sorted(by_file.items())]
    with _staged_output(out) as staging:
        _copy_other_files(diff_dir, staging)
        for file_name, tensors in shards:
            write_safetensors_file(staging / file_name, tensors, metadata={"format": "pt"})
        if len(shards) > 1:
            write_index(staging, shards)
    return [file_name for file_name, _ in shards]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orca-jax weight-diff", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    maker = commands.add_parser("make", help="BASE + TARGET -> DIFF (XOR of the stored bits, with sha256s)")
    maker.add_argument("--base", type=pathlib.Path, required=True, help="base HF safetensors directory")
    maker.add_argument("--target", type=pathlib.Path, required=True,
                       help="fine-tuned HF directory, or an orca-jax params directory / training "
                            "checkpoint step (exported first)")
    maker.add_argument("--out", type=pathlib.Path, required=True, help="diff directory to create")
    maker.add_argument("--max_shard_mb", type=float, default=DEFAULT_MAX_SHARD_MB,
                       help="largest diff safetensors file before splitting")
    maker.add_argument("--tokenizer", type=pathlib.Path, default=None,
                       help="params target only: the run's sentencepiece model (see convert-weights export)")
    maker.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                       help="params target only: the run's prompt template (default: --config's, else orca)")
    maker.add_argument("--config", default=None,
                       help="params target only: training config whose data.tokenizer / data.template to use")
    maker.add_argument("--dtype", choices=FLOAT_DTYPES, default=None,
                       help="params target only: exported dtype (the base's, e.g. bfloat16)")
    applier = commands.add_parser("apply", help="BASE + DIFF -> the fine-tuned HF model directory")
    applier.add_argument("--base", type=pathlib.Path, required=True, help="base HF safetensors directory")
    applier.add_argument("--diff", type=pathlib.Path, required=True, help="diff directory")
    applier.add_argument("--out", type=pathlib.Path, required=True, help="model directory to create")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "make":
            export_args = None
            if (args.target / params_io.PARAMS_SUBDIR).is_dir():
                tokenizer, template = convert.tokenizer_and_template(args)
                export_args = {"tokenizer": tokenizer, "template": template, "dtype": args.dtype}
            index = make_diff(args.base, args.target, args.out, int(args.max_shard_mb * 2**20), export_args)
            stored_whole = [name for name, entry in index["tensors"].items() if entry["base_shape"] is None]
            print(f"wrote {args.out}: {len(index['tensors'])} tensors ({len(stored_whole)} stored whole), "
                  f"copied {', '.join(index['copied']) or 'no other files'}")
        else:
            files = apply_diff(args.base, args.diff, args.out)
            print(f"wrote {args.out}: {', '.join(files)} (every tensor matches the target's sha256)")
    except (UserError, OSError) as err:
        print(f"orca-jax weight-diff: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
