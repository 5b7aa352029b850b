"""`orca-jax evaluate`: zero-shot accuracy of saved parameters on BBH, AGIEval or the demo's questions.

    orca-jax evaluate --suite orca --params /ckpt/orca --benchmarks_dir /data/benchmarks \\
        --config configs/orca_13b.py --output orca.jsonl --report orca.report.json
    orca-jax evaluate --suite orca --benchmarks_dir /data/benchmarks --list
    orca-jax evaluate --rescore orca.jsonl --output rescored.jsonl
    orca-jax evaluate --suite truthfulqa_mc --method loglikelihood --params /ckpt/orca --benchmarks_dir /data/benchmarks

Suites: `orca` (Orca's protocol: BBH's 23 multiple-choice tasks and AGIEval's 8 English ones),
`bbh23`, `agieval_en`, `bbh` (all 27 files), `agieval`, `demo`, `truthfulqa_mc`. Zero-shot, greedy, an empty system
message unless `--system_message` names one (text, `empty`, or 1-16 for the paper's Table 2);
`--prompt_style chat` (default) puts each benchmark's own prompt inside the model's chat template,
`raw` gives it alone. docs/evaluation.md states every choice.

`--method generate` (default) decodes a response and reads its answer; `--method loglikelihood` scores
each option's log-likelihood after the same prompt and picks the likeliest (`--normalize` tokens or
bytes divides by the option's length; eval/loglikelihood.py), and for `truthfulqa_mc` reports the
authors' MC1 and MC2 with their own few-shot prompt (eval/truthfulqa.py).

`--params` is a params directory (`orca-jax convert-weights` output, with model_config.json) or a
training checkpoint's step directory (its model config is read from the checkpoint's meta item);
`--config.model.<field>=v` overrides a field of it. The tokenizer, template and mesh come from the
config. Parameters are restored in the compute dtype unless `--params_dtype` says otherwise.

Prints the per-task table, then one JSON line: the report (per task n, accuracy, 95% interval; means
over tasks and over examples; full provenance). `--output` writes every scored example as JSONL,
`--report` the report as JSON. `--rescore` of rows that carry a person's verdict in `label` also
prints the scorer's agreement with it. Finished tasks are journaled (`--journal`, default `<output>.journal`):
rerunning an interrupted evaluation continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import subprocess
import sys

import jax

from orca_jax import parallel, paths
from orca_jax.config import default_config, parse_config_args
from orca_jax.data.jsonl import RecordFormatError, read_objects
from orca_jax.data.templates import get_template
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval import benchmarks, generate, loading, loglikelihood, truthfulqa
from orca_jax.eval.prompts import LONG_PROMPT_POLICIES, PROMPT_STYLES, PromptBuilder, resolve_system_message
from orca_jax.eval.report import format_report
from orca_jax.eval.runner import Journal, evaluate_examples, score_row
from orca_jax.model import params_io
from orca_jax.model.config import ModelConfig
from orca_jax.train.config import TrainConfig

RESPONSE_FIELDS = ("benchmark", "task", "index", "options", "gold", "response")
METHODS = ("generate", "loglikelihood")
# Log-likelihood prompts leave this many tokens of the window to the option they are scored with; a
# pair still too long loses the start of its prompt (loglikelihood.py).
OPTION_ROOM = 64


def parse_args(argv: list[str]):
    """(config, model overrides, flags): `--config`/`--config.x=y` go to the config loader."""
    config, rest = parse_config_args(argv, default=default_config("demo"))
    model_fields = loading.model_fields_overridden(argv)
    parser = argparse.ArgumentParser(prog="orca-jax evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(benchmarks.SUITES), default="demo")
    parser.add_argument("--params", help="params directory or training checkpoint step directory")
    parser.add_argument("--list", action="store_true", help="print the suite's tasks and example counts, then exit")
    parser.add_argument("--rescore", help="re-score a saved responses JSONL without a model")
    parser.add_argument("--tasks", nargs="+", help="only these tasks of the suite (file names without extension)")
    parser.add_argument("--limit", type=int, help="first N examples of each task")
    parser.add_argument("--benchmarks_dir", help="directory holding bbh/ and agieval/")
    parser.add_argument("--eval_path", help="demo questions; default the config's eval.eval_path")
    parser.add_argument("--system_message", help="text, 'empty', or 1-16 (the paper's Table 2); "
                        "default empty (the demo: each question's own)")
    parser.add_argument("--prompt_style", choices=PROMPT_STYLES, default="chat")
    parser.add_argument("--max_new_tokens", type=int, help="default: min(512, max_seq_len / 4); the demo: "
                        "the config's eval.max_new_tokens")
    parser.add_argument("--long_prompts", choices=LONG_PROMPT_POLICIES, default="truncate",
                        help="a prompt longer than the window: cut its passage from the left, or skip it")
    parser.add_argument("--method", choices=METHODS, default="generate",
                        help="generate a response and read its answer, or pick the option of highest log-likelihood")
    parser.add_argument("--normalize", choices=loglikelihood.NORMALIZATIONS, default="none",
                        help="loglikelihood: divide each option's log-likelihood by its tokens or UTF-8 bytes")
    parser.add_argument("--row_length", type=int, help="loglikelihood: slots per packed row; default max_seq_len")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="prompts decoded together (generate), packed rows per forward pass (loglikelihood)")
    parser.add_argument("--params_dtype", default="compute", help=loading.PARAMS_DTYPE_CHOICES)
    parser.add_argument("--mesh", help="data,fsdp,tensor sizes for decoding (-1: the rest); default the config's mesh")
    parser.add_argument("--output", help="write every scored example to this JSONL file")
    parser.add_argument("--report", help="write the report (with provenance) to this JSON file")
    parser.add_argument("--journal", help="finished-task journal; default <output>.journal when --output is set")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    flags = parser.parse_args(rest)
    if not (flags.list or flags.rescore or flags.params):
        parser.error("--params is required (or --list, or --rescore)")
    return TrainConfig.from_config(config, check_training=False), model_fields, flags


def code_revision() -> str:
    """The git commit of the checkout this package runs from ('unknown' outside a checkout)."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision + ("+dirty" if dirty else "")


