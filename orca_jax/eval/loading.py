"""Saved parameters for inference, one way for every command that reads them (evaluate, chat, generate,
judge, lm-eval): which model they are, in what dtype, on what mesh.

- The model config is the params directory's own (model_config.json, or a training checkpoint's meta
  item), with `--config.model.<field>=v` overrides on top; a directory that records none falls back to
  the config file's model block.
- Parameters are restored straight into the decode layout and dtype (`generate.abstract_decode_params`):
  the compute dtype by default (bf16 for the 13B configs), so no float32 copy of a 13B model exists.
- `--mesh D,F,T` names the decode mesh; decoding splits heads over 'tensor' and keeps each weight whole
  on every fsdp shard (parallel.DECODE_AXIS_RULES), so a 13B model wants a tensor axis (e.g. -1,1,4).
"""

from __future__ import annotations

import pathlib

from jax.sharding import Mesh

from orca_jax import parallel, paths
from orca_jax.errors import UserError
from orca_jax.eval import generate
from orca_jax.model import params_io
from orca_jax.model.config import FLOAT_DTYPES, ModelConfig

# Room for an explanation before the answer, and never more than a quarter of the window.
LONGEST_DEFAULT_NEW_TOKENS = 512
PARAMS_DTYPE_CHOICES = "'compute' (the model's compute dtype), 'stored' (its param_dtype), or a dtype"


def model_fields_overridden(argv: list[str]) -> list[str]:
    """The model fields a command line overrides with `--config.model.<field>=v`."""
    prefix = "--config.model."
    return [arg.split("=", 1)[0][len(prefix):] for arg in argv if arg.startswith(prefix)]


def require_params_dir(path: str | pathlib.Path) -> None:
    params_dir = paths.path(path) / params_io.PARAMS_SUBDIR
    if not params_dir.is_dir():
        raise params_io.ParamsIOError(f"{params_dir} does not exist: --params is not a params directory "
                                      "or checkpoint step")


def model_config_for(params: str | pathlib.Path, configured: ModelConfig | None = None,
                     model_fields: list[str] = ()) -> ModelConfig:
    """The params directory's model config with the `model_fields` of `configured` (the config file's
    model, with the command line's overrides) on top; without a stored one, `configured` itself (an
    error when there is none either)."""
    stored = params_io.stored_model_config(params)
    if stored is None:
        if configured is None:
            raise params_io.ParamsIOError(f"{params}: no model_config.json (or checkpoint meta) to read the "
                                          "model from; pass --config with a model block")
        return configured
    return stored.replace(**{field: getattr(configured, field) for field in model_fields})


def params_dtype(model_config: ModelConfig, choice: str | None) -> str:
    """`--params_dtype`: 'compute' (None too), 'stored' or an explicit dtype."""
    if choice in (None, "compute"):
        return str(generate.decode_params_dtype(model_config))
    if choice == "stored":
        return model_config.param_dtype
    if choice not in FLOAT_DTYPES:
        raise UserError(f"--params_dtype {choice!r}: choose {PARAMS_DTYPE_CHOICES}")
    return choice


def parse_mesh(spec: str | None, default: parallel.MeshConfig | None = None) -> Mesh:
    """The mesh `--mesh D,F,T` names (-1: the rest), else `default` (else all devices on 'data')."""
    if spec is None:
        return parallel.mesh_from_config(default or parallel.MeshConfig())
    try:
        data, fsdp, tensor = (int(size) for size in spec.split(","))
    except ValueError:
        raise UserError(f"--mesh {spec!r}: expected three sizes data,fsdp,tensor such as -1,1,4") from None
    return parallel.make_mesh(data, fsdp, tensor)


def default_max_new_tokens(model_config: ModelConfig) -> int:
    return min(LONGEST_DEFAULT_NEW_TOKENS, model_config.max_seq_len // 4)


def check_max_new_tokens(max_new_tokens: int, model_config: ModelConfig) -> None:
    if not 0 < max_new_tokens < model_config.max_seq_len:
        raise UserError(f"--max_new_tokens {max_new_tokens} must be in 1..{model_config.max_seq_len - 1} "
                        f"(the model's window is max_seq_len={model_config.max_seq_len})")


def restore_for_decoding(params: str | pathlib.Path, model_config: ModelConfig, mesh: Mesh | None,
                         dtype: str | None = None):
    """The parameters under `params`, restored straight into the decode layout and `dtype`."""
    require_params_dir(params)
    return params_io.restore_params(params, generate.abstract_decode_params(model_config, mesh, dtype=dtype))
