"""Asking the teacher about every sampled query, resumably.

Answers are appended as OpenOrca records (`id`, `system_prompt`, `question`, `response`, plus
`teacher` and `finish_reason`) that `orca-jax prepare-data` reads as they are; queries that keep
failing go to a separate failures journal with their reason and attempt count. A restart skips
every id already answered, and every id already failed unless asked to retry those.

The Batch API path does the same through files: `prepare_batch` writes one request line per pending
query (custom_id = the query id), and `ingest_batch` reads the output file into the same two journals
with the same reply validation, skipping ids either journal already holds, so an interrupted ingest
is simply run again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Iterator, Set

from tqdm import tqdm

from orca_jax.data.construct.journal import Journal
from orca_jax.data.construct.ratelimit import RateLimiter
from orca_jax.data.construct.teacher import (
    Answer,
    ChatClient,
    Failure,
    TeacherConfig,
    TeacherError,
    ask,
    excerpt,
    parse_completion,
    request_body,
)
from orca_jax.data.jsonl import RecordFormatError, read_objects, require_strings

# Queries read ahead of the workers, per worker: enough to keep them busy, few enough to stream.
_READ_AHEAD_PER_WORKER = 2


@dataclasses.dataclass
class QueryReport:
    answered: int = 0
    failed: int = 0
    already_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


def read_queries(path: pathlib.Path) -> Iterator[dict]:
    """Stream `id`, `system_prompt`, `question` of each line of a `construct sample` output."""
    fields = ("id", "system_prompt", "question")
    for line_number, row in read_objects(path):
        require_strings(path, line_number, row, fields)
        yield {field: row[field] for field in fields}


def _pending(path: pathlib.Path, done: Set[str]) -> Iterator[dict]:
    seen = set()
    for query in read_queries(path):
        if query["id"] in done or query["id"] in seen:
            continue
        seen.add(query["id"])
        yield query


def _count_lines(path: pathlib.Path) -> int:
    with open(path, "rb") as data:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: data.read(1 << 20), b""))


class _Progress:
    """A tqdm bar showing queries/s plus tokens, tokens/s and the estimated cost so far."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = tqdm(total=total, initial=initial, unit="q", file=sys.stderr, disable=not enabled,
                         dynamic_ncols=True, mininterval=0.5)
        self._start = time.monotonic()

    def update(self, report: QueryReport) -> None:
        tokens = report.prompt_tokens + report.completion_tokens
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._bar.set_postfix(
            tokens_in=report.prompt_tokens, tokens_out=report.completion_tokens,
            tok_per_s=f"{tokens / elapsed:.0f}", cost=f"${report.cost_usd:.2f}", failed=report.failed,
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _record(answers: Journal, failures: Journal, config: TeacherConfig, report: QueryReport, query: dict,
            outcome) -> None:
    """One query's outcome into its journal (the live and the batch path write the same records)."""
    if isinstance(outcome, Answer):
        answers.append({
            "id": query["id"], "system_prompt": query["system_prompt"], "question": query["question"],
            "response": outcome.text, "teacher": config.model, "finish_reason": outcome.finish_reason,
        })
        report.answered += 1
        report.prompt_tokens += outcome.prompt_tokens
        report.completion_tokens += outcome.completion_tokens
        report.cost_usd = config.cost(report.prompt_tokens, report.completion_tokens)
    else:
        failures.append({"id": query["id"], "reason": outcome.reason, "attempts": outcome.attempts})
        report.failed += 1


def run_queries(
    queries_path: pathlib.Path,
    answers_path: pathlib.Path,
    failures_path: pathlib.Path,
    config: TeacherConfig,
    api_key: str,
    retry_failed: bool = False,
    show_progress: bool = True,
) -> QueryReport:
    """Ask the teacher every query of `queries_path` not yet answered (or failed); return the tally."""
    started = time.monotonic()
    client = ChatClient(config, api_key)
    limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
    jitter = random.Random()
    report = QueryReport()
    with Journal(answers_path) as answers, Journal(failures_path) as failures:
        answered = answers.ids()
        if retry_failed:
            # Safe even if this run dies: an id neither answered nor failed is simply pending again.
            failures.clear()
        done = answered | failures.ids()
        report.already_done = len(done)
        progress = _Progress(_count_lines(queries_path), len(done), show_progress)

        def record(query: dict, outcome) -> None:
            _record(answers, failures, config, report, query, outcome)
            progress.update(report)

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.concurrency)
        in_flight: dict[concurrent.futures.Future, dict] = {}

        def finish_some(return_when) -> None:
            finished, _ = concurrent.futures.wait(in_flight, return_when=return_when)
            for future in finished:
                record(in_flight.pop(future), future.result())

        try:
            for query in _pending(queries_path, done):
                if len(in_flight) >= config.concurrency * _READ_AHEAD_PER_WORKER:
                    finish_some(concurrent.futures.FIRST_COMPLETED)
                future = pool.submit(ask, client, config, limiter, query["system_prompt"], query["question"], jitter)
                in_flight[future] = query
            finish_some(concurrent.futures.ALL_COMPLETED)
        finally:
            # On an interrupt, abandon queued queries: they are simply pending on the next run.
            pool.shutdown(wait=False, cancel_futures=True)
            progress.close()
    report.seconds = time.monotonic() - started
    return report


