"""Log-likelihood scoring: packed pairs score as transformers' LLaMA scores them one at a time, packing
changes nothing, long pairs lose their context's start, and `orca-jax evaluate --method loglikelihood`
reports multiple-choice benchmarks by it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from orca_jax import parallel
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval import loglikelihood as ll
from orca_jax.eval.benchmarks import Example
from orca_jax.eval.main import main as evaluate_main
from orca_jax.model import params_io

from tiny_llama import converted_tiny_llama

WINDOW = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tokenizer, a random tiny LLaMA in transformers, the same converted, and its float32 params."""
    root = tmp_path_factory.mktemp("loglikelihood")
    texts = [f"Q: Is {a} more than {b}?\nOptions:\n(A) yes it is\n(B) no it is not\nA: ({'AB'[a < b]})"
             for a in range(30) for b in range(10)]
    tokenizer = Tokenizer.load(train_tokenizer(texts, root / "tok", vocab_size=320))
    hf_model = converted_tiny_llama(root, tokenizer.vocab_size, window=WINDOW, heads=4, kv_heads=2)
    model_config = dataclasses.replace(params_io.load_model_config(root / "params"), compute_dtype="float32")
    mesh = parallel.make_mesh()
    params = params_io.restore_params(root / "params", parallel.abstract_params(model_config, mesh))
    return root, tokenizer, hf_model, model_config, mesh, params


def hf_logprob(hf_model, pair: ll.Pair) -> float:
    """transformers' summed log-probability of the continuation, the pair alone in its batch."""
    tokens = torch.tensor([list(pair.context + pair.continuation)])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf_model(tokens).logits[0].double(), dim=-1)
    start = len(pair.context)
    return float(sum(logprobs[position - 1, tokens[0, position]] for position in range(start, tokens.shape[1])))


def random_pairs(count: int, vocab: int, seed: int = 0) -> list[ll.Pair]:
    rng = np.random.default_rng(seed)
    return [ll.Pair(tuple(rng.integers(3, vocab - 1, rng.integers(1, 30)).tolist()),
                    tuple(rng.integers(3, vocab - 1, rng.integers(1, 8)).tolist())) for _ in range(count)]