def load_examples(run: TrainConfig, flags) -> list[benchmarks.Example]:
    demo_path = flags.eval_path
    if demo_path is None and run.eval.eval_path:
        demo_path = run.eval.eval_path
    return benchmarks.load_suite(flags.suite, benchmarks_dir=flags.benchmarks_dir, demo_path=demo_path,
                                 tasks=flags.tasks, limit=flags.limit)


def list_suite(examples: list[benchmarks.Example], suite: str) -> str:
    """Each benchmark's task and example counts, then one row per task."""
    counts: dict[str, list] = {}
    for example in examples:
        counts.setdefault(example.task, [example.benchmark, 0])[1] += 1
    per_benchmark: dict[str, list[int]] = {}
    for benchmark, n in counts.values():
        totals = per_benchmark.setdefault(benchmark, [0, 0])
        totals[0], totals[1] = totals[0] + 1, totals[1] + n
    lines = [f"suite {suite}: " + "; ".join(f"{name} {tasks} tasks, {n} examples"
                                             for name, (tasks, n) in per_benchmark.items())]
    width = max(len(task) for task in counts)
    lines.append(f"{'task':<{width}}  benchmark      n")
    lines += [f"{task:<{width}}  {benchmark:<9}  {n:>5}" for task, (benchmark, n) in counts.items()]
    return "\n".join(lines)


