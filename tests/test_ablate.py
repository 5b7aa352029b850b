"""`orca-jax ablate`, reduced to one seed, a few steps and a tiny model: the machinery, not the effect.

Each condition must get the data it names, held-out questions must stay out of training, the
equal-total-steps control must train as many steps as stage 1 + stage 2 did, and the tables and figure
must cover every condition, seed and family.
"""

import json
import re

import jax
import numpy as np
import pytest

from orca_jax.config import apply_overrides, default_config, load_config
from orca_jax.data import pipeline, serial_tasks, shards
from orca_jax.train import ablate
from orca_jax.train.loop import plan_stages, stage_init_rng

CONDITIONS = ("answer_only", "terse", "step_by_step", "small_step_by_step", "terse_then_small_step_by_step",
              "small_step_by_step_same_total")
# One operation per line (tests/test_serial_tasks.py checks each line's arithmetic).
ONE_STEP = re.compile(r"\d+ [+-] \d+ = \d+|\d \* \d = \d+|\d \+ \d( \+ 1)? = \d+, carry [01], so far \d+|"
                      r"carry 1 goes in front: \d+|\d+ (even|odd), count \d+|[A-Z][a-z]+ has \d+ days|"
                      r"\d+ - \d+ = \d+ days (to [A-Z][a-z]+ \d+|into [A-Z][a-z]+)")


def reduced_args(workdir) -> list[str]:
    overrides = {
        "workdir": str(workdir), "model.embed_dim": 32, "model.mlp_dim": 64, "model.num_layers": 1,
        "model.num_heads": 2, "model.num_kv_heads": 2, "model.head_dim": 16, "data.batch_size": 8,
        "ablate.train_questions": 48, "ablate.small_questions": 16, "ablate.eval_per_family": 2,
        "ablate.claim1_seeds": (0,), "ablate.claim2_seeds": (0,), "ablate.claim1_steps": 3,
        "ablate.stage1_steps": 3, "ablate.stage2_steps": 2, "ablate.max_new_tokens": 8,
        "ablate.eval_batch_size": 8, "ablate.workers": 1, "ablate.validation_fraction": 0.1,
        "optimizer.warmup_steps": 1,
        "ablate.tokenizer_pieces": 400, "model.vocab_size": 401,  # 48 questions cannot fill 1000 pieces
    }
    return [f"--config.{key}={value}" for key, value in overrides.items()]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ablate")
    assert ablate.main(reduced_args(workdir)) == 0
    return workdir


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _instance(row):
    return row["id"].split(".")[1], tuple(re.findall(r"\d+|[+-]|even|odd|buys|gives|bags|[A-Z][a-z]+ \d",
                                                     row["question"]))


@pytest.mark.slow
def test_conditions_get_the_data_they_name(ablation):
    data = ablation / "data"
    files = {name: _rows(data / f"{name}.jsonl") for name in ablate.DATASETS}
    assert all(re.fullmatch(r"Answer: \S[^\n]*", row["response"]) for row in files["answer_only"])
    for name in ("step_by_step", "small_step_by_step"):
        for row in files[name]:
            *steps, answer = row["response"].split("\n")
            assert steps and answer.startswith("Answer: ") and all(ONE_STEP.fullmatch(line) for line in steps), row
    assert any(not ONE_STEP.fullmatch(line) for row in files["terse"] for line in row["response"].split("\n")[:-1])
    questions = [row["question"] for row in files["step_by_step"]]
    assert all([row["question"] for row in rows] == questions[:len(rows)] for rows in files.values())
    assert len(files["small_step_by_step"]) == 16 and len(files["terse"]) == 48
    held_out = {_instance(row) for row in _rows(data / "eval.jsonl")}
    assert len(held_out) == 2 * len(serial_tasks.FAMILIES)
    assert not held_out & {_instance(row) for rows in files.values() for row in rows}
    # The shards each stage reads hold that file's records.
    for name, rows in files.items():
        dataset = ablation / "data" / f"{name}_shards"
        stored = [shards.open_split(dataset, split) for split in (shards.TRAIN, shards.VALIDATION)]
        assert sum(len(source) for source in stored) == len(rows)


