"""orca-jax: Orca-style explanation tuning of LLaMA in JAX.

The package follows the data: ``data`` (records -> shards -> packed batches), ``model`` (the Flax
LLaMA and weight conversion), ``parallel`` (mesh and sharding rules), ``train`` (step, optimizer,
checkpoints, the staged loop) and ``eval`` (generation and exact-match scoring).
"""

__version__ = "0.1.0"
