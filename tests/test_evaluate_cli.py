"""`orca-jax evaluate` end to end on a tiny LLaMA made with transformers and converted: the Orca suite
on the real files (when present), the report and its provenance, rescoring, resume, long prompts, the
model config taken from the params directory, and one-line errors."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from orca_jax import parallel
from orca_jax.data.demo import write_demo_data
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval import runner
from orca_jax.eval.benchmarks import load_suite
from orca_jax.eval.main import main as evaluate_main
from orca_jax.eval.prompts import PromptBuilder
from orca_jax.model import params_io
from orca_jax.train.checkpoint import Checkpointer, Position
from orca_jax.train.step import TrainState

from conftest import SHARED_BENCHMARKS
from tiny_llama import converted_tiny_llama

WINDOW = 256
needs_shared = pytest.mark.skipif(not (SHARED_BENCHMARKS / "bbh").is_dir(), reason="no shared benchmark files")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tokenizer, a converted tiny random LLaMA, small benchmark files and a config naming them."""
    root = tmp_path_factory.mktemp("evaluate")
    paths = write_demo_data(root / "data", seed=5, stage1_rows=200, stage2_rows=100, eval_rows=24)
    texts = [f"{r['system_prompt']}\n{r['question']}\n{r['response']}"
             for r in map(json.loads, paths["stage2"].read_text().splitlines())]
    texts += ["Q: Which is right? Answer Choices: (A)one (B)two\nA: Among A through B, the answer is"] * 20
    tokenizer = Tokenizer.load(train_tokenizer(texts, root / "tok", vocab_size=500))

    converted_tiny_llama(root, tokenizer.vocab_size, window=WINDOW)

    bench = root / "benchmarks"
    (bench / "bbh").mkdir(parents=True)
    (bench / "agieval").mkdir()
    for task, target in (("navigate", "No"), ("snarks", "(B)")):
        rows = [{"input": f"Question {i} of {task}?\nOptions:\n" + (
            "- Yes\n- No" if task == "navigate" else "(A) it is\n(B) it is not"), "target": target}
            for i in range(5)]
        (bench / "bbh" / f"{task}.json").write_text(json.dumps({"examples": rows}))
    long_passage = " ".join(f"The {i}th sentence of a very long passage." for i in range(120))
    agieval_rows = [{"passage": long_passage if i == 0 else None, "question": f"Pick {i}.",
                     "options": ["(A)one", "(B)two"], "label": "B"} for i in range(3)]
    (bench / "agieval" / "lsat-ar.jsonl").write_text("".join(json.dumps(r) + "\n" for r in agieval_rows))

    config_file = root / "eval_config.py"
    # The model block is deliberately wrong: the params directory's model_config.json must win.
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n    return ConfigDict({\n"
        "        'model': {'vocab_size': 7, 'max_seq_len': 16, 'attention': 'xla'},\n"
        "        'mesh': {'data': -1, 'fsdp': 1, 'tensor': 1},\n"
        f"        'data': {{'tokenizer': {str(tokenizer.path)!r}, 'template': 'orca'}},\n"
        f"        'eval': {{'eval_path': {str(paths['eval'])!r}, 'max_new_tokens': 12}},\n"
        "    })\n")
    return root, config_file, tokenizer, bench


def run(capsys, *args):
    code = evaluate_main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_benchmark_run_prints_the_report_and_saves_every_example(setup, tmp_path, capsys):
    root, config_file, tokenizer, bench = setup
    output = tmp_path / "rows.jsonl"
    code, out, err = run(capsys, "--config", str(config_file), "--params", str(root / "params"), "--suite", "bbh",
                         "--benchmarks_dir", str(bench), "--batch_size", "4", "--output", str(output),
                         "--report", str(tmp_path / "report.json"), "--no_progress")
    assert code == 0, err
    table, summary = out.strip().rsplit("\n", 1)
    assert re.search(r"^navigate +5 +\d+\.\d% +\d+\.\d%-\d+\.\d%", table, re.MULTILINE)
    assert re.search(r"^bbh \(mean over tasks\) +10 ", table, re.MULTILINE)
    report = json.loads(summary)
    assert report == json.loads((tmp_path / "report.json").read_text())
    provenance = report["provenance"]
    assert provenance["system_message"] == "" and provenance["prompt_style"] == "chat"
    assert provenance["template"] == "orca" and provenance["decode"]["method"] == "greedy"
    assert provenance["max_new_tokens"] == WINDOW // 4  # the default fits the window
    assert provenance["model_config"]["max_seq_len"] == WINDOW  # from the params directory, not the config
    assert provenance["params_dtype"] == "bfloat16" and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown",
                                                                      provenance["code_revision"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["task"], r["index"]) for r in rows] == [(t, i) for t in ("navigate", "snarks") for i in range(5)]
    assert {"prompt", "options", "gold", "response", "extracted", "correct"} <= set(rows[0])
    assert rows[5]["options"] == ["(A) it is", "(B) it is not"] and rows[5]["gold"] == "(B)"
    assert rows[0]["prompt"] == "### User:\nQuestion 0 of navigate?\nOptions:\n- Yes\n- No\n\n### Assistant:\n"
    assert sum(r["correct"] for r in rows) == sum(t["correct"] for t in report["tasks"].values())
    assert not output.with_name("rows.jsonl.journal").exists()  # the output now holds every row

    # The same rows come from the in-memory evaluation of the same parameters.
    model_config = params_io.load_model_config(root / "params")
    mesh = parallel.make_mesh()
    # Restored in float32 and cast by the decoder (norm scales stay float32), as evaluate restores them.
    params = params_io.restore_params(root / "params", parallel.abstract_params(model_config, mesh))
    builder = PromptBuilder(tokenizer, "orca", system_message="", max_tokens=WINDOW - WINDOW // 4)
    direct = runner.evaluate_examples(params, model_config, tokenizer, builder,
                                      load_suite("bbh", benchmarks_dir=bench)[::-1],
                                      max_new_tokens=WINDOW // 4, batch_size=4, mesh=mesh)
    by_key = {(r["task"], r["index"]): r["response"] for r in direct}
    assert all(by_key[r["task"], r["index"]] == r["response"] for r in rows)
    assert len({r["response"] for r in rows}) > 1  # the prompts reach the model

    # Rescoring the saved file without a model gives the same verdicts and report.
    code, out, err = run(capsys, "--rescore", str(output), "--output", str(tmp_path / "rescored.jsonl"))
    assert code == 0, err
    rescored = [json.loads(line) for line in (tmp_path / "rescored.jsonl").read_text().splitlines()]
    assert [(r["extracted"], r["correct"]) for r in rescored] == [(r["extracted"], r["correct"]) for r in rows]
    assert json.loads(out.strip().rsplit("\n", 1)[1])["tasks"] == report["tasks"]


def test_long_prompts_are_truncated_or_skipped_and_counted(setup, tmp_path, capsys):
    root, config_file, _, bench = setup
    common = ["--config", str(config_file), "--params", str(root / "params"), "--suite", "agieval",
              "--benchmarks_dir", str(bench), "--max_new_tokens", "8", "--no_progress"]
    code, out, err = run(capsys, *common, "--output", str(tmp_path / "cut.jsonl"))
    assert code == 0, err
    task = json.loads(out.strip().rsplit("\n", 1)[1])["tasks"]["lsat-ar"]
    assert (task["n"], task["truncated"], task["skipped"]) == (3, 1, 0)
    first = json.loads((tmp_path / "cut.jsonl").read_text().splitlines()[0])
    assert first["truncated"] and "... " in first["prompt"] and "Q: Pick 0." in first["prompt"]
    code, out, err = run(capsys, *common, "--long_prompts", "skip")
    assert code == 0, err
    task = json.loads(out.strip().rsplit("\n", 1)[1])["tasks"]["lsat-ar"]
    assert (task["n"], task["truncated"], task["skipped"]) == (3, 0, 1)


def test_an_interrupted_evaluation_resumes_from_its_journal(setup, tmp_path):
    root, _, tokenizer, bench = setup
    model_config = params_io.load_model_config(root / "params")
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    params = params_io.restore_params(root / "params", parallel.abstract_params(model_config, mesh))
    builder = PromptBuilder(tokenizer, "orca", system_message="", max_tokens=WINDOW - 8)
    examples = load_suite("bbh", benchmarks_dir=bench)
    settings = {"suite": "bbh", "max_new_tokens": 8}
    kwargs = dict(max_new_tokens=8, batch_size=5, mesh=mesh)
    uninterrupted = runner.evaluate_examples(params, model_config, tokenizer, builder, examples, **kwargs)

    class Interrupted(Exception):
        pass

    def stop_after_first(task, rows):
        raise Interrupted

    path = tmp_path / "journal"
    with pytest.raises(Interrupted):
        runner.evaluate_examples(params, model_config, tokenizer, builder, examples,
                                 journal=runner.Journal(path, settings), on_task_done=stop_after_first, **kwargs)
    # Mark the journaled rows: a resumed run must take them from the journal, not decode them again.
    header, *rows = path.read_text().splitlines()
    rows = [json.loads(line) for line in rows]
    assert {row["task"] for row in rows} == {"navigate"}
    path.write_text("\n".join([header] + [json.dumps({**r, "response": "from the journal"} if "response" in r else r)
                                          for r in rows]) + "\n" + '{"task": "snarks", "ind')  # a torn write
    resumed = runner.evaluate_examples(params, model_config, tokenizer, builder, examples,
                                       journal=runner.Journal(path, settings), **kwargs)
    assert [r["response"] for r in resumed[:5]] == ["from the journal"] * 5
    assert resumed[5:] == uninterrupted[5:]
    with pytest.raises(runner.JournalError, match="other settings"):
        runner.Journal(path, {**settings, "max_new_tokens": 9})


def test_demo_suite_from_the_config_and_a_checkpoint_step_directory(setup, tmp_path, capsys):
    root, config_file, _, _ = setup
    # A training checkpoint's step directory records the model config in its meta item.
    model_config = params_io.load_model_config(root / "params")
    params = params_io.restore_params(root / "params")
    config_json = json.dumps({"model": dataclasses.asdict(model_config)})
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=1, keep_steps=[])
    checkpointer.save(7, TrainState(params=params, opt_state={"count": np.zeros((), np.int32)}), {},
                      Position(0, "stage1", 7, 0), config_json)
    checkpointer.wait()
    checkpointer.close()
    assert params_io.stored_model_config(tmp_path / "checkpoints" / "7") == model_config
    code, out, err = run(capsys, "--config", str(config_file), "--params", str(tmp_path / "checkpoints" / "7"),
                         "--limit", "2", "--no_progress")
    assert code == 0, err
    report = json.loads(out.strip().rsplit("\n", 1)[1])
    assert report["provenance"]["suite"] == "demo" and report["provenance"]["max_new_tokens"] == 12
    assert all(task["n"] <= 2 for task in report["tasks"].values()) and report["overall"]["n"] >= 8


@needs_shared
def test_list_prints_the_orca_suite_without_a_model(capsys):
    code, out, err = run(capsys, "--suite", "orca", "--benchmarks_dir", str(SHARED_BENCHMARKS), "--list")
    assert code == 0, err
    assert out.splitlines()[0] == "suite orca: bbh 23 tasks, 5511 examples; agieval 8 tasks, 2546 examples"
    assert re.search(r"^snarks +bbh +178$", out, re.MULTILINE)
    assert re.search(r"^sat-en-without-passage +agieval +206$", out, re.MULTILINE)


@needs_shared
@pytest.mark.slow
def test_the_orca_suite_on_a_converted_model_reads_every_example(setup, tmp_path, capsys):
    root, config_file, _, _ = setup
    code, out, err = run(capsys, "--config", str(config_file), "--params", str(root / "params"), "--suite", "orca",
                         "--benchmarks_dir", str(SHARED_BENCHMARKS), "--max_new_tokens", "2", "--batch_size", "64",
                         "--output", str(tmp_path / "orca.jsonl"), "--no_progress")
    assert code == 0, err
    report = json.loads(out.strip().rsplit("\n", 1)[1])
    assert (report["benchmarks"]["bbh"]["tasks"], report["benchmarks"]["bbh"]["n"]) == (23, 5511)
    assert (report["benchmarks"]["agieval"]["tasks"], report["benchmarks"]["agieval"]["n"]) == (8, 2546)
    rows = [json.loads(line) for line in (tmp_path / "orca.jsonl").read_text().splitlines()]
    assert len(rows) == 8057
    # A 256-token window and a tokenizer that never saw benchmark text: many prompts are cut, some cannot
    # fit even without their passage; every one is counted, none stops the run.
    assert report["overall"]["truncated"] == sum(row["truncated"] for row in rows) > 0
    assert report["overall"]["skipped"] == sum(row["skipped"] for row in rows)
    assert not any(row["correct"] for row in rows if row["skipped"])


@pytest.mark.parametrize("args, message", [
    (["--suite", "agieval"], "suite 'agieval' needs --benchmarks_dir"),
    (["--params", "nowhere"], "nowhere/params does not exist"),
    (["--max_new_tokens", "300"], "--max_new_tokens 300 must be in 1..255"),
    (["--system_message", "20"], "numbered 1-16"),
])
def test_bad_input_is_one_line(setup, capsys, args, message):
    root, config_file, _, _ = setup
    base = {"--params": str(root / "params")}
    argv = ["--config", str(config_file), *sum(([k, v] for k, v in base.items() if k not in args), []), *args]
    code, _, err = run(capsys, *argv)
    assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_rescore_names_the_bad_row(tmp_path, capsys):
    good = {"benchmark": "bbh", "task": "navigate", "index": 0, "options": ["Yes", "No"], "gold": "No",
            "response": "No."}
    (tmp_path / "r.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "options": "Yes"}) + "\n")
    code, _, err = run(capsys, "--rescore", str(tmp_path / "r.jsonl"))
    assert code == 1 and "r.jsonl: line 2: field 'options' is not a list of strings" in err


def test_rescore_reports_agreement_with_hand_labels(repo_root, tmp_path, capsys):
    code, out, err = run(capsys, "--rescore", str(repo_root / "tests" / "data" / "scoring_labelled.jsonl"),
                         "--output", str(tmp_path / "scored.jsonl"))
    assert code == 0, err
    report = json.loads(out.strip().rsplit("\n", 1)[1])
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    agree = sum(row["correct"] == row["label"] for row in rows) / len(rows)
    assert report["agreement"]["agree"] == pytest.approx(agree) and agree >= 0.95
    assert report["agreement"]["false_positives"] == sum(r["correct"] and not r["label"] for r in rows)
    assert f"agreement with the labels: {agree:.1%} of {len(rows)} rows" in out
