"""Train-loop throughput: step time, tokens/s, the share of time spent waiting for data and checkpoints,
and the host gap: how long the device sits idle between consecutive steps, waiting for the host.

Runs the real loop (`orca_jax.train.loop.train`) on the demo data for one stage, three times per model:
with a checkpoint every `--checkpoint_every` steps, the same with `debug.sync_every_step` (the loop
before issue 10: every step's metrics fetched before the next step is queued), and with a checkpoint
only at the end. The difference in tokens/s between the first and last is what asynchronous
checkpointing really costs (the background write competes for host CPU and memory bandwidth), beyond
the blocking part the loop measures itself.

The host gap comes from per-step timestamps (StepTimer): when the jitted step call returned (the
step is queued) and when its outputs were ready (a watcher thread blocks on them). The device can
start step k+1 only once step k is done and step k+1 is queued, so it idles for
max(0, queued[k+1] - done[k]); the gap fraction is the sum of those over the wall time from the first
measured step's end to the last one's. The first step (compilation) and the step after each
checkpoint (that wait is the checkpoint's, reported as 'ckpt block') are left out. Timestamps taken
on the host make the gaps an upper bound: a step counts as queued only once the call has returned.

    python3 benchmarks/train_step.py --models demo --batch_size 8 --log_every 10   # the demo config, CPU
    python3 benchmarks/train_step.py --models configs/llama_1b.py --batch_size 8 --seq_len 2048

`--models` takes 'tiny', 'demo' or any config file with a `model` block. The first step of each run
(compilation) is left out of every rate. Prints one JSON object per run and a table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import queue
import shutil
import statistics
import sys
import threading
import time

import jax

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.train import loop
from orca_jax.train.config import TrainConfig
from orca_jax.train.demo import prepare_demo

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMED_MODELS = {"tiny": REPO / "configs" / "tiny.py", "demo": REPO / "configs" / "demo.py"}


def bench_config(args, model_spec: str, workdir: pathlib.Path, checkpoint_every: int,
                 sync_every_step: bool) -> TrainConfig:
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
    config.debug.sync_every_step = sync_every_step
    config.eval.suite = ""  # the step and its checkpoints, not the benchmark decoding, are measured here
    return TrainConfig.from_config(config)


class StepTimer:
    """loop.train's on_step hook: each step's queued time, and its done time from a watcher thread."""

    def __init__(self):
        self.queued, self.done = {}, {}
        self._steps: queue.Queue = queue.Queue()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def __call__(self, step: int, metrics) -> None:
        self.queued[step] = time.perf_counter()
        self._steps.put((step, metrics))

    def _watch(self) -> None:
        while (item := self._steps.get()) is not None:
            step, metrics = item
            jax.block_until_ready(metrics)
            self.done[step] = time.perf_counter()

    def close(self) -> None:
        self._steps.put(None)
        self._watcher.join()

    def host_gap(self, skip_after: set[int]) -> dict[str, float]:
        """Device idle time between consecutive steps (see the module docstring)."""
        steps = sorted(self.done)[1:]  # the first step compiles
        gaps = [max(0.0, self.queued[step] - self.done[step - 1]) for step in steps[1:]
                if step - 1 not in skip_after]
        span = self.done[steps[-1]] - self.done[steps[0]]
        return {"host_gap_fraction": sum(gaps) / span, "host_gap_ms_mean": 1e3 * statistics.mean(gaps),
                "host_gap_ms_max": 1e3 * max(gaps), "measured_steps": len(gaps)}


def measure(run: TrainConfig, mesh) -> dict[str, float]:
    """Mean of the loop's per-window rates (windows are equal, the first step is excluded) and the host gap."""
    tokenizer = Tokenizer.load(run.data.tokenizer)
    timer = StepTimer()
    try:
        loop.train(run, mesh, tokenizer, on_step=timer)
    finally:
        timer.close()
    records = [json.loads(line) for line in (pathlib.Path(run.workdir) / "metrics.jsonl").open()]
    windows = [record for record in records if "tokens_per_second" in record]
    names = ("seconds_per_step", "tokens_per_second", "data_wait_fraction", "checkpoint_wait_fraction", "mfu")
    rates = {name: statistics.mean(w[name] for w in windows) for name in names if name in windows[0]}
    checkpoints = set(range(run.checkpoint.every_steps, run.stages[0].num_steps + 1, run.checkpoint.every_steps))
    return {**rates, **timer.host_gap(skip_after=checkpoints)}


VARIANTS = {  # name: (checkpoint every --checkpoint_every steps, debug.sync_every_step)
    "checkpointing": (True, False),
    "sync_every_step": (True, True),
    "end_only": (False, False),
}


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
    sys.setswitchinterval(5e-4)  # the watcher thread takes its timestamp within ~0.5 ms of a step ending

    demo = load_config(str(REPO / "configs" / "demo.py"))
    demo.workdir = str(args.workdir)
    demo = TrainConfig.from_config(demo)
    prepare_demo(demo)
    mesh = parallel.mesh_from_config(demo.mesh)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch {args.batch_size} x "
          f"{args.seq_len} tokens; {args.steps} steps, checkpoint every {args.checkpoint_every}, log every "
          f"{args.log_every}", flush=True)
    rows = []
    for model_spec in args.models.split(","):
        results = {}
        for variant, (checkpointing, sync_every_step) in VARIANTS.items():
            workdir = args.workdir / "runs" / f"{pathlib.Path(model_spec).stem}_{variant}"
            shutil.rmtree(workdir, ignore_errors=True)
            every = args.checkpoint_every if checkpointing else args.steps
            results[variant] = measure(bench_config(args, model_spec, workdir, every, sync_every_step), mesh)
            print(json.dumps({"benchmark": "train_step", "model": model_spec, "variant": variant,
                              "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
                              "checkpoint_every": every, "log_every": args.log_every, "jax": jax.__version__,
                              **results[variant]}), flush=True)
        cost = 1 - results["checkpointing"]["tokens_per_second"] / results["end_only"]["tokens_per_second"]
        rows += [(pathlib.Path(model_spec).stem, variant, result, cost if variant == "checkpointing" else None)
                 for variant, result in results.items()]
    print("\n| model | loop | step s | tokens/s | MFU | data wait | ckpt block | ckpt cost | host gap | "
          "gap ms mean / max |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, variant, result, cost in rows:
        mfu = f"{result['mfu']:.1%}" if "mfu" in result else "-"
        print(f"| {model} | {variant} | {result['seconds_per_step']:.3f} | {result['tokens_per_second']:.0f} | {mfu} | "
              f"{result['data_wait_fraction']:.1%} | {result['checkpoint_wait_fraction']:.1%} | "
              f"{'-' if cost is None else f'{cost:.1%}'} | {result['host_gap_fraction']:.2%} | "
              f"{result['host_gap_ms_mean']:.1f} / {result['host_gap_ms_max']:.1f} |")


if __name__ == "__main__":
    main()