@pytest.mark.slow
def test_control_trains_as_many_steps_as_both_stages(ablation):
    results = {name: json.loads((ablation / name / "seed0" / "result.json").read_text()) for name in CONDITIONS}
    progressive = results["terse_then_small_step_by_step"]
    assert progressive["stages"] == [["terse", 3], ["small_step_by_step", 2]]
    assert progressive["trained_steps"] == 5  # global steps, as the loop logged them
    assert results["small_step_by_step_same_total"]["stages"] == [["small_step_by_step", 5]]
    assert results["small_step_by_step_same_total"]["trained_steps"] == 5
    assert results["small_step_by_step"]["trained_steps"] == 2
    assert all(results[name]["trained_steps"] == 3 for name in ("answer_only", "terse", "step_by_step"))
    # Stage 1's final checkpoint, which stage 2 starts from, is kept beside stage 2's.
    checkpoints = ablation / "terse_then_small_step_by_step" / "seed0" / "checkpoints"
    assert (checkpoints / "3").is_dir() and (checkpoints / "5").is_dir()


@pytest.mark.slow
def test_tables_and_figure_cover_every_condition_seed_and_family(ablation):
    summary = json.loads((ablation / "ablation.json").read_text())
    families = set(serial_tasks.FAMILIES)
    for claim, names in ((ablate.EXPLANATION, CONDITIONS[:3]), (ablate.PROGRESSIVE, CONDITIONS[3:])):
        assert list(summary["claims"][claim]) == list(names)
        for entry in summary["claims"][claim].values():
            assert list(entry["per_seed"]) == ["0"] and set(entry["families"]) == families
            assert 0 <= entry["accuracy"]["mean"] <= 1
    assert [d["baseline"] for d in summary["differences"]] == ["small_step_by_step", "small_step_by_step_same_total"]
    assert summary["timing"]["wall_seconds"] > 0 and summary["timing"]["load"]["samples"] >= 2
    markdown = (ablation / "ablation.md").read_text()
    assert all(f"| {name} |" in markdown for name in CONDITIONS)
    assert all(family in markdown for family in families)
    assert (ablation / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    eval_rows = _rows(ablation / "step_by_step" / "seed0" / "eval_rows.jsonl")
    assert len(eval_rows) == 10 and {row["task"] for row in eval_rows} == {f"cot.{f}" for f in families}


@pytest.mark.slow
def test_rerun_reuses_finished_runs(ablation, capsys):
    before = (ablation / "answer_only" / "seed0" / "result.json").read_text()
    assert ablate.main(reduced_args(ablation)) == 0
    assert (ablation / "answer_only" / "seed0" / "result.json").read_text() == before
    assert "answer_only seed 0" in capsys.readouterr().out


def test_seeds_change_init_and_data_order_not_the_questions(tmp_path):
    config = apply_overrides(load_config(default_config("ablate")), [arg[len("--config."):] for arg in
                                                                     reduced_args(tmp_path)])
    base, settings = ablate.split_config(config)
    condition = ablate.conditions(settings)[2]
    first, second = (ablate.run_config(base, settings, condition, seed) for seed in (0, 1))
    assert first.seed != second.seed and first.workdir != second.workdir
    keys = [jax.random.key_data(stage_init_rng(run.seed, 0)) for run in (first, second)]
    assert not np.array_equal(*keys)
    # Everything the seed must not touch: data files, tokenizer, shards, eval set.
    assert first.stages[0].dataset_dir == second.stages[0].dataset_dir and first.data == second.data
    tokenizer = ablate.prepare_data(settings, base)
    eval_before = settings.eval_path.read_bytes()
    source = shards.open_split(first.stages[0].dataset_dir, shards.TRAIN)
    data_seeds = [plan_stages(run, tokenizer)[0].data_seed for run in (first, second)]
    orders = [next(iter(pipeline.ProcessBatches(source, tokenizer, first.data, local_batch_size=8, seed=seed,
                                                num_epochs=1, process_index=0, process_count=1))).arrays["inputs"]
              for seed in data_seeds]
    assert not np.array_equal(*orders)
    ablate.prepare_data(settings, base)
    assert settings.eval_path.read_bytes() == eval_before


def test_shares_balance_the_steps_over_workers():
    split = ablate.shares([10, 1, 5, 5, 1], 2)
    assert sorted(i for share in split for i in share) == [0, 1, 2, 3, 4]
    # The costliest run first onto the least loaded worker: 10+1 and 5+5+1, the optimum here.
    assert sorted(sum([10, 1, 5, 5, 1][i] for i in share) for share in split) == [11, 11]
    assert ablate.shares([3, 2], 1) == [[0, 1]]
