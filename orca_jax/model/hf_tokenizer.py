"""The run's tokenizer as Hugging Face files, so an exported model loads with `AutoTokenizer` offline.

Written into the export directory:

    tokenizer.model            the run's sentencepiece model, unchanged
    tokenizer.json             the same model converted by transformers (fast tokenizer), plus `<pad>`
    tokenizer_config.json      LlamaTokenizer, special tokens, `legacy: true`, the chat templates
    special_tokens_map.json    bos/eos/unk/pad, for transformers versions that read it
    chat_template.jinja, additional_chat_templates/{orca,chatml}.jinja   (transformers 5's layout)
    generation_config.json     bos, eos and pad ids

The pad token: orca-jax appends one id after the sentencepiece pieces (data/tokenizer.py); here it is
the added special token `<pad>` with that id. `legacy: true` makes the fast tokenizer prepend the
sentencepiece word marker to every text segment after a special token, which is what sentencepiece
does when orca-jax encodes the prompt text after its explicit BOS; with transformers' default
(`legacy: false`) the first word after `<s>` tokenizes differently.

Chat templates: one per orca-jax template ('orca', 'chatml'), and 'default' = the template the run
was trained with. They render exactly `templates.encode_prompt` (BOS, a blank system message drops the
system section) and export checks that on sample prompts before it returns.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any

import sentencepiece as spm

from orca_jax.data import templates
from orca_jax.data.tokenizer import Tokenizer, TokenizerError
from orca_jax.model.weight_layout import ConversionError

PAD_TOKEN = "<pad>"
SENTENCEPIECE_FILE = "tokenizer.model"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "additional_chat_templates", GENERATION_CONFIG_FILE)

# Prompts the exported tokenizer must encode exactly as orca-jax does (blank system = no system section).
_CHECK_PROMPTS = (("You are a helpful assistant. Think step by step.", "What is 12 + 30?\nAnswer briefly."),
                  ("", "Name three colours."), ("   ", "Translate 'chat' into English:  le chat"))


def _literal(text: str) -> str:
    """A Jinja expression printing `text`: a JSON string is a valid Jinja string literal, and printing
    it through an expression keeps transformers' trim_blocks from eating a leading newline."""
    return "{{ " + json.dumps(text) + " }}"


def chat_template(template: str | templates.Template) -> str:
    """The Jinja chat template that renders `templates.encode_prompt`'s text for a system + user turn.

    Assistant turns in the history end with EOS, as in training; orca-jax trains single turns only.
    """
    template = templates.get_template(template)
    system_before, system_after = template.system.split("{system}")
    user_before, user_after = template.user.split("{question}")
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% if message['content'] | trim %}"
        f"{_literal(system_before)}{{{{ message['content'] }}}}{_literal(system_after)}{{% endif %}}"
        f"{{% elif message['role'] == 'user' %}}"
        f"{_literal(user_before)}{{{{ message['content'] }}}}{_literal(user_after)}"
        f"{{% elif message['role'] == 'assistant' %}}"
        f"{_literal(template.assistant)}{{{{ message['content'] }}}}{{{{ eos_token }}}}"
        "{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{_literal(template.assistant)}{{% endif %}}")


def chat_templates(default: str) -> dict[str, str]:
    """'default' (the run's template) plus every orca-jax template by name."""
    named = {name: chat_template(name) for name in templates.TEMPLATES}
    return {"default": chat_template(default), **named}


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ConversionError(f"writing the Hugging Face tokenizer needs transformers and tokenizers "
                              f"(pip install transformers): {err}") from None
    return transformers


