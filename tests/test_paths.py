"""orca_jax/paths.py on local paths: pathlib exactly as before, URLs kept whole. The bucket side of every
function runs in tests/test_gcs.py, against the emulator."""

import pathlib

import pytest
from etils import epath

from orca_jax import paths


def test_local_paths_stay_pathlib_and_urls_keep_their_double_slash(tmp_path):
    assert type(paths.path(tmp_path)) is type(tmp_path) and paths.path("runs/x") == pathlib.Path("runs/x")
    url = paths.path("gs://bucket/run") / "checkpoints"
    assert isinstance(url, epath.Path) and str(url) == "gs://bucket/run/checkpoints"
    assert paths.path(url) is url and paths.absolute(url) is url and paths.is_url(url)
    assert paths.absolute("runs/x") == pathlib.Path("runs/x").absolute() and not paths.is_url("/tmp/gs://x")


def test_write_atomic_replaces_whole_and_appended_text_grows(tmp_path):
    target = tmp_path / "deep" / "report.json"
    paths.write_atomic(target, "old")
    paths.write_atomic(target, b"new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
    appended = paths.AppendedText(tmp_path / "metrics.jsonl")
    appended.write("a\n")
    appended.close()
    paths.append_text(tmp_path / "metrics.jsonl", "b\n")
    assert (tmp_path / "metrics.jsonl").read_text() == "a\nb\n" and paths.size(tmp_path / "metrics.jsonl") == 4


def test_copy_and_move_trees(tmp_path):
    source = tmp_path / "built"
    (source / "split").mkdir(parents=True)
    (source / "split" / "shard-0").write_bytes(b"\x00\x01")
    (source / "dataset_info.json").write_text("{}")
    paths.copy_tree(source, tmp_path / "copy", last=("dataset_info.json",))
    assert (tmp_path / "copy" / "split" / "shard-0").read_bytes() == b"\x00\x01"
    paths.move_tree(tmp_path / "copy", tmp_path / "moved")
    assert not (tmp_path / "copy").exists() and (tmp_path / "moved" / "dataset_info.json").read_text() == "{}"


def test_check_writable_leaves_nothing_and_names_the_directory(tmp_path):
    paths.check_writable(tmp_path / "new" / "run", "workdir")
    assert list((tmp_path / "new" / "run").iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(paths.PathError, match=rf"^workdir {blocker}/run is not writable: NotADirectoryError"):
        paths.check_writable(blocker / "run", "workdir")
