"""`orca-jax construct sample|query`: make FLAN-5M / FLAN-1M and have a teacher answer it.

    orca-jax construct sample --out DIR [--config configs/construct.py] [--config.a.b=v ...]
    orca-jax construct query --input DIR/flan5m.jsonl --out answers.jsonl [--failures F]
                             [--retry-failed] [--no-progress] [--config ...]
    orca-jax construct query --batch prepare --input Q --out answers.jsonl [--batch_input F] [--retry-failed]
    orca-jax construct query --batch ingest --input Q --out answers.jsonl --batch_output F

`query` appends to --out and resumes where a previous run stopped; its output is what
`orca-jax prepare-data` reads. With `--batch prepare` it writes the OpenAI Batch API input for the
queries not yet answered (default <out stem>.batch_input.jsonl; over 50,000 requests it is split into
numbered files); upload it, and when the batch is done `--batch ingest --batch_output F` appends the
output file's answers and errors to the same journals (each id once; rerunning an ingest is safe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys

from orca_jax.config import ConfigError, parse_config_args
from orca_jax.data.construct import flan, query, sampling
from orca_jax.data.construct.teacher import TeacherConfig
from orca_jax.errors import UserError

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[3] / "configs" / "construct.py"


def _sample(config, args) -> int:
    specs = [sampling.CollectionSpec.from_config(name, config.collections[name]) for name in config.collections]
    report = sampling.write_sample(
        specs,
        flan.FlanColumns(**config.columns),
        config.zero_shot_template_types,
        config.multiple_choice_template_types,
        config.flan1m_size,
        config.seed,
        pathlib.Path(args.out),
    )
    print(json.dumps(report, indent=2))
    return 0


def _query(config, args) -> int:
    teacher = TeacherConfig.from_config(config.teacher)
    out = pathlib.Path(args.out)
    failures = pathlib.Path(args.failures) if args.failures else out.with_name(out.stem + ".failed.jsonl")
    if args.batch == "prepare":
        batch_input = pathlib.Path(args.batch_input or out.with_name(out.stem + ".batch_input.jsonl"))
        print(json.dumps(query.prepare_batch(pathlib.Path(args.input), out, failures, batch_input, teacher,
                                             retry_failed=args.retry_failed)))
        return 0
    # The key is only needed to scrub it from what is recorded when ingesting; not to have one is fine there.
    api_key = os.environ.get(teacher.api_key_env, "") if teacher.api_key_env else ""
    if args.batch == "ingest":
        if not args.batch_output:
            raise UserError("--batch ingest needs --batch_output (the Batch API's output file)")
        print(json.dumps(query.ingest_batch(pathlib.Path(args.input), out, failures, pathlib.Path(args.batch_output),
                                            teacher, api_key)))
        return 0
    if teacher.api_key_env and teacher.api_key_env not in os.environ:
        print(f"construct query: environment variable {teacher.api_key_env} (teacher.api_key_env) is not set",
              file=sys.stderr)
        return 2
    report = query.run_queries(
        pathlib.Path(args.input), out, failures, teacher, api_key,
        retry_failed=args.retry_failed, show_progress=not args.no_progress,
    )
    print(json.dumps(dataclasses.asdict(report)))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="orca-jax construct", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="sample FLAN-v2 into flan5m.jsonl and flan1m.jsonl")
    sample.add_argument("--out", required=True, help="output directory")
    ask = commands.add_parser("query", help="ask the teacher every sampled query not yet answered")
    ask.add_argument("--input", required=True, help="a flan5m.jsonl / flan1m.jsonl written by `sample`")
    ask.add_argument("--out", required=True, help="answers, appended as OpenOrca JSONL records")
    ask.add_argument("--failures", help="failed queries (default: <out stem>.failed.jsonl beside --out)")
    ask.add_argument("--retry-failed", action="store_true", help="ask previously failed queries again")
    ask.add_argument("--no-progress", action="store_true", help="no progress bar")
    ask.add_argument("--batch", choices=("prepare", "ingest"),
                     help="use the Batch API: write its input file, or ingest its output file")
    ask.add_argument("--batch_input", "--batch-input",
                     help="with --batch prepare: where to write (default <out stem>.batch_input.jsonl)")
    ask.add_argument("--batch_output", "--batch-output", help="with --batch ingest: the Batch API's output file")
    try:
        config, rest = parse_config_args(argv, default=str(DEFAULT_CONFIG))
        args = parser.parse_args(rest)
        return _sample(config, args) if args.command == "sample" else _query(config, args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"orca-jax construct: {err}", file=sys.stderr)
        return 2