def write_hf_tokenizer(tokenizer_path: str | pathlib.Path, out_dir: str | pathlib.Path, template: str,
                       model_vocab_size: int) -> dict[str, int | None]:
    """Write the tokenizer files into `out_dir`; returns {bos,eos,pad}_token_id for the model configs.

    model_vocab_size: rows of the exported embedding. The pad token is added only when it has a row
    (an export with --vocab_size = pieces drops it, and then the tokenizer has no pad token).
    """
    tokenizer_path, out_dir = pathlib.Path(tokenizer_path), pathlib.Path(out_dir)
    templates.get_template(template)  # an unknown name fails before any work
    try:
        ours = Tokenizer.load(tokenizer_path)
    except TokenizerError as err:
        raise ConversionError(str(err)) from None
    if model_vocab_size < ours.num_pieces:
        raise ConversionError(f"{tokenizer_path}: the tokenizer has {ours.num_pieces} pieces but the exported "
                              f"model only {model_vocab_size} embedding rows")
    with_pad = model_vocab_size > ours.pad_id
    transformers = _transformers()
    piece = spm.SentencePieceProcessor(model_file=str(tokenizer_path)).id_to_piece
    with tempfile.TemporaryDirectory() as staging:
        shutil.copyfile(tokenizer_path, pathlib.Path(staging) / SENTENCEPIECE_FILE)
        # Loading from a directory holding only tokenizer.model runs transformers' sentencepiece
        # converter offline; the constructor alone would build an empty vocabulary.
        hf = transformers.LlamaTokenizer.from_pretrained(
            staging, legacy=True, bos_token=piece(ours.bos_id), eos_token=piece(ours.eos_id),
            unk_token=piece(ours.unk_id) if ours.unk_id >= 0 else None, local_files_only=True)
    if with_pad:
        hf.add_special_tokens({"pad_token": PAD_TOKEN})
        if hf.pad_token_id != ours.pad_id:
            raise ConversionError(f"{tokenizer_path}: {PAD_TOKEN} got id {hf.pad_token_id} in the Hugging Face "
                                  f"tokenizer, orca-jax uses {ours.pad_id} (is {PAD_TOKEN} already a piece?)")
    hf.chat_template = chat_templates(template)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    shutil.copyfile(tokenizer_path, out_dir / SENTENCEPIECE_FILE)
    special = {"bos_token": piece(ours.bos_id), "eos_token": piece(ours.eos_id)}
    if ours.unk_id >= 0:
        special["unk_token"] = piece(ours.unk_id)
    if with_pad:
        special["pad_token"] = PAD_TOKEN
    _patch_tokenizer_config(out_dir, template)
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    ids = {"bos_token_id": ours.bos_id, "eos_token_id": ours.eos_id,
           "pad_token_id": ours.pad_id if with_pad else None}
    generation = {key: value for key, value in ids.items() if value is not None}
    (out_dir / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    check_hf_tokenizer(out_dir, ours)
    return ids


def _patch_tokenizer_config(out_dir: pathlib.Path, template: str) -> None:
    """Keep `legacy` (save_pretrained drops it, and reloading without it changes the ids), drop the
    local paths save_pretrained records, and also list the chat templates in the file itself, where
    transformers 4.x reads them."""
    path = out_dir / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    config["legacy"] = True
    config["add_prefix_space"] = True
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    config["chat_template"] = [{"name": name, "template": text} for name, text in chat_templates(template).items()]
    config["orca_jax_template"] = template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_hf_tokenizer(hf_dir: pathlib.Path, ours: Tokenizer) -> None:
    """Reload `hf_dir` with AutoTokenizer and require orca-jax's prompt ids from every chat template."""
    hf = _transformers().AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    for name in chat_templates("orca"):
        template = hf_dir_template(hf_dir) if name == "default" else name
        for system, question in _CHECK_PROMPTS:
            expected = templates.encode_prompt(ours, template, system, question)
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            got = list(hf.apply_chat_template(messages, add_generation_prompt=True, chat_template=name,
                                              tokenize=True, return_dict=True)["input_ids"])
            if got != expected:
                raise ConversionError(
                    f"{hf_dir}: the Hugging Face tokenizer's chat template {name!r} encodes the prompt "
                    f"{question!r} as {got[:16]}..., orca-jax as {expected[:16]}...")


def hf_dir_template(hf_dir: pathlib.Path) -> str:
    """The orca-jax template name an export recorded as its default chat template."""
    config = json.loads((pathlib.Path(hf_dir) / "tokenizer_config.json").read_text())
    return config["orca_jax_template"]


def copy_sentencepiece(source_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path | None:
    """Copy `tokenizer.model` from a checkpoint directory next to imported params, if there is one."""
    source = pathlib.Path(source_dir) / SENTENCEPIECE_FILE
    if not source.is_file():
        return None
    destination = pathlib.Path(out_dir) / SENTENCEPIECE_FILE
    shutil.copyfile(source, destination)
    return destination
