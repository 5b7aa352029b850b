"""`orca-jax weight-diff`: recovery is bit-exact in the stored dtype, checked on the raw bytes of the
files, and a wrong base or a damaged diff fails with one line naming the tensor and leaves no output.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from orca_jax import cli
from orca_jax.model import convert, weight_diff

BF16 = np.dtype(ml_dtypes.bfloat16)
ROWS, WIDTH = 32, 24


def _read_all(directory: pathlib.Path, pattern: str = "*.safetensors") -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted(directory.glob(pattern)):
        with safe_open(path, framework="numpy") as file:
            tensors.update({name: file.get_tensor(name) for name in file.keys()})
    return tensors


def _raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def _with_special_values(array: np.ndarray) -> np.ndarray:
    """Bit patterns float arithmetic mangles: NaNs with payloads, -0.0, infinities, subnormals."""
    bits = array.view(np.dtype(f"uint{8 * array.itemsize}")).reshape(-1)
    top = 8 * array.itemsize - 1
    exponent_all_ones = {2: 0x7F80 if array.dtype == BF16 else 0x7C00, 4: 0x7F800000}[array.itemsize]
    bits[:5] = [exponent_all_ones | 3, 1 << top, exponent_all_ones, 1, exponent_all_ones | (1 << top) | 5]
    return array


def _checkpoints(dtype: np.dtype, seed: int = 0) -> tuple[dict, dict]:
    """A base and a fine-tuned target: every tensor moved a little, the embedding and lm_head one row
    longer (the added pad token), one tensor the base does not have."""
    rng = np.random.default_rng(seed)
    base = {name: rng.normal(size=(ROWS, WIDTH)).astype(dtype)
            for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight")}
    base["model.norm.weight"] = (1 + 0.1 * rng.normal(size=WIDTH)).astype(dtype)
    target = {name: (value.astype(np.float32) + 1e-2 * rng.normal(size=value.shape)).astype(dtype)
              for name, value in base.items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        target[name] = np.concatenate([target[name], rng.normal(size=(1, WIDTH)).astype(dtype)])
    target["model.layers.0.mlp.up_proj.weight"] = _with_special_values(target["model.layers.0.mlp.up_proj.weight"])
    target["model.extra.weight"] = rng.normal(size=(3, 5)).astype(dtype)
    return base, target


def _write(directory: pathlib.Path, tensors: dict, split: bool = False) -> pathlib.Path:
    """Tensors in one model.safetensors, or two shards with an index, plus a config.json."""
    directory.mkdir(parents=True)
    names = sorted(tensors)
    groups = [names[:2], names[2:]] if split else [names]
    files = (["model.safetensors"] if not split else
             [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)])
    for file_name, group in zip(files, groups):
        save_file({name: tensors[name] for name in group}, directory / file_name, metadata={"format": "pt"})
    if split:
        weight_map = {name: file_name for file_name, group in zip(files, groups) for name in group}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": ROWS + 1}))
    return directory


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16), np.dtype(np.float32)], ids=lambda d: d.name)
def test_apply_recovers_every_bit_of_the_target(tmp_path, dtype):
    base, target = _checkpoints(dtype)
    base_dir = _write(tmp_path / "base", base, split=True)
    target_dir = _write(tmp_path / "target", target)
    (target_dir / "tokenizer.model").write_bytes(b"\x00sentencepiece bytes\xff")
    (target_dir / "additional_chat_templates").mkdir()
    (target_dir / "additional_chat_templates" / "orca.jinja").write_text("{{ bos_token }}")
    assert cli.main(["weight-diff", "make", "--base", str(base_dir), "--target", str(target_dir),
                     "--out", str(tmp_path / "diff"), "--max_shard_mb", "0.002"]) == 0
    assert cli.main(["weight-diff", "apply", "--base", str(base_dir), "--diff", str(tmp_path / "diff"),
                     "--out", str(tmp_path / "recovered")]) == 0

    recovered = _read_all(tmp_path / "recovered")
    assert sorted(recovered) == sorted(target)
    for name, tensor in target.items():
        assert recovered[name].dtype == dtype and recovered[name].shape == tensor.shape, name
        assert _raw(recovered[name]) == _raw(tensor), name
    for name in ("config.json", "tokenizer.model", "additional_chat_templates/orca.jinja"):
        assert (tmp_path / "recovered" / name).read_bytes() == (target_dir / name).read_bytes(), name
    assert len(list((tmp_path / "diff").glob("diff-*.safetensors"))) > 1
    assert (tmp_path / "recovered" / "model.safetensors.index.json").is_file()


def test_diff_format_is_xor_of_the_bits_with_new_rows_stored_whole(tmp_path):
    """What the README tells someone without orca-jax, checked on the files: a per-tensor XOR of the
    raw bits, rows beyond the base's stored as they are, sha256s of the raw bytes."""
    base, target = _checkpoints(BF16)
    weight_diff.make_diff(_write(tmp_path / "base", base), _write(tmp_path / "target", target), tmp_path / "diff")
    index = json.loads((tmp_path / "diff" / "weight_diff.json").read_text())
    stored = _read_all(tmp_path / "diff", "diff*.safetensors")
    embedding, base_embedding = target["model.embed_tokens.weight"], base["model.embed_tokens.weight"]
    name = "model.embed_tokens.weight"
    assert stored[name].dtype == np.uint16 and stored[name].shape == (ROWS + 1, WIDTH)
    np.testing.assert_array_equal(stored[name][:ROWS],
                                  embedding[:ROWS].view(np.uint16) ^ base_embedding.view(np.uint16))
    assert _raw(stored[name][ROWS:]) == _raw(embedding[ROWS:])
    assert _raw(stored["model.extra.weight"]) == _raw(target["model.extra.weight"])
    entry = index["tensors"][name]
    assert (entry["dtype"], entry["shape"], entry["base_shape"]) == ("bfloat16", [ROWS + 1, WIDTH], [ROWS, WIDTH])
    assert entry["target_sha256"] == hashlib.sha256(_raw(embedding)).hexdigest()
    assert entry["base_sha256"] == hashlib.sha256(_raw(base_embedding)).hexdigest()
    assert index["tensors"]["model.extra.weight"]["base_shape"] is None


