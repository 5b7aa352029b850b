"""`orca-jax lm-eval`: lm-evaluation-harness runs a local multiple-choice task and a generate_until task
on a converted tiny model, offline (any socket connect fails the test), and its numbers are the ones our
loglikelihood module and greedy decoder give; rolling log-likelihood matches transformers."""

import json
import os
import socket
import types

os.environ["HF_DATASETS_OFFLINE"] = "1"  # read by datasets at import: set before lm_eval imports it
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("lm_eval")

from test_loglikelihood import WINDOW, hf_logprob, tiny  # noqa: E402,F401  (tiny is a fixture)

from orca_jax import parallel  # noqa: E402
from orca_jax.eval import lm_eval_adapter  # noqa: E402
from orca_jax.eval.generate import greedy_generate  # noqa: E402
from orca_jax.eval.loglikelihood import Pair, encode_pair, score_pairs  # noqa: E402

PAIRS = ((5, 2), (1, 7), (9, 3), (0, 4), (6, 6))


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails loudly: the harness must not reach the hub or any dataset server."""
    def refuse(self, address):
        raise AssertionError(f"network access attempted: {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def tasks(tmp_path):
    """Two task YAMLs over local JSONL files: a multiple-choice task and a generate_until one."""
    rows = [{"question": f"Is {a} more than {b}?", "choices": ["(A) yes it is", "(B) no it is not"],
             "gold": 0 if a > b else 1} for a, b in PAIRS]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (tmp_path / "tiny_gen.yaml").write_text(f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'mc.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[gold]}}}}"
generation_kwargs:
  until: [")"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
""")
    return tmp_path, rows


@pytest.mark.slow  # ~35 s on 2 cores: the harness builds its tasks and datasets
def test_harness_runs_local_tasks_offline_with_our_numbers(tiny, tasks, tmp_path, no_network, capsys):  # noqa: F811
    root, tokenizer, _, _, _, _ = tiny
    task_dir, rows = tasks
    output = tmp_path / "results.json"
    code = lm_eval_adapter.main(["--params", str(root / "params"), "--tokenizer", str(tokenizer.path),
                                 "--tasks", "tiny_mc,tiny_gen", "--include_path", str(task_dir),
                                 "--output", str(output), "--batch_size", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "tiny_mc" in out and "tiny_gen" in out  # the harness's table
    results = json.loads(output.read_text())
    samples = {task: sorted(results["samples"][task], key=lambda s: s["doc_id"]) for task in ("tiny_mc", "tiny_gen")}

    # Multiple choice: the harness's log-likelihoods are our loglikelihood module's on the same text.
    lm = lm_eval_adapter.load_lm(root / "params", tokenizer.path)
    contexts = [f"Q: {row['question']}\nA:" for row in rows]
    pairs = [encode_pair(tokenizer, context, " " + choice)
             for context, row in zip(contexts, rows) for choice in row["choices"]]
    ours = score_pairs(lm.params, lm.model_config, pairs, pad_id=tokenizer.pad_id, mesh=lm.mesh,
                       params_dtype=lm.params_dtype, axis_rules=parallel.DECODE_AXIS_RULES)
    harness = [float(resp[0][0]) for sample in samples["tiny_mc"] for resp in sample["resps"]]
    np.testing.assert_allclose(harness, [score.logprob for score in ours], atol=1e-5, rtol=0)
    lls = np.array(harness).reshape(len(rows), 2)
    accuracy = np.mean([int(np.argmax(row_lls)) == row["gold"] for row_lls, row in zip(lls, rows)])
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(accuracy)

    # generate_until: our greedy decoder's continuation, cut before the stop string ")".
    prompts = [[tokenizer.bos_id] + tokenizer.encode(context) for context in contexts]
    decoded = greedy_generate(lm.params, lm.model_config, prompts, max_new_tokens=6, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, batch_size=8, mesh=lm.mesh)
    expected = [lm_eval_adapter.cut_at_stop(tokenizer.decode(ids), [")"]) for ids in decoded]
    assert [sample["resps"][0][0] for sample in samples["tiny_gen"]] == expected


def test_rolling_loglikelihood_matches_transformers_over_two_windows(tiny):  # noqa: F811
    _, tokenizer, hf_model, model_config, mesh, params = tiny
    lm = lm_eval_adapter.OrcaJaxLM(params, model_config, tokenizer, mesh=mesh, axis_rules=parallel.LOGICAL_AXIS_RULES)
    text = " ".join(f"Is {a} more than {b}?" for a, b in PAIRS * 3)
    tokens = tokenizer.encode(text)
    assert WINDOW < len(tokens) < 2 * WINDOW
    # By hand: BOS + the first 63 tokens predict the first 64; the rest are predicted with a full window
    # of the 64 tokens before each.
    first = hf_logprob(hf_model, Pair((tokenizer.bos_id,), tuple(tokens[:WINDOW])))
    rest = len(tokens) - WINDOW
    second = hf_logprob(hf_model, Pair(tuple(tokens[-WINDOW - 1:-rest]), tuple(tokens[-rest:])))
    got, = lm.loglikelihood_rolling([types.SimpleNamespace(args=(text,))])
    assert got == pytest.approx(first + second, abs=2e-4)
    # Plain loglikelihood with an empty context conditions on BOS alone.
    empty, = lm.loglikelihood([types.SimpleNamespace(args=("", "Is 5 more"))])
    alone = Pair((tokenizer.bos_id,), tuple(tokenizer.encode("Is 5 more")))
    assert empty[0] == pytest.approx(hf_logprob(hf_model, alone), abs=1e-4)


def test_stop_strings_and_errors(tiny, capsys):  # noqa: F811
    assert lm_eval_adapter.cut_at_stop("yes it is) and", [")", " and"]) == "yes it is"
    assert lm_eval_adapter.cut_at_stop("abc", ["", "x"]) == "abc"
    root = tiny[0]
    assert lm_eval_adapter.main(["--params", str(root / "params"), "--tasks", "tiny_mc"]) == 1
    assert "pass --tokenizer" in capsys.readouterr().err
    assert lm_eval_adapter.main(["--params", str(root / "nowhere"), "--tokenizer", "t.model", "--tasks", "x"]) == 1
    assert "no model_config.json" in capsys.readouterr().err


def test_cli_lists_the_command():
    from orca_jax.cli import COMMANDS

    assert COMMANDS["lm-eval"][0] == "orca_jax.eval.lm_eval_adapter"