def test_packed_scores_match_transformers_and_one_pair_per_row(tiny):
    _, tokenizer, hf_model, model_config, mesh, params = tiny
    pairs = random_pairs(21, tokenizer.vocab_size)
    packed = ll.score_pairs(params, model_config, pairs, pad_id=tokenizer.pad_id, batch_rows=8, mesh=mesh)
    alone = ll.score_pairs(params, model_config, pairs, pad_id=tokenizer.pad_id, batch_rows=8, mesh=mesh,
                           packed=False)
    rows, bins, _ = ll.build_rows(pairs, WINDOW, tokenizer.pad_id)
    assert len(bins) < len(pairs) // 2 and max(len(members) for members in bins) > 2  # really packed
    reference = [hf_logprob(hf_model, pair) for pair in pairs]
    np.testing.assert_allclose([score.logprob for score in packed], reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose([score.logprob for score in packed], [score.logprob for score in alone],
                               atol=1e-5, rtol=0)
    assert [score.num_tokens for score in packed] == [len(pair.continuation) for pair in pairs]
    assert [score.greedy for score in packed] == [score.greedy for score in alone]
    assert min(reference) < -5  # the random model is far from uniform: a wrong slot would show


def test_greedy_means_every_continuation_token_is_the_argmax(tiny):
    _, tokenizer, hf_model, model_config, _, params = tiny
    context = (tokenizer.bos_id, *tokenizer.encode("Q: Is 3 more than 4?"))
    with torch.no_grad():
        best = int(hf_model(torch.tensor([context])).logits[0, -1].argmax())
    other = (best + 1) % (tokenizer.vocab_size - 1)
    scores = ll.score_pairs(params, model_config, [ll.Pair(context, (best,)), ll.Pair(context, (other,))],
                            pad_id=tokenizer.pad_id)
    assert [score.greedy for score in scores] == [True, False]


def test_a_pair_longer_than_a_row_loses_the_start_of_its_context(tiny):
    _, tokenizer, hf_model, model_config, _, params = tiny
    pair = ll.Pair(tuple(range(5, 45)), (7, 8, 9))
    score, = ll.score_pairs(params, model_config, [pair], pad_id=tokenizer.pad_id, row_length=20)
    kept = pair.context + pair.continuation
    assert score.truncated and score.num_tokens == 3
    assert score.logprob == pytest.approx(hf_logprob(hf_model, ll.Pair(kept[-21:-3], kept[-3:])), abs=1e-4)
    with pytest.raises(ll.ScoringError, match="pair 1: its continuation has 25 tokens, more than a row's 20"):
        ll.score_pairs(params, model_config, [pair, ll.Pair((1,), tuple(range(25)))], pad_id=tokenizer.pad_id,
                       row_length=20)
    with pytest.raises(ll.ScoringError, match="pair 0: context and continuation"):
        ll.score_pairs(params, model_config, [ll.Pair((1,), ())], pad_id=tokenizer.pad_id)


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation(tiny):
    tokenizer = tiny[1]
    pair = ll.encode_pair(tokenizer, "Q: Is 3 more than 4?\nA: ", "(B) no it is not")
    assert pair.context == (tokenizer.bos_id, *tokenizer.encode("Q: Is 3 more than 4?\nA:"))
    whole = tokenizer.encode("Q: Is 3 more than 4?\nA: (B) no it is not")
    assert pair.context + pair.continuation == (tokenizer.bos_id, *whole)


def test_choices_by_benchmark():
    bbh = Example("bbh", "snarks", 0, "Which?\nOptions:\n(A) x\n(B) y", "(B)", ("(A) x", "(B) y"))
    assert ll.choices_for(bbh) == (("(A) x", "(B) y"), 1)
    labels = Example("bbh", "web_of_lies", 0, "Does Ka tell the truth?", "No")
    assert ll.choices_for(labels) == (("Yes", "No"), 1)
    by_text = Example("bbh", "movie_recommendation", 0, "?", "Heat", ("(A) Up", "(B) Heat"))
    assert ll.choices_for(by_text)[1] == 1
    unmatched = Example("bbh", "ruin_names", 0, "?", "rita, sue", ("(A) rita", "(B) sue"))
    assert ll.choices_for(unmatched)[1] is None
    agieval = Example("agieval", "logiqa-en", 0, "?", "(C)", ("A one", "B? two", "C three"))
    assert ll.choices_for(agieval) == (("A one", "B? two", "C three"), 2)
    with pytest.raises(ll.UserError, match="demo.0: the loglikelihood method scores multiple-choice"):
        ll.choices_for(Example("demo", "demo", 0, "What is 2+2?", "4"))
    assert ll.pick([-3.0, -4.0], [1, 1]) == 0 and ll.pick([-3.0, -4.0], [1, 4]) == 1


def test_evaluate_cli_scores_bbh_by_loglikelihood(tiny, tmp_path, capsys):
    root, tokenizer, hf_model, _, _, _ = tiny
    bench = tmp_path / "benchmarks"
    (bench / "bbh").mkdir(parents=True)
    rows = [{"input": f"Is {a} more than {b}?\nOptions:\n(A) yes it is\n(B) no it is not",
             "target": "(A)" if a > b else "(B)"} for a, b in ((5, 2), (1, 7), (9, 3), (0, 4))]
    (bench / "bbh" / "snarks.json").write_text(json.dumps({"examples": rows}))
    web_of_lies = {"examples": [{"input": "Ka lies?", "target": "No"}]}
    (bench / "bbh" / "web_of_lies.json").write_text(json.dumps(web_of_lies))
    config_file = tmp_path / "config.py"
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n    return ConfigDict({\n"
        "        'model': {'vocab_size': 7, 'max_seq_len': 16, 'compute_dtype': 'bfloat16'},\n"
        "        'mesh': {'data': -1, 'fsdp': 1, 'tensor': 1},\n"
        f"        'data': {{'tokenizer': {str(tokenizer.path)!r}, 'template': 'orca'}},\n    }})\n")
    output = tmp_path / "rows.jsonl"
    code = evaluate_main(["--config", str(config_file), "--config.model.compute_dtype=float32", "--params",
                          str(root / "params"), "--suite", "bbh", "--benchmarks_dir", str(bench), "--method",
                          "loglikelihood", "--prompt_style", "raw", "--output", str(output), "--no_progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["provenance"]["method"] == "loglikelihood" and report["tasks"]["snarks"]["n"] == 4
    saved = [json.loads(line) for line in output.read_text().splitlines()]
    first = saved[0]
    assert first["prompt"] == "Q: " + rows[0]["input"] + "\nA:"
    assert first["choices"] == ["(A) yes it is", "(B) no it is not"]
    for choice, logprob in zip(first["choices"], first["loglikelihoods"]):
        pair = ll.encode_pair(tokenizer, first["prompt"], " " + choice)
        assert logprob == pytest.approx(hf_logprob(hf_model, pair), abs=1e-4)
    for row in saved:
        assert row["correct"] == (int(np.argmax(row["loglikelihoods"])) == row["gold_index"])
    assert saved[-1]["choices"] == ["Yes", "No"] and saved[-1]["gold_index"] == 1
    assert sum(row["correct"] for row in saved) == sum(task["correct"] for task in report["tasks"].values())
