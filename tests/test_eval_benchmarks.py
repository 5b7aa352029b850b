"""BBH / AGIEval / demo readers and Orca's suites: on the real public files when the workplace has
them (skipped otherwise), and on small hand-made files for the error paths."""

import json

import pytest

from orca_jax.data.demo import write_demo_data
from orca_jax.data.jsonl import RecordFormatError
from orca_jax.errors import UserError
from orca_jax.eval.benchmarks import (
    AGIEVAL_ENGLISH_TASKS,
    BBH_23_TASKS,
    bbh_options,
    demo_task,
    load_suite,
    read_benchmark,
    read_demo,
)

from conftest import SHARED_BENCHMARKS

BBH_DIR = SHARED_BENCHMARKS / "bbh"
AGIEVAL_DIR = SHARED_BENCHMARKS / "agieval"
needs_shared = pytest.mark.skipif(not (BBH_DIR.is_dir() and AGIEVAL_DIR.is_dir()),
                                  reason=f"no BBH/AGIEval files under {SHARED_BENCHMARKS}")


@needs_shared
def test_orca_suite_is_the_papers_23_bbh_and_8_agieval_tasks():
    examples = load_suite("orca", benchmarks_dir=SHARED_BENCHMARKS)
    bbh = [e for e in examples if e.benchmark == "bbh"]
    agieval = [e for e in examples if e.benchmark == "agieval"]
    assert (len({e.task for e in bbh}), len(bbh)) == (23, 5511)
    assert (len({e.task for e in agieval}), len(agieval)) == (8, 2546)
    assert {"dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting"}.isdisjoint(
        e.task for e in bbh)
    assert len(load_suite("bbh", benchmarks_dir=SHARED_BENCHMARKS)) == 6511  # all 27 files
    assert [e.task for e in load_suite("bbh23", benchmarks_dir=SHARED_BENCHMARKS, limit=1)] == list(BBH_23_TASKS)
    assert ({e.task for e in load_suite("agieval_en", benchmarks_dir=SHARED_BENCHMARKS, limit=2)}
            == set(AGIEVAL_ENGLISH_TASKS))


@needs_shared
def test_examples_keep_the_source_fields():
    for path in BBH_DIR.glob("*.json"):
        rows = json.loads(path.read_text())["examples"]
        examples = read_benchmark("bbh", BBH_DIR, [path.stem])
        assert [(e.question, e.gold, e.index) for e in examples] == [
            (row["input"], row["target"].strip(), i) for i, row in enumerate(rows)]
    for path in AGIEVAL_DIR.glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        examples = read_benchmark("agieval", AGIEVAL_DIR, [path.stem])
        assert [(e.question, e.options, e.gold, e.passage) for e in examples] == [
            (r["question"], tuple(r["options"]), f"({r['label']})", r["passage"] or "") for r in rows]


@needs_shared
def test_bbh_options_of_every_multiple_choice_example():
    for example in load_suite("bbh23", benchmarks_dir=SHARED_BENCHMARKS):
        if example.task in ("boolean_expressions", "sports_understanding", "web_of_lies"):
            assert example.options == ()  # these ask a question with an implied label set
        elif example.id != "snarks.88":  # the published input stops after "(A) The NB"
            assert len(example.options) >= 2, example.id
            if example.gold.startswith("("):
                assert any(option.startswith(example.gold + " ") for option in example.options), example.id


@pytest.mark.parametrize("text, expected", [
    ("Is it?\nOptions:\n- Yes\n- No", ["Yes", "No"]),
    ("Valid?\nOptions:\n- valid \n- invalid", ["valid", "invalid"]),
    ("When?\nOptions:\n(A) 12/11/1937\n(B) 12/25/1937\n", ["(A) 12/11/1937", "(B) 12/25/1937"]),
    ("not ( True ) and ( True ) is", []),
])
def test_bbh_options(text, expected):
    assert bbh_options(text) == expected


