"""Peak host memory of `orca-jax weight-diff make` and `apply` against the checkpoint size.

    python3 benchmarks/weight_diff_memory.py [--layers 8 --embed 2048 --mlp 5504 --heads 16 --vocab 32000]
        [--shard_mb 1000] [--diff_shard_mb 2000] [--workdir DIR] [--json out.json]

Writes two random bf16 LLaMA checkpoints with convert_memory.py's writer (each in its own process): a
base with `vocab` rows and a target with `vocab + 1` (the added pad token), about 1 GiB each by
default. Then runs, each in a child process measured by `os.wait4`, the bare imports, `make` and
`apply`, and checks that the recovered files hold the target's tensors. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from convert_memory import run_measured, write_random_checkpoint  # noqa: E402


def same_tensors(first: pathlib.Path, second: pathlib.Path) -> bool:
    """Whether two safetensors directories hold the same tensor bytes (read one tensor at a time)."""
    from orca_jax.model.hf_checkpoint import open_safetensors, weight_map

    first_map, second_map = weight_map(first), weight_map(second)
    if sorted(first_map) != sorted(second_map):
        return False
    for name in first_map:
        a = open_safetensors(first / first_map[name], lambda f, name=name: f.get_tensor(name))
        b = open_safetensors(second / second_map[name], lambda f, name=name: f.get_tensor(name))
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--embed", type=int, default=2048)
    parser.add_argument("--mlp", type=int, default=5504)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard_mb", type=float, default=1000, help="shards of the base and target")
    parser.add_argument("--diff_shard_mb", type=float, default=2000, help="weight-diff make --max_shard_mb")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the result here")
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="weight_diff_memory_", dir=args.workdir))
    try:
        base, target, diff, recovered = (workdir / name for name in ("base", "target", "diff", "recovered"))
        fields = dict(embed_dim=args.embed, mlp_dim=args.mlp, num_layers=args.layers, num_heads=args.heads,
                      num_kv_heads=args.heads, head_dim=args.embed // args.heads)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            base.mkdir()
            target.mkdir()
            pool.submit(write_random_checkpoint, base, {**fields, "vocab_size": args.vocab}, args.shard_mb).result()
            target_bytes = pool.submit(write_random_checkpoint, target, {**fields, "vocab_size": args.vocab + 1},
                                       args.shard_mb).result()
        cli = [sys.executable, "-m", "orca_jax.cli", "weight-diff"]
        steps = {
            "imports only": [sys.executable, "-c", "import orca_jax.model.weight_diff"],
            "make": cli + ["make", "--base", str(base), "--target", str(target), "--out", str(diff),
                           "--max_shard_mb", str(args.diff_shard_mb)],
            "apply": cli + ["apply", "--base", str(base), "--diff", str(diff), "--out", str(recovered)],
        }
        gib = target_bytes / 2**30
        results = {"checkpoint_gib": round(gib, 3), "shard_mb": args.shard_mb,
                   "diff_shard_mb": args.diff_shard_mb, "steps": {}}
        for name, command in steps.items():
            peak, seconds = run_measured(command)
            results["steps"][name] = {"peak_rss_gib": round(peak, 3), "seconds": round(seconds, 1),
                                      "peak_over_checkpoint": round(peak / gib, 3)}
        results["largest_tensor_gib"] = round((args.vocab + 1) * args.embed * 2 / 2**30, 3)
        results["recovered_equals_target"] = same_tensors(target, recovered)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\ntarget checkpoint {gib:.2f} GiB bf16 (largest tensor {results['largest_tensor_gib']:.3f} GiB), "
          f"recovered == target: {results['recovered_equals_target']}")
    print(f"{'step':<14} {'peak RSS GiB':>12} {'x checkpoint':>12} {'seconds':>8}")
    for name, step in results["steps"].items():
        print(f"{name:<14} {step['peak_rss_gib']:>12.3f} {step['peak_over_checkpoint']:>12.3f} {step['seconds']:>8.1f}")
    line = json.dumps(results)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    if not results["recovered_equals_target"]:
        raise SystemExit("the recovered checkpoint differs from the target")


if __name__ == "__main__":
    main()
