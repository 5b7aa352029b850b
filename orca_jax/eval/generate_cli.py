"""`orca-jax generate`: responses to a JSONL file of prompts, greedy or sampled, with stop strings.

    orca-jax generate --params /ckpt/orca --input prompts.jsonl --output out.jsonl \\
        [--config F] [--tokenizer T] [--template orca|chatml] [--system_message TEXT|N|empty] \\
        [--temperature 0.7 --top_p 0.9 --top_k 40 --seed 0] [--max_new_tokens N] [--stop S ...]

Each input row has `question` (or its synonym `prompt`), optionally `system_prompt` (else
`--system_message`, else empty) and `id`. The question goes through the chat template like an
evaluation prompt (`templates.encode_prompt`). Output rows are the input rows plus `response` and
`finish_reason` ('eos', 'stop' or 'length'); a row without an `id` gets its 0-based row number as one.

Resuming: rows whose id is already in `--output` are skipped and new rows are appended, one batch at
a time, so rerunning an interrupted command finishes the file (a line torn by a kill is dropped).
Sampling is keyed by (seed, row number), so a resumed or re-batched run draws the same tokens.

This module also holds what `orca-jax chat` shares with it: the decoding flags, restoring the model,
and `TextStream` (incremental detokenization with stop strings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

from jax.sharding import Mesh

from orca_jax.config import default_config, parse_config_args
from orca_jax.data.jsonl import read_objects
from orca_jax.data.templates import TEMPLATES, Template, encode_prompt, get_template
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval import generate, loading, sampling, streaming
from orca_jax.eval.prompts import resolve_system_message
from orca_jax.model.config import ModelConfig
from orca_jax.train.config import TrainConfig

# Between stop-string checks; without stop strings a batch decodes in one call.
STOP_CHECK_TOKENS = 16
REPLACEMENT_CHAR = "\ufffd"  # what sentencepiece decodes an incomplete UTF-8 byte sequence to


class GenerateError(UserError):
    """A flag, input row or output file that cannot be used; the message names it."""


# ---- Flags and the model, shared with `orca-jax chat` -----------------------------------------

def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="params directory or training checkpoint step directory")
    parser.add_argument("--tokenizer", help="sentencepiece model; default the config's data.tokenizer")
    parser.add_argument("--template", choices=sorted(TEMPLATES), help="default the config's data.template")
    parser.add_argument("--system_message", help="text, 'empty', or 1-16 (the paper's Table 2)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max_new_tokens", type=int, help="default min(512, max_seq_len / 4)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end a response where this text appears (cut before it); repeatable")
    parser.add_argument("--params_dtype", default="compute", help=loading.PARAMS_DTYPE_CHOICES)
    parser.add_argument("--mesh", help="data,fsdp,tensor sizes (-1: the rest); default one device")


def parse_flags(argv: list[str], parser: argparse.ArgumentParser):
    """(config, overridden model fields, flags); `--config F` / `--config.x=y` go to the config loader."""
    config, rest = parse_config_args(argv, default=default_config("demo"))
    model_fields = loading.model_fields_overridden(argv)
    flags = parser.parse_args(rest)
    if any(not stop for stop in flags.stop):
        raise GenerateError("--stop: an empty stop string would end every response at once")
    return TrainConfig.from_config(config, check_training=False), model_fields, flags


@dataclasses.dataclass
class LoadedModel:
    params: object
    model_config: ModelConfig
    tokenizer: Tokenizer
    template: Template
    mesh: Mesh | None
    max_new_tokens: int

    def decoder(self, flags, min_bucket: int = generate.MIN_ATTEND_BUCKET) -> streaming.ChunkedDecoder:
        choose = sampling.chooser(flags.temperature, flags.top_k, flags.top_p)
        return streaming.ChunkedDecoder(self.params, self.model_config, max_new_tokens=self.max_new_tokens,
                                       eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                                       choose_token=choose, mesh=self.mesh, min_bucket=min_bucket)


def load_model(run: TrainConfig, model_fields: list[str], flags) -> LoadedModel:
    """Restore `--params` in the decode dtype and layout, with its tokenizer and template."""
    loading.require_params_dir(flags.params)
    model_config = loading.model_config_for(flags.params, run.model, model_fields)
    tokenizer = Tokenizer.load(flags.tokenizer or run.data.tokenizer)
    tokenizer.check_fits(model_config.vocab_size)
    max_new_tokens = flags.max_new_tokens or loading.default_max_new_tokens(model_config)
    loading.check_max_new_tokens(max_new_tokens, model_config)
    sampling.chooser(flags.temperature, flags.top_k, flags.top_p)  # bad flags fail before the restore
    # One device unless --mesh names more: a chat turn is one row.
    mesh = loading.parse_mesh(flags.mesh) if flags.mesh else None
    params = loading.restore_for_decoding(flags.params, model_config, mesh,
                                          loading.params_dtype(model_config, flags.params_dtype))
    template = get_template(flags.template or run.data.template)
    return LoadedModel(params, model_config, tokenizer, template, mesh, max_new_tokens)


# ---- Incremental text with stop strings ------------------------------------------------------

def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string in it, and whether one was found."""
    hits = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class TextStream:
    """The text of a growing token list, released as it becomes final.

    Each update decodes all tokens so far and releases what is new. Decoding the whole sequence (not
    each token alone) is what renders sentencepiece's leading-space pieces right: '▁the' is ' the'
    inside a text and 'the' at its start, exactly as `tokenizer.decode` of the full response has it.
    Held back until more tokens come: a trailing U+FFFD (a multi-byte character whose bytes are still
    arriving as byte-fallback pieces) and a tail that could be the start of a stop string.
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.text, self.shown, self.stopped = "", 0, False

    def _settled(self, text: str) -> int:
        end = len(text.rstrip(REPLACEMENT_CHAR))
        for stop in self.stops:
            for length in range(min(len(stop) - 1, end), 0, -1):
                if text[:end].endswith(stop[:length]):
                    end -= length  # the longest partial stop at the end; shorter ones lie inside it
                    break
        return end

    def update(self, tokens: Sequence[int], final: bool = False) -> str:
        """The newly final text after `tokens` (all of them so far); `final`: nothing more will come."""
        self.text, self.stopped = cut_at_stop(self.tokenizer.decode(tokens), self.stops)
        end = len(self.text) if final or self.stopped else self._settled(self.text)
        new = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return new


# ---- The batch command -----------------------------------------------------------------------

def decode_batch(decoder: streaming.ChunkedDecoder, tokenizer: Tokenizer, prompts: list[list[int]],
                 row_numbers: list[int], *, seed: int, stops: Sequence[str], batch_size: int,
                 sampled: bool) -> list[tuple[str, str]]:
    """(response, finish_reason) of each prompt, decoded together; rows end at EOS, at a stop string
    (checked every STOP_CHECK_TOKENS tokens) or at max_new_tokens."""
    rng = sampling.row_keys(seed, row_numbers) if sampled else None
    run = decoder.start(prompts, rng=rng, batch_size=batch_size)
    streams = [TextStream(tokenizer, stops) for _ in prompts]
    chunk = STOP_CHECK_TOKENS if stops else decoder.max_new_tokens
    stopped: set[int] = set()
    while not run.done:
        run.advance(chunk)
        if stops:
            for row, tokens in enumerate(run.tokens()):
                if row not in stopped:
                    streams[row].update(tokens)
                    if streams[row].stopped:
                        stopped.add(row)
            run.stop([row for row in stopped if not run.finished[row]])
    results = []
    for row, tokens in enumerate(run.tokens()):
        streams[row].update(tokens, final=True)
        reason = "stop" if streams[row].stopped else "eos" if len(tokens) < run.step else "length"
        results.append((streams[row].text, reason))
    return results


def read_rows(path: pathlib.Path) -> list[dict]:
    """The input rows, each with an `id` (its row number when it has none) and a string question."""
    if not path.is_file():
        raise GenerateError(f"--input {path} does not exist")
    rows, seen = [], set()
    for number, (line_number, row) in enumerate(read_objects(path)):
        question = row.get("question", row.get("prompt"))
        if not isinstance(question, str):
            raise GenerateError(f"{path}: line {line_number}: needs a string 'question' (or 'prompt')")
        if not isinstance(row.get("system_prompt", ""), str):
            raise GenerateError(f"{path}: line {line_number}: 'system_prompt' is not a string")
        row = {**row} if "id" in row else {"id": number, **row}
        key = json.dumps(row["id"])
        if key in seen:
            raise GenerateError(f"{path}: line {line_number}: id {row['id']!r} appears twice")
        seen.add(key)
        rows.append(row)
    return rows


def done_ids(path: pathlib.Path) -> set[str]:
    """JSON-encoded ids of the rows already in the output. A torn last line (a kill mid-write) is cut
    off the file so that appending continues on a clean line."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    lines = data.split(b"\n")
    ids = set()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            ids.add(json.dumps(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            if index < len(lines) - 1:
                raise GenerateError(f"--output {path}: line {index + 1} is not a generated row; "
                                    "refusing to append to it") from None
            with open(path, "r+b") as out:
                out.truncate(len(data) - len(line))
    return ids


def run_generate(model: LoadedModel, flags) -> tuple[int, int]:
    """(rows generated now, rows skipped as already in the output)."""
    rows = read_rows(pathlib.Path(flags.input))
    output = pathlib.Path(flags.output)
    finished = done_ids(output)
    default_system = resolve_system_message(flags.system_message) or ""
    todo = [(number, row) for number, row in enumerate(rows) if json.dumps(row["id"]) not in finished]
    prompts = {}
    for number, row in todo:
        system = row.get("system_prompt", default_system)
        question = row.get("question", row.get("prompt"))
        prompts[number] = encode_prompt(model.tokenizer, model.template, system, question)
        try:
            generate.check_prompt_fits(number, len(prompts[number]), model.model_config, model.max_new_tokens)
        except ValueError as error:
            raise GenerateError(f"{flags.input}: row id {row['id']!r}: {error}") from None
    batch_size = flags.batch_size
    if model.mesh is not None:
        # Rows split over the mesh's data and fsdp axes; the batch rounds up to cover them.
        groups = model.mesh.shape["data"] * model.mesh.shape["fsdp"]
        batch_size = -(-batch_size // groups) * groups
    decoder = model.decoder(flags)
    output.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        numbers = [number for number, _ in chunk]
        results = decode_batch(decoder, model.tokenizer, [prompts[n] for n in numbers], numbers,
                               seed=flags.seed, stops=flags.stop, batch_size=batch_size,
                               sampled=flags.temperature > 0)
        with open(output, "a", encoding="utf-8") as out:
            for (_, row), (response, reason) in zip(chunk, results):
                out.write(json.dumps({**row, "response": response, "finish_reason": reason},
                                     ensure_ascii=False) + "\n")
        print(f"orca-jax generate: {start + len(chunk)}/{len(todo)} rows", file=sys.stderr)
    return len(todo), len(rows) - len(todo)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="orca-jax generate", description=__doc__.split("\n\n")[0])
    add_decoding_flags(parser)
    parser.add_argument("--input", required=True, help="JSONL rows with 'question' (or 'prompt')")
    parser.add_argument("--output", required=True, help="JSONL output; rows already in it are skipped")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts decoded together")
    try:
        config, model_fields, flags = parse_flags(argv, parser)
        if flags.batch_size < 1:
            raise GenerateError(f"--batch_size {flags.batch_size} must be positive")
        done, skipped = run_generate(load_model(config, model_fields, flags), flags)
    except (UserError, ValueError, FileNotFoundError) as error:
        # Input problems (flags, config, params, tokenizer, rows) are raised named; print them in one line.
        print(f"orca-jax generate: {error}", file=sys.stderr)
        return 1
    print(f"orca-jax generate: wrote {done} rows to {flags.output}"
          + (f" ({skipped} already there)" if skipped else ""), file=sys.stderr)
    return 0
