"""Does a training config fit a TPU slice? Compile its real train step for the slice, on this host.

    python benchmarks/tpu_fit.py --config configs/llama_13b.py --topology v5p:4x4x4 \
        [--config.data.batch_size=256 --config.model.remat=save_dots ...] [--sweep_batch] [--out fit.jsonl]

No TPU is needed or contacted: libtpu (from `pip install "jax[tpu]"`, in a separate virtualenv so
that it never loads in CPU test runs) describes the slice named by --topology, and XLA compiles the
jitted train step of orca_jax/train/step.py ahead of time for it, with the parameter, optimizer and
batch shardings the training job uses (orca_jax.parallel's rules on the config's `mesh`). Nothing is
allocated: parameters, optimizer state and batch are abstract shapes. The compiler's memory analysis
gives the per-chip bytes; a RESOURCE_EXHAUSTED compile error is the answer "does not fit", not a crash.

Prints one JSON object per compile and a table. --sweep_batch doubles the batch from the config's
(gradient accumulation off) until a compile does not fit: the last row that fits is the answer.
"""

from __future__ import annotations

import os

# Before JAX is imported: keep JAX's own backend on the CPU so that nothing probes for a real TPU (the
# topology below is loaded without initialising a TPU client), tell libtpu not to ask the GCE metadata
# server which TPU it runs on, and let it load while another process (a second benchmark) holds it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from orca_jax import parallel  # noqa: E402
from orca_jax.config import parse_config_args  # noqa: E402
from orca_jax.data.packing import ROW_FIELDS  # noqa: E402
from orca_jax.errors import UserError  # noqa: E402
from orca_jax.model import ModelConfig  # noqa: E402
from orca_jax.train import loop, step  # noqa: E402
from orca_jax.train.config import TrainConfig  # noqa: E402
from orca_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ChipKind:
    hbm_bytes: int
    """Nominal HBM per chip; the compiler keeps a little back (a v5e reports 15.75 of 16 GiB usable)."""
    cores_per_chip: int
    """TensorCores per chip: v4 and v5p accelerator types ('v5p-128') count cores, not chips."""
    accelerator_prefix: str
    """How `gcloud ... --accelerator-type` names this generation."""


# Keyed by the generation part of a topology name ('v5p' in 'v5p:4x4x4').
CHIPS = {
    "v4": ChipKind(32 * GIB, 2, "v4"),
    "v5e": ChipKind(16 * GIB, 1, "v5litepod"),
    "v5p": ChipKind(95 * GIB, 2, "v5p"),
    "v6e": ChipKind(32 * GIB, 1, "v6e"),
}

BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "loss_weights": jnp.float32,
                "segment_ids": jnp.int32, "positions": jnp.int32}


class TopologyError(ValueError):
    """A --topology that is malformed, of a generation with no figures here, or rejected by libtpu."""


def load_topology(name: str) -> tuple[ChipKind, list[jax.Device], str]:
    """(chip kind, the slice's abstract devices, its gcloud accelerator type) for e.g. 'v5p:4x4x4'."""
    generation, _, shape = name.partition(":")
    if generation not in CHIPS or not re.fullmatch(r"\d+(x\d+)+", shape):
        raise TopologyError(f"--topology {name!r}: expected <{'|'.join(CHIPS)}>:<AxB[xC]>, e.g. v5p:4x4x4")
    chip = CHIPS[generation]
    # Megacore chips (v4, v5p) run their two TensorCores as one JAX device, which is how they train.
    options = {"chip_config_name": "megacore"} if chip.cores_per_chip == 2 else {}
    try:
        devices = topologies.get_topology_desc(topology_name=name, platform="tpu", **options).devices
    except jax.errors.JaxRuntimeError as err:  # libtpu's own check, e.g. a shape not made of whole hosts
        raise TopologyError(f"--topology {name!r}: {err}") from None
    return chip, devices, f"{chip.accelerator_prefix}-{len(devices) * chip.cores_per_chip}"


@dataclasses.dataclass(frozen=True)
class FitJob:
    """What decides a train step's memory: the model, the batch geometry and gradient accumulation."""

    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: int
    seq_len: int
    mesh: tuple[int, int, int]
    """The config's (data, fsdp, tensor) sizes; -1 means the rest of the slice."""


def job_from_config(run: TrainConfig) -> FitJob:
    """The batch geometry of the run and its first stage's optimizer (a model-only config such as
    configs/llama_13b.py has no stages: the optimizer defaults apply, no gradient accumulation)."""
    optimizer = run.stages[0].optimizer if run.stages else OptimizerConfig()
    return FitJob(run.model, optimizer, run.data.batch_size, run.data.seq_len,
                  (run.mesh.data, run.mesh.fsdp, run.mesh.tensor))


