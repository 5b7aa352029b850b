"""Answer extraction, normalization, scoring, and the demo evaluation end to end."""

import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from orca_jax.data.demo import write_demo_data
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval.exact_match import (EvalExample, demo_task, evaluate_demo, evaluate_examples, exact_match,
                                       extract_answer, normalize, read_demo_eval, score_responses)
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import Llama


@pytest.mark.parametrize("response, expected", [
    ("Count up: 41, 42.\nAnswer: 42", "42"),
    ("Answer: 7\nOn reflection the count was off.\nAnswer:  Monday \nThanks!", "Monday"),
    ("final answer: (C) 12/25/1937", "(C) 12/25/1937"),
    ("Adding gives 3.5. So the answer is 3.5.", "3.5"),
    ("First the answer is Yes. Checking again, the correct answer is No.\nDone.", "No"),
    ("Options (A) and (B) fail, leaving (D) as the only consistent choice", "(D)"),
    ("no marker here\n\n  the last line  \n", "the last line"),
    ("", ""),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("raw, expected", [
    ("  Monday. ", "monday"),
    ("3,  5,\n7", "3, 5, 7"),
    ("(B)", "b"),
    ("(b).", "b"),
    ("(B) Frankenstein", "(b) frankenstein"),
    ("] ]", "] ]"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("monday.", "Monday", True),
    ("Tuesday", "Monday", False),
    ("B", "(B)", True),
    ("(B) Frankenstein", "(B)", True),
    ("(b).", "(B)", True),
    ("(C)", "(B)", False),
    ("Bob", "(B)", False),  # starts with the letter but names no option
    ("", "(B)", False),
    ("3, 5, 7", "3, 5, 7", True),
    ("3, 5, 7, 9", "3, 5, 7", False),
])
def test_exact_match(prediction, gold, expected):
    assert exact_match(prediction, gold) is expected


def test_score_responses_counts_per_task():
    rng = random.Random(0)
    examples, responses, outcomes = [], [], []
    for i in range(40):
        task = rng.choice(["cot.add", "t0.compare", "flan.weekday"])
        gold, correct = str(rng.randint(10, 99)), rng.random() < 0.6
        examples.append(EvalExample(f"{task}.eval.{i}", task, "", f"question {i}", gold))
        responses.append(f"Some reasoning.\nAnswer: {gold if correct else int(gold) + 1}")
        outcomes.append((task, correct))

    result = score_responses(examples, responses)

    assert result["n"] == 40
    assert result["accuracy"] == pytest.approx(sum(c for _, c in outcomes) / 40)
    for task in {t for t, _ in outcomes}:
        mine = [c for t, c in outcomes if t == task]
        assert result["per_task"][task] == pytest.approx(sum(mine) / len(mine))
        assert result["per_task_n"][task] == len(mine)
    assert [row["correct"] for row in result["examples"]] == [c for _, c in outcomes]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, seed=3, stage1_rows=300, stage2_rows=100, eval_rows=30)
    return out


def test_read_demo_eval_reads_every_row_with_its_task(demo_dir):
    rows = [json.loads(line) for line in open(demo_dir / "eval.jsonl")]
    examples = read_demo_eval(demo_dir / "eval.jsonl")
    assert [e.id for e in examples] == [r["id"] for r in rows]
    assert [e.answer for e in examples] == [r["answer"] for r in rows]
    # ids are collection.task.tier.index; the task is its first two parts
    assert all(e.task == ".".join(r["id"].split(".")[:2]) == demo_task(r["id"]) for e, r in zip(examples, rows))
    assert len(read_demo_eval(demo_dir / "eval.jsonl", limit=7)) == 7


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "a.b.eval.1", "system_prompt": "", "question": "q"}', r"field 'answer' is missing"),
    ('{"id": 5, "system_prompt": "", "question": "q", "answer": "1"}', r"field 'id' is a int"),
    ('{"id": "a", "system_prompt": "", "question": "q", "answer": " "}', r"field 'answer' is empty"),
    ("not json", r"not JSON"),
])
def test_read_demo_eval_names_file_line_and_field(tmp_path, bad_line, message):
    good = json.dumps({"id": "a.b.eval.0", "system_prompt": "", "question": "q", "answer": "1"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: " + message):
        read_demo_eval(tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def demo_model(demo_dir, tmp_path_factory):
    texts = [f"{r['system_prompt']}\n{r['question']}\n{r['response']}"
             for r in map(json.loads, open(demo_dir / "stage2.jsonl"))]
    tokenizer = Tokenizer.load(train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "demo", vocab_size=400))
    config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=2,
                         num_kv_heads=2, head_dim=16, max_seq_len=256, compute_dtype="float32")
    dummy = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: Llama(config).init(jax.random.key(0), dummy, dummy, dummy + 1))["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype),
                          nn.unbox(shapes))
    return tokenizer, config, params


def test_evaluate_demo_scores_each_example_on_its_own_response(demo_dir, demo_model):
    tokenizer, config, params = demo_model
    kwargs = dict(max_new_tokens=12, batch_size=6)
    result = evaluate_demo(params, config, tokenizer, "orca", demo_dir / "eval.jsonl", limit=12, **kwargs)

    examples = read_demo_eval(demo_dir / "eval.jsonl", limit=12)
    assert result["n"] == 12
    assert [row["id"] for row in result["examples"]] == [e.id for e in examples]
    assert set(result["per_task"]) == {e.task for e in examples}
    for row in result["examples"]:
        assert row["prediction"] == extract_answer(row["response"])
        assert row["correct"] == exact_match(row["prediction"], row["gold"])
    assert result["accuracy"] == pytest.approx(np.mean([row["correct"] for row in result["examples"]]))
    assert len({row["response"] for row in result["examples"]}) > 1  # the prompts reach the model

    # Each response belongs to its own prompt wherever the example sits in the batch order.
    reversed_result = evaluate_examples(params, config, tokenizer, "orca", examples[::-1], **kwargs)
    by_id = {row["id"]: row["response"] for row in reversed_result["examples"]}
    assert all(by_id[row["id"]] == row["response"] for row in result["examples"])