# The Batch API's limits on one input file: 50,000 requests and 200 MB (a margin is kept below the latter).
BATCH_MAX_REQUESTS = 50_000
BATCH_MAX_BYTES = 190 * 1024 * 1024
BATCH_ENDPOINT = "/v1/chat/completions"


def _done_ids(answers_path: pathlib.Path, failures_path: pathlib.Path, retry_failed: bool) -> tuple[set, set]:
    with Journal(answers_path) as answers, Journal(failures_path) as failures:
        if retry_failed:
            failures.clear()
        return answers.ids(), failures.ids()


def _batch_part_path(path: pathlib.Path, part: int) -> pathlib.Path:
    return path.with_name(f"{path.stem}.{part:05d}{path.suffix}")


def prepare_batch(
    queries_path: pathlib.Path,
    answers_path: pathlib.Path,
    failures_path: pathlib.Path,
    batch_input: pathlib.Path,
    config: TeacherConfig,
    retry_failed: bool = False,
    max_requests: int = BATCH_MAX_REQUESTS,
) -> dict:
    """Write the Batch API input for every query not yet answered (or failed): one line per request,
    `{"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": ...}`. More than one
    file's worth goes to `<stem>.00001<suffix>`, `<stem>.00002<suffix>`, ...; each is written whole
    under a temporary name and then renamed."""
    answered, failed = _done_ids(answers_path, failures_path, retry_failed)
    parts: list[list[bytes]] = [[]]
    size = 0
    for query in _pending(queries_path, answered | failed):
        line = (json.dumps({"custom_id": query["id"], "method": "POST", "url": BATCH_ENDPOINT,
                            "body": request_body(config, query["system_prompt"], query["question"])},
                           ensure_ascii=False) + "\n").encode("utf-8")
        if parts[-1] and (len(parts[-1]) >= max_requests or size + len(line) > BATCH_MAX_BYTES):
            parts.append([])
            size = 0
        parts[-1].append(line)
        size += len(line)
    paths = [batch_input] if len(parts) == 1 else [_batch_part_path(batch_input, i + 1) for i in range(len(parts))]
    batch_input.parent.mkdir(parents=True, exist_ok=True)
    for path, lines in zip(paths, parts):
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as out:
            out.writelines(lines)
        os.replace(partial, path)
    return {"requests": sum(map(len, parts)), "files": [str(path) for path in paths],
            "already_done": len(answered | failed)}


def _batch_outcome(path: pathlib.Path, line_number: int, row: dict, query: dict, api_key: str):
    """One Batch API output line -> Answer | Failure, validated as a live reply would be."""
    error, response = row.get("error"), row.get("response")
    if error:
        if not isinstance(error, dict):
            raise RecordFormatError(f"{path}: line {line_number}: field 'error' is not an object")
        reason = f"batch error {error.get('code')}: {error.get('message')}"
        return Failure(reason=excerpt(reason, api_key), attempts=1)
    if not isinstance(response, dict) or not isinstance(response.get("status_code"), int):
        raise RecordFormatError(f"{path}: line {line_number}: field 'response' lacks an integer 'status_code'")
    body = response.get("body")
    if response["status_code"] != 200:
        shown = body if isinstance(body, str) else json.dumps(body)
        return Failure(reason=f"HTTP {response['status_code']}: {excerpt(shown, api_key)}", attempts=1)
    try:
        return parse_completion(body if isinstance(body, str) else body or {}, query["system_prompt"],
                                query["question"], api_key)
    except TeacherError as err:
        return Failure(reason=err.reason, attempts=1)


def ingest_batch(
    queries_path: pathlib.Path,
    answers_path: pathlib.Path,
    failures_path: pathlib.Path,
    batch_output: pathlib.Path,
    config: TeacherConfig,
    api_key: str = "",
) -> dict:
    """Append each output line's answer (or failure) to the journals, once per id. Every line is
    checked before anything is written, so a wrong file changes nothing."""
    queries = {query["id"]: query for query in read_queries(queries_path)}
    rows = []
    for line_number, row in read_objects(batch_output):
        require_strings(batch_output, line_number, row, ("custom_id",))
        if row["custom_id"] not in queries:
            raise RecordFormatError(f"{batch_output}: line {line_number}: custom_id {row['custom_id']!r} is not "
                                    f"an id of {queries_path}")
        rows.append((line_number, row, _batch_outcome(batch_output, line_number, row, queries[row["custom_id"]],
                                                      api_key)))
    report = QueryReport()
    with Journal(answers_path) as answers, Journal(failures_path) as failures:
        done = answers.ids() | failures.ids()
        for _, row, outcome in rows:
            query_id = row["custom_id"]
            if query_id in done:
                report.already_done += 1
                continue
            done.add(query_id)
            _record(answers, failures, config, report, queries[query_id], outcome)
    counts = dataclasses.asdict(report)
    counts.pop("seconds")
    return {**counts, "lines": len(rows)}
