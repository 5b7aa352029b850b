"""`orca-jax evaluate`: zero-shot exact-match accuracy of saved parameters, per task.

    orca-jax evaluate --config configs/demo.py --params runs/demo/checkpoints/600 --benchmark demo
    orca-jax evaluate --config configs/orca_13b.py --params /ckpt/orca --benchmark bbh \\
        --benchmarks_dir /data/benchmarks --tasks navigate snarks --limit 50

`--params` is a params directory: what `orca-jax convert-weights` (params_io.save_params) writes, or a
training checkpoint's step directory, which holds its `params` item the same way. The model shape,
tokenizer, prompt template and mesh come from the config. Prints a per-task table, then one JSON line
with the scores; `--output` also saves every example's response and extracted prediction.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

from orca_jax import parallel
from orca_jax.config import parse_config_args
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.eval import benchmarks
from orca_jax.eval.exact_match import EvalExample, evaluate_examples, read_demo_eval
from orca_jax.model import params_io
from orca_jax.model.config import ModelConfig

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"
# Room for a step-by-step explanation before the final answer line.
BENCHMARK_MAX_NEW_TOKENS = 512


def parse_args(argv: list[str]):
    """(config, flags): `--config`/`--config.x=y` go to the config loader, the rest to argparse."""
    config, rest = parse_config_args(argv, default=str(DEFAULT_CONFIG))
    parser = argparse.ArgumentParser(prog="orca-jax evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, help="params directory (save_params output or checkpoint step)")
    parser.add_argument("--benchmark", choices=["demo", *sorted(benchmarks.READERS)], default="demo")
    parser.add_argument("--tasks", nargs="+", help="benchmark tasks (file names without extension); default all")
    parser.add_argument("--limit", type=int, help="first N examples per task (demo: of the whole file)")
    parser.add_argument("--benchmarks_dir", help="directory holding bbh/ and agieval/ (needed for those)")
    parser.add_argument("--eval_path", help="demo questions; default <config.demo.data_dir>/eval.jsonl")
    parser.add_argument("--max_new_tokens", type=int,
                        help=f"default: config.demo.max_new_tokens for demo, {BENCHMARK_MAX_NEW_TOKENS} otherwise")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts decoded together")
    parser.add_argument("--output", help="write the full result, with every response, to this JSON file")
    return config, parser.parse_args(rest)


def load_examples(config, flags) -> tuple[list[EvalExample], int]:
    """The examples to score and the generation budget for them."""
    if flags.benchmark == "demo":
        if flags.tasks:
            raise ValueError("--tasks applies to bbh and agieval; the demo is scored on all its tasks")
        if flags.eval_path is None and "demo" not in config:
            raise ValueError("--eval_path is required: the config has no demo block to find eval.jsonl in")
        eval_path = flags.eval_path or pathlib.Path(config.demo.data_dir) / "eval.jsonl"
        max_new_tokens = flags.max_new_tokens or (config.demo.max_new_tokens if "demo" in config
                                                  else BENCHMARK_MAX_NEW_TOKENS)
        return read_demo_eval(eval_path, flags.limit), max_new_tokens
    if flags.benchmarks_dir is None:
        raise ValueError(f"--benchmarks_dir is required for --benchmark {flags.benchmark}")
    examples = benchmarks.read_benchmark(flags.benchmark, flags.benchmarks_dir, flags.tasks, flags.limit)
    return examples, flags.max_new_tokens or BENCHMARK_MAX_NEW_TOKENS


def format_table(result: dict) -> str:
    """Task | examples | accuracy, one row per task, then the total."""
    rows = [(task, result["per_task_n"][task], accuracy) for task, accuracy in result["per_task"].items()]
    rows.append(("all", result["n"], result["accuracy"]))
    width = max(len(task) for task, _, _ in rows)
    lines = [f"{'task':<{width}}  {'n':>5}  accuracy"]
    lines += [f"{task:<{width}}  {count:>5}  {accuracy:8.1%}" for task, count, accuracy in rows]
    return "\n".join(lines)


def evaluate(config, flags) -> dict:
    model_config = ModelConfig.from_config(config.model)
    tokenizer = Tokenizer.load(config.data.tokenizer)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer {config.data.tokenizer} has {tokenizer.vocab_size} ids but "
                         f"model.vocab_size is {model_config.vocab_size}")
    examples, max_new_tokens = load_examples(config, flags)
    mesh = parallel.mesh_from_config(config.mesh)
    params = params_io.restore_params(flags.params, params_io.abstract_params(model_config, mesh))
    result = evaluate_examples(params, model_config, tokenizer, config.data.template, examples,
                               max_new_tokens=max_new_tokens, batch_size=flags.batch_size, mesh=mesh)
    return {"benchmark": flags.benchmark, "params": str(flags.params), **result}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, flags = parse_args(argv)
        result = evaluate(config, flags)
    except (ValueError, FileNotFoundError) as error:
        # Every input problem (config, params, tokenizer, benchmark rows) raises one of these, named.
        print(f"orca-jax evaluate: {error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(format_table(result))
        print(json.dumps({key: value for key, value in result.items() if key != "examples"}))
        if flags.output:
            pathlib.Path(flags.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0
