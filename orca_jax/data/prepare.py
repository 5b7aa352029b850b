"""`orca-jax prepare-data`: OpenOrca-style parquet/JSONL files -> validated TFDS ArrayRecord shards.

    orca-jax prepare-data --input 1M-GPT4-Augmented.parquet --output data/orca_gpt4 \\
        --tokenizer llama/tokenizer.model --seq_len 2048 --validation 0.01 --num_shards 64

The input is streamed once: rows are read, validated (bad-row policy), measured with the tokenizer and
prompt template the training run will use (too-long examples are bad rows), and written to a train
and a held-out validation split. The report (records in, written per split, skipped per reason,
prompt/response tokens and FLAN sub-collections per split) is printed and saved as
`prepare_report.json` inside the dataset directory. Bad data ends the command with a one-line error
naming file, row and field, and no dataset directory. `--output` may be gs://bucket/...: the shards are
built locally and copied up (data/shards.py); the bucket is probed for writing before any reading.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence

import tensorflow_datasets as tfds
import tqdm

from orca_jax import paths
from orca_jax.data import records as records_lib
from orca_jax.data import shards, templates
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError

REPORT_NAME = "prepare_report.json"


@dataclasses.dataclass
class SplitTally:
    """What went into one split."""

    records: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    subcollections: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def parse_column_map(text: str) -> dict[str, str]:
    """'id=uid,question=prompt' -> {'id': 'uid', 'question': 'prompt'} (our field = the file's column)."""
    column_map = {}
    for item in filter(None, text.split(",")):
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise argparse.ArgumentTypeError(f"column map item {item!r} is not of the form field=column")
        column_map[field.strip()] = column.strip()
    return column_map


def parse_validation_size(text: str) -> float | int:
    """'0.01' -> a fraction of the records, '500' -> a record count."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fraction nor a count") from None


def token_counter(tokenizer: Tokenizer, template: str) -> records_lib.TokenCounter:
    """(prompt tokens, response tokens) per record exactly as training will encode it."""
    def count(batch: Sequence[records_lib.Record]) -> list[tuple[int, int]]:
        encoded = templates.encode_examples(tokenizer, template, batch)
        return [(len(tokens) - int(mask.sum()), int(mask.sum())) for tokens, mask in encoded]
    return count


def prepare(inputs: Sequence[str], output: str | pathlib.Path, *, tokenizer: Tokenizer, template: str = "orca",
            seq_len: int = 2048, validation: float | int = 0.01, num_shards: int = 1, bad_rows: str = "error",
            seed: int = 0, column_map: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Build the dataset in `output` and its report (saved inside it); returns the report.

    `inputs` are read in order; `tokenizer` and `template` are those the training run will use;
    `seq_len` is the packed row length, and an example that does not fit one row is a bad row;
    `validation` is the held-out fraction (float) or record count (int), 0 for none; `num_shards` is
    per split, a multiple of the number of hosts reading the data; `bad_rows` is 'error' or 'skip';
    `seed` chooses the held-out records; `column_map` maps our field names to the files' columns.
    """
    templates.get_template(template)  # an unknown template fails before any reading
    if seq_len < 1:
        raise records_lib.DataError(f"seq_len {seq_len} must be >= 1")
    if paths.is_url(output):  # a missing bucket fails now, not after the whole input was read
        paths.check_writable(paths.path(output).parent, "the output's parent")
    settings = {"inputs": [str(path) for path in inputs], "output": str(output), "tokenizer": str(tokenizer.path),
                "template": template, "seq_len": seq_len, "validation": validation, "num_shards": num_shards,
                "bad_rows": bad_rows, "seed": seed, "column_map": dict(column_map or {})}
    stats = records_lib.ValidationStats()
    valid = records_lib.validate_rows(
        records_lib.read_files(inputs, column_map), policy=bad_rows, stats=stats,
        count_tokens=token_counter(tokenizer, template), seq_len=seq_len)
    # Token counts wait here until the record is written to its split: at once for train, after the
    # whole input for the (small) held-out set.
    pending_tokens: dict[str, tuple[int, int]] = {}
    tallies: dict[str, SplitTally] = collections.defaultdict(SplitTally)

    def records_of(valid_records: Iterable[records_lib.ValidRecord]) -> Iterator[records_lib.Record]:
        for valid_record in valid_records:
            pending_tokens[valid_record.record["id"]] = (valid_record.prompt_tokens, valid_record.response_tokens)
            yield valid_record.record

    def on_write(split: str, record: records_lib.Record) -> None:
        prompt_tokens, response_tokens = pending_tokens.pop(record["id"])
        tally = tallies[split]
        tally.records += 1
        tally.prompt_tokens += prompt_tokens
        tally.response_tokens += response_tokens
        tally.subcollections[records_lib.subcollection(record["id"])] += 1

    report = {}

    def write_report(dataset_dir: pathlib.Path) -> None:
        report.update({
            "settings": settings,
            "rows_in": stats.rows_in,
            "rows_valid": stats.rows_valid,
            "skipped": {reason: stats.skipped[reason] for reason in records_lib.BAD_ROW_REASONS},
            "skipped_examples": stats.skipped_locations,
            "splits": {split: dataclasses.asdict(tally) | {"subcollections": dict(sorted(tally.subcollections.items()))}
                       for split, tally in tallies.items()},
        })
        (dataset_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    # Our own bar counts records; TFDS's per-split bars would interleave with it (or, with
    # progress=False, be the only noise left in the caller's output).
    tfds.disable_progress_bar()
    with tqdm.tqdm(valid, desc="records", unit=" records", disable=not progress) as progress_bar:
        shards.build_dataset(records_of(progress_bar), output, num_shards=num_shards, validation=validation,
                             seed=seed, on_write=on_write, add_files=write_report)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orca-jax prepare-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="comma-separated .parquet / .jsonl / .jsonl.gz files, read in this order")
    parser.add_argument("--output", required=True, help="dataset directory to create (must not exist)")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model the training run will use")
    parser.add_argument("--template", default="orca", choices=sorted(templates.TEMPLATES),
                        help="prompt template the training run will use")
    parser.add_argument("--seq_len", type=int, default=2048,
                        help="packed sequence length; longer examples are bad rows")
    parser.add_argument("--validation", type=parse_validation_size, default=0.01,
                        help="held-out validation: a fraction ('0.01') or a record count ('500'); 0 for none")
    parser.add_argument("--num_shards", type=int, default=1,
                        help="shards per split; make it a multiple of the number of hosts reading the data")
    parser.add_argument("--bad_rows", default="error", choices=records_lib.BAD_ROW_POLICIES,
                        help="'error': stop at the first bad row; 'skip': drop bad rows and count them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split choice")
    parser.add_argument("--column_map", type=parse_column_map, default={},
                        help="field=column pairs for files whose columns are named differently, "
                             "e.g. 'question=prompt,response=completion'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = prepare(args.input.split(","), args.output, tokenizer=Tokenizer.load(args.tokenizer),
                         template=args.template, seq_len=args.seq_len, validation=args.validation,
                         num_shards=args.num_shards, bad_rows=args.bad_rows, seed=args.seed,
                         column_map=args.column_map)
    except UserError as err:
        print(f"orca-jax prepare-data: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"orca-jax prepare-data: interrupted; {args.output} was not created", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    print(f"report saved to {paths.path(args.output) / REPORT_NAME}")
    return 0