def test_float_subtraction_would_not_be_exact():
    """Why the diff is an XOR: base + (target - base), even with the difference kept in float32, is not
    the target for bf16 weights of different magnitudes."""
    rng = np.random.default_rng(0)
    base = (rng.normal(size=10_000) * np.exp(rng.normal(size=10_000) * 6)).astype(BF16)
    target = (rng.normal(size=10_000) * 1e-3).astype(BF16)
    difference = target.astype(np.float32) - base.astype(np.float32)
    back = (base.astype(np.float32) + difference).astype(BF16)
    assert np.any(back.view(np.uint16) != target.view(np.uint16))


@pytest.fixture()
def made_diff(tmp_path) -> tuple[pathlib.Path, pathlib.Path, dict]:
    base, target = _checkpoints(BF16)
    base_dir = _write(tmp_path / "base", base)
    weight_diff.make_diff(base_dir, _write(tmp_path / "target", target), tmp_path / "diff")
    return base_dir, tmp_path / "diff", base


def test_a_different_base_fails_naming_the_tensor_and_leaves_no_output(made_diff, tmp_path, capsys):
    base_dir, diff_dir, base = made_diff
    name = "model.layers.0.mlp.up_proj.weight"
    base[name].view(np.uint16)[7, 3] ^= 1  # one bit of one weight
    other_base = _write(tmp_path / "other_base", base)
    out = tmp_path / "recovered"
    assert cli.main(["weight-diff", "apply", "--base", str(other_base), "--diff", str(diff_dir),
                     "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert name in error and "differs from the base this diff was made from" in error
    assert not out.exists() and list(tmp_path.glob(".recovered*")) == []


def test_a_damaged_diff_fails_its_checksum(made_diff, tmp_path, capsys):
    base_dir, diff_dir, _ = made_diff
    path = diff_dir / "diff.safetensors"
    tensors = _read_all(diff_dir, "diff.safetensors")
    tensors["model.norm.weight"][2] ^= 1 << 4
    save_file(tensors, path)
    assert weight_diff.main(["apply", "--base", str(base_dir), "--diff", str(diff_dir),
                             "--out", str(tmp_path / "recovered")]) == 1
    error = capsys.readouterr().err
    assert "model.norm.weight" in error and "sha256" in error and not (tmp_path / "recovered").exists()


def test_outputs_that_exist_are_refused(made_diff, tmp_path, capsys):
    base_dir, diff_dir, _ = made_diff
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert weight_diff.main(["apply", "--base", str(base_dir), "--diff", str(diff_dir),
                             "--out", str(tmp_path / "full")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["keep.txt"]


def _tiny_llama(vocab: int, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval().to(torch.bfloat16)


def test_params_directory_target_is_exported_and_recovers_a_loadable_model(tmp_path):
    """Base: a bf16 transformers LLaMA. Target: an orca-jax params directory with the pad row (imported
    from a different random model), exported on the fly. The recovered directory loads in transformers
    and gives the logits of the target's own export."""
    _tiny_llama(64, seed=0).save_pretrained(tmp_path / "base")
    _tiny_llama(64, seed=1).save_pretrained(tmp_path / "tuned_hf")
    params = tmp_path / "params"
    assert convert.main(["import", "--hf_dir", str(tmp_path / "tuned_hf"), "--out", str(params),
                         "--vocab_size", "65"]) == 0
    assert weight_diff.main(["make", "--base", str(tmp_path / "base"), "--target", str(params),
                             "--out", str(tmp_path / "diff")]) == 0
    assert not (tmp_path / "diff" / "_exported_target").exists()
    assert weight_diff.main(["apply", "--base", str(tmp_path / "base"), "--diff", str(tmp_path / "diff"),
                             "--out", str(tmp_path / "recovered")]) == 0
    assert convert.main(["export", "--params", str(params), "--out", str(tmp_path / "exported")]) == 0
    recovered, exported = _read_all(tmp_path / "recovered"), _read_all(tmp_path / "exported")
    assert sorted(recovered) == sorted(exported)
    for name, tensor in exported.items():
        assert recovered[name].dtype == BF16 and _raw(recovered[name]) == _raw(tensor), name
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "recovered", dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32)
    tokens = torch.tensor([[1, 5, 64, 9, 33]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference(tokens).logits, rtol=0, atol=0)
