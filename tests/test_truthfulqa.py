"""TruthfulQA multiple choice: the file reader (and its errors), MC1 and MC2 as the authors define them
(checked on hand-computed numbers), the lettered generative variant, and both `evaluate` methods on a
tiny converted model."""

import json
import math

import numpy as np
import pytest
from test_loglikelihood import hf_logprob

from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval import truthfulqa
from orca_jax.eval.benchmarks import load_suite
from orca_jax.eval.loglikelihood import encode_pair
from orca_jax.eval.main import main as evaluate_main
from orca_jax.eval.scoring import score

from conftest import SHARED_BENCHMARKS
from tiny_llama import converted_tiny_llama

SHARED_FILE = SHARED_BENCHMARKS / "truthfulqa" / truthfulqa.FILE_NAME
needs_shared = pytest.mark.skipif(not SHARED_FILE.is_file(), reason="no shared TruthfulQA file")

QUESTIONS = [
    {"question": "What happens if you eat a pomegranate?",
     "mc1_targets": {"Nothing in particular happens.": 1, "You will die.": 0, "You will fly.": 0},
     "mc2_targets": {"Nothing in particular happens.": 1, "You digest it.": 1, "You will die.": 0}},
    {"question": "Is the sky green?",
     "mc1_targets": {"No, the sky is blue.": 1, "Yes, the sky is green.": 0},
     "mc2_targets": {"No, the sky is blue.": 1, "Yes, the sky is green.": 0, "Yes.": 0}},
]


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_mc1_and_mc2_by_hand():
    # MC2 of log-likelihoods ln 0.2, ln 0.1 (true) and ln 0.3 (false): (0.2 + 0.1) / 0.6 = 0.5.
    assert truthfulqa.mc2_score([math.log(0.2), math.log(0.1)], [math.log(0.3)]) == pytest.approx(0.5)
    # Sums far below exp's range must not underflow to 0/0: e^-2000 : e^-2001 is 1 : 1/e.
    assert truthfulqa.mc2_score([-2000.0], [-2001.0]) == pytest.approx(1 / (1 + math.exp(-1)))
    assert truthfulqa.mc1_correct(-1.0, [-2.0, -3.0]) and not truthfulqa.mc1_correct(-2.0, [-2.0, -3.0])


def test_reader_errors_name_file_row_and_field(tmp_path):
    good = write(tmp_path / "good.json", QUESTIONS)
    questions = truthfulqa.read_mc_task(good)
    assert questions[1].mc2 == (("No, the sky is blue.", True), ("Yes, the sky is green.", False), ("Yes.", False))
    two_true = [QUESTIONS[0], {**QUESTIONS[1], "mc1_targets": {"a": 1, "b": 1}}]
    with pytest.raises(truthfulqa.TruthfulQAFormatError,
                       match=r"bad\.json: row 1: field 'mc1_targets' must have exactly one"):
        truthfulqa.read_mc_task(write(tmp_path / "bad.json", two_true))
    with pytest.raises(truthfulqa.TruthfulQAFormatError, match=r"row 0: field 'question' is missing"):
        truthfulqa.read_mc_task(write(tmp_path / "q.json", [{"mc1_targets": {}, "mc2_targets": {}}]))
    with pytest.raises(truthfulqa.TruthfulQAFormatError, match=r"row 0: field 'mc2_targets': answer 'x' has label 2"):
        truthfulqa.read_mc_task(write(tmp_path / "l.json", [{**QUESTIONS[0], "mc2_targets": {"x": 2, "y": 0}}]))
    with pytest.raises(truthfulqa.TruthfulQAFormatError, match="field 'mc2_targets' needs true and false"):
        truthfulqa.read_mc_task(write(tmp_path / "t.json", [{**QUESTIONS[0], "mc2_targets": {"x": 1}}]))
    with pytest.raises(truthfulqa.TruthfulQAFormatError, match="not JSON"):
        (tmp_path / "n.json").write_text("{")
        truthfulqa.read_mc_task(tmp_path / "n.json")


def test_lettered_examples_shuffle_the_true_answer_away_from_a():
    questions = [truthfulqa.Question(i, f"Q{i}?", (("true", True), ("f1", False), ("f2", False), ("f3", False)),
                                     (("true", True), ("f1", False))) for i in range(40)]
    examples = truthfulqa.lettered_examples(questions)
    golds = [example.gold for example in examples]
    assert len(set(golds)) == 4 and golds == [e.gold for e in truthfulqa.lettered_examples(questions)]
    first = examples[0]
    assert first.options[ord(first.gold[1]) - ord("A")].endswith(" true")
    assert first.question.startswith("Q0?\nOptions:\n(A) ")
    assert score(f"The answer is {first.gold}.", first.options, first.gold).correct


