"""The teacher client against a real chat-completions server on loopback (tests/teacher_server.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from orca_jax.config import load_config
from orca_jax.data import records
from orca_jax.data.construct.journal import Journal
from orca_jax.data.construct.query import run_queries
from orca_jax.data.construct.ratelimit import RateLimiter
from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.construct.teacher import TeacherConfig
from teacher_server import FAULTS, TeacherServer, reply_for

API_KEY = "sk-test-3f9c1e7d5b2a-do-not-leak"
TIMEOUT_S = 0.3
MAX_ATTEMPTS = 5


def write_queries(path, count: int) -> list[dict]:
    messages = list(SYSTEM_MESSAGES.values())
    queries = [
        {"id": f"t0.{i}", "system_prompt": messages[i % len(messages)], "question": f"Question {i}: is {i} prime?",
         "task": "primes", "template_type": "zs_noopt", "target": "yes" if i in (2, 3, 5, 7) else "no"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(q) + "\n" for q in queries))
    return queries


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def teacher_config(repo_root, base_url: str, **changes) -> TeacherConfig:
    config = load_config(str(repo_root / "configs" / "construct.py")).teacher
    config.update(dict(base_url=base_url, concurrency=8, timeout_s=TIMEOUT_S, max_attempts=MAX_ATTEMPTS,
                       backoff_initial_s=0.005, backoff_max_s=0.02, requests_per_minute=1e6,
                       tokens_per_minute=1e9, model="teacher-under-test"), **changes)
    return TeacherConfig.from_config(config)


def test_every_query_ends_answered_or_failed_despite_faults(tmp_path, repo_root):
    queries = write_queries(tmp_path / "queries.jsonl", 60)
    rng = random.Random(0)
    plan = {q["question"]: rng.choices(FAULTS, k=rng.randrange(MAX_ATTEMPTS)) for q in queries[2:]}
    hopeless = {q["id"] for q in queries[:2]}
    plan.update({q["question"]: ["500"] * MAX_ATTEMPTS for q in queries[:2]})
    with TeacherServer(API_KEY, plan, slow_s=TIMEOUT_S * 2) as server:
        config = teacher_config(repo_root, server.base_url)
        report = run_queries(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                             config, API_KEY, show_progress=False)
    answers, failures = read_jsonl(tmp_path / "answers.jsonl"), read_jsonl(tmp_path / "failed.jsonl")

    assert set(server.faults_served) == set(FAULTS), "the plan must exercise every fault"
    by_id = {q["id"]: q for q in queries}
    assert sorted(a["id"] for a in answers) == sorted(by_id.keys() - hopeless)
    for answer in answers:
        query = by_id[answer["id"]]
        assert (answer["system_prompt"], answer["question"]) == (query["system_prompt"], query["question"])
        assert answer["response"] == reply_for(query["question"])
        assert (answer["teacher"], answer["finish_reason"]) == ("teacher-under-test", "stop")
    assert {f["id"] for f in failures} == hopeless
    assert all(f["attempts"] == MAX_ATTEMPTS and f["reason"].startswith("HTTP 500") for f in failures)
    assert (report.answered, report.failed) == (len(answers), len(failures))
    for output in ("answers.jsonl", "failed.jsonl"):
        assert API_KEY not in (tmp_path / output).read_text()
    assert "[redacted]" in (tmp_path / "failed.jsonl").read_text(), "the 500 bodies echo the key"


def test_rejected_key_fails_at_once_without_leaking(tmp_path, repo_root):
    write_queries(tmp_path / "queries.jsonl", 3)
    wrong_key = "sk-wrong-key-7a1b"
    with TeacherServer(API_KEY) as server:
        run_queries(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                    teacher_config(repo_root, server.base_url), wrong_key, show_progress=False)
    failures = read_jsonl(tmp_path / "failed.jsonl")
    assert [f["attempts"] for f in failures] == [1, 1, 1]
    assert all(f["reason"].startswith("HTTP 401") for f in failures)
    assert wrong_key not in (tmp_path / "failed.jsonl").read_text()
    assert read_jsonl(tmp_path / "answers.jsonl") == []


def test_restart_cuts_a_partial_line_and_skips_answered_and_failed_ids(tmp_path, repo_root):
    queries = write_queries(tmp_path / "queries.jsonl", 6)
    done = {"id": "t0.0", "system_prompt": "", "question": queries[0]["question"], "response": "kept",
            "teacher": "earlier", "finish_reason": "stop"}
    (tmp_path / "answers.jsonl").write_text(json.dumps(done) + "\n" + '{"id": "t0.1", "resp')
    (tmp_path / "failed.jsonl").write_text(json.dumps({"id": "t0.2", "reason": "HTTP 500", "attempts": 5}) + "\n")
    with TeacherServer(API_KEY) as server:
        run_queries(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                    teacher_config(repo_root, server.base_url), API_KEY, show_progress=False)
        assert server.requests[queries[0]["question"]] == server.requests[queries[2]["question"]] == 0
        run_queries(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                    teacher_config(repo_root, server.base_url), API_KEY, retry_failed=True, show_progress=False)
    answers = read_jsonl(tmp_path / "answers.jsonl")
    assert sorted(a["id"] for a in answers) == sorted(q["id"] for q in queries)
    assert answers[0] == done
    assert read_jsonl(tmp_path / "failed.jsonl") == []


def test_journal_cuts_only_the_unterminated_tail(tmp_path):
    path = tmp_path / "journal.jsonl"
    whole = "".join(json.dumps({"id": f"x.{i}", "response": "é" * 40_000}) + "\n" for i in range(3))
    path.write_text(whole + '{"id": "x.3", "response": "ab', encoding="utf-8")
    with Journal(path) as journal:
        assert journal.ids() == {"x.0", "x.1", "x.2"}
        journal.append({"id": "x.3", "response": "whole"})
    assert path.read_text(encoding="utf-8") == whole + json.dumps({"id": "x.3", "response": "whole"}) + "\n"


class FakeTime:
    """A clock that moves only when the limiter sleeps, so waits are exact and cost no real time."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_limiter_paces_requests_per_minute():
    per_minute, requests = 30, 90
    fake = FakeTime()
    limiter = RateLimiter(per_minute, 1e9, fake.clock, fake.sleep)
    for _ in range(requests):
        limiter.acquire(1)
    # A minute's worth goes at once; the rest at the refill rate.
    assert fake.now == pytest.approx((requests - per_minute) * 60 / per_minute, rel=1e-6)


