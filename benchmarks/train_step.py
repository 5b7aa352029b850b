"""Train-loop throughput: step time, tokens/s, and the share of time spent waiting for data and checkpoints.

Runs the real loop (`orca_jax.train.loop.train`) on the demo data for one stage, twice per model:
with a checkpoint every `--checkpoint_every` steps and with a checkpoint only at the end. The
difference in tokens/s is what asynchronous checkpointing really costs (the background write competes
for host CPU and memory bandwidth), beyond the blocking part the loop measures itself.

    python3 benchmarks/train_step.py                                  # tiny and demo models, CPU
    python3 benchmarks/train_step.py --models configs/llama_1b.py --batch_size 8 --seq_len 2048

`--models` takes 'tiny', 'demo' or any config file with a `model` block. The first step of each run
(compilation) is left out of every rate.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics

import jax

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.train import loop
from orca_jax.train.config import TrainConfig
from orca_jax.train.demo import prepare_demo

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMED_MODELS = {"tiny": REPO / "configs" / "tiny.py", "demo": REPO / "configs" / "demo.py"}


def bench_config(args, model_spec: str, workdir: pathlib.Path, checkpoint_every: int) -> TrainConfig:
    config = load_config(str(REPO / "configs" / "demo.py"))
    model = load_config(str(NAMED_MODELS.get(model_spec, model_spec))).model
    config.workdir = str(workdir)
    config.demo.data_dir = str(args.workdir / "data")
    config.data.tokenizer = str(args.workdir / "data" / "tokenizer.model")
    config.data.update(seq_len=args.seq_len, batch_size=args.batch_size, validation_batches=1)
    model.max_seq_len = max(model.max_seq_len, args.seq_len)
    model.vocab_size = max(model.vocab_size, Tokenizer.load(config.data.tokenizer).vocab_size)
    config.model = model
    config.stage_order = ("stage1",)
    del config.stages["stage2"]
    stage = config.stages.stage1
    stage.dataset_dir = str(args.workdir / "data" / "stage1_shards")
    stage.update(epochs=0, num_steps=args.steps)
    stage.optimizer.warmup_steps = 1
    config.checkpoint.update(every_steps=checkpoint_every, keep=2)
    config.log_every_steps = args.log_every
    config.eval.suite = ""  # the step and its checkpoints, not the benchmark decoding, are measured here
    return TrainConfig.from_config(config)


def measure(run: TrainConfig, mesh) -> dict[str, float]:
    """Mean of the loop's per-window rates (windows are equal, the first step is excluded)."""
    tokenizer = Tokenizer.load(run.data.tokenizer)
    loop.train(run, mesh, tokenizer)
    records = [json.loads(line) for line in (pathlib.Path(run.workdir) / "metrics.jsonl").open()]
    windows = [record for record in records if "tokens_per_second" in record]
    names = ("seconds_per_step", "tokens_per_second", "data_wait_fraction", "checkpoint_wait_fraction", "mfu")
    return {name: statistics.mean(w[name] for w in windows) for name in names if name in windows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,demo", help="comma-separated: tiny, demo or config paths")
    parser.add_argument("--steps", type=int, default=41, help="steps per run (the first one compiles)")
    parser.add_argument("--log_every", type=int, default=5, help="steps per measured window")
    parser.add_argument("--checkpoint_every", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/orca_jax_train_bench"))
    args = parser.parse_args()

    demo = load_config(str(REPO / "configs" / "demo.py"))
    demo.workdir = str(args.workdir)
    demo = TrainConfig.from_config(demo)
    prepare_demo(demo)
    mesh = parallel.mesh_from_config(demo.mesh)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch {args.batch_size} x "
          f"{args.seq_len} tokens; {args.steps} steps, checkpoint every {args.checkpoint_every}")
    header = (f"{'model':<22} {'step s':>7} {'tokens/s':>10} {'MFU':>6} {'data wait':>9} "
              f"{'ckpt block':>10} {'ckpt cost':>9}")
    print(header)
    for model_spec in args.models.split(","):
        results = {}
        for variant, every in (("checkpointing", args.checkpoint_every), ("end_only", args.steps)):
            workdir = args.workdir / "runs" / f"{pathlib.Path(model_spec).stem}_{variant}"
            shutil.rmtree(workdir, ignore_errors=True)
            results[variant] = measure(bench_config(args, model_spec, workdir, every), mesh)
        with_checkpoints, without = results["checkpointing"], results["end_only"]
        mfu = f"{with_checkpoints['mfu']:.1%}" if "mfu" in with_checkpoints else "-"
        cost = 1 - with_checkpoints["tokens_per_second"] / without["tokens_per_second"]
        print(f"{pathlib.Path(model_spec).stem:<22} {with_checkpoints['seconds_per_step']:>7.3f} "
              f"{with_checkpoints['tokens_per_second']:>10.0f} "
              f"{mfu:>6} {with_checkpoints['data_wait_fraction']:>9.1%} "
              f"{with_checkpoints['checkpoint_wait_fraction']:>10.1%} {cost:>9.1%}")


if __name__ == "__main__":
    main()
