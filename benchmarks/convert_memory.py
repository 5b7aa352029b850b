"""Peak host memory of `orca-jax convert-weights` relative to the checkpoint it converts.

    python3 benchmarks/convert_memory.py [--source hf|meta] [--shard_mb 1000] [--workdir DIR]
        [--json out.json] [--layers 24 --embed 2048 --mlp 5504 --heads 16 --kv_heads 16 --vocab 32000]

Writes a random bfloat16 LLaMA as Hugging Face safetensors shards directly with NumPy, through the
exporter's shard writer (one shard in memory at a time; transformers is never imported, to save memory
and time), or as Meta's two model-parallel .pth ranks with torch.save. Then runs, each in its own
subprocess, processes that only import the converter (with and without torch), the import to our
params directory, and the export back to HF safetensors. The peak resident set size of each child
comes from `os.wait4`, so the steps are measured separately. The defaults make a
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
    from orca_jax.model.hf_checkpoint import (
        TensorToWrite,
        hf_config_from_model,
        hf_name,
        write_hf_config,
        write_safetensors,
    )
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


def write_random_meta_checkpoint(directory: pathlib.Path, config_fields: dict, ranks: int = 2) -> int:
    """A random bf16 Meta checkpoint (params.json + one consolidated.NN.pth per model-parallel rank).

    Returns its size in bytes. Like write_random_checkpoint, meant to run in its own process.
    """
    import torch

    from orca_jax.model.config import ModelConfig
    from orca_jax.model.meta_checkpoint import META_NAMES
    from orca_jax.model.weight_layout import checkpoint_order

    config = ModelConfig(**config_fields)
    generator = torch.Generator().manual_seed(0)
    for rank in range(ranks):
        state = {}
        for layout, layer in checkpoint_order(config.num_layers):
            template, split_dim, _ = META_NAMES[layout.key]
            shape = list(layout.torch_shape(config))
            if split_dim is not None:
                shape[split_dim] //= ranks
            state[template.format(layer=layer)] = (torch.randn(shape, generator=generator) * 0.02).bfloat16()
        torch.save(state, directory / f"consolidated.{rank:02d}.pth")
        del state
    (directory / "params.json").write_text(json.dumps({
        "dim": config.embed_dim, "n_layers": config.num_layers, "n_heads": config.num_heads,
        "n_kv_heads": config.num_kv_heads, "norm_eps": config.norm_eps, "vocab_size": -1}))
    return sum(2 * math.prod(layout.torch_shape(config)) for layout, _ in checkpoint_order(config.num_layers))


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
    parser.add_argument("--source", choices=("hf", "meta"), default="hf",
                        help="checkpoint format to import: HF safetensors or Meta .pth (two ranks)")
    parser.add_argument("--shard_mb", type=float, default=1000, help="size of each HF safetensors shard")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the result here")
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="convert_memory_", dir=args.workdir))
    try:
        source_dir, params_dir, export_dir = workdir / args.source, workdir / "params", workdir / "export"
        source_dir.mkdir()
        start = time.perf_counter()
        config_fields = dict(vocab_size=args.vocab, embed_dim=args.embed, mlp_dim=args.mlp,
                             num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                             head_dim=args.embed // args.heads)
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            if args.source == "hf":
                job = pool.submit(write_random_checkpoint, source_dir, config_fields, args.shard_mb)
            else:
                job = pool.submit(write_random_meta_checkpoint, source_dir, config_fields)
            checkpoint_bytes = job.result()
        seconds = time.perf_counter() - start
        print(f"wrote {checkpoint_bytes / 2**30:.2f} GiB of random bf16 in {seconds:.0f} s",
              file=sys.stderr)
        converter = [sys.executable, "-m", "orca_jax.cli", "convert-weights"]
        import_only = "import orca_jax.model.convert"
        # (name, command, the imports-only step whose fixed cost (0.2-0.4 GiB) it also pays); the
        # Meta reader imports torch on top of the converter's JAX.
        steps = [
            ("imports only", [sys.executable, "-c", import_only], None),
            ("imports + torch", [sys.executable, "-c", import_only + ", torch"], None),
            (f"import {args.source} -> params",
             converter + ["import", f"--{args.source}_dir", str(source_dir), "--out", str(params_dir)],
             "imports + torch" if args.source == "meta" else "imports only"),
            ("export params -> HF", converter + ["export", "--params", str(params_dir), "--out",
                                                 str(export_dir), "--max_shard_mb", str(args.shard_mb)],
             "imports only"),
        ]
        checkpoint_gib = checkpoint_bytes / 2**30
        results = {"source": args.source, "checkpoint_gib": round(checkpoint_gib, 3),
                   "parameters": checkpoint_bytes // 2, "shard_mb": args.shard_mb, "steps": {}}
        for name, command, baseline in steps:
            peak_gib, seconds = run_measured(command)
            baseline_gib = results["steps"][baseline]["peak_rss_gib"] if baseline else peak_gib
            results["steps"][name] = {"peak_rss_gib": round(peak_gib, 3), "seconds": round(seconds, 1),
                                      "peak_over_checkpoint": round(peak_gib / checkpoint_gib, 3),
                                      "above_imports_over_checkpoint":
                                          round((peak_gib - baseline_gib) / checkpoint_gib, 3)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.source} checkpoint: {results['parameters'] / 1e9:.2f}B parameters, "
          f"{checkpoint_gib:.2f} GiB bf16, HF shards of {args.shard_mb:.0f} MB")
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
