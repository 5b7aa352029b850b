"""Asking the teacher about every sampled query, resumably.

Answers are appended as OpenOrca records (`id`, `system_prompt`, `question`, `response`, plus
`teacher` and `finish_reason`) that `orca-jax prepare-data` reads as they are; queries that keep
failing go to a separate failures journal with their reason and attempt count. A restart skips
every id already answered, and every id already failed unless asked to retry those.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib
import random
import sys
import time
from collections.abc import Iterator, Set

from tqdm import tqdm

from orca_jax.data.construct.journal import Journal
from orca_jax.data.jsonl import read_objects, require_strings
from orca_jax.data.construct.ratelimit import RateLimiter
from orca_jax.data.construct.teacher import Answer, ChatClient, TeacherConfig, ask

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