def evaluate(run: TrainConfig, model_fields: list[str], flags) -> tuple[dict, list[dict]]:
    """(report, scored rows) of a model run."""
    loading.require_params_dir(flags.params)
    model_config = loading.model_config_for(flags.params, run.model, model_fields)
    tokenizer = Tokenizer.load(run.data.tokenizer)
    tokenizer.check_fits(model_config.vocab_size)
    examples = load_examples(run, flags)
    if flags.max_new_tokens is not None:
        max_new_tokens = flags.max_new_tokens
    elif flags.suite == "demo":
        max_new_tokens = run.eval.max_new_tokens
    else:
        max_new_tokens = loading.default_max_new_tokens(model_config)
    loading.check_max_new_tokens(max_new_tokens, model_config)
    system_message = resolve_system_message(flags.system_message)
    if system_message is None and flags.suite != "demo":
        system_message = ""  # Orca's protocol: an empty system message
    template = get_template(run.data.template)
    builder = PromptBuilder(tokenizer, template, style=flags.prompt_style, system_message=system_message,
                            max_tokens=model_config.max_seq_len - max_new_tokens, long_prompts=flags.long_prompts)
    dtype = loading.params_dtype(model_config, flags.params_dtype)
    mesh = loading.parse_mesh(flags.mesh, run.mesh)
    if flags.method == "loglikelihood":
        return evaluate_loglikelihood(run, flags, model_config, tokenizer, examples, dtype, mesh)
    provenance = {
        "suite": flags.suite, "method": flags.method,
        "tasks": list(dict.fromkeys(example.task for example in examples)),
        "limit_per_task": flags.limit, "prompt_style": flags.prompt_style,
        "system_message": builder.system_message, "template": template.name if flags.prompt_style == "chat" else None,
        "decode": {"method": "greedy", "batch_size": flags.batch_size}, "max_new_tokens": max_new_tokens,
        "long_prompts": flags.long_prompts, "model_config": dataclasses.asdict(model_config),
        "params": str(flags.params), "params_dtype": dtype, "tokenizer": str(run.data.tokenizer),
        "mesh": dict(zip(parallel.MESH_AXES, mesh.devices.shape)),
    }
    journal_path = flags.journal or (f"{flags.output}.journal" if flags.output else None)
    journal = Journal(journal_path, provenance) if journal_path else None
    params = loading.restore_for_decoding(flags.params, model_config, mesh, dtype)
    rows = evaluate_examples(params, model_config, tokenizer, builder, examples, max_new_tokens=max_new_tokens,
                             batch_size=flags.batch_size, mesh=mesh, journal=journal,
                             progress=not flags.no_progress)
    return finish(rows, provenance)


