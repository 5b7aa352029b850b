"""The `data` block of a config: what the input pipeline makes of the shards, typed and checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from orca_jax.config import ConfigError, typed_block
from orca_jax.data.packing import OVERFLOW_POLICIES
from orca_jax.data.templates import TEMPLATES


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How records become packed global batches (orca_jax/data/pipeline.py)."""

    tokenizer: str = ""
    """The sentencepiece .model file (LLaMA's tokenizer.model for real runs); the pad id is appended."""
    template: str = "orca"
    """The prompt template a record is rendered with (data/templates.py: 'orca' or 'chatml')."""
    seq_len: int = 2048
    """Tokens per packed row; at most the model's max_seq_len."""
    batch_size: int = 8
    """Global rows per optimizer step, over all processes (split over the mesh's data x fsdp axes)."""
    pack_window: int = 1000
    """Records packed together by best-fit decreasing; larger packs tighter but delays the first batch."""
    validation_batches: int = 0
    """Batches per validation pass; 0 reads the whole validation split."""
    overflow: str = "truncate_response"
    """An example longer than a row: 'truncate_response' (keep the prompt, cut the response) or 'drop'."""
    read_shares: int = 0
    """Round-robin shares the shuffled record order is split into, each packed on its own into a fixed
    slice of every global batch; 0: one per process. A multiple of the process count that divides
    batch_size; runs that set the same number see the same batches on any number of processes."""

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "pack_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"data.{name} must be a positive integer, got {value!r}")
        for name in ("validation_batches", "read_shares"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"data.{name} must be an integer >= 0, got {value!r}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"data.template={self.template!r}: choose one of {sorted(TEMPLATES)}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"data.overflow={self.overflow!r}: choose one of {OVERFLOW_POLICIES}")

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> DataConfig:
        return cls() if block is None else typed_block(cls, block, ConfigError, "data config")
