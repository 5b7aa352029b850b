"""Peak host memory of `orca-jax convert-weights` relative to the checkpoint it converts.

    python3 benchmarks/convert_memory.py [--layers 24 --embed 2048 --mlp 5504 --heads 16 --vocab 32000]
                                         [--shard_mb 1000] [--workdir DIR] [--json out.json]

Writes a random bfloat16 LLaMA as Hugging Face safetensors shards directly with NumPy, through the
exporter's shard writer (one shard in memory at a time; transformers is never imported, to save memory
and time), then runs, each in its own subprocess, (1) a process that only imports the converter,
(2) the import to our params directory, (3) the export back to HF safetensors. The peak resident set
size of each child comes from `os.wait4`, so the three are measured separately. The defaults make a
1.35B-parameter model (2.5 GiB), which fits a shared 24 GiB machine; a 13B checkpoint (26 GB) scales
the same way. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time



def write_random_checkpoint(directory: pathlib.Path, config_fields: dict, shard_mb: float) -> int:
    """A random bf16 HF checkpoint with these ModelConfig fields, in shards of about shard_mb.

    Returns its size in bytes. Runs in its own process, which alone imports NumPy and JAX: Linux
    gives a child started by vfork+exec its parent's peak RSS as a floor for its own, so the measuring
    parent must stay small.
    """
    import ml_dtypes
    import numpy as np

    from orca_jax.model.config import ModelConfig
    from orca_jax.model.hf_checkpoint import (TensorToWrite, hf_config_from_model, hf_name, write_hf_config,
                                              write_safetensors)
    from orca_jax.model.weight_layout import checkpoint_order

    config = ModelConfig(**config_fields)
    rng = np.random.default_rng(0)
    bfloat16 = np.dtype(ml_dtypes.bfloat16)

    def random_tensor(shape: tuple[int, ...]):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(bfloat16)

    tensors = [TensorToWrite(hf_name(layout, layer), layout.torch_shape(config), bfloat16,
                             functools.partial(random_tensor, layout.torch_shape(config)))
               for layout, layer in checkpoint_order(config.num_layers)]
    write_safetensors(directory, tensors, int(shard_mb * 2**20))
    write_hf_config(directory, hf_config_from_model(config, bfloat16))
    return sum(2 * math.prod(tensor.shape) for tensor in tensors)


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run `command`; return (peak RSS in GiB, wall seconds). Fails loudly if the command fails."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)  # unlike Popen.wait, also returns the child's rusage
    seconds = time.perf_counter() - start
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {exit_code}")
    return usage.ru_maxrss / 2**20, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--embed", type=int, default=2048)
    parser.add_argument("--mlp", type=int, default=5504)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv_heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard_mb", type=float, default=1000, help="size of each HF safetensors shard")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the result here")
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="convert_memory_", dir=args.workdir))
    try:
        hf_dir, params_dir, export_dir = workdir / "hf", workdir / "params", workdir / "export"
        hf_dir.mkdir()
        start = time.perf_counter()
        config_fields = dict(vocab_size=args.vocab, embed_dim=args.embed, mlp_dim=args.mlp,
                             num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                             head_dim=args.embed // args.heads)
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            checkpoint_bytes = pool.submit(write_random_checkpoint, hf_dir, config_fields,
                                           args.shard_mb).result()
        seconds = time.perf_counter() - start
        print(f"wrote {checkpoint_bytes / 2**30:.2f} GiB of random bf16 in {seconds:.0f} s",
              file=sys.stderr)
        converter = [sys.executable, "-m", "orca_jax.cli", "convert-weights"]
        steps = {
            "imports only": [sys.executable, "-c", "import orca_jax.model.convert"],
            "import HF -> params": converter + ["import", "--hf_dir", str(hf_dir), "--out", str(params_dir)],
            "export params -> HF": converter + ["export", "--params", str(params_dir), "--out",
                                                str(export_dir), "--max_shard_mb", str(args.shard_mb)],
        }
        checkpoint_gib = checkpoint_bytes / 2**30
        results = {"checkpoint_gib": round(checkpoint_gib, 3), "parameters": checkpoint_bytes // 2,
                   "shard_mb": args.shard_mb, "steps": {}}
        for name, command in steps.items():
            peak_gib, seconds = run_measured(command)
            baseline_gib = results["steps"].get("imports only", {}).get("peak_rss_gib", peak_gib)
            # Python + JAX + torch-free imports cost a fixed ~0.2 GiB, negligible at 13B but not here.
            results["steps"][name] = {"peak_rss_gib": round(peak_gib, 3), "seconds": round(seconds, 1),
                                      "peak_over_checkpoint": round(peak_gib / checkpoint_gib, 3),
                                      "above_imports_over_checkpoint":
                                          round((peak_gib - baseline_gib) / checkpoint_gib, 3)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\ncheckpoint: {results['parameters'] / 1e9:.2f}B parameters, {checkpoint_gib:.2f} GiB bf16, "
          f"shards of {args.shard_mb:.0f} MB")
    print(f"{'step':<22} {'peak RSS GiB':>12} {'x checkpoint':>12} {'(- imports)':>12} {'seconds':>8}")
    for name, step in results["steps"].items():
        print(f"{name:<22} {step['peak_rss_gib']:>12.2f} {step['peak_over_checkpoint']:>12.2f} "
              f"{step['above_imports_over_checkpoint']:>12.2f} {step['seconds']:>8.1f}")
    line = json.dumps(results)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
