"""`orca-jax prepare-data` end to end with a real sentencepiece tokenizer: the report against the dataset
it describes, bad rows as one-line errors or counted skips, the too-long boundary, column mapping."""

import collections
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orca_jax import cli
from orca_jax.data import demo, prepare, shards
from orca_jax.data.records import BAD_ROW_REASONS
from orca_jax.data.templates import encode_example
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = demo.write_demo_data(out, seed=1, stage1_rows=300, stage2_rows=120, eval_rows=10)
    rows = [json.loads(line) for name in ("stage1", "stage2") for line in paths[name].read_text().splitlines()]
    model = train_tokenizer([f"{r['system_prompt']}\n{r['question']}\n{r['response']}" for r in rows],
                            out / "tok", vocab_size=600)
    # The second input gzip'd, under a name that does not say so.
    zipped = out / "stage2.jsonl.z"
    zipped.write_bytes(gzip.compress(paths["stage2"].read_bytes()))
    return {"stage1": paths["stage1"], "stage2_gz": zipped, "tokenizer": model, "rows": rows}


def _tokens(tokenizer, record) -> tuple[int, int]:
    tokens, mask = encode_example(tokenizer, "orca", record["system_prompt"], record["question"], record["response"])
    return len(tokens) - int(mask.sum()), int(mask.sum())


def _skips(**counts) -> dict:
    return {reason: counts.get(reason, 0) for reason in BAD_ROW_REASONS}


def test_report_describes_the_dataset_written(demo_files, tmp_path, capsys):
    output = tmp_path / "ds"
    exit_code = cli.main(["prepare-data", "--input", f"{demo_files['stage1']},{demo_files['stage2_gz']}",
                          "--output", str(output), "--tokenizer", str(demo_files["tokenizer"]), "--seq_len", "256",
                          "--validation", "0.1", "--num_shards", "2", "--seed", "4"])
    assert exit_code == 0
    report = json.loads((output / prepare.REPORT_NAME).read_text())
    printed = capsys.readouterr().out
    assert json.loads(printed[:printed.rindex("}") + 1]) == report

    tokenizer = Tokenizer.load(demo_files["tokenizer"])
    assert report["rows_in"] == report["rows_valid"] == len(demo_files["rows"])
    assert report["skipped"] == _skips()
    written = []
    for split in ("train", "validation"):
        records = list(shards.open_split(output, split))
        written += records
        token_counts = [_tokens(tokenizer, r) for r in records]
        assert report["splits"][split] == {
            "records": len(records),
            "prompt_tokens": sum(p for p, _ in token_counts),
            "response_tokens": sum(r for _, r in token_counts),
            "subcollections": dict(sorted(collections.Counter(r["id"].split(".")[0] for r in records).items())),
        }
    assert sorted(written, key=lambda r: r["id"]) == sorted(demo_files["rows"], key=lambda r: r["id"])


def test_bad_row_stops_with_one_line_naming_file_row_and_field(demo_files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = demo_files["rows"][:3]
    bad.write_text("\n".join(json.dumps(r | {"question": None} if i == 1 else r) for i, r in enumerate(rows)))
    output = tmp_path / "ds"
    exit_code = prepare.main(["--input", str(bad), "--output", str(output), "--tokenizer",
                              str(demo_files["tokenizer"])])
    assert exit_code == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(
        f"orca-jax prepare-data: error: {bad}, line 2, field 'question': null")
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_skip_counts_reasons_and_too_long_is_exact_at_the_boundary(demo_files, tmp_path):
    tokenizer = Tokenizer.load(demo_files["tokenizer"])
    rows = demo_files["rows"][:20]
    rows[5] = rows[5] | {"response": "Let me check this twice. " * 6 + rows[5]["response"]}
    longest = rows[5]
    longest_tokens = sum(_tokens(tokenizer, longest))  # occupies longest_tokens - 1 positions
    next_tokens = max(sum(_tokens(tokenizer, r)) for r in rows if r is not longest)
    assert next_tokens < longest_tokens
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows + [rows[0], rows[1] | {"id": "x", "response": ""}]))

    def run(seq_len, output):
        assert prepare.main(["--input", str(source), "--output", str(output), "--tokenizer",
                             str(demo_files["tokenizer"]), "--seq_len", str(seq_len), "--bad_rows", "skip",
                             "--validation", "0"]) == 0
        return json.loads((output / prepare.REPORT_NAME).read_text())

    fits = run(longest_tokens - 1, tmp_path / "fits")
    assert fits["skipped"] == _skips(duplicate_id=1, empty_field=1)
    assert fits["splits"]["train"]["records"] == 20
    too_long = run(longest_tokens - 2, tmp_path / "too_long")
    assert too_long["skipped"] == _skips(duplicate_id=1, empty_field=1, too_long=1)
    assert too_long["splits"]["train"]["records"] == 19
    assert longest["id"] not in {r["id"] for r in shards.open_split(tmp_path / "too_long", "train")}


def test_parquet_with_renamed_columns_and_a_validation_count_from_python(demo_files, tmp_path):
    rows = demo_files["rows"][:40]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "system_prompt": [r["system_prompt"] for r in rows],
                             "prompt": [r["question"] for r in rows], "completion": [r["response"] for r in rows]}),
                   source)
    output = tmp_path / "ds"
    report = prepare.prepare([source], output, tokenizer=Tokenizer.load(demo_files["tokenizer"]), validation=8,
                             num_shards=2, column_map={"question": "prompt", "response": "completion"},
                             progress=False)
    assert report == json.loads((output / prepare.REPORT_NAME).read_text())
    validation = shards.open_split(output, "validation")
    assert len(validation) == 8 and len(shards.open_split(output, "train")) == 32
    assert all(validation[i] == next(r for r in rows if r["id"] == validation[i]["id"]) for i in range(8))


def test_bad_settings_are_one_line_errors(demo_files, tmp_path, capsys):
    common = ["--output", str(tmp_path / "ds"), "--tokenizer", str(demo_files["tokenizer"])]
    assert prepare.main(["--input", str(tmp_path / "none.jsonl")] + common) == 1
    assert prepare.main(["--input", str(demo_files["stage1"]), "--column_map", "prompt=q"] + common) == 1
    assert prepare.main(["--input", str(demo_files["stage1"]), "--output", str(tmp_path / "ds"),
                         "--tokenizer", str(tmp_path / "missing.model")]) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("orca-jax prepare-data: error:")] == [
        f"orca-jax prepare-data: error: input file {tmp_path / 'none.jsonl'} does not exist",
        "orca-jax prepare-data: error: column map names unknown fields ['prompt']; fields are "
        "['id', 'system_prompt', 'question', 'response']",
        f"orca-jax prepare-data: error: tokenizer model {tmp_path / 'missing.model'} does not exist",
    ]
