"""`orca-jax chat` and `orca-jax generate` on a tiny random model saved as a params directory: streamed
text equals the non-streamed greedy generation, multi-turn prompts, /system and /reset, Ctrl-C, EOF,
a pseudo-terminal session; batch generation equal to greedy_generate, stop strings, resume."""

import argparse
import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.templates import TEMPLATES, encode_prompt
from orca_jax.data.tokenizer import Tokenizer, train_tokenizer
from orca_jax.eval import chat, generate, generate_cli
from orca_jax.model import params_io
from orca_jax.model.config import ModelConfig
from orca_jax.model.llama import init_params

NEW_TOKENS = 20
WORDS = ("the cat sat on a mat while it rained over the old town; why is the sky blue? because light "
         "scatters. café naïve 123 456").split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 12)) for _ in range(300)] + ["### User:\n### Assistant:\n### System:\n"] * 20
    tokenizer = Tokenizer.load(train_tokenizer(texts, root / "tok", vocab_size=400))
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, mlp_dim=64, num_layers=2,
                               num_heads=4, num_kv_heads=2, head_dim=8, max_seq_len=256, compute_dtype="float32")
    boxed = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))

    def fill(path, leaf):  # peaked logits (std 0.3) so no argmax is a near tie
        if "scale" in jax.tree_util.keystr(path):
            return np.ones(leaf.shape, np.float32)
        return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(fill, nn.unbox(boxed))
    params_io.save_params(root / "params", params, model_config)
    config_file = root / "config.py"
    config_file.write_text(
        "from ml_collections import ConfigDict\n\n\ndef get_config():\n    return ConfigDict({\n"
        "        'model': {'vocab_size': 7, 'max_seq_len': 16},\n"
        f"        'data': {{'tokenizer': {str(tokenizer.path)!r}, 'template': 'orca'}},\n"
        "    })\n")
    args = ["--config", str(config_file), "--params", str(root / "params"), "--max_new_tokens", str(NEW_TOKENS)]
    return dict(root=root, tokenizer=tokenizer, model_config=model_config,
                params=jax.tree.map(jnp.asarray, params), args=args)


def greedy_text(setup, prompt_text: str) -> str:
    """The non-streamed reference: greedy_generate on BOS + the prompt text, decoded at once."""
    tokenizer = setup["tokenizer"]
    (tokens,) = generate.greedy_generate(setup["params"], setup["model_config"],
                                         [[tokenizer.bos_id] + tokenizer.encode(prompt_text)],
                                         max_new_tokens=NEW_TOKENS, eos_id=tokenizer.eos_id,
                                         pad_id=tokenizer.pad_id, batch_size=1)
    return tokenizer.decode(tokens)


