"""The configs that ship with orca-jax (installed as `orca_jax.configs`): `--config demo`, `--config orca_13b`."""
