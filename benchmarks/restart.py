"""Restart cost: seconds from `orca-jax train` starting to its first finished step after a resume,
with a cold (empty) and a warm persistent compilation cache (TrainConfig.compilation_cache).

    python benchmarks/restart.py [--runs 3] [--workdir /tmp/restart-bench] [--config demo] [--out r.json]

A priming run of the config (the demo by default: it prepares its own data) trains until its first
checkpoint (`checkpoint.every_steps=2`) and is killed. Each measured run copies that workdir (data,
stage lengths, checkpoint; not the cache), resumes from the checkpoint and is killed as soon as
metrics.jsonl shows the next step. Cold runs get an empty cache directory each; warm runs share one
that a first, unmeasured run filled. Timing starts before the process is spawned, so it includes the
interpreter, imports, planning, compilation, the restore and one step. Prints one JSON object and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time

import jax

CHECKPOINT_EVERY = 2


def first_loss_step(workdir: pathlib.Path, after: int) -> int | None:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "loss" in record and record["step"] > after:
            return record["step"]
    return None


CONFIG_WRAPPER = """
from orca_jax.config import load_config


def get_config():
    config = load_config({config!r})
    config.compilation_cache = True
    config.compilation_cache_dir = {cache!r}
    return config
"""


def run_until_step(config: str, workdir: pathlib.Path, cache: pathlib.Path, after: int, timeout_s: float) -> float:
    """Start training in `workdir`; kill it once a step past `after` is logged; seconds from spawn to then."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    # The cache fields are TrainConfig defaults that a config file need not list, and an override cannot
    # add a field, so a wrapper config sets them.
    wrapper = workdir.with_name(workdir.name + "-config.py")
    wrapper.write_text(CONFIG_WRAPPER.format(config=config, cache=str(cache)))
    command = [sys.executable, "-m", "orca_jax.cli", "train", "--config", str(wrapper), f"--config.workdir={workdir}",
               f"--config.checkpoint.every_steps={CHECKPOINT_EVERY}", "--config.log_every_steps=1"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while first_loss_step(workdir, after) is None:
            if process.poll() is not None:
                raise SystemExit(f"training exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"no step after {after} within {timeout_s} s")
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


def prime(config: str, root: pathlib.Path, timeout_s: float) -> pathlib.Path:
    """A workdir holding the data and one checkpoint at step CHECKPOINT_EVERY."""
    workdir = root / "primed"
    if not (workdir / "checkpoints" / str(CHECKPOINT_EVERY)).is_dir():
        shutil.rmtree(workdir, ignore_errors=True)
        run_until_step(config, workdir, root / "prime-cache", after=CHECKPOINT_EVERY, timeout_s=timeout_s)
    for path in (workdir / "checkpoints").iterdir():  # only the step every run resumes from
        if path.name != str(CHECKPOINT_EVERY):
            shutil.rmtree(path)
    (workdir / "metrics.jsonl").unlink(missing_ok=True)
    return workdir


def fresh_copy(primed: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(primed, target, ignore=shutil.ignore_patterns("tensorboard", "compilation_cache"))
    return target


def summary(seconds: list[float]) -> dict:
    return {"runs_s": [round(s, 2) for s in seconds], "median_s": round(statistics.median(seconds), 2),
            "min_s": round(min(seconds), 2), "max_s": round(max(seconds), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/orca-restart-bench")
    parser.add_argument("--timeout_s", type=float, default=900)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    primed = prime(args.config, root, args.timeout_s)

    cold = []
    for index in range(args.runs):
        workdir = fresh_copy(primed, root / f"cold{index}")
        cold.append(run_until_step(args.config, workdir, workdir / "empty-cache", CHECKPOINT_EVERY, args.timeout_s))
    warm_cache = root / "warm-cache"
    shutil.rmtree(warm_cache, ignore_errors=True)
    run_until_step(args.config, fresh_copy(primed, root / "warmup"), warm_cache, CHECKPOINT_EVERY, args.timeout_s)
    warm = []
    for index in range(args.runs):
        workdir = fresh_copy(primed, root / f"warm{index}")
        warm.append(run_until_step(args.config, workdir, warm_cache, CHECKPOINT_EVERY, args.timeout_s))

    result = {"benchmark": "restart", "config": args.config, "jax": jax.__version__,
              "measure": "spawn of `orca-jax train` to its first finished step after resuming",
              "cold": summary(cold), "warm": summary(warm),
              "cache_entries": len([p for p in warm_cache.iterdir() if not p.name.endswith("-atime")]),
              "speedup_median": round(statistics.median(cold) / statistics.median(warm), 2)}
    print(json.dumps(result))
    print("\n| cache | runs | median s | min s | max s |\n| --- | --- | --- | --- | --- |")
    for name in ("cold", "warm"):
        row = result[name]
        print(f"| {name} | {len(row['runs_s'])} | {row['median_s']} | {row['min_s']} | {row['max_s']} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
