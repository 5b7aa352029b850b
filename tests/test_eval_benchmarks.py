"""BBH / AGIEval readers and zero-shot prompts: on the real public files when the workplace has them
(skipped otherwise), and on small hand-made files for the error paths and answer-format rules; then
the `orca-jax evaluate` command end to end on a tiny saved model."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest
from conftest import SHARED_BENCHMARKS

from orca_jax import parallel
from orca_jax.config import load_config
from orca_jax.data.construct.jsonl import RecordFormatError
from orca_jax.data.demo import write_demo_data
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval.benchmarks import (GENERIC_FORMAT, MULTIPLE_CHOICE_FORMAT, OPEN_ANSWER_FORMATS, SYSTEM_MESSAGE,
                                      bbh_answer_format, read_agieval, read_bbh, read_benchmark)
from orca_jax.eval.exact_match import evaluate_examples, exact_match
from orca_jax.eval.main import main as evaluate_main
from orca_jax.model import params_io
from orca_jax.model.config import ModelConfig

BBH_DIR = SHARED_BENCHMARKS / "bbh"
AGIEVAL_DIR = SHARED_BENCHMARKS / "agieval"
needs_bbh = pytest.mark.skipif(not BBH_DIR.is_dir(), reason=f"no BBH files at {BBH_DIR}")
needs_agieval = pytest.mark.skipif(not AGIEVAL_DIR.is_dir(), reason=f"no AGIEval files at {AGIEVAL_DIR}")


@needs_bbh
def test_bbh_reads_every_example_of_every_task():
    raw = {path.stem: json.loads(path.read_text())["examples"] for path in BBH_DIR.glob("*.json")}
    examples = read_bbh(BBH_DIR)
    assert len(raw) == 27
    for task, rows in raw.items():
        mine = [e for e in examples if e.task == task]
        assert [e.answer for e in mine] == [row["target"].strip() for row in rows]
        assert all(row["input"] in e.question for e, row in zip(mine, rows))
    assert all(e.system_prompt == SYSTEM_MESSAGE for e in examples)
    assert len({e.id for e in examples}) == len(examples)


@needs_bbh
def test_bbh_multiple_choice_prompts_list_the_options_and_ask_for_a_letter():
    multiple_choice = [e for e in read_bbh(BBH_DIR) if re.search(r"^\(A\) ", e.question, re.MULTILINE)]
    assert len({e.task for e in multiple_choice}) >= 15
    for example in multiple_choice:
        assert example.question.endswith(MULTIPLE_CHOICE_FORMAT)
        if re.fullmatch(r"\([A-Z]\)", example.answer):  # a few published golds are option text instead
            assert f"\n{example.answer} " in example.question


@needs_bbh
def test_bbh_task_selection_and_limit():
    examples = read_benchmark("bbh", SHARED_BENCHMARKS, tasks=["navigate", "word_sorting"], limit=5)
    assert [e.id for e in examples] == [f"{t}.{i}" for t in ("navigate", "word_sorting") for i in range(5)]
    assert examples[0].question.endswith("Answer with one of: No, Yes.")
    assert examples[-1].question.endswith(OPEN_ANSWER_FORMATS["word_sorting"])


@needs_agieval
def test_agieval_reads_every_item_with_its_options_and_letter_gold():
    for path in AGIEVAL_DIR.glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        examples = read_agieval(AGIEVAL_DIR, tasks=[path.stem])
        assert len(examples) == len(rows) > 0
        for example, row in zip(examples, rows):
            assert example.answer == f"({row['label']})"
            assert all(option in example.question for option in row["options"])
            assert row["question"].strip() in example.question
            if row["passage"]:
                assert example.question.startswith(row["passage"].strip())
            assert example.question.endswith(MULTIPLE_CHOICE_FORMAT)


@needs_agieval
def test_agieval_limit_applies_per_task():
    examples = read_benchmark("agieval", SHARED_BENCHMARKS, limit=3)
    tasks = sorted(path.stem for path in AGIEVAL_DIR.glob("*.jsonl"))
    assert [e.id for e in examples] == [f"{t}.{i}" for t in tasks for i in range(3)]


def test_agieval_options_without_letters_get_them(tmp_path):
    row = {"passage": None, "question": "Pick one.", "options": ["red", "blue"], "label": "B"}
    (tmp_path / "colors.jsonl").write_text(json.dumps(row) + "\n")
    (example,) = read_agieval(tmp_path)
    assert "Answer choices:\n(A) red\n(B) blue\n" in example.question
    assert exact_match("(B) blue", example.answer) and not exact_match("(A) red", example.answer)


@pytest.mark.parametrize("field, value, message", [
    ("label", "C", r"line 2: field 'label' is 'C', not one of the option letters AB"),
    ("options", [], r"line 2: field 'options' is not a non-empty list"),
    ("passage", 3, r"line 2: field 'passage' is a int"),
    ("question", None, r"line 2: field 'question' is missing"),
])
def test_agieval_bad_rows_name_file_line_and_field(tmp_path, field, value, message):
    good = {"passage": "P.", "question": "Q?", "options": ["(A)x", "(B)y"], "label": "A"}
    bad = {**good, field: value}
    (tmp_path / "task.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordFormatError, match=r"task\.jsonl: " + message):
        read_agieval(tmp_path)


def test_bbh_bad_files_name_file_example_and_field(tmp_path):
    (tmp_path / "broken.json").write_text(json.dumps({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}))
    with pytest.raises(RecordFormatError, match=r"broken\.json: example 1: field 'target'"):
        read_bbh(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RecordFormatError, match=r"broken\.json: not JSON"):
        read_bbh(tmp_path)


def test_unknown_tasks_and_benchmarks_are_named(tmp_path):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / "navigate.json").write_text(json.dumps({"examples": [{"input": "a", "target": "Yes"}]}))
    with pytest.raises(ValueError, match=r"unknown tasks \['nvigate'\].*available: \['navigate'\]"):
        read_benchmark("bbh", tmp_path, tasks=["nvigate"])
    with pytest.raises(ValueError, match=r"unknown benchmark 'mmlu'"):
        read_benchmark("mmlu", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"agieval does not exist"):
        read_benchmark("agieval", tmp_path)


@pytest.mark.parametrize("task, question, targets, expected", [
    ("any", "Which?\nOptions:\n(A) one\n(B) two", ["(A)", "Monsters, Inc"], MULTIPLE_CHOICE_FORMAT),
    ("word_sorting", "Sort: b a", ["a b", "c d"], OPEN_ANSWER_FORMATS["word_sorting"]),
    ("object_counting", "How many?", ["3", "12", "-4"], "Answer with a single integer."),
    ("navigate", "Do you return?", ["Yes", "No", "No"], "Answer with one of: No, Yes."),
    ("new_task", "Name it.", ["w", "x", "y", "z", "v"], GENERIC_FORMAT),
])
def test_bbh_answer_format(task, question, targets, expected):
    assert bbh_answer_format(task, question, targets) == expected


@pytest.fixture(scope="module")
def saved_demo_model(tmp_path_factory):
    """A tiny random model saved as a params directory, its tokenizer, demo data and a config file."""
    root = tmp_path_factory.mktemp("cli")
    paths = write_demo_data(root / "data", seed=5, stage1_rows=200, stage2_rows=100, eval_rows=10)
    texts = [f"{r['system_prompt']}\n{r['question']}\n{r['response']}"
             for r in map(json.loads, paths["stage2"].read_text().splitlines())]
    tokenizer = Tokenizer.load(train_tokenizer(texts, root / "tok", vocab_size=400))
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, mlp_dim=64, num_layers=1,
                               num_heads=2, num_kv_heads=2, head_dim=16, max_seq_len=256, compute_dtype="float32")
    params = params_io.abstract_params(model_config, parallel.make_mesh(devices=jax.devices()[:1]))
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda leaf: np.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype), params)
    params_io.save_params(root / "params", params, model_config)
    config_file = root / "eval_config.py"
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n    return ConfigDict({\n"
        f"        'model': {dataclasses.asdict(model_config)!r},\n"
        "        'mesh': {'data': -1, 'fsdp': 1, 'tensor': 1},\n"
        f"        'data': {{'tokenizer': {str(tokenizer.path)!r}, 'template': 'orca'}},\n"
        f"        'demo': {{'data_dir': {str(root / 'data')!r}, 'max_new_tokens': 10}},\n"
        "    })\n")
    return root, config_file, tokenizer, model_config, params


def test_evaluate_cli_prints_a_table_and_saves_every_response(saved_demo_model, tmp_path, capsys):
    root, config_file, tokenizer, model_config, params = saved_demo_model
    bench = tmp_path / "benchmarks"
    (bench / "bbh").mkdir(parents=True)
    for task, target in (("navigate", "Yes"), ("object_counting", "4")):
        rows = [{"input": f"Question {i} about {task}?", "target": target} for i in range(3)]
        (bench / "bbh" / f"{task}.json").write_text(json.dumps({"examples": rows}))

    common = ["--config", str(config_file), "--params", str(root / "params"), "--batch_size", "3"]
    assert evaluate_main([*common, "--benchmark", "bbh", "--benchmarks_dir", str(bench), "--limit", "2",
                          "--max_new_tokens", "10", "--output", str(tmp_path / "bbh.json")]) == 0
    table, summary = capsys.readouterr().out.strip().rsplit("\n", 1)
    assert re.search(r"^navigate\s+2\s+\d+\.\d%$", table, re.MULTILINE)
    assert re.search(r"^object_counting\s+2\s+", table, re.MULTILINE)
    assert json.loads(summary)["n"] == 4 and "examples" not in json.loads(summary)

    # The saved responses are what the in-memory parameters give on the same prompts and mesh.
    saved = json.loads((tmp_path / "bbh.json").read_text())
    mesh = parallel.mesh_from_config(load_config(str(config_file)).mesh)
    examples = read_benchmark("bbh", bench, limit=2)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, params_io.abstract_params(model_config, mesh))
    direct = evaluate_examples(jax.device_put(params, shardings), model_config, tokenizer, "orca", examples,
                               max_new_tokens=10, batch_size=3, mesh=mesh)
    assert [row["response"] for row in saved["examples"]] == [row["response"] for row in direct["examples"]]

    assert evaluate_main([*common, "--limit", "4"]) == 0  # demo questions, paths from the config
    assert json.loads(capsys.readouterr().out.strip().rsplit("\n", 1)[1])["n"] == 4


def test_evaluate_cli_reports_bad_input_in_one_line(saved_demo_model, capsys):
    root, config_file, *_ = saved_demo_model
    assert evaluate_main(["--config", str(config_file), "--params", str(root / "params"),
                          "--benchmark", "agieval"]) == 1
    assert capsys.readouterr().err.strip() == "orca-jax evaluate: --benchmarks_dir is required for --benchmark agieval"
    assert evaluate_main(["--config", str(config_file), "--params", str(root / "nowhere")]) == 1
    assert "nowhere/params does not exist" in capsys.readouterr().err
