"""Staged training: optimizer, jitted step, checkpoints, the loop and the `orca-jax train` command."""
