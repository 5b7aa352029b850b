"""FLAN-v2 sampling on generated FLAN-like exports: caps, Algorithm 1, system messages, FLAN-1M."""

from __future__ import annotations

import collections
import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orca_jax import cli
from orca_jax.config import load_config
from orca_jax.data.construct import flan, sampling
from orca_jax.data.construct.system_messages import MULTIPLE_CHOICE_ONLY, SYSTEM_MESSAGES, SystemMessagePicker
from orca_jax.data.jsonl import RecordFormatError

ZERO_SHOT = ("zs_opt", "zs_noopt")
FEW_SHOT = ("fs_opt", "fs_noopt")

# Zero-shot queries per task in each generated export; every task also gets a few-shot decoy or two.
TASK_SIZES = {
    "cot": {"gsm8k": 30, "strategyqa": 12},
    "niv": {"task001_quoref": 5, "task002_sst": 20, "task003_mnli": 35, "task004_squad": 80},
    "t0": {"t0_tiny": 3, "t0_small": 10, "t0_mid": 40, "t0_big": 200, "bigbench_logic_grid": 100},
    "flan": {"anli": 4, "boolq": 25, "rte": 60, "wmt16": 300},
}
NIV_CAP = 20
T0_SIZE, FLAN_SIZE, FLAN1M_SIZE = 150, 300, 200


