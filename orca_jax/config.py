"""Config files are plain Python (`get_config()` returning an ml_collections ConfigDict), as in
big_vision. A command line names one with `--config path.py[:arg]` (or the name of a config that ships
with the package, `--config demo`) and overrides any leaf with `--config.a.b=value`; values are parsed
as Python literals, falling back to a string. Commands turn the ConfigDict into typed configs at once
(train/config.py); nothing downstream reads a ConfigDict.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import importlib.util
import pathlib
from typing import Any

from orca_jax.errors import UserError


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names it."""


def default_config(name: str) -> str:
    """The path of a config that ships with the package (configs/<name>.py, installed as
    orca_jax.configs), so a non-editable install finds it too."""
    return str(importlib.resources.files("orca_jax.configs").joinpath(f"{name}.py"))


def load_config(spec: str):
    """Load `path.py` or `path.py:arg`, calling `get_config()` or `get_config(arg)`; a bare name such as
    `demo` or `orca_13b` is a config shipped with the package."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file() and "/" not in path_str and not path_str.endswith(".py"):
        path = pathlib.Path(default_config(path_str))
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"orca_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def typed_block(cls, block, error_type: type[Exception], what: str):
    """Build the dataclass `cls` from a config block (ConfigDict or dict).

    Unknown fields raise `error_type` naming them: a misspelt field must not fall back to a default.
    """
    values = dict(block.items())
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error_type(f"unknown {what} fields {unknown}; known: {sorted(known)}")
    return cls(**values)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, overrides: list[str]):
    """Apply `a.b=value` overrides in place; unknown keys are an error, not a silent new field."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ConfigError(f"override {override!r}: config has no field {name!r}")
            node = node[name]
        if leaf not in node:
            raise ConfigError(f"override {override!r}: config has no field {key!r}")
        try:
            node[leaf] = _parse_value(raw)
        except TypeError as err:
            raise ConfigError(f"override {override!r}: {err}") from None
    return config


def parse_config_args(argv: list[str], default: str | None = None):
    """Split `--config F` / `--config=F` and `--config.x=y` out of argv.

    Returns (config, remaining_argv). Overrides are applied after loading, in order.
    """
    spec, overrides, rest = default, [], []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            spec = next(args, None)
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            overrides.append(arg[len("--config."):])
        else:
            rest.append(arg)
    if spec is None:
        raise ConfigError("no config given: pass --config path/to/config.py")
    return apply_overrides(load_config(spec), overrides), rest