def compile_train_step(job: FitJob, mesh):
    """Lower and compile the trainer's own jitted step (step.CompiledSteps) on abstract inputs."""
    microbatches = job.optimizer.grad_accum_steps
    # The schedule's length does not change the compiled program; any positive count will do.
    optimizer = make_optimizer(job.optimizer, total_steps=job.optimizer.warmup_steps + 1)
    parallel.check_divisible("batch_size", job.batch_size, mesh, ("data", "fsdp"))
    parallel.check_divisible("batch_size / grad_accum_steps", job.batch_size // microbatches, mesh, ("data", "fsdp"))
    # Described before the mesh becomes current: under a current mesh of these compile-only devices an
    # eager JAX op would try to run on a TPU that is not there.
    state = step.abstract_state(parallel.abstract_params(job.model, mesh), optimizer, mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    batch = {key: jax.ShapeDtypeStruct((job.batch_size, job.seq_len), BATCH_DTYPES[key], sharding=batch_sharding)
             for key in ROW_FIELDS}
    train = step.CompiledSteps(job.model, optimizer, microbatches, mesh, state).jitted_train
    with parallel.activate(mesh):
        return train.lower(state, batch).compile()


def fit_report(compiled, chip: ChipKind) -> dict:
    """Per-chip bytes from XLA's memory analysis. Donated outputs alias their inputs, so the peak is
    arguments + outputs - aliased + temporaries + code."""
    stats = compiled.memory_analysis()
    report = {
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
        "code_bytes": stats.generated_code_size_in_bytes,
    }
    report["total_bytes"] = (report["argument_bytes"] + report["output_bytes"] - report["alias_bytes"]
                             + report["temp_bytes"] + report["code_bytes"])
    report["fits"] = report["total_bytes"] <= chip.hbm_bytes
    return report


def measure(job: FitJob, topology: str) -> dict:
    """Compile the job's train step for the slice; the result dict says whether it fits and why."""
    chip, devices, accelerator_type = load_topology(topology)
    shape = parallel.resolve_mesh_shape(*job.mesh, len(devices))
    # jax.make_mesh, not parallel.make_mesh: these devices are not jax.devices() (the host's CPU), and
    # only jax.make_mesh orders them along the slice's physical torus.
    mesh = jax.make_mesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    result = {
        "topology": topology, "accelerator_type": accelerator_type, "chips": len(devices),
        "device_kind": devices[0].device_kind, "mesh": dict(zip(parallel.MESH_AXES, shape)),
        "batch_size": job.batch_size, "per_chip_batch": job.batch_size / len(devices), "seq_len": job.seq_len,
        "grad_accum_steps": job.optimizer.grad_accum_steps, "num_layers": job.model.num_layers,
        "remat": job.model.remat, "scan_layers": job.model.scan_layers, "attention": job.model.attention,
        "hbm_bytes": chip.hbm_bytes,
    }
    start = time.perf_counter()
    try:
        compiled = compile_train_step(job, mesh)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        # XLA stops at the first buffer assignment that overflows HBM, so there are no byte counts.
        result.update(fits=False, error=str(err).splitlines()[0])
    else:
        result.update(fit_report(compiled, chip))
    result["compile_seconds"] = round(time.perf_counter() - start, 1)
    return result


def sweep_batch(job: FitJob, topology: str) -> list[dict]:
    """Double the global batch (without accumulation) from the job's until a compile does not fit."""
    job = dataclasses.replace(job, optimizer=dataclasses.replace(job.optimizer, grad_accum_steps=1))
    results = []
    while True:
        results.append(measure(job, topology))
        print(json.dumps(results[-1]), flush=True)
        if not results[-1]["fits"]:
            return results
        job = dataclasses.replace(job, batch_size=2 * job.batch_size)


def gib(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / GIB:.2f}"


def table(results: list[dict]) -> str:
    header = ("topology", "type", "mesh d/f/t", "batch", "per chip", "layers", "remat", "attention", "args GiB",
              "out GiB", "alias GiB", "temp GiB", "code GiB", "total GiB", "HBM GiB", "fits", "compile s")
    rows = [header]
    for r in results:
        mesh = "/".join(str(r["mesh"][axis]) for axis in parallel.MESH_AXES)
        rows.append((r["topology"], r["accelerator_type"], mesh, str(r["batch_size"]), f"{r['per_chip_batch']:g}",
                     str(r["num_layers"]), r["remat"], r["attention"], gib(r.get("argument_bytes")),
                     gib(r.get("output_bytes")),
                     gib(r.get("alias_bytes")), gib(r.get("temp_bytes")), gib(r.get("code_bytes")),
                     gib(r.get("total_bytes")), gib(r["hbm_bytes"]), "yes" if r["fits"] else "NO",
                     str(r["compile_seconds"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def main(argv: list[str]) -> int:
    config, rest = parse_config_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, help="libtpu topology name, e.g. v5p:4x4x4, v4:4x4x2, v5e:16x16")
    parser.add_argument("--sweep_batch", action="store_true",
                        help="double the batch until it no longer fits (gradient accumulation off)")
    parser.add_argument("--out", help="append the JSON results to this file, one per line")
    parser.add_argument("--compilation_cache_dir",
                        help="compile through JAX's persistent compilation cache in this directory, as the training "
                             "job does: a second call with the same directory measures a restart's compile")
    args = parser.parse_args(rest)
    try:
        run = TrainConfig.from_config(config)
        if args.compilation_cache_dir:
            loop.enable_compilation_cache(dataclasses.replace(
                run, compilation_cache=True, compilation_cache_dir=args.compilation_cache_dir))
        job = job_from_config(run)
        if args.sweep_batch:
            results = sweep_batch(job, args.topology)
        else:
            results = [measure(job, args.topology)]
            print(json.dumps(results[0]), flush=True)
    except (TopologyError, UserError) as err:
        print(f"tpu_fit: {err}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "a") as out:
            out.writelines(json.dumps(r) + "\n" for r in results)
    print(table(results))
    for r in results:
        if "error" in r:
            print(f"{r['topology']} batch {r['batch_size']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
