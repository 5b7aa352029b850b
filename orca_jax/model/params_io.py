"""Parameter checkpoints: an orbax tree of arrays plus the ModelConfig that says what they are.

A params directory holds

    params/             orbax checkpoint of the unboxed tree (embedder/embedding, layers/..., ...)
    model_config.json   the ModelConfig fields

It is what `orca-jax convert-weights import` writes and what training starts from. Arrays are stored
in whatever dtype they were saved in (a converted LLaMA keeps its bfloat16) and without any sharding,
so one host can write a checkpoint that any mesh restores: `restore_params` lays each array out as the
abstract tree asks, casting dtype on the way. The directory may be gs://... (orbax writes and reads
buckets itself; model_config.json goes through orca_jax.paths).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from orca_jax import paths
from orca_jax.errors import UserError
from orca_jax.model.config import ModelConfig

PARAMS_SUBDIR = "params"
CONFIG_FILE = "model_config.json"


class ParamsIOError(UserError):
    """A params directory that cannot be read or written; the message names the path."""


def save_params(path: str | pathlib.Path, params: Any, model_config: ModelConfig | None = None) -> None:
    """Write `params` (nested dict of NumPy or JAX arrays) under `path`, refusing to overwrite.

    Saving is synchronous: the caller may free or reuse the arrays as soon as this returns.
    """
    path = paths.absolute(path)
    check_not_saved(path)
    path.mkdir(parents=True, exist_ok=True)
    with ocp.Checkpointer(_saving_handler()) as checkpointer:
        checkpointer.save(path / PARAMS_SUBDIR, args=ocp.args.PyTreeSave(params))
    if model_config is not None:
        (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model_config), indent=2) + "\n")


def check_not_saved(path: str | pathlib.Path) -> None:
    """Raise ParamsIOError if `path` already holds params (checked early by long conversions too)."""
    params_dir = paths.absolute(path) / PARAMS_SUBDIR
    if params_dir.exists():
        raise ParamsIOError(f"{params_dir} already exists; choose a new output directory")


def _saving_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's default handler deep-copies every host array before writing it (in case the caller
    mutates it during an async save), which doubled peak memory on a converted checkpoint; the save
    here is synchronous, so the copy buys nothing. Compression is off: weights barely compress, and
    zstd over 26 GB costs minutes and its own buffers."""
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)


def restore_params(path: str | pathlib.Path, abstract_params: Any = None) -> Any:
    """Read the params saved under `path`.

    With `abstract_params` (a tree of jax.ShapeDtypeStruct with `.sharding`, matching the saved tree),
    each array is restored directly into that sharding and cast to that dtype. Without it, the arrays
    come back as host NumPy arrays in their saved dtype.
    """
    params_dir = paths.absolute(path) / PARAMS_SUBDIR
    if not params_dir.is_dir():
        raise ParamsIOError(f"{params_dir} does not exist: not a params directory written by save_params")
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        if abstract_params is not None:
            _check_matches(params_dir, checkpointer.metadata(params_dir).item_metadata.tree, abstract_params)
        return checkpointer.restore(params_dir, args=ocp.args.StandardRestore(abstract_params))


def _check_matches(params_dir: paths.AnyPath, saved_tree: Any, abstract_params: Any) -> None:
    """Name the first parameter whose path or shape differs, before orbax fails less legibly."""
    saved = {jax.tree_util.keystr(key): leaf.shape
             for key, leaf in jax.tree_util.tree_leaves_with_path(saved_tree)}
    wanted = {jax.tree_util.keystr(key): leaf.shape
              for key, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
    for name in sorted(saved.keys() | wanted.keys()):
        if name not in saved:
            raise ParamsIOError(f"{params_dir}: no saved parameter {name}")
        if name not in wanted:
            raise ParamsIOError(f"{params_dir}: saved parameter {name} is not in the model")
        if tuple(saved[name]) != tuple(wanted[name]):
            raise ParamsIOError(f"{params_dir}: parameter {name} has shape {tuple(saved[name])}, "
                                f"the model wants {tuple(wanted[name])}")


def load_model_config(path: str | pathlib.Path) -> ModelConfig:
    """The ModelConfig stored beside the params under `path`."""
    config_file = paths.path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise ParamsIOError(f"{config_file} does not exist: the params directory has no model config")
    try:
        return ModelConfig.from_config(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise ParamsIOError(f"{config_file}: {err}") from None


def stored_model_config(path: str | pathlib.Path) -> ModelConfig | None:
    """The ModelConfig a params directory records: its model_config.json, or, for a training
    checkpoint's step directory, the `model` block of the config in its `meta` item (orbax writes a
    JSON item as `meta/metadata`). None when it records neither."""
    path = paths.path(path)
    if (path / CONFIG_FILE).is_file():
        return load_model_config(path)
    meta_file = path / "meta" / "metadata"
    if not meta_file.is_file():
        return None
    try:
        model_block = json.loads(json.loads(meta_file.read_text())["config"])["model"]
        return ModelConfig.from_config(model_block)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ParamsIOError(f"{meta_file}: no usable model config in the checkpoint's meta ({err})") from None
