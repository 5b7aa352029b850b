"""Time one jitted forward + backward step (loss and gradients, no optimizer) of a LLaMA config.

    python3 benchmarks/model_step.py [--config configs/llama_1b.py] [--attention xla,cudnn]
        [--segments 4] [--steps 20] [--warmup 3] [--peak_tflops 989] [--out results.jsonl]
        [--config.model.scan_layers=False ...]

Prints one JSON line per attention implementation, then a table: step time, tokens/s, model TFLOP per
step (orca_jax.flops, PaLM's count) and MFU against --peak_tflops (default: the dense bfloat16 peak of
a recognised GPU, else MFU is left out). Synthetic tokens; params initialised on the mesh from the
config's `mesh` block. `--segments K` packs each row with K equal examples (segment ids 1..K,
positions restarting); 0 gives segment_ids=None, i.e. one causal sequence per row.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from orca_jax import parallel
from orca_jax.config import ConfigError, parse_config_args
from orca_jax.errors import UserError
from orca_jax.model import Llama, ModelConfig
from orca_jax.model.flops import train_flops_per_step
from orca_jax.train.config import TrainConfig

DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "llama_1b.py")

# Dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, by a substring of jax's device_kind.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def default_peak_tflops(device: jax.Device) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device.device_kind), None)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, segments: int, seed: int):
    """Random tokens; with segments > 0, each row holds `segments` equal-length packed examples."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, size=(batch_size, seq_len + 1), dtype=np.int32)
    example_len = seq_len // max(segments, 1)
    positions = np.broadcast_to(np.arange(seq_len) % example_len, (batch_size, seq_len))
    segment_ids = np.broadcast_to(np.arange(seq_len) // example_len + 1, (batch_size, seq_len))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": positions.astype(np.int32),
        "segment_ids": segment_ids.astype(np.int32) if segments else None,
    }


def make_step(model: Llama):
    """(params, batch) -> (mean token cross-entropy, gradients)."""

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    return jax.value_and_grad(loss_fn)


def run_one(model_config: ModelConfig, mesh, batch_size: int, seq_len: int, segments: int,
            steps: int, warmup: int, peak_tflops: float | None, seed: int = 0) -> dict:
    model = Llama(model_config)
    host_batch = synthetic_batch(model_config.vocab_size, batch_size, seq_len, segments, seed)
    parallel.check_divisible("batch_size", batch_size, mesh, ("data", "fsdp"))
    with parallel.activate(mesh):
        batch = {name: None if array is None else jax.device_put(array, parallel.batch_sharding(mesh))
                 for name, array in host_batch.items()}
        init = lambda rng: model.init(rng, batch["inputs"], batch["positions"], batch["segment_ids"])  # noqa: E731
        boxed_shapes = jax.eval_shape(init, jax.random.key(seed))
        param_shardings = parallel.param_shardings(mesh, boxed_shapes)["params"]
        params = jax.jit(lambda rng: nn.unbox(init(rng))["params"], out_shardings=param_shardings)(
            jax.random.key(seed))
        step = jax.jit(make_step(model), out_shardings=(NamedSharding(mesh, PartitionSpec()), param_shardings))

        # The first call compiles; first_step_s is compile time plus one step.
        first_start = time.perf_counter()
        jax.block_until_ready(step(params, batch))
        first_step_s = time.perf_counter() - first_start
        for _ in range(warmup):
            jax.block_until_ready(step(params, batch))
        start = time.perf_counter()
        for _ in range(steps):
            loss, grads = step(params, batch)
        jax.block_until_ready((loss, grads))
        step_s = (time.perf_counter() - start) / steps

    tflop = train_flops_per_step(model_config, batch_size, seq_len) / 1e12
    return {
        "attention": model_config.attention,
        "segments": segments,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "scan_layers": model_config.scan_layers,
        "remat": model_config.remat,
        "compute_dtype": model_config.compute_dtype,
        "devices": mesh.devices.size,
        "device_kind": mesh.devices.flat[0].device_kind,
        "first_step_s": round(first_step_s, 2),
        "step_ms": round(step_s * 1e3, 2),
        "tokens_per_s": round(batch_size * seq_len / step_s),
        "model_tflop_per_step": round(tflop, 3),
        "mfu": None if peak_tflops is None else round(tflop / step_s / (peak_tflops * mesh.devices.size), 4),
        "peak_tflops_per_device": peak_tflops,
        "loss": float(loss),
    }


def format_table(results: list[dict]) -> str:
    header = f"{'attention':<10}{'layers':>9}{'segments':>9}{'step ms':>10}{'tokens/s':>11}{'TFLOP/step':>12}{'MFU':>8}"
    rows = [header]
    for r in results:
        if "error" in r:
            rows.append(f"{r['attention']:<10}{'':>9}{r['segments']:>9}  failed: {r['error'].splitlines()[0][:80]}")
            continue
        mfu = "-" if r["mfu"] is None else format(r["mfu"], ".1%")
        layers = "scan" if r["scan_layers"] else "unrolled"
        rows.append(f"{r['attention']:<10}{layers:>9}{r['segments']:>9}{r['step_ms']:>10.1f}{r['tokens_per_s']:>11}"
                    f"{r['model_tflop_per_step']:>12.2f}{mfu:>8}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default=None,
                        help="comma-separated implementations to time, e.g. xla,cudnn (default: the config's)")
    parser.add_argument("--segments", type=int, default=0, help="packed examples per row (0: none)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="per-device peak TFLOP/s for MFU (default: known GPU's bf16 dense peak)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="append the JSON lines here")
    try:
        config, rest = parse_config_args(list(sys.argv[1:] if argv is None else argv), default=DEFAULT_CONFIG)
    except ConfigError as err:
        parser.error(str(err))
    args = parser.parse_args(rest)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    try:
        run = TrainConfig.from_config(config)
        mesh = parallel.mesh_from_config(run.mesh)
        model_configs = [run.model.replace(attention=name.strip())
                         for name in (args.attention or run.model.attention).split(",")]
    except UserError as err:
        parser.error(str(err))
    batch_size, seq_len = run.data.batch_size, run.data.seq_len
    if args.segments < 0 or (args.segments and seq_len % args.segments):
        parser.error(f"--segments {args.segments} must be 0 or divide data.seq_len={seq_len}")
    peak = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(jax.devices()[0])
    results = []
    for model_config in model_configs:
        try:
            result = run_one(model_config, mesh, batch_size, seq_len, args.segments,
                             args.steps, args.warmup, peak)
        except Exception as err:  # noqa: BLE001 - one kernel failing (OOM, no cuDNN) must not hide the others
            result = {"attention": model_config.attention, "segments": args.segments,
                      "error": f"{type(err).__name__}: {err}"[:2000]}
        print(json.dumps(result), flush=True)
        results.append(result)
        if args.out is not None:
            with args.out.open("a") as out_file:
                out_file.write(json.dumps(result) + "\n")
    print(format_table(results))
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