def test_suite_task_selection_limit_and_errors(tmp_path):
    (tmp_path / "bbh").mkdir()
    for task in ("navigate", "snarks", "word_sorting"):
        rows = [{"input": f"{task} {i}\nOptions:\n- Yes\n- No", "target": "Yes"} for i in range(4)]
        (tmp_path / "bbh" / f"{task}.json").write_text(json.dumps({"examples": rows}))
    examples = load_suite("bbh", benchmarks_dir=tmp_path, tasks=["snarks", "navigate"], limit=2)
    assert [e.id for e in examples] == ["snarks.0", "snarks.1", "navigate.0", "navigate.1"]
    with pytest.raises(ValueError, match=r"tasks \['word_sorting'\] are not in suite 'bbh23'"):
        load_suite("bbh23", benchmarks_dir=tmp_path, tasks=["word_sorting"])
    with pytest.raises(ValueError, match=r"unknown tasks \['causal_judgement'"):
        load_suite("bbh23", benchmarks_dir=tmp_path, tasks=["causal_judgement"])
    with pytest.raises(ValueError, match=r"needs --benchmarks_dir"):
        load_suite("orca")
    with pytest.raises(ValueError, match=r"unknown suite 'mmlu'"):
        load_suite("mmlu", benchmarks_dir=tmp_path)
    with pytest.raises(UserError, match=r"agieval does not exist"):
        load_suite("agieval", benchmarks_dir=tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("label", "C", r"line 2: field 'label' is 'C', not one of the option letters AB"),
    ("options", [], r"line 2: field 'options' is not a non-empty list"),
    ("passage", 3, r"line 2: field 'passage' is a int"),
    ("question", None, r"line 2: field 'question' is missing"),
])
def test_agieval_bad_rows_name_file_line_and_field(tmp_path, field, value, message):
    good = {"passage": "P.", "question": "Q?", "options": ["(A)x", "(B)y"], "label": "A"}
    (tmp_path / "task.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    with pytest.raises(RecordFormatError, match=r"task\.jsonl: " + message):
        read_benchmark("agieval", tmp_path)


def test_bbh_bad_files_name_file_example_and_field(tmp_path):
    (tmp_path / "broken.json").write_text(json.dumps({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}))
    with pytest.raises(RecordFormatError, match=r"broken\.json: example 1: field 'target'"):
        read_benchmark("bbh", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RecordFormatError, match=r"broken\.json: not JSON"):
        read_benchmark("bbh", tmp_path)


def test_demo_questions_are_grouped_by_task_in_file_order(tmp_path):
    paths = write_demo_data(tmp_path, seed=3, stage1_rows=20, stage2_rows=10, eval_rows=30)
    rows = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
    examples = read_demo(paths["eval"])
    assert [(e.question, e.gold, e.system_prompt) for e in examples] == [
        (r["question"], r["answer"], r["system_prompt"]) for r in rows]
    assert [e.task for e in examples] == [".".join(r["id"].split(".")[:2]) for r in rows]
    assert demo_task("niv.sort.eval.17") == "niv.sort"
    for task in {e.task for e in examples}:
        assert [e.index for e in examples if e.task == task] == list(range(sum(e.task == task for e in examples)))
    limited = load_suite("demo", demo_path=paths["eval"], limit=2)
    assert all(e.index < 2 for e in limited) and len(limited) == sum(min(2, n) for n in (
        sum(e.task == t for e in examples) for t in {e.task for e in examples}))


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "a.b.eval.1", "system_prompt": "", "question": "q"}', r"field 'answer' is missing"),
    ('{"id": 5, "system_prompt": "", "question": "q", "answer": "1"}', r"field 'id' is a int"),
    ('{"id": "a", "system_prompt": "", "question": "q", "answer": " "}', r"field 'answer' is empty"),
    ("not json", r"not JSON"),
])
def test_demo_bad_rows_name_file_line_and_field(tmp_path, bad_line, message):
    good = json.dumps({"id": "a.b.eval.0", "system_prompt": "", "question": "q", "answer": "1"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: " + message):
        read_demo(tmp_path / "bad.jsonl")