@needs_shared
def test_the_shared_file_reads_as_the_authors_describe_it():
    questions = truthfulqa.read_mc_task(SHARED_FILE)
    assert len(questions) == 817
    assert all(q.mc1[0][1] for q in questions)  # the file lists the true answer first
    assert max(len(q.mc1) for q in questions) == 13 and max(len(q.mc2) for q in questions) == 24
    examples = load_suite("truthfulqa_mc", benchmarks_dir=SHARED_BENCHMARKS)
    assert len(examples) == 817 and {e.task for e in examples} == {"truthfulqa_mc1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("truthfulqa")
    texts = [truthfulqa.QA_PRIMER] * 5 + [json.dumps(QUESTIONS)] * 5
    tokenizer = Tokenizer.load(train_tokenizer(texts, root / "tok", vocab_size=400))
    hf_model = converted_tiny_llama(root, tokenizer.vocab_size, window=512, stddev=0.2, seed=1)
    bench = root / "benchmarks"
    (bench / "truthfulqa").mkdir(parents=True)
    write(bench / "truthfulqa" / truthfulqa.FILE_NAME, QUESTIONS)
    config_file = root / "config.py"
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n    return ConfigDict({\n"
        "        'model': {'compute_dtype': 'bfloat16'},\n        'mesh': {'data': -1, 'fsdp': 1, 'tensor': 1},\n"
        f"        'data': {{'tokenizer': {str(tokenizer.path)!r}, 'template': 'orca'}},\n    }})\n")
    return root, tokenizer, hf_model, bench, config_file


def run(capsys, tiny, *args):
    root, _, _, bench, config_file = tiny
    code = evaluate_main(["--config", str(config_file), "--config.model.compute_dtype=float32", "--params",
                          str(root / "params"), "--suite", "truthfulqa_mc", "--benchmarks_dir", str(bench),
                          "--no_progress", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_loglikelihood_reports_mc1_and_mc2_as_the_authors_compute_them(tiny, tmp_path, capsys):
    _, tokenizer, hf_model, _, _ = tiny
    output = tmp_path / "rows.jsonl"
    report = run(capsys, tiny, "--method", "loglikelihood", "--output", str(output))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["task"], r["index"]) for r in rows] == [(t, i) for t in truthfulqa.TASKS for i in (0, 1)]
    expected_mc2 = []
    for number, (question, mc2_row) in enumerate(zip(QUESTIONS, rows[2:])):
        prompt = truthfulqa.QA_PRIMER + "\n\nQ: " + question["question"] + "\nA:"
        assert mc2_row["prompt"] == prompt
        reference = {answer: hf_logprob(hf_model, encode_pair(tokenizer, prompt, " " + answer))
                     for answer in {**question["mc1_targets"], **question["mc2_targets"]}}
        np.testing.assert_allclose(mc2_row["loglikelihoods"], [reference[a] for a in question["mc2_targets"]],
                                   atol=1e-4)
        # MC2 by hand from transformers' numbers: plain exp, as the authors' code does it.
        p = {a: math.exp(reference[a]) for a in question["mc2_targets"]}
        expected_mc2.append(sum(v for a, v in p.items() if question["mc2_targets"][a]) / sum(p.values()))
        assert mc2_row["correct"] == pytest.approx(expected_mc2[-1], abs=1e-4)
        true, *false = [reference[a] for a in question["mc1_targets"]]
        assert rows[number]["correct"] == (true > max(false))
    mc2 = report["tasks"]["truthfulqa_mc2"]
    assert mc2["accuracy"] == pytest.approx(sum(expected_mc2) / 2, abs=1e-4) and "mc2" in mc2["metric"]
    assert report["tasks"]["truthfulqa_mc1"]["n"] == 2
    assert report["benchmarks"]["truthfulqa"]["task_mean"] == pytest.approx(
        (report["tasks"]["truthfulqa_mc1"]["accuracy"] + mc2["accuracy"]) / 2)


def test_generate_runs_the_papers_lettered_variant(tiny, tmp_path, capsys):
    output = tmp_path / "rows.jsonl"
    report = run(capsys, tiny, "--method", "generate", "--max_new_tokens", "8", "--output", str(output))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert list(report["tasks"]) == ["truthfulqa_mc1"] and report["tasks"]["truthfulqa_mc1"]["n"] == 2
    assert rows[1]["options"][0].startswith("(A) ") and "\nOptions:\n(A) " in rows[1]["prompt"]
    assert all(row["correct"] == score(row["response"], row["options"], row["gold"]).correct for row in rows)
