"""`orca-jax judge` end to end against a judge on loopback (tests/judge_server.py) whose scores follow
from the answers, so the expected table is computed here independently: faults, retries, unparseable
replies, the key never written, a kill -9 mid-run, and the prompt-set readers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from orca_jax.data.construct.teacher import TeacherError
from orca_jax.eval import judge, judge_report, prompt_sets

from conftest import SHARED_BENCHMARKS
from judge_server import judge_server, plan_key, quality
from teacher_server import RETRY_AFTER_S, leaked_runs

KEY = "sk-judge-" + "Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz"
MAX_ATTEMPTS = 4
CATEGORIES = ("generic", "writing", "coding", "math")
GENERAL = "Please rate both. Output a single line containing only two values, then explain."
MATH = "Solve it, then output a Python tuple containing two numerical scores."


def write_reviewers(directory) -> None:
    template = ("[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant "
                "1's Answer]\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's "
                "Answer]\n\n[System]\n{prompt}\n\n")
    prompts = [{"prompt_id": i, "system_prompt": "You check answers.", "prompt_template": template,
                "defaults": {"prompt": text}} for i, text in ((1, GENERAL), (2, GENERAL + " Code."), (3, MATH))]
    reviewers = [{"reviewer_id": f"r-{cat}", "prompt_id": i, "category": cat,
                  "metadata": {"temperature": 0.2, "max_tokens": 256}}
                 for i, cat in ((1, "general"), (2, "coding"), (3, "math"))]
    directory.mkdir(exist_ok=True)
    (directory / "prompt.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prompts))
    (directory / "reviewer.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reviewers))


def write_set(tmp_path, count: int, seed: int = 0) -> dict:
    """A Vicuna-format question file and both answer files; qualities drawn so all outcomes occur."""
    rng = random.Random(seed)
    questions, candidate, reference = [], {}, {}
    for i in range(1, count + 1):
        question = {"question_id": i, "text": f"Question {i}: explain {{braces}} and topic {i}.",
                    "category": CATEGORIES[i % len(CATEGORIES)]}
        questions.append(question)
        candidate[str(i)] = f"Candidate says {i}. [quality {rng.randint(1, 9)}]"
        reference[str(i)] = f"Reference says {i}. [quality {rng.randint(1, 9)}]"
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    for name, answers in (("candidate.jsonl", candidate), ("reference.jsonl", reference)):
        (tmp_path / name).write_text("".join(json.dumps({"question_id": int(i), "text": t}) + "\n"
                                             for i, t in answers.items()))
    write_reviewers(tmp_path / "reviewers")
    return {"questions": questions, "candidate": candidate, "reference": reference}


def expected_scores(candidate: str, reference: str) -> tuple[float, float]:
    """Mean over both orders of what the judge server gives (first shown +1, at most 10)."""
    c, r = quality(candidate), quality(reference)
    return (min(10, c + 1) + c) / 2, (min(10, r + 1) + r) / 2


def judge_args(tmp_path, base_url: str, *extra: str) -> list[str]:
    return ["--prompts", str(tmp_path / "question.jsonl"), "--reviewer_dir", str(tmp_path / "reviewers"),
            "--candidate_answers", str(tmp_path / "candidate.jsonl"),
            "--reference_answers", str(tmp_path / "reference.jsonl"), "--judge_base_url", base_url,
            "--judge_api_key_env", "ORCA_TEST_JUDGE_KEY", "--judge_model", "judge-under-test",
            "--judge_max_attempts", str(MAX_ATTEMPTS), "--judge_backoff_initial_s", "0.005",
            "--judge_backoff_max_s", "0.02", "--judge_timeout_s", "0.3", "--judge_rpm", "1e6", "--judge_tpm", "1e9",
            "--report", str(tmp_path / "report.json"), "--no_progress", *extra]


def test_parse_scores_reads_the_first_line_or_a_final_tuple():
    assert judge.parse_scores("8 7\nbecause") == (8.0, 7.0)
    assert judge.parse_scores("\n  8, 6.5  \nbecause") == (8.0, 6.5)
    assert judge.parse_scores("(9, 3)\n...") == (9.0, 3.0)
    assert judge.parse_scores("First I solve it: 2 + 2 = 4.\nSo (7, 10) it is.\nFinal: (7, 9)") == (7.0, 9.0)
    for text in ("", "Both were fine.", "8\nthen 7", "8 11\n", "Score: 8/10 and 7/10 with (3, 12)"):
        with pytest.raises(TeacherError, match="unparseable") as caught:
            judge.parse_scores(text)
        assert caught.value.retryable


def test_judge_end_to_end_with_faults(tmp_path, monkeypatch, capfd):
    data = write_set(tmp_path, 24)
    q = {row["question_id"]: row["text"] for row in data["questions"]}
    cand, ref = data["candidate"], data["reference"]
    plan = {
        plan_key(q[1], cand["1"]): ["429wait"],
        plan_key(q[1], ref["1"]): ["500long", "malformed_key"],
        plan_key(q[2], cand["2"]): ["slow", "drop"],
        plan_key(q[3], ref["3"]): ["unparseable", "malformed"],
        plan_key(q[4], cand["4"]): ["429", "unparseable", "500"],
        plan_key(q[5], cand["5"]): ["unparseable"] * MAX_ATTEMPTS,  # never parseable: counted, not dropped
        plan_key(q[6], ref["6"]): ["500long"] * MAX_ATTEMPTS,
    }
    monkeypatch.setenv("ORCA_TEST_JUDGE_KEY", KEY)
    with judge_server(KEY, plan, slow_s=0.6) as server:
        assert judge.main(judge_args(tmp_path, server.base_url)) == 0
    report = json.loads((tmp_path / "report.json").read_text())

    # Retry-After honoured: the retry of the 429 came no sooner than the server asked.
    times = server.request_times[plan_key(q[1], cand["1"])]
    assert len(times) == 2 and times[1] - times[0] >= RETRY_AFTER_S
    assert set(server.faults_served) == {"429wait", "500long", "malformed_key", "slow", "drop", "unparseable",
                                         "malformed", "429", "500"}

    judged = [json.loads(line) for line in (tmp_path / "candidate.judgements.jsonl").read_text().splitlines()]
    failed = [json.loads(line) for line in (tmp_path / "candidate.judgements.failed.jsonl").read_text().splitlines()]
    assert len(judged) == 2 * 24 - 2 and len({r["id"] for r in judged}) == len(judged)
    assert {f["id"] for f in failed} == {"5:candidate_first", "6:reference_first"}
    assert all(f["attempts"] == MAX_ATTEMPTS for f in failed)
    assert report["unparseable_failures"] == 1
    assert {u["question_id"] for u in report["unjudged"]} == {"5", "6"}
    assert report["unjudged"][0]["reasons"]["candidate_first"].startswith("unparseable judge reply")
    math_records = [r for r in judged if r["reviewer"] == "math"]
    assert math_records and all(r["review"].rstrip().endswith(")") for r in math_records)

    # The table, computed here from the answers' qualities alone.
    scored = {i: expected_scores(cand[i], ref[i]) for i in cand if i not in ("5", "6")}
    c = np.array([s[0] for s in scored.values()])
    r = np.array([s[1] for s in scored.values()])
    overall = report["overall"]
    assert overall["n"] == 22
    assert overall["candidate_total"] == pytest.approx(c.sum()) and overall["reference_total"] == pytest.approx(r.sum())
    assert overall["relative_pct"] == pytest.approx(100 * c.sum() / r.sum())
    assert (overall["wins"], overall["ties"], overall["losses"]) == ((c > r).sum(), (c == r).sum(), (c < r).sum())
    assert overall["wins"] > 0 and overall["losses"] > 0
    low, high = overall["ci95"]
    assert low < overall["relative_pct"] < high
    for category in CATEGORIES:
        ids = [i for i in scored if data["questions"][int(i) - 1]["category"] == category]
        got = report["categories"][category]
        assert got["n"] == len(ids)
        assert got["candidate_total"] == pytest.approx(sum(scored[i][0] for i in ids))
    # Order bias seen and averaged out: the first-shown answer got +1 unless already at 10.
    assert 0.5 < report["first_position_advantage"] <= 1.0

    printed = capfd.readouterr()
    assert "all (question)" in printed.out and "unjudged 5 (writing)" in printed.out
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert leaked_runs(path.read_text(errors="replace"), KEY) == [], path
    assert leaked_runs(printed.out + printed.err, KEY) == []

    # Reproducible: the same journals give the same report, interval included.
    with judge_server(KEY) as server:
        assert judge.main(judge_args(tmp_path, server.base_url, "--report", str(tmp_path / "again.json"))) == 0
        assert sum(server.requests.values()) == 0, "nothing is judged twice"
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["overall"] == report["overall"] and again["categories"] == report["categories"]
    # --retry_failed judges the two failures again, and only them.
    with judge_server(KEY) as server:
        assert judge.main(judge_args(tmp_path, server.base_url, "--retry_failed")) == 0
        assert sum(server.requests.values()) == 2
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["n"] == 24


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(1)
    c, r = rng.uniform(5, 9, 80), rng.uniform(6, 9, 80)
    first = judge_report.bootstrap_ratio_interval(c, r, 2000, seed=3)
    assert first == judge_report.bootstrap_ratio_interval(c, r, 2000, seed=3)
    assert first != judge_report.bootstrap_ratio_interval(c, r, 2000, seed=4)
    assert first[0] < 100 * c.sum() / r.sum() < first[1]


def test_a_journal_of_other_answers_is_refused(tmp_path, monkeypatch, capsys):
    write_set(tmp_path, 3)
    (tmp_path / "candidate.judgements.jsonl").write_text(json.dumps(
        {"id": "1:candidate_first", "answers_sha256": "0" * 16, "candidate_score": 9, "reference_score": 1}) + "\n")
    monkeypatch.setenv("ORCA_TEST_JUDGE_KEY", KEY)
    assert judge.main(judge_args(tmp_path, "http://127.0.0.1:9/v1")) == 1
    assert "candidate.judgements.jsonl: line 1: judgement 1:candidate_first was made for other answers" in \
        capsys.readouterr().err


def test_missing_answers_and_key_are_named(tmp_path, monkeypatch, capsys):
    write_set(tmp_path, 3)
    (tmp_path / "candidate.jsonl").write_text(json.dumps({"question_id": 1, "text": "only one"}) + "\n")
    monkeypatch.setenv("ORCA_TEST_JUDGE_KEY", KEY)
    assert judge.main(judge_args(tmp_path, "http://127.0.0.1:9/v1")) == 1
    assert "candidate.jsonl: the candidate answers lack 2 of 3 prompts (ids 2, 3)" in capsys.readouterr().err
    write_set(tmp_path, 3)
    monkeypatch.delenv("ORCA_TEST_JUDGE_KEY")
    assert judge.main(judge_args(tmp_path, "http://127.0.0.1:9/v1")) == 1
    assert "ORCA_TEST_JUDGE_KEY (--judge_api_key_env) is not set" in capsys.readouterr().err


def _whole_lines(path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def test_kill9_then_restart_judges_every_question_and_order_exactly_once(tmp_path):
    data = write_set(tmp_path, 40, seed=2)
    q = {str(row["question_id"]): row["text"] for row in data["questions"]}
    journal = tmp_path / "candidate.judgements.jsonl"
    env = {**os.environ, "ORCA_TEST_JUDGE_KEY": KEY}

    def key_of(job_id: str) -> str:
        question_id, order = job_id.split(":")
        first = data["candidate" if order == "candidate_first" else "reference"][question_id]
        return plan_key(q[question_id], first)

    with judge_server(KEY, reply_delay_s=0.02) as server:
        command = [sys.executable, "-m", "orca_jax.cli", "judge", *judge_args(tmp_path, server.base_url),
                   "--judge_concurrency", "2"]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(_whole_lines(journal)) < 15 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first.kill()
        first_out, first_err = first.communicate()
        before = {row["id"] for row in _whole_lines(journal)}
        requests_before = server.requests.copy()
        assert first.returncode == -9 and 15 <= len(before) < 80, first_err
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    ids = [row["id"] for row in _whole_lines(journal)]
    assert len(ids) == len(set(ids)) == 80, "every (question, order) judged exactly once"
    assert set(ids) == {f"{i}:{order}" for i in q for order in judge_report.ORDERS}
    for job_id in before:
        assert server.requests[key_of(job_id)] == requests_before[key_of(job_id)], f"{job_id} was judged again"
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["n"] == 40
    for text in (first_out, first_err, second.stdout, second.stderr, journal.read_text()):
        assert leaked_runs(text, KEY) == []


@pytest.mark.skipif(not (SHARED_BENCHMARKS / "vicuna").is_dir(), reason="no shared benchmark files")
def test_the_published_prompt_sets_and_reviewers_read_as_documented():
    vicuna = prompt_sets.load_prompt_set(SHARED_BENCHMARKS / "vicuna" / "question.jsonl")
    awesome = prompt_sets.load_prompt_set(SHARED_BENCHMARKS / "awesome" / "prompts.csv")
    wizard = prompt_sets.load_prompt_set(SHARED_BENCHMARKS / "wizardlm" / "WizardLM_testset.jsonl")
    assert (len(vicuna), len(awesome), len(wizard)) == (80, 163, 218)
    reviewers = judge.load_reviewers(SHARED_BENCHMARKS / "vicuna")
    assert {k: (r.temperature, r.max_tokens) for k, r in reviewers.items()} == {
        "general": (0.2, 1024), "coding": (0.2, 1024), "math": (0.2, 1024)}
    kinds = [judge.reviewer_kind(p.category, reviewers) for p in vicuna]
    assert (kinds.count("coding"), kinds.count("math")) == (7, 3)
    wizard_kinds = {p.category: judge.reviewer_kind(p.category, reviewers) for p in wizard}
    assert wizard_kinds["Code Generation"] == wizard_kinds["Code Debug"] == "coding" and wizard_kinds["Math"] == "math"
    reference = judge.read_answers(SHARED_BENCHMARKS / "vicuna" / "answers" / "answer_gpt35.jsonl")
    judge.require_answers(SHARED_BENCHMARKS / "vicuna", reference, vicuna, "reference")


def test_prompt_readers_name_the_file_row_and_field(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": 1, "prompt": "Say hi."}\n{"id": 2, "prompt": ""}\n')
    with pytest.raises(prompt_sets.PromptSetError, match=r"p.jsonl: line 2: field 'prompt' is empty"):
        prompt_sets.load_prompt_set(tmp_path / "p.jsonl")
    (tmp_path / "p.jsonl").write_text('{"id": 1, "prompt": "Say hi."}\n{"id": 1, "prompt": "Again."}\n')
    with pytest.raises(prompt_sets.PromptSetError, match="id '1' appears twice"):
        prompt_sets.load_prompt_set(tmp_path / "p.jsonl")
    (tmp_path / "a.csv").write_text('act,prompt\nPoet,"Write, then rhyme."\nEmpty,\n')
    with pytest.raises(prompt_sets.PromptSetError, match="a.csv: data row 2"):
        prompt_sets.load_prompt_set(tmp_path / "a.csv")
    (tmp_path / "g.jsonl").write_text('{"idx": 7, "instruction": "Do it.", "category": "x"}\n')
    assert prompt_sets.load_prompt_set(tmp_path / "g.jsonl") == [prompt_sets.Prompt("7", "Do it.", "x")]


@pytest.mark.slow
def test_candidate_answers_generated_and_reference_answers_fetched(tmp_path, monkeypatch):
    """--params decodes the missing candidate answers (greedy, the chat template), --reference_model asks
    the teacher client for the missing reference answers; both are appended once and then reused."""
    import flax.linen as nn
    import jax

    from orca_jax import parallel
    from orca_jax.data.templates import encode_prompt
    from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
    from orca_jax.eval.generate import abstract_decode_params, greedy_generate
    from orca_jax.model import llama, params_io
    from orca_jax.model.config import ModelConfig

    from teacher_server import TeacherServer, reply_for

    data = write_set(tmp_path, 5)
    (tmp_path / "candidate.jsonl").unlink()
    # With --reference_model the file is the teacher client's journal (`construct query` records).
    (tmp_path / "reference.jsonl").write_text(json.dumps(
        {"id": "1", "system_prompt": "", "question": data["questions"][0]["text"], "response": data["reference"]["1"],
         "teacher": "earlier", "finish_reason": "stop"}) + "\n")
    texts = [row["text"] for row in data["questions"]] * 20 + ["The answer is short and plain."] * 20
    tokenizer_path = train_tokenizer(texts, tmp_path / "tok", vocab_size=320)
    tokenizer = Tokenizer.load(tokenizer_path)
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=8, max_seq_len=128, compute_dtype="float32")
    params = nn.unbox(llama.init_params(model_config, jax.random.PRNGKey(0)))
    params_io.save_params(tmp_path / "params", params, model_config)

    monkeypatch.setenv("ORCA_TEST_JUDGE_KEY", KEY)
    args = ["--params", str(tmp_path / "params"), "--tokenizer", str(tokenizer_path), "--template", "orca",
            "--max_new_tokens", "6", "--batch_size", "4", "--reference_model", "reference-under-test",
            "--reference_api_key_env", "ORCA_TEST_JUDGE_KEY"]
    with TeacherServer(KEY) as reference_server, judge_server(KEY) as server:
        args += ["--reference_base_url", reference_server.base_url]
        assert judge.main(judge_args(tmp_path, server.base_url, *args)) == 0
        assert judge.main(judge_args(tmp_path, server.base_url, *args)) == 0  # everything is reused
        assert sum(reference_server.requests.values()) == 4  # question 1's answer was there already
        assert sum(server.requests.values()) == 10
    candidate = [json.loads(line) for line in (tmp_path / "candidate.jsonl").read_text().splitlines()]
    assert [row["question_id"] for row in candidate] == ["1", "2", "3", "4", "5"]
    prompts = [encode_prompt(tokenizer, "orca", "", row["text"]) for row in data["questions"]]
    mesh = parallel.make_mesh(-1, 1, 1)
    restored = params_io.restore_params(tmp_path / "params", abstract_decode_params(model_config, mesh))
    expected = greedy_generate(restored, model_config, prompts, max_new_tokens=6, eos_id=tokenizer.eos_id,
                               pad_id=tokenizer.pad_id, batch_size=8, mesh=mesh)
    assert [row["text"] for row in candidate] == [tokenizer.decode(ids) for ids in expected]
    reference = judge.read_answers(tmp_path / "reference.jsonl")
    assert reference["1"] == data["reference"]["1"]
    assert all(reference[str(i)] == reply_for(data["questions"][i - 1]["text"]) for i in range(2, 6))
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["n"] == 5