def _rows(collection: str, rng: random.Random) -> list[dict]:
    rows = []
    for task, size in TASK_SIZES[collection].items():
        templates = [rng.choice(ZERO_SHOT) for _ in range(size)] + list(FEW_SHOT)
        rng.shuffle(templates)
        for i, template in enumerate(templates):
            options = "\nOPTIONS:\n- yes\n- no" if template.endswith("_opt") else ""
            rows.append({"inputs": f"[{collection}/{task}/{i}] What follows?{options}", "targets": f"target {i}",
                         "task_name": task, "template_type": template})
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export per sub-collection, half parquet and half JSONL; returns the rows and the file paths."""
    root = tmp_path_factory.mktemp("flan_v2")
    rng = random.Random(7)
    rows, paths = {}, {}
    for collection in TASK_SIZES:
        rows[collection] = _rows(collection, rng)
        if collection in ("niv", "flan"):
            paths[collection] = root / f"{collection}.parquet"
            pq.write_table(pa.Table.from_pylist(rows[collection]), paths[collection])
        else:
            paths[collection] = root / f"{collection}.jsonl"
            paths[collection].write_text("".join(json.dumps(r) + "\n" for r in rows[collection]))
    return rows, paths


def _sample_args(paths, out_dir, seed: int = 0) -> list[str]:
    return [
        "construct", "sample", "--out", str(out_dir), f"--config.seed={seed}",
        *(f"--config.collections.{c}.files=('{p}',)" for c, p in paths.items()),
        f"--config.collections.niv.per_task_cap={NIV_CAP}",
        f"--config.collections.t0.size={T0_SIZE}", f"--config.collections.flan.size={FLAN_SIZE}",
        f"--config.flan1m_size={FLAN1M_SIZE}",
    ]


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sampled(exports, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("construct")
    assert cli.main(_sample_args(exports[1], out_dir)) == 0
    return out_dir


def _by_collection(records) -> dict[str, list[dict]]:
    grouped = collections.defaultdict(list)
    for record in records:
        grouped[record["id"].split(".")[0]].append(record)
    return grouped


def test_only_zero_shot_queries_of_live_tasks_are_sampled_once(exports, sampled):
    rows, _ = exports
    records = _read(sampled / sampling.FLAN5M_FILE)
    assert len({r["id"] for r in records}) == len(records)
    source = {row["inputs"]: row for collection in rows.values() for row in collection}
    for record in records:
        row = source[record["question"]]
        assert (record["task"], record["template_type"], record["target"]) == (
            row["task_name"], row["template_type"], row["targets"])
        assert record["template_type"] in ZERO_SHOT
    grouped = _by_collection(records)
    assert set(grouped) == set(TASK_SIZES)
    assert not any("bigbench" in r["task"] for r in grouped["t0"]), "BBH tasks must stay out of T0"
    for collection, sampled_records in grouped.items():
        questions = [r["question"] for r in sampled_records]
        assert len(set(questions)) == len(questions), f"{collection}: a query was drawn twice"


def test_sizes_and_per_task_caps(sampled):
    grouped = _by_collection(_read(sampled / sampling.FLAN5M_FILE))
    per_task = {c: collections.Counter(r["task"] for r in records) for c, records in grouped.items()}
    assert per_task["cot"] == TASK_SIZES["cot"], "CoT keeps every zero-shot query"
    assert per_task["niv"] == {task: min(size, NIV_CAP) for task, size in TASK_SIZES["niv"].items()}
    assert len(grouped["t0"]) == T0_SIZE and len(grouped["flan"]) == FLAN_SIZE
    # Algorithm 1 runs small tasks dry before large ones: each gets all it has or more than a fair share.
    for collection, size in (("t0", T0_SIZE), ("flan", FLAN_SIZE)):
        live = {t: n for t, n in TASK_SIZES[collection].items() if "bigbench" not in t}
        for task, available in live.items():
            assert per_task[collection][task] == available or per_task[collection][task] >= size // len(live) // 2


def test_system_messages_follow_table_2(sampled, repo_root):
    assignment = load_config(str(repo_root / "configs" / "construct.py")).collections
    grouped = _by_collection(_read(sampled / sampling.FLAN5M_FILE))
    for collection, records in grouped.items():
        allowed = set(assignment[collection].messages)
        used = collections.Counter(r["system_message"] for r in records)
        assert set(used) == allowed, f"{collection}: messages used {sorted(used)} vs Table 2's {sorted(allowed)}"
        for record in records:
            assert record["system_prompt"] == SYSTEM_MESSAGES[record["system_message"]]
            if record["system_message"] in MULTIPLE_CHOICE_ONLY:
                assert record["template_type"] == "zs_opt", f"{record['id']}: message {record['system_message']}"


def test_flan1m_is_a_subset_of_flan5m(sampled):
    flan5m = {r["id"]: r for r in _read(sampled / sampling.FLAN5M_FILE)}
    flan1m = _read(sampled / sampling.FLAN1M_FILE)
    assert len(flan1m) == FLAN1M_SIZE == len({r["id"] for r in flan1m})
    assert all(flan5m[r["id"]] == r for r in flan1m)
    report = json.loads((sampled / sampling.REPORT_FILE).read_text())
    assert (report["flan5m_queries"], report["flan1m_queries"]) == (len(flan5m), FLAN1M_SIZE)


def test_sampling_is_seeded(exports, sampled, tmp_path):
    assert cli.main(_sample_args(exports[1], tmp_path / "again")) == 0
    assert cli.main(_sample_args(exports[1], tmp_path / "other", seed=1)) == 0
    first = (sampled / sampling.FLAN5M_FILE).read_bytes()
    assert (tmp_path / "again" / sampling.FLAN5M_FILE).read_bytes() == first
    assert (tmp_path / "other" / sampling.FLAN5M_FILE).read_bytes() != first


def _chi_square_p_value(counts: list[int]) -> float:
    """Upper tail of Pearson's statistic against uniform, by the Wilson-Hilferty normal approximation."""
    expected = sum(counts) / len(counts)
    statistic = sum((count - expected) ** 2 / expected for count in counts)
    df = len(counts) - 1
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _uniformity_p_values(draws: list[str], sizes: dict[str, int]) -> list[float]:
    """Group the draws by the set of tasks live when each was made; test each group for uniformity."""
    remaining = dict(sizes)
    by_live_set = collections.defaultdict(collections.Counter)
    for task in draws:
        live = frozenset(t for t, left in remaining.items() if left > 0)
        assert task in live, f"{task} was drawn after it ran empty"
        by_live_set[live][task] += 1
        remaining[task] -= 1
    return [
        _chi_square_p_value([counts[t] for t in sorted(live)])
        for live, counts in by_live_set.items()
        if sum(counts.values()) >= 20 * len(live)  # enough draws for the chi-square approximation
    ]


