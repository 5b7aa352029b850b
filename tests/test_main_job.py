"""`orca-jax train`: the demo end to end (reduced), and clear errors for bad configs."""

import json

import pytest

from orca_jax.config import load_config
from orca_jax.data.tokenizer import TokenizerError
from orca_jax.train.config import StageConfigError, TrainConfig
from orca_jax.train.main import main

from synthetic_text import trained_tokenizer
from test_report import shared_demo_run


@pytest.mark.slow
def test_demo_trains_both_stages_and_reports_accuracy(tmp_path_factory):
    # The reduced demo (tests/test_report.py's, shared with the report and notebook tests): both stages,
    # an evaluation every 10 steps, checkpoints every 10.
    workdir, stdout = shared_demo_run(tmp_path_factory)
    assert "== demo report ==" in stdout

    report = json.loads((workdir / "report.json").read_text())
    assert set(report["accuracy"]) == {"untrained", "stage1", "stage2"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in report["accuracy"].values())
    assert report["accuracy_per_task"]["stage2"] and "held-out accuracy" in stdout
    for stage in ("stage1", "stage2"):
        losses = report["losses"][stage]
        assert losses["last_loss"] < losses["first_loss"], (stage, losses)
        assert losses["last_val_loss"] < losses["first_val_loss"], (stage, losses)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {name for record in records for name in record}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "packing_efficiency",
            "data_wait_fraction", "checkpoint_wait_fraction", "val_loss"} <= logged
    assert any((workdir / "tensorboard").iterdir())
    # Benchmark accuracy is logged before training, every eval.every_steps steps and at each stage's end;
    # stage 2 starts from stage 1's final weights, which were just evaluated.
    evaluated = [(record["stage"], record["step"]) for record in records if "bench_accuracy" in record]
    assert evaluated == [("stage1", 0), ("stage1", 10), ("stage1", 20), ("stage1", 24), ("stage2", 34),
                         ("stage2", 36)]


@pytest.mark.parametrize("override, message", [
    ("--config.mesh.data=3", "needs 3 devices"),
    ("--config.no_such_field=1", "no field 'no_such_field'"),
])
def test_bad_config_is_one_clear_line(tmp_path, capsys, override, message):
    assert main([f"--config.workdir={tmp_path}", override]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not any(tmp_path.iterdir()), "a config error left files behind"


def test_stage_errors_name_the_stage(repo_root):
    config = load_config(str(repo_root / "configs" / "demo.py"))
    config.stages.stage1.init = "previous"
    with pytest.raises(StageConfigError, match="stages.stage1.init='previous' but stage1 is the first stage"):
        TrainConfig.from_config(config)
    config.stages.stage1.init = "random"
    config.stage_order = ("stage1",)
    with pytest.raises(StageConfigError, match="stage_order"):
        TrainConfig.from_config(config)
    config.stage_order = ("stage1", "stage2")
    config.stages.stage2.num_steps = 5
    with pytest.raises(StageConfigError, match="stages.stage2: give exactly one of num_steps or epochs"):
        TrainConfig.from_config(config)


@pytest.mark.parametrize("override, message", [
    ("--config.data.seq_len=512", "data.seq_len=512 exceeds model.max_seq_len=256"),
    ("--config.checkpoint.every_steps=0", "checkpoint.every_steps must be an integer >= 1"),
    ("--config.eval_every_steps=-1", "eval_every_steps must be an integer >= 0"),
    ("--config.stages.stage2.optimizer.grad_accum_steps=3",
     "stages.stage2.optimizer.grad_accum_steps=3 does not divide data.batch_size=8"),
    ("--config.data.batch_size=12", "data.batch_size=12 gives 12 rows per microbatch, not divisible by the "
                                    "mesh's data x fsdp = 8 devices"),
    ("--config.eval.max_new_tokens=256", "eval.max_new_tokens=256 leaves no room for a prompt in "
                                         "model.max_seq_len=256"),
    ("--config.data.templat=orca", "config has no field 'data.templat'"),
    ("--config.data.template=alpaca", "data.template='alpaca': choose one of ['chatml', 'orca']"),
])
def test_cross_field_checks_stop_before_any_work(tmp_path, capsys, override, message):
    """Each check names both fields in one line; none of them trains, counts or writes anything."""
    code = main([f"--config.workdir={tmp_path}", override])
    error = capsys.readouterr().err
    assert code == 1 and message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_the_tokenizer_must_fit_the_model(tmp_path):
    tokenizer = trained_tokenizer(tmp_path)
    tokenizer.check_fits(tokenizer.vocab_size)
    with pytest.raises(TokenizerError, match=rf"has {tokenizer.vocab_size} ids \(pieces \+ pad\) but "
                                             rf"model.vocab_size is {tokenizer.vocab_size - 1}"):
        tokenizer.check_fits(tokenizer.vocab_size - 1)