def run_chat(monkeypatch, capsys, setup, stdin: str, *flags: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = chat.main([*setup["args"], *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_conversation_rendering_extends_the_single_turn_prompt(setup):
    orca, chatml = TEMPLATES["orca"], TEMPLATES["chatml"]
    tokenizer = setup["tokenizer"]
    single = chat.render_conversation(orca, "Be brief.", [], "why?")
    assert [tokenizer.bos_id] + tokenizer.encode(single) == encode_prompt(tokenizer, "orca", "Be brief.", "why?")
    assert chat.render_conversation(orca, "", [("hi", "hello")], "why?") == (
        "### User:\nhi\n\n### Assistant:\nhello\n\n### User:\nwhy?\n\n### Assistant:\n")
    assert chat.render_conversation(chatml, "S", [("hi", "hello")], "why?") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nwhy?<|im_end|>\n<|im_start|>assistant\n")


def test_text_stream_releases_exactly_the_decoded_text(setup):
    tokenizer = setup["tokenizer"]
    text = "the cat sat on a mat, café ☃ naïve 123"  # ☃ is not in the vocabulary: byte pieces
    ids = tokenizer.encode(text)
    for stops in ((), ("mat,",), ("na", "zzz"), ("☃",)):
        stream = generate_cli.TextStream(tokenizer, stops)
        pieces = [stream.update(ids[:n]) for n in range(1, len(ids) + 1)]
        pieces.append(stream.update(ids, final=True))
        expected, stopped = generate_cli.cut_at_stop(tokenizer.decode(ids), stops)
        assert "".join(pieces) == expected == stream.text and stream.stopped == stopped == bool(stops)
        assert all(generate_cli.REPLACEMENT_CHAR not in piece for piece in pieces)  # bytes held until whole
    assert pieces[0] == "the"  # the leading space of the first piece is not shown


@pytest.mark.slow  # compiles a decoder per prompt bucket: over 20 s on 2 shared cores
def test_chat_over_stdin_streams_the_greedy_generation_with_system_and_reset(monkeypatch, capsys, setup):
    stdin = "the cat sat\n/system 3\nwhy is the sky blue?\n/reset\n/system empty\nthe cat sat\n"
    code, out, err = run_chat(monkeypatch, capsys, setup, stdin, "--chunk_tokens", "3")
    assert code == 0, err
    orca = TEMPLATES["orca"]
    first = greedy_text(setup, chat.render_conversation(orca, "", [], "the cat sat"))
    second = greedy_text(setup, chat.render_conversation(orca, SYSTEM_MESSAGES[3], [("the cat sat", first)],
                                                         "why is the sky blue?"))
    assert out == f"{first}\n{second}\n{first}\n"
    assert first and second != first
    assert "[conversation reset]" in err and repr(SYSTEM_MESSAGES[3]) in err


def test_chat_stop_strings_cut_the_stream(monkeypatch, capsys, setup):
    full = greedy_text(setup, chat.render_conversation(TEMPLATES["orca"], "", [], "the cat sat"))
    stop = full[len(full) // 2:len(full) // 2 + 2]
    code, out, err = run_chat(monkeypatch, capsys, setup, "the cat sat\n/quit\nnever read\n", "--stop", stop)
    assert code == 0, err
    assert out == full[:full.index(stop)] + "\n"


@pytest.mark.slow  # compiles a decoder per prompt bucket: over 20 s on 2 shared cores
def test_seeded_sampled_chat_replays(monkeypatch, capsys, setup):
    flags = ("--temperature", "1.0", "--top_p", "0.95", "--seed", "5")
    runs = [run_chat(monkeypatch, capsys, setup, "the cat sat\nthe cat sat\n", *flags) for _ in range(2)]
    assert runs[0][0] == 0 and runs[0][1] == runs[1][1]
    greedy = greedy_text(setup, chat.render_conversation(TEMPLATES["orca"], "", [], "the cat sat"))
    assert runs[0][1].split("\n")[0] != greedy


def test_ctrl_c_stops_the_response_and_the_session_goes_on(setup):
    flags = argparse.Namespace(params=str(setup["root"] / "params"), tokenizer=None, template=None,
                                            max_new_tokens=NEW_TOKENS, temperature=0.0, top_k=0, top_p=1.0,
                                            params_dtype="compute", mesh=None)
    config = generate_cli.parse_config_args(setup["args"][:2])[0]
    model = generate_cli.load_model(config, [], flags)
    shown, notes, interrupted = [], [], []

    def write(text):
        if len(shown) == 1 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread while a chunk is shown
        shown.append(text)

    session = chat.ChatSession(model, model.decoder(flags), system="", seed=0, sampled=False, stops=[],
                               write=write, note=notes.append, chunk=2)
    assert session.handle("the cat sat")
    assert interrupted and "\n[stopped]" in notes and session.history == [("the cat sat", shown[0])]
    shown.clear()
    session.write = shown.append
    assert session.handle("/reset") and session.handle("the cat sat")
    expected = greedy_text(setup, chat.render_conversation(TEMPLATES["orca"], "", [], "the cat sat"))
    assert "".join(shown) == expected + "\n"
    assert not session.handle("/quit")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux setsid")
def test_chat_in_a_pseudo_terminal(setup):
    """A real terminal: the prompt, streaming, Ctrl-C at the prompt, Ctrl-D exits 0."""
    expected = greedy_text(setup, chat.render_conversation(TEMPLATES["orca"], "", [], "the cat sat"))
    controller, terminal = pty.openpty()
    # `setsid --ctty`: a new session whose controlling terminal is the pty, so ^C there is SIGINT.
    process = subprocess.Popen(["setsid", "--ctty", sys.executable, "-m", "orca_jax.cli", "chat", *setup["args"]],
                               stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"},
                               # A suite started in the background (`cmd &`) ignores SIGINT, and an ignored
                               # signal stays ignored across exec: give the terminal's ^C its default back.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(terminal)
    seen = b""

    def read_until(marker: bytes, timeout: float = 90) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([controller], [], [], 1)[0]:
                seen += os.read(controller, 4096)

    try:
        read_until(b">>> ")
        os.write(controller, b"the cat sat\n")
        # The terminal echoes the input line and turns each \n into \r\n.
        read_until(b"the cat sat\r\n" + expected.encode().replace(b"\n", b"\r\n") + b"\r\n>>> ")
        os.write(controller, b"\x03")  # Ctrl-C at the prompt: the session stays, with a fresh prompt
        read_until(b"^C\r\n>>> ")
        os.write(controller, b"/system 16\n")
        read_until(b"helps people find information.'")
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


# ---- orca-jax generate ----------------------------------------------------------------------

ROWS = [{"id": "a", "question": "the cat sat"}, {"question": "why is the sky blue?", "system_prompt": "Be brief."},
        {"id": 7, "prompt": "the old town", "extra": [1, 2]}, {"id": "d", "question": "café naïve"},
        {"id": "e", "question": "light scatters"}]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_generate(setup, tmp_path, *flags, output="out.jsonl"):
    code = generate_cli.main([*setup["args"], "--input", str(tmp_path / "in.jsonl"),
                              "--output", str(tmp_path / output), *flags])
    lines = (tmp_path / output).read_text().splitlines() if (tmp_path / output).exists() else []
    return code, [json.loads(line) for line in lines]


def reference_responses(setup) -> list[str]:
    tokenizer = setup["tokenizer"]
    prompts = [encode_prompt(tokenizer, "orca", row.get("system_prompt", ""), row.get("question", row.get("prompt")))
               for row in ROWS]
    outputs = generate.greedy_generate(setup["params"], setup["model_config"], prompts, max_new_tokens=NEW_TOKENS,
                                       eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, batch_size=4)
    return [tokenizer.decode(tokens) for tokens in outputs]


@pytest.mark.slow  # compiles a decoder per prompt bucket: over 20 s on 2 shared cores
def test_generate_writes_greedy_responses_and_resumes(setup, tmp_path):
    write_rows(tmp_path / "in.jsonl", ROWS)
    code, rows = run_generate(setup, tmp_path, "--batch_size", "2")
    assert code == 0
    assert [row["response"] for row in rows] == reference_responses(setup)
    assert [row["id"] for row in rows] == ["a", 1, 7, "d", "e"]  # the row number where none was given
    assert rows[2]["extra"] == [1, 2] and rows[1]["system_prompt"] == "Be brief."
    assert all(row["finish_reason"] in ("eos", "length") for row in rows)

    # An interrupted run: two rows written and a torn third line. The rerun completes the same file.
    full = (tmp_path / "out.jsonl").read_text()
    kept = "".join(full.splitlines(keepends=True)[:2])
    (tmp_path / "out.jsonl").write_text(kept + full.splitlines()[2][:15])
    code, resumed = run_generate(setup, tmp_path, "--batch_size", "3")
    assert code == 0 and resumed == rows


def test_generate_stop_strings_cut_each_response(setup, tmp_path):
    write_rows(tmp_path / "in.jsonl", ROWS)
    references = reference_responses(setup)
    stop = references[0][5:7]
    code, rows = run_generate(setup, tmp_path, "--stop", stop, "--stop", "zzzz")
    assert code == 0
    for row, reference in zip(rows, references):
        expected, stopped = generate_cli.cut_at_stop(reference, [stop])
        assert row["response"] == expected
        assert (row["finish_reason"] == "stop") == stopped
    assert rows[0]["finish_reason"] == "stop"


@pytest.mark.slow  # compiles a decoder per prompt bucket: over 20 s on 2 shared cores
def test_sampled_generate_draws_the_same_whatever_the_batch(setup, tmp_path):
    write_rows(tmp_path / "in.jsonl", ROWS)
    flags = ("--temperature", "1.0", "--top_k", "20", "--seed", "3")
    _, by_two = run_generate(setup, tmp_path, *flags, "--batch_size", "2", output="two.jsonl")
    _, by_five = run_generate(setup, tmp_path, *flags, "--batch_size", "5", output="five.jsonl")
    assert by_two == by_five
    assert [row["response"] for row in by_two] != reference_responses(setup)


def test_generate_errors_are_one_line(setup, tmp_path, capsys):
    write_rows(tmp_path / "in.jsonl", [{"id": 1, "question": "x"}, {"id": 1, "question": "y"}])
    assert run_generate(setup, tmp_path)[0] == 1
    assert "id 1 appears twice" in capsys.readouterr().err
    write_rows(tmp_path / "in.jsonl", [{"answer": "x"}])
    assert run_generate(setup, tmp_path)[0] == 1
    assert "needs a string 'question'" in capsys.readouterr().err
    write_rows(tmp_path / "in.jsonl", ROWS)
    assert run_generate(setup, tmp_path, "--top_p", "0")[0] == 1
    assert "--top_p 0.0" in capsys.readouterr().err
