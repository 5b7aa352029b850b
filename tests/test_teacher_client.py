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
from orca_jax.data.construct.cli import main as construct_main
from orca_jax.data.construct.journal import Journal
from orca_jax.data.construct.query import ingest_batch, prepare_batch, run_queries
from orca_jax.data.construct.ratelimit import RateLimiter
from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.construct.teacher import TeacherConfig

from teacher_server import FAULTS, KEY_AT, TeacherServer, leaked_runs, reply_for

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


def test_a_key_echoed_across_the_excerpt_cut_is_never_written_in_part(tmp_path, repo_root, capfd):
    # Long enough that a cut at 200 characters, made before redacting, would keep 12 of its characters.
    key = "sk-proj-" + "Zq7Xw2Lm9Rt4Vb8Nc1Kd6Hs3Jf5Gp0Ya"
    assert KEY_AT < 200 < KEY_AT + len(key)
    queries = write_queries(tmp_path / "queries.jsonl", 4)
    plan = {queries[0]["question"]: ["500long"] * MAX_ATTEMPTS,
            queries[1]["question"]: ["malformed_key"] * MAX_ATTEMPTS,
            queries[2]["question"]: ["500long", "malformed_key"]}
    with TeacherServer(key, plan) as server:
        report = run_queries(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                             teacher_config(repo_root, server.base_url), key, show_progress=False)
    assert (report.answered, report.failed) == (2, 2)
    failed = (tmp_path / "failed.jsonl").read_text()
    assert "[redacted]" in failed and "HTTP 500" in failed and "malformed reply" in failed
    captured = capfd.readouterr()
    for text in (failed, (tmp_path / "answers.jsonl").read_text(), captured.out, captured.err):
        assert leaked_runs(text, key) == []


def batch_output_line(custom_id: str, *, status: int = 200, body=None, error=None) -> dict:
    response = None if error else {"status_code": status, "request_id": f"req-{custom_id}", "body": body}
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": error}


def completion(text: str, finish_reason: str = "stop") -> dict:
    return {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


def test_batch_prepare_writes_one_request_per_pending_query(tmp_path, repo_root):
    queries = write_queries(tmp_path / "queries.jsonl", 7)
    (tmp_path / "answers.jsonl").write_text(json.dumps(
        {"id": "t0.0", "system_prompt": "", "question": "q", "response": "r", "teacher": "t",
         "finish_reason": "stop"}) + "\n")
    config = teacher_config(repo_root, "https://api.example.invalid/v1")
    result = prepare_batch(tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl",
                           tmp_path / "batch.jsonl", config, max_requests=4)
    assert result["requests"] == 6 and result["already_done"] == 1
    parts = [tmp_path / "batch.00001.jsonl", tmp_path / "batch.00002.jsonl"]
    assert result["files"] == [str(path) for path in parts]
    lines = [row for path in parts for row in read_jsonl(path)]
    assert [len(read_jsonl(path)) for path in parts] == [4, 2]
    assert [line["custom_id"] for line in lines] == [q["id"] for q in queries[1:]]
    for line, query in zip(lines, queries[1:]):
        assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
        body = line["body"]
        assert body["model"] == "teacher-under-test" and body["max_tokens"] == config.max_tokens
        assert body["messages"][-1] == {"role": "user", "content": query["question"]}
        assert body["messages"][0] == {"role": "system", "content": query["system_prompt"]}


def test_batch_ingest_is_exactly_once_validated_and_resumable(tmp_path, repo_root):
    key = "sk-batch-" + "Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9"
    queries = write_queries(tmp_path / "queries.jsonl", 8)
    ids = [q["id"] for q in queries]
    output = [
        batch_output_line(ids[0], body=completion(reply_for(queries[0]["question"]))),
        batch_output_line(ids[1], error={"code": "batch_expired", "message": "not run in 24 h"}),
        batch_output_line(ids[2], status=500, body={"error": {"message": "x" * 190 + key}}),
        batch_output_line(ids[3], body={"choices": []}),  # valid JSON, not a completion
        batch_output_line(ids[4], body=completion("   ")),  # an empty answer is not kept
        batch_output_line(ids[5], body=completion("answer five", "length")),
        batch_output_line(ids[0], body=completion("a second answer to the same id")),  # must not be kept
        batch_output_line(ids[6], body=completion("answer six")),
    ]
    lines = "".join(json.dumps(row) + "\n" for row in output)
    config = teacher_config(repo_root, "https://api.example.invalid/v1")
    paths = (tmp_path / "queries.jsonl", tmp_path / "answers.jsonl", tmp_path / "failed.jsonl")

    # An ingest stopped part-way is followed by one of the whole file: nothing twice, nothing lost.
    (tmp_path / "out.jsonl").write_text(lines[: lines.index("\n", len(lines) // 3) + 1])
    first = ingest_batch(*paths, tmp_path / "out.jsonl", config, key)
    (tmp_path / "out.jsonl").write_text(lines)
    second = ingest_batch(*paths, tmp_path / "out.jsonl", config, key)
    third = ingest_batch(*paths, tmp_path / "out.jsonl", config, key)
    assert first["answered"] + first["failed"] + second["answered"] + second["failed"] == 7
    assert (third["answered"], third["failed"], third["already_done"]) == (0, 0, 8)

    answers = {a["id"]: a for a in read_jsonl(paths[1])}
    failures = {f["id"]: f for f in read_jsonl(paths[2])}
    assert len(read_jsonl(paths[1])) == len(answers) and len(read_jsonl(paths[2])) == len(failures)
    assert set(answers) == {ids[0], ids[5], ids[6]} and set(failures) == {ids[1], ids[2], ids[3], ids[4]}
    assert answers[ids[0]]["response"] == reply_for(queries[0]["question"])
    assert answers[ids[5]]["finish_reason"] == "length"
    assert failures[ids[1]]["reason"] == "batch error batch_expired: not run in 24 h"
    assert failures[ids[2]]["reason"].startswith("HTTP 500")
    assert failures[ids[3]]["reason"].startswith("malformed reply")
    assert failures[ids[4]]["reason"].startswith("empty reply")
    assert leaked_runs(paths[2].read_text(), key) == []
    # What prepare-data reads: every answer a valid record.
    assert len(list(records.validate_rows(records.read_jsonl(paths[1]), policy="error"))) == 3

    # The failed ids (and the never-run id 7) go into the next batch when asked.
    construct_main(["query", "--config", str(repo_root / "configs" / "construct.py"), "--batch", "prepare",
                    "--retry-failed", "--input", str(paths[0]), "--out", str(paths[1]),
                    "--failures", str(paths[2]), "--batch_input", str(tmp_path / "again.jsonl")])
    assert [row["custom_id"] for row in read_jsonl(tmp_path / "again.jsonl")] == [ids[i] for i in (1, 2, 3, 4, 7)]


def test_batch_ingest_rejects_a_foreign_output_file_before_writing(tmp_path, repo_root, capsys):
    write_queries(tmp_path / "queries.jsonl", 2)
    (tmp_path / "out.jsonl").write_text(
        json.dumps(batch_output_line("t0.0", body=completion("fine"))) + "\n"
        + json.dumps(batch_output_line("other.9", body=completion("from another batch"))) + "\n")
    code = construct_main(["query", "--config", str(repo_root / "configs" / "construct.py"), "--batch", "ingest",
                           "--input", str(tmp_path / "queries.jsonl"), "--out", str(tmp_path / "answers.jsonl"),
                           "--batch_output", str(tmp_path / "out.jsonl")])
    assert code == 2
    assert "out.jsonl: line 2: custom_id 'other.9'" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "answers.jsonl") == []
