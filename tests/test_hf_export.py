"""A complete Hugging Face export, checked with transformers as the independent reader.

A tiny random LLaMA made by transformers is imported (vocabulary grown by the pad token), exported
with a sentencepiece tokenizer trained here, and loaded back with AutoModelForCausalLM and
AutoTokenizer: the chat templates must give orca-jax's prompt ids and transformers' greedy decoding
must produce orca-jax's greedy tokens.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import torch
import transformers

from orca_jax.data import templates
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval.generate import greedy_generate
from orca_jax.model import convert, hf_tokenizer, params_io
from orca_jax.model.weight_layout import ConversionError

from synthetic_text import SYSTEM_MESSAGES, corpus, sentence

PIECES, HIDDEN, MLP, LAYERS, HEADS, KV_HEADS, CONTEXT = 400, 64, 96, 2, 4, 2, 256
NEW_TOKENS = 12
QUESTIONS = ("What is 12 + 30?", "Name three colours.\nThen stop.", "kalo miter onra: sen?")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> pathlib.Path:
    # The templates' markers in the corpus give the tokenizer pieces for them, as a real one has.
    texts = corpus() + [templates.TEMPLATES[name].render_prompt(system, q)
                        for name in templates.TEMPLATES for system in SYSTEM_MESSAGES for q in QUESTIONS]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", PIECES)


@pytest.fixture(scope="module")
def tokenizer(sp_model) -> Tokenizer:
    return Tokenizer.load(sp_model)


@pytest.fixture(scope="module")
def hf_source(sp_model, tmp_path_factory) -> pathlib.Path:
    """A random transformers LLaMA with the tokenizer's pieces (as LLaMA ships: no pad) and its
    tokenizer.model; lm_head scaled up so greedy choices are far from ties in float32."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=PIECES, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = 0.2 * torch.randn_like(param)
            param.copy_(1.0 + noise if "norm" in name else noise * (8.0 if "lm_head" in name else 1.0))
    directory = tmp_path_factory.mktemp("hf_source")
    model.save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(sp_model.read_bytes())
    return directory


