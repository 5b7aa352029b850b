"""Weight conversion against the real thing: a random transformers LlamaForCausalLM is the reference.

Import must reproduce its logits, export must reproduce its files bit for bit, and a Meta-layout copy
(interleaved rotary rows, two model-parallel ranks) must import to the same model. The Meta copy is
itself checked against an independent NumPy forward pass written the way Meta's code computes.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from orca_jax import parallel
from orca_jax.model import convert, params_io
from orca_jax.model.config import ModelConfig
from orca_jax.model.hf_checkpoint import HfCheckpoint
from orca_jax.model.llama import Llama
from orca_jax.model.meta_checkpoint import MetaCheckpoint
from orca_jax.model.weight_layout import ConversionError

VOCAB, HIDDEN, MLP, LAYERS, HEADS, KV_HEADS = 128, 64, 96, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
ROPE_THETA, NORM_EPS, CONTEXT = 50000.0, 1e-5, 64
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 12)).astype(np.int32)


def _hf_model() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=NORM_EPS,
        rope_theta=ROPE_THETA, max_position_embeddings=CONTEXT, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to ones, which would hide a swapped norm
        for name, param in model.named_parameters():
            noise = 0.1 * torch.randn_like(param)
            param.copy_(1.0 + noise if "norm" in name else noise)
    return model


def _hf_logits(model: transformers.LlamaForCausalLM) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS).long()).logits.float().numpy()


def _read_all(directory: pathlib.Path) -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="numpy") as file:
            tensors.update({name: file.get_tensor(name) for name in file.keys()})
    return tensors


@jax.jit
def _forward_f32(params, tokens):
    config = _our_config()
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return Llama(config).apply({"params": params}, tokens, positions, jnp.ones_like(tokens))


def _our_config() -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, embed_dim=HIDDEN, mlp_dim=MLP, num_layers=LAYERS,
                       num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, rope_theta=ROPE_THETA,
                       norm_eps=NORM_EPS, max_seq_len=CONTEXT, param_dtype="float32", compute_dtype="float32")


def _our_logits(params_dir: pathlib.Path) -> np.ndarray:
    """Restore the converted params as float32 on one device and run our model in float32."""
    saved = params_io.load_model_config(params_dir)
    assert saved.replace(param_dtype="float32", compute_dtype="float32") == _our_config()
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params = params_io.restore_params(params_dir, parallel.abstract_params(_our_config(), mesh))
    return np.asarray(_forward_f32(params, TOKENS))


def _assert_close(ours: np.ndarray, reference: np.ndarray, tolerance: float = 1e-4) -> None:
    relative = np.max(np.abs(ours - reference)) / np.max(np.abs(reference))
    assert relative < tolerance, f"max relative logit error {relative:.2e}"


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


@pytest.fixture(scope="module")
def hf_fp32_dir(hf_model, tmp_path_factory) -> pathlib.Path:
    """float32, saved in several shards with an index."""
    directory = tmp_path_factory.mktemp("hf_fp32")
    hf_model.save_pretrained(directory, max_shard_size="40KB")
    assert (directory / "model.safetensors.index.json").is_file()
    return directory


@pytest.fixture(scope="module")
def hf_bf16(hf_model, tmp_path_factory) -> pathlib.Path:
    """The same model in bfloat16, saved as one model.safetensors."""
    model = copy.deepcopy(hf_model).to(torch.bfloat16)
    directory = tmp_path_factory.mktemp("hf_bf16")
    model.save_pretrained(directory)
    assert (directory / "model.safetensors").is_file()
    return directory


@pytest.fixture(scope="module")
def imported_fp32(hf_fp32_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("ours") / "fp32"
    assert convert.main(["import", "--hf_dir", str(hf_fp32_dir), "--out", str(out)]) == 0
    return out


def test_hf_import_reproduces_transformers_logits(hf_model, imported_fp32):
    _assert_close(_our_logits(imported_fp32), _hf_logits(hf_model))


def test_bf16_import_keeps_bf16_and_matches_rounded_model(hf_bf16, tmp_path):
    directory = hf_bf16
    out = tmp_path / "ours"
    assert convert.main(["import", "--hf_dir", str(directory), "--out", str(out)]) == 0
    stored = params_io.restore_params(out)
    assert {leaf.dtype.name for leaf in jax.tree.leaves(stored)} == {"bfloat16"}
    # restore_params casts the bf16 storage to float32; so does transformers when asked for float32
    # (model.float() would not do: its rotary frequencies were already rounded to bf16).
    reference = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    _assert_close(_our_logits(out), _hf_logits(reference))


def test_dtype_flag_casts_storage(hf_fp32_dir, tmp_path):
    out = tmp_path / "ours"
    assert convert.main(["import", "--hf_dir", str(hf_fp32_dir), "--out", str(out),
                         "--dtype", "bfloat16"]) == 0
    stored = params_io.restore_params(out)
    query = _read_all(hf_fp32_dir)["model.layers.1.self_attn.q_proj.weight"]
    expected = query.T.reshape(HIDDEN, HEADS, HEAD_DIM).astype(ml_dtypes.bfloat16)
    assert stored["layers"]["attention"]["query"].dtype.name == "bfloat16"
    np.testing.assert_array_equal(stored["layers"]["attention"]["query"][1], expected)


def test_export_round_trips_every_tensor_and_loads_in_transformers(hf_model, hf_fp32_dir, imported_fp32,
                                                                   tmp_path):
    out = tmp_path / "export"
    assert convert.main(["export", "--params", str(imported_fp32), "--out", str(out),
                         "--max_shard_mb", "0.05"]) == 0
    assert (out / "model.safetensors.index.json").is_file()
    original, exported = _read_all(hf_fp32_dir), _read_all(out)
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and exported[name].shape == tensor.shape, name
        assert np.array_equal(exported[name].view(np.uint8), tensor.view(np.uint8)), name
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.rope_parameters["rope_theta"] == ROPE_THETA
    np.testing.assert_array_equal(_hf_logits(reloaded), _hf_logits(hf_model))


def test_bf16_export_is_bit_identical(hf_bf16, tmp_path):
    directory = hf_bf16
    assert convert.main(["import", "--hf_dir", str(directory), "--out", str(tmp_path / "ours")]) == 0
    assert convert.main(["export", "--params", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]) == 0
    original, exported = _read_all(directory), _read_all(tmp_path / "hf")
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert exported[name].dtype.name == "bfloat16", name
        assert np.array_equal(exported[name].view(np.uint16), tensor.view(np.uint16)), name


def test_vocab_resize_appends_mean_rows_and_export_drops_them(hf_fp32_dir, tmp_path):
    out = tmp_path / "ours"
    assert convert.main(["import", "--hf_dir", str(hf_fp32_dir), "--out", str(out),
                         "--vocab_size", str(VOCAB + 2)]) == 0
    assert params_io.load_model_config(out).vocab_size == VOCAB + 2
    params = params_io.restore_params(out)
    original = _read_all(hf_fp32_dir)
    embedding, lm_head = original["model.embed_tokens.weight"], original["lm_head.weight"]
    ours_embedding, ours_head = params["embedder"]["embedding"], params["lm_head"]["kernel"]
    assert ours_embedding.shape == (VOCAB + 2, HIDDEN) and ours_head.shape == (HIDDEN, VOCAB + 2)
    np.testing.assert_array_equal(ours_embedding[:VOCAB], embedding)
    np.testing.assert_array_equal(ours_head[:, :VOCAB], lm_head.T)
    for new_token in (VOCAB, VOCAB + 1):
        np.testing.assert_allclose(ours_embedding[new_token], embedding.astype(np.float64).mean(0), atol=1e-7)
        np.testing.assert_allclose(ours_head[:, new_token], lm_head.astype(np.float64).mean(0), atol=1e-7)

    assert convert.main(["export", "--params", str(out), "--out", str(tmp_path / "hf"),
                         "--vocab_size", str(VOCAB)]) == 0
    exported = _read_all(tmp_path / "hf")
    np.testing.assert_array_equal(exported["model.embed_tokens.weight"], embedding)
    np.testing.assert_array_equal(exported["lm_head.weight"], lm_head)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == VOCAB


def test_tied_embeddings_fill_lm_head_from_the_embedding(tmp_path):
    model = _hf_model()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "hf")
    assert "lm_head.weight" not in _read_all(tmp_path / "hf")
    assert convert.main(["import", "--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    params = params_io.restore_params(tmp_path / "ours")
    np.testing.assert_array_equal(params["lm_head"]["kernel"], params["embedder"]["embedding"].T)
    embedding = model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(params["embedder"]["embedding"], embedding)


# --- Meta's layout ---------------------------------------------------------------------------------

META_RENAMES = {  # HF name suffix -> (Meta name suffix, dim the two ranks split, rotary rows)
    "embed_tokens.weight": ("tok_embeddings.weight", 1, False),
    "self_attn.q_proj.weight": ("attention.wq.weight", 0, True),
    "self_attn.k_proj.weight": ("attention.wk.weight", 0, True),
    "self_attn.v_proj.weight": ("attention.wv.weight", 0, False),
    "self_attn.o_proj.weight": ("attention.wo.weight", 1, False),
    "mlp.gate_proj.weight": ("feed_forward.w1.weight", 0, False),
    "mlp.up_proj.weight": ("feed_forward.w3.weight", 0, False),
    "mlp.down_proj.weight": ("feed_forward.w2.weight", 1, False),
    "input_layernorm.weight": ("attention_norm.weight", None, False),
    "post_attention_layernorm.weight": ("ffn_norm.weight", None, False),
    "model.norm.weight": ("norm.weight", None, False),
    "lm_head.weight": ("output.weight", 0, False),
}


def _to_meta(hf_state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, int | None]]:
    """Meta names, and HF's rotate-half rows put back into interleaved pairs (the inverse of HF's permute)."""
    meta = {}
    for hf_name, tensor in hf_state.items():
        suffix = next(s for s in META_RENAMES if hf_name.endswith(s))
        meta_suffix, split_dim, rotary = META_RENAMES[suffix]
        name = meta_suffix if "layers." not in hf_name else f"layers.{hf_name.split('.')[2]}.{meta_suffix}"
        if rotary:
            out_features, in_features = tensor.shape
            tensor = (tensor.reshape(out_features // HEAD_DIM, 2, HEAD_DIM // 2, in_features)
                      .transpose(1, 2).reshape(out_features, in_features))
        meta[name] = (tensor.clone(), split_dim)
    return meta


def _meta_reference_logits(weights: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Meta's forward pass in float64 NumPy: rotary on complex numbers made of adjacent pairs."""
    def norm(x, scale):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + NORM_EPS) * scale

    def rotate(x, positions):  # x [length, heads, head_dim]
        pairs = x.reshape(*x.shape[:-1], HEAD_DIM // 2, 2)
        complex_x = pairs[..., 0] + 1j * pairs[..., 1]
        frequencies = ROPE_THETA ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        rotated = complex_x * np.exp(1j * positions[:, None, None] * frequencies)[:, :, :]
        return np.stack([rotated.real, rotated.imag], axis=-1).reshape(x.shape)

    outputs = []
    for row in tokens:
        length, positions = len(row), np.arange(len(row))
        x = weights["tok_embeddings.weight"][row]
        for layer in range(LAYERS):
            prefix = f"layers.{layer}."
            w = {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}
            h = norm(x, w["attention_norm.weight"])
            q = rotate((h @ w["attention.wq.weight"].T).reshape(length, HEADS, HEAD_DIM), positions)
            k = rotate((h @ w["attention.wk.weight"].T).reshape(length, KV_HEADS, HEAD_DIM), positions)
            v = (h @ w["attention.wv.weight"].T).reshape(length, KV_HEADS, HEAD_DIM)
            k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM)
            scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attended = np.einsum("hqk,khd->qhd", probs, v).reshape(length, HEADS * HEAD_DIM)
            x = x + attended @ w["attention.wo.weight"].T
            h = norm(x, w["ffn_norm.weight"])
            gate, up = h @ w["feed_forward.w1.weight"].T, h @ w["feed_forward.w3.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w["feed_forward.w2.weight"].T
        outputs.append(norm(x, weights["norm.weight"]) @ weights["output.weight"].T)
    return np.stack(outputs)


@pytest.fixture(scope="module")
def meta_dir(hf_model, tmp_path_factory) -> pathlib.Path:
    """The model as Meta ships 13B: params.json and two model-parallel ranks, bfloat16 free (float32)."""
    directory = tmp_path_factory.mktemp("meta")
    meta = _to_meta(hf_model.state_dict())
    for rank in range(2):
        shard = {name: (tensor if split is None else tensor.chunk(2, dim=split)[rank].clone())
                 for name, (tensor, split) in meta.items()}
        torch.save(shard, directory / f"consolidated.{rank:02d}.pth")
    (directory / "params.json").write_text(json.dumps({
        "dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "multiple_of": 32,
        "norm_eps": NORM_EPS, "rope_theta": ROPE_THETA, "vocab_size": -1}))
    return directory


def test_meta_layout_reference_matches_transformers(hf_model):
    """Guards the test's own Meta construction with a forward pass that knows nothing of HF's layout."""
    weights = {name: tensor.double().numpy() for name, (tensor, _) in _to_meta(hf_model.state_dict()).items()}
    _assert_close(_meta_reference_logits(weights, TOKENS), _hf_logits(hf_model), tolerance=1e-5)


def test_meta_import_reproduces_transformers_logits(hf_model, meta_dir, tmp_path):
    out = tmp_path / "ours"
    assert convert.main(["import", "--meta_dir", str(meta_dir), "--out", str(out),
                         "--max_seq_len", str(CONTEXT)]) == 0
    _assert_close(_our_logits(out), _hf_logits(hf_model))


# --- errors name the file and the tensor -----------------------------------------------------------

def _rewrite_shard(directory: pathlib.Path, tensor_name: str, change) -> pathlib.Path:
    """Rewrite the shard holding `tensor_name` with `change(tensors)` applied; returns the shard's path."""
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    path = directory / index["weight_map"][tensor_name]
    with safe_open(path, framework="numpy") as file:
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


@pytest.fixture()
def hf_copy(hf_fp32_dir, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(hf_fp32_dir, tmp_path / "hf"))


def test_missing_tensor_names_file_and_tensor(hf_copy, tmp_path, capsys):
    name = "model.layers.1.mlp.up_proj.weight"
    path = _rewrite_shard(hf_copy, name, lambda tensors: tensors.pop(name))
    assert convert.main(["import", "--hf_dir", str(hf_copy), "--out", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err
    assert str(path) in message and name in message


def test_wrong_shape_names_file_tensor_and_shapes(hf_copy, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    path = _rewrite_shard(hf_copy, name,
                          lambda tensors: tensors.update({name: tensors[name][:, :HIDDEN - 1].copy()}))
    with pytest.raises(ConversionError) as error:
        convert.import_checkpoint(HfCheckpoint(hf_copy), tmp_path / "out")
    assert str(path) in str(error.value) and name in str(error.value)
    assert f"({KV_HEADS * HEAD_DIM}, {HIDDEN - 1})" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_truncated_file_and_unknown_tensors_and_layout_are_reported(hf_copy, tmp_path):
    name, bias = "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias"
    path = _rewrite_shard(hf_copy, name, lambda tensors: tensors.update({bias: np.zeros(HIDDEN, np.float32)}))
    index_path = hf_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][bias] = path.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=bias):
        HfCheckpoint(hf_copy)

    del index["weight_map"][bias]
    index_path.write_text(json.dumps(index))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConversionError, match=str(path)):
        convert.import_checkpoint(HfCheckpoint(hf_copy), tmp_path / "out")

    for file in hf_copy.glob("model*"):
        file.unlink()
    (hf_copy / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="pytorch_model.bin"):
        HfCheckpoint(hf_copy)


def test_meta_missing_tensor_in_one_rank_names_file_and_tensor(meta_dir, tmp_path):
    directory = pathlib.Path(shutil.copytree(meta_dir, tmp_path / "meta"))
    rank_path = directory / "consolidated.01.pth"
    shard = torch.load(rank_path, weights_only=True)
    del shard["layers.1.attention.wk.weight"]
    torch.save(shard, rank_path)
    with pytest.raises(ConversionError, match=f"{rank_path}: tensor layers.1.attention.wk.weight is missing"):
        convert.import_checkpoint(MetaCheckpoint(directory), tmp_path / "out")