def finish(rows: list[dict], provenance: dict) -> tuple[dict, list[dict]]:
    provenance.update(code_revision=code_revision(), jax_version=jax.__version__,
                      devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                      finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return truthfulqa.build_report(rows, provenance), rows


def evaluate_loglikelihood(run: TrainConfig, flags, model_config: ModelConfig, tokenizer: Tokenizer,
                           examples: list[benchmarks.Example], dtype: str, mesh) -> tuple[dict, list[dict]]:
    """(report, rows) by log-likelihood: BBH/AGIEval options after the benchmark's prompt, TruthfulQA's
    MC1/MC2 after its authors' prompt. Parameters are laid out by the training rules (a forward pass
    over full rows is compute-bound, like a train step)."""
    row_length = flags.row_length or model_config.max_seq_len
    if not 1 < row_length <= model_config.max_seq_len:
        raise UserError(f"--row_length {row_length} must be in 2..{model_config.max_seq_len} (max_seq_len)")
    system_message = resolve_system_message(flags.system_message)
    if system_message is None and flags.suite != "demo":
        system_message = ""
    template = get_template(run.data.template)
    builder = PromptBuilder(tokenizer, template, style=flags.prompt_style, system_message=system_message,
                            max_tokens=max(2, row_length - OPTION_ROOM), long_prompts=flags.long_prompts)
    rules = parallel.LOGICAL_AXIS_RULES
    scoring = {"row_length": row_length, "batch_rows": flags.batch_size, "mesh": mesh, "axis_rules": rules,
               "params_dtype": dtype}
    provenance = {
        "suite": flags.suite, "method": flags.method,
        "tasks": list(dict.fromkeys(example.task for example in examples)), "limit_per_task": flags.limit,
        "prompt_style": flags.prompt_style, "system_message": builder.system_message,
        "template": template.name if flags.prompt_style == "chat" else None,
        "decode": {"method": "loglikelihood", "normalize": flags.normalize, "row_length": row_length,
                   "batch_rows": flags.batch_size},
        "long_prompts": flags.long_prompts, "model_config": dataclasses.asdict(model_config),
        "params": str(flags.params), "params_dtype": dtype, "tokenizer": str(run.data.tokenizer),
        "mesh": dict(zip(parallel.MESH_AXES, mesh.devices.shape)),
    }
    if any(example.benchmark == "truthfulqa" for example in examples):
        provenance["truthfulqa_prompt"] = "the authors' QA primer (six-shot), raw; MC1 strict, MC2 normalised mass"
    journal_path = flags.journal or (f"{flags.output}.journal" if flags.output else None)
    journal = Journal(journal_path, provenance) if journal_path else None
    params = params_io.restore_params(flags.params, generate.abstract_decode_params(
        model_config, mesh, dtype=dtype, axis_rules=rules))
    choice_examples = [example for example in examples if example.benchmark != "truthfulqa"]
    rows = loglikelihood.evaluate_choices(params, model_config, tokenizer, builder, choice_examples,
                                          normalize=flags.normalize, journal=journal,
                                          progress=not flags.no_progress, **scoring)
    wanted = {example.index for example in examples if example.benchmark == "truthfulqa"}
    if wanted:
        path = paths.path(flags.benchmarks_dir) / "truthfulqa" / truthfulqa.FILE_NAME
        questions = [q for q in truthfulqa.read_mc_task(path) if q.index in wanted]
        rows += truthfulqa.evaluate_mc(params, model_config, tokenizer, questions, **scoring)
    return finish(rows, provenance)


def read_responses(path: str | pathlib.Path) -> list[dict]:
    """A responses JSONL: each row needs RESPONSE_FIELDS ('options' a list of strings); others are kept."""
    path = paths.path(path)
    if not path.is_file():
        raise UserError(f"responses file {path} does not exist")
    rows = []
    for line_number, row in read_objects(path):
        for field in RESPONSE_FIELDS:
            if field not in row:
                raise RecordFormatError(f"{path}: line {line_number}: field {field!r} is missing")
        for field in ("benchmark", "task", "gold", "response"):
            if not isinstance(row[field], str):
                raise RecordFormatError(f"{path}: line {line_number}: field {field!r} is not a string")
        if not isinstance(row["options"], list) or not all(isinstance(o, str) for o in row["options"]):
            raise RecordFormatError(f"{path}: line {line_number}: field 'options' is not a list of strings")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no responses")
    return rows


def rescore(flags) -> tuple[dict, list[dict]]:
    rows = [score_row(row) for row in read_responses(flags.rescore)]
    for row in rows:
        if row.get("skipped"):
            row["correct"] = False  # a skipped prompt has no response to judge
    provenance = {"rescored": str(flags.rescore), "code_revision": code_revision()}
    report = truthfulqa.build_report(rows, provenance)
    labelled = [row for row in rows if isinstance(row.get("label"), bool)]
    if labelled:
        # Hand-labelled responses (a person's verdict in `label`): how often the scorer agrees.
        report["agreement"] = {
            "rows": len(labelled),
            "agree": sum(row["correct"] == row["label"] for row in labelled) / len(labelled),
            "false_positives": sum(row["correct"] and not row["label"] for row in labelled),
            "false_negatives": sum(row["label"] and not row["correct"] for row in labelled),
        }
    return report, rows


def write_jsonl(path: str | pathlib.Path, rows: list[dict]) -> None:
    """Write whole or not at all (paths.write_atomic): a kill never leaves a half-written results file."""
    paths.write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def check_outputs_writable(flags) -> None:
    """--output, --report and --journal in a bucket: probe before evaluating, not after."""
    for flag in ("output", "report", "journal"):
        value = getattr(flags, flag, None)
        if value and paths.is_url(value):
            paths.check_writable(paths.path(value).parent, f"--{flag}'s directory")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run, model_fields, flags = parse_args(argv)
        check_outputs_writable(flags)
        if flags.list:
            print(list_suite(load_examples(run, flags), flags.suite))
            return 0
        report, rows = rescore(flags) if flags.rescore else evaluate(run, model_fields, flags)
    except UserError as error:
        print(f"orca-jax evaluate: {error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(format_report(report))
        if "agreement" in report:
            agreement = report["agreement"]
            print(f"agreement with the labels: {agreement['agree']:.1%} of {agreement['rows']} rows "
                  f"({agreement['false_positives']} false positives, {agreement['false_negatives']} false negatives)")
        print(json.dumps(report))
        if flags.output:
            write_jsonl(flags.output, rows)
        if flags.report:
            paths.path(flags.report).write_text(json.dumps(report, indent=2) + "\n")
        journal = flags.journal or (f"{flags.output}.journal" if flags.output else None)
        if journal and not flags.rescore and flags.output:
            paths.path(journal).unlink(missing_ok=True)  # the output now holds every row
    return 0