@pytest.fixture(scope="module")
def params_dir(hf_source, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("ours") / "params"
    assert convert.main(["import", "--hf_dir", str(hf_source), "--out", str(out),
                         "--vocab_size", str(PIECES + 1)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(params_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert convert.main(["export", "--params", str(params_dir), "--out", str(out),
                         "--tokenizer", str(params_dir / "tokenizer.model"), "--template", "chatml",
                         "--max_shard_mb", "0.1"]) == 0
    return out


def test_import_copies_the_tokenizer_model(hf_source, params_dir):
    assert (params_dir / "tokenizer.model").read_bytes() == (hf_source / "tokenizer.model").read_bytes()


def test_export_writes_a_complete_model_directory(exported, tokenizer):
    names = {path.name for path in exported.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
            "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"} <= names
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": PIECES}
    assert json.loads((exported / "generation_config.json").read_text()) == ids
    config = json.loads((exported / "config.json").read_text())
    assert {key: config[key] for key in ids} == ids and config["vocab_size"] == PIECES + 1
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert {entry["name"] for entry in tokenizer_config["chat_template"]} == {"default", "orca", "chatml"}

    hf = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert (hf.pad_token, hf.pad_token_id, len(hf)) == ("<pad>", PIECES, PIECES + 1)
    assert (hf.bos_token_id, hf.eos_token_id) == (tokenizer.bos_id, tokenizer.eos_id)
    text = sentence(np.random.default_rng(1), 40)
    assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    assert hf.decode(tokenizer.encode(text)) == text
    generation = transformers.GenerationConfig.from_pretrained(exported, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, PIECES)


@pytest.mark.parametrize("template", ["orca", "chatml", "default"])
@pytest.mark.parametrize("system", ["", "   ", "You are an AI assistant.\nThink step by step."])
def test_chat_template_renders_orca_jax_prompt_ids(exported, tokenizer, template, system):
    hf = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    ours = "chatml" if template == "default" else template  # the export's --template
    for question in QUESTIONS + (sentence(np.random.default_rng(2), 30),):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        got = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                     chat_template=None if template == "default" else template)
        expected = templates.encode_prompt(tokenizer, ours, system, question)
        assert list(got["input_ids"]) == expected
        assert expected[0] == tokenizer.bos_id and expected.count(tokenizer.bos_id) == 1


@pytest.mark.slow  # ~20 s: transformers' generate and two compiled decode buckets
def test_transformers_greedy_generation_matches_orca_jax(exported, params_dir, tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    hf = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    prompts = [templates.encode_prompt(tokenizer, "chatml", system, question)
               for system, question in zip(SYSTEM_MESSAGES, QUESTIONS)]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            output = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, do_sample=False)
        new = output[0, len(prompt):].tolist()
        expected.append(new[:new.index(hf.eos_token_id)] if hf.eos_token_id in new else new)
    assert len({tuple(tokens) for tokens in expected}) > 1, "degenerate test model: every prompt decodes alike"

    config = params_io.load_model_config(params_dir).replace(param_dtype="float32", compute_dtype="float32")
    ours = greedy_generate(params_io.restore_params(params_dir), config, prompts, max_new_tokens=NEW_TOKENS,
                           eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, batch_size=2)
    assert ours == expected


def test_export_reads_tokenizer_and_template_from_a_training_config(params_dir, tmp_path):
    config_file = tmp_path / "run.py"
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n"
        f"    return ConfigDict({{'data': {{'tokenizer': {str(params_dir / 'tokenizer.model')!r}, "
        "'template': 'orca'}})\n")
    out = tmp_path / "hf"
    assert convert.main(["export", "--params", str(params_dir), "--out", str(out),
                         "--config", str(config_file)]) == 0
    assert hf_tokenizer.hf_dir_template(out) == "orca"
    assert (out / "chat_template.jinja").read_text() == hf_tokenizer.chat_template("orca")


def test_export_without_the_pad_row_writes_no_pad_token(params_dir, tmp_path):
    out = tmp_path / "hf"
    assert convert.main(["export", "--params", str(params_dir), "--out", str(out), "--vocab_size", str(PIECES),
                         "--tokenizer", str(params_dir / "tokenizer.model")]) == 0
    hf = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf.pad_token is None and len(hf) == PIECES
    assert "pad_token_id" not in json.loads((out / "generation_config.json").read_text())


def test_tokenizer_larger_than_the_model_is_refused(params_dir, tmp_path):
    big = train_tokenizer(corpus(), tmp_path / "big", PIECES + 50)
    with pytest.raises(ConversionError, match=f"{big}: the tokenizer has {PIECES + 50} pieces"):
        convert.export_hf(params_dir, tmp_path / "hf", tokenizer=big)
    assert not list((tmp_path / "hf").glob("*.safetensors"))


def test_export_reads_a_training_checkpoint_step(params_dir, tmp_path):
    """A step directory of training (params item + meta item holding the config) exports like a params
    directory; the meta item is built here as train/checkpoint.py writes it (orbax JSON at meta/metadata)."""
    step = tmp_path / "checkpoints" / "120"
    params_io.save_params(step, params_io.restore_params(params_dir))
    model = dataclasses.asdict(params_io.load_model_config(params_dir))
    (step / "meta").mkdir()
    (step / "meta" / "metadata").write_text(json.dumps({"step": 120, "config": json.dumps({"model": model})}))
    assert convert.main(["export", "--params", str(step), "--out", str(tmp_path / "from_step")]) == 0
    assert convert.main(["export", "--params", str(params_dir), "--out", str(tmp_path / "from_params")]) == 0
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "from_step" / name).read_bytes() == (tmp_path / "from_params" / name).read_bytes()