def test_algorithm1_draws_uniformly_over_live_tasks_without_replacement():
    sizes = {"tiny": 40, "small": 150, **{f"big{i}": 5000 for i in range(8)}}
    draws = list(sampling.algorithm1_draws(sizes, 6000, random.Random(1234)))
    counts = collections.Counter(draws)
    assert len(draws) == 6000
    assert (counts["tiny"], counts["small"]) == (sizes["tiny"], sizes["small"])
    p_values = _uniformity_p_values(draws, sizes)
    assert len(p_values) == 3 and min(p_values) > 1e-3, p_values

    # The same test must reject a sampler that favours large tasks, or it proves nothing.
    rng, remaining, biased = random.Random(1234), dict(sizes), []
    for _ in range(6000):
        task = rng.choices(list(remaining), weights=list(remaining.values()))[0]
        remaining[task] -= 1
        biased.append(task)
    assert min(_uniformity_p_values(biased, sizes)) < 1e-6


def test_algorithm1_stops_when_every_task_is_empty():
    sizes = {"a": 3, "b": 0, "c": 5}
    draws = list(sampling.algorithm1_draws(sizes, 100, random.Random(0)))
    assert collections.Counter(draws) == {"a": 3, "c": 5}


def test_capped_collections_trim_to_size_uniformly():
    spec = sampling.CollectionSpec(name="niv", files=("x",), strategy="per_task_cap", size=50, per_task_cap=30,
                                   messages=(1,), message_weights=(), exclude_tasks="")
    counts = sampling.draws_per_task(spec, {"a": 10, "b": 100, "c": 100}, random.Random(0))
    assert sum(counts.values()) == 50 and max(counts.values()) <= 30 and counts["a"] <= 10


def test_message_weights_and_multiple_choice_rule():
    picker = SystemMessagePicker("flan", (3, 4, 8, 10), (1.0, 0.0, 1.0, 1.0))
    rng = random.Random(0)
    assert {picker.pick(rng, multiple_choice=False) for _ in range(50)} == {3}
    assert {picker.pick(rng, multiple_choice=True) for _ in range(50)} == {3, 8, 10}
    with pytest.raises(ValueError, match="flan: queries without options"):
        SystemMessagePicker("flan", (4, 8, 10), (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="17"):
        SystemMessagePicker("cot", (6, 17))


def test_bad_export_rows_name_file_row_and_field(tmp_path):
    path = tmp_path / "niv.jsonl"
    good = {"inputs": "q", "targets": "t", "task_name": "task1", "template_type": "zs_opt"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "task_name": 7}) + "\n")
    with pytest.raises(RecordFormatError, match=r"niv\.jsonl: row 2: field 'task' \(column 'task_name'\) is a int"):
        list(flan.read_export(path, flan.FlanColumns()))
    parquet = tmp_path / "t0.parquet"
    pq.write_table(pa.Table.from_pylist([{"inputs": "q", "targets": "t"}]), parquet)
    with pytest.raises(RecordFormatError, match=r"t0\.parquet: no column 'task_name'"):
        list(flan.read_export(parquet, flan.FlanColumns()))


def test_cli_reports_a_missing_export(tmp_path, capsys):
    only_cot = [f"--config.collections.{c}.size=0" for c in ("niv", "t0", "flan")]
    assert cli.main(["construct", "sample", "--out", str(tmp_path), *only_cot]) == 2
    assert "collections.cot.files is empty" in capsys.readouterr().err
    missing = f"--config.collections.cot.files=('{tmp_path}/none*.jsonl',)"
    assert cli.main(["construct", "sample", "--out", str(tmp_path), *only_cot, missing]) == 2
    assert f"no FLAN export matches '{tmp_path}/none*.jsonl'" in capsys.readouterr().err