def test_rate_limiter_paces_tokens_and_refunds_from_usage():
    tokens_per_minute = 1000
    fake = FakeTime()
    limiter = RateLimiter(1e6, tokens_per_minute, fake.clock, fake.sleep)
    limiter.acquire(tokens_per_minute)
    limiter.settle(tokens_per_minute, 100)  # the reply used far less than estimated
    limiter.acquire(tokens_per_minute - 100)
    assert fake.now == 0.0
    limiter.acquire(300)
    assert fake.now == pytest.approx(300 * 60 / tokens_per_minute, rel=1e-6)


def _answered_ids(path) -> list[str]:
    # Only whole lines: a line still being written is not an answer yet.
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["id"] for line in text[: text.rfind("\n") + 1].splitlines()]


def test_kill9_then_restart_answers_every_id_exactly_once(tmp_path, repo_root):
    queries = write_queries(tmp_path / "queries.jsonl", 120)
    out = tmp_path / "answers.jsonl"
    env = {**os.environ, "ORCA_TEST_TEACHER_KEY": API_KEY}
    with TeacherServer(API_KEY, reply_delay_s=0.02) as server:
        command = [
            sys.executable, "-m", "orca_jax.cli", "construct", "query",
            "--config", str(repo_root / "configs" / "construct.py"),
            f"--config.teacher.base_url={server.base_url}", "--config.teacher.api_key_env=ORCA_TEST_TEACHER_KEY",
            "--config.teacher.concurrency=2", "--config.teacher.backoff_initial_s=0.01",
            "--input", str(tmp_path / "queries.jsonl"), "--out", str(out),
        ]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(_answered_ids(out)) < 20 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first.kill()
        first_stdout, first_stderr = first.communicate()
        answered_before = set(_answered_ids(out))
        requests_before = server.requests.copy()
        assert first.returncode == -9 and 20 <= len(answered_before) < len(queries), first_stderr
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr

    answered = [a["id"] for a in read_jsonl(out)]
    assert len(answered) == len(set(answered)), "an id was answered twice"
    assert set(answered) == {q["id"] for q in queries}
    by_id = {q["id"]: q for q in queries}
    for query_id in answered_before:
        question = by_id[query_id]["question"]
        assert server.requests[question] == requests_before[question], f"{query_id} was asked again"
    assert json.loads(second.stdout)["already_done"] == len(answered_before)
    # What prepare-data reads, unchanged: every line a valid record, no id twice.
    assert len(list(records.validate_rows(records.read_jsonl(out), policy="error"))) == len(queries)
    for text in (first_stdout, first_stderr, second.stdout, second.stderr, out.read_text()):
        assert API_KEY not in text
