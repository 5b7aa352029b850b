"""Does evaluation (greedy decoding) of a model fit a TPU slice? Compile the real decode program for it.

    python benchmarks/decode_fit.py --config configs/llama_13b.py --topology v5p:2x2x1 \
        [--batch_size 64] [--prompt_width 1024] [--max_new_tokens 1025] [--mesh 1,1,-1] [--out fit.jsonl]

Like benchmarks/tpu_fit.py (whose topology loading and memory report it reuses), this runs on a CPU
host with libtpu installed in a separate virtualenv and contacts no TPU. It lowers the program
`orca_jax.eval.generate` jits for one batch (`decode_program`: the zero-filled cache, the prefill
pass, the bucketed while_loops), with the parameters as decoding holds them
(`generate.abstract_decode_params`: compute dtype, laid out by `parallel.DECODE_AXIS_RULES` on the
mesh) and the prompts sharded by the same rules, compiles it for the slice and prints XLA's per-chip
memory analysis. The cache lives inside the program, so it is in the temporaries. The cache holds
prompt_width + max_new_tokens - 1 slots (2048 by default). --mesh is data,fsdp,tensor (-1: the rest).
"""

from __future__ import annotations

import os

# Before JAX is imported (see tpu_fit.py): CPU backend, no metadata server, a shared libtpu.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402
from tpu_fit import GIB, TopologyError, fit_report, load_topology  # noqa: E402

from orca_jax import parallel  # noqa: E402
from orca_jax.config import parse_config_args  # noqa: E402
from orca_jax.errors import UserError  # noqa: E402
from orca_jax.eval import generate  # noqa: E402
from orca_jax.model import ModelConfig  # noqa: E402
from orca_jax.train.config import TrainConfig  # noqa: E402


def compile_decode(model_config: ModelConfig, mesh, batch_size: int, prompt_width: int, max_new_tokens: int):
    """Lower and compile generate.decode_program on abstract, decode-rule-sharded inputs."""
    rules = parallel.DECODE_AXIS_RULES
    parallel.check_divisible("batch_size", batch_size, mesh, ("data", "fsdp"))
    params = generate.abstract_decode_params(model_config, mesh)
    rows = parallel.logical_sharding(mesh, ("batch", "length"), rules=rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    args = (params,
            jax.ShapeDtypeStruct((batch_size, prompt_width), jnp.int32, sharding=rows),
            jax.ShapeDtypeStruct((batch_size,), jnp.int32,
                                 sharding=parallel.logical_sharding(mesh, ("batch",), rules=rules)),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))
    decode = jax.jit(generate.decode_program(model_config, max_new_tokens), out_shardings=(replicated, replicated))
    with parallel.activate(mesh, rules=rules):
        return decode.lower(*args).compile()


def collective_counts(hlo_text: str) -> dict:
    """How many of each collective the compiled program holds (an all-gather of weights inside the
    loop would show here; the decode rules should leave only all-reduces of activations)."""
    counts = {}
    for op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute"):
        counts[op] = sum(1 for line in hlo_text.splitlines()
                         if f" {op}(" in line or f" {op}-start(" in line)
    return counts


def measure(model_config: ModelConfig, topology: str, mesh_shape, batch_size: int, prompt_width: int,
            max_new_tokens: int) -> dict:
    chip, devices, accelerator_type = load_topology(topology)
    shape = parallel.resolve_mesh_shape(*mesh_shape, len(devices))
    mesh = jax.make_mesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    cache_length = prompt_width + max_new_tokens - 1
    cache_bytes = (2 * model_config.num_layers * batch_size * cache_length * model_config.num_kv_heads
                   * model_config.head_dim * model_config.compute_jnp_dtype.itemsize)
    result = {
        "date": datetime.date.today().isoformat(), "jax": jax.__version__, "flax": flax.__version__,
        "topology": topology, "accelerator_type": accelerator_type, "chips": len(devices),
        "device_kind": devices[0].device_kind, "mesh": dict(zip(parallel.MESH_AXES, shape)),
        "rules": "DECODE_AXIS_RULES", "batch_size": batch_size, "prompt_width": prompt_width,
        "max_new_tokens": max_new_tokens, "cache_length": cache_length, "num_layers": model_config.num_layers,
        "params_dtype": str(generate.decode_params_dtype(model_config)),
        "cache_bytes_total": cache_bytes, "hbm_bytes": chip.hbm_bytes,
    }
    try:
        import libtpu  # noqa: PLC0415
        result["libtpu"] = getattr(libtpu, "__version__", "?")
    except ImportError:
        pass
    start = time.perf_counter()
    try:
        compiled = compile_decode(model_config, mesh, batch_size, prompt_width, max_new_tokens)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        result.update(fits=False, error=str(err).splitlines()[0][:600])
    else:
        result.update(fit_report(compiled, chip))
        result["collectives"] = collective_counts(compiled.as_text())
    result["compile_seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str]) -> int:
    config, rest = parse_config_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, help="libtpu topology name, e.g. v5p:2x2x1, v4:2x2x1, v5e:2x4")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--prompt_width", type=int, default=1024)
    parser.add_argument("--max_new_tokens", type=int, default=1025)
    parser.add_argument("--mesh", default="1,1,-1", help="data,fsdp,tensor sizes (-1: the rest of the slice)")
    parser.add_argument("--out", help="append the JSON result to this file")
    args = parser.parse_args(rest)
    mesh_shape = tuple(int(size) for size in args.mesh.split(","))
    try:
        model_config = TrainConfig.from_config(config, check_training=False).model
        result = measure(model_config, args.topology, mesh_shape, args.batch_size, args.prompt_width,
                         args.max_new_tokens)
    except (TopologyError, UserError) as err:
        print(f"decode_fit: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.write(json.dumps(result) + "\n")
    if "total_bytes" in result:
        print(f"{result['topology']} ({result['accelerator_type']}), mesh {result['mesh']}: per chip "
              f"args {result['argument_bytes'] / GIB:.2f} GiB, temp {result['temp_bytes'] / GIB:.2f} GiB, "
              f"total {result['total_bytes'] / GIB:.2f} of {result['hbm_bytes'] / GIB:.0f} GiB: "
              f"{'fits' if result['fits'] else 'does NOT fit'}")
    else:
        print(f"{result['topology']}: {result['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
