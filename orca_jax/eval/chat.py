"""`orca-jax chat`: talk to saved parameters in a terminal, the response streamed as it is decoded.

    orca-jax chat --params /ckpt/orca [--config F] [--tokenizer T] [--template orca|chatml] \\
        [--system_message TEXT|N|empty] [--temperature T --top_p P --top_k K --seed S] \\
        [--max_new_tokens N] [--stop TEXT ...]

One line is one user turn. Commands: `/reset` (forget the conversation), `/system N|TEXT|empty` (set
the system message; alone it prints the current one), `/help`, `/quit`; end of input (Ctrl-D) exits.
Ctrl-C stops the response being generated (what was shown stays in the conversation) and returns to
the prompt; at the prompt it only clears the line.

Multi-turn format. Training saw one (system, user, assistant) exchange per example, so earlier turns
are written the way the template writes a turn: each past exchange is `user` section + `assistant`
header + response + the template's end of turn (the text the user section ends with: "\\n\\n" for
'orca', "<|im_end|>\\n" for 'chatml'), after the system section and before the new user section. The
whole conversation is re-rendered and re-encoded every turn (BOS + text, as `encode_prompt`): with no
history the prompt is exactly the single-turn evaluation prompt. When it no longer fits in the
window beside max_new_tokens, the oldest exchanges are dropped.

Streaming: the decode runs CHUNK_TOKENS steps per call of a jitted loop (`streaming.ChunkedDecoder`,
the evaluation's own prefill, loop and token choice; one compilation per prompt-length bucket), and
the text is released between calls through `generate_cli.TextStream`. Turn t of a session samples
with keys (seed, t), so a seeded session replays exactly; /reset restarts the count.

Only responses go to stdout (the prompt `>>> ` too when stdin is a terminal); notes go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from orca_jax.data.templates import Template
from orca_jax.errors import UserError
from orca_jax.eval import sampling
from orca_jax.eval.generate_cli import LoadedModel, TextStream, add_decoding_flags, load_model, parse_flags
from orca_jax.eval.prompts import resolve_system_message
from orca_jax.eval.streaming import ChunkedDecoder

# Tokens per decode call: small enough to stream smoothly (a 13B step is tens of ms), large enough
# that the host round trip per call is noise.
CHUNK_TOKENS = 4
HELP = ("commands: /reset (forget the conversation), /system N|TEXT|empty (set the system message), "
        "/system (show it), /quit; Ctrl-D exits, Ctrl-C stops a response")


def end_of_turn(template: Template) -> str:
    """What closes a turn in `template`: the text its user section puts after the question."""
    return template.user.split("{question}", 1)[1]


def render_conversation(template: Template, system: str, history: list[tuple[str, str]], question: str) -> str:
    """The prompt text of a conversation: past (user, assistant) exchanges, then the new question,
    ending at the assistant header (see the module docstring)."""
    system_section = template.system.format(system=system) if system.strip() else ""
    past = "".join(template.user.format(question=user) + template.assistant + reply + end_of_turn(template)
                   for user, reply in history)
    return system_section + past + template.user.format(question=question) + template.assistant


class ChatSession:
    """The conversation and its settings; `handle(line)` runs one line of input."""

    def __init__(self, model: LoadedModel, decoder: ChunkedDecoder, *, system: str, seed: int, sampled: bool,
                 stops: list[str], write: Callable[[str], None], note: Callable[[str], None],
                 chunk: int = CHUNK_TOKENS):
        self.model, self.decoder, self.system, self.seed, self.sampled = model, decoder, system, seed, sampled
        self.stops, self.write, self.note, self.chunk = stops, write, note, chunk
        self.history: list[tuple[str, str]] = []
        self.turn = 0

    def prompt(self, question: str) -> list[int] | None:
        """BOS + the conversation's text, oldest exchanges dropped until it fits; None if the question
        alone does not fit."""
        tokenizer, longest = self.model.tokenizer, self.model.model_config.max_seq_len - self.model.max_new_tokens
        for first in range(len(self.history) + 1):
            text = render_conversation(self.model.template, self.system, self.history[first:], question)
            tokens = [tokenizer.bos_id] + tokenizer.encode(text)
            if len(tokens) <= longest:
                if first:
                    self.note(f"[the {first} oldest exchange(s) no longer fit the window and were dropped]")
                    del self.history[:first]
                return tokens
        return None

    def reply(self, question: str) -> str:
        """Stream the response to `question`; Ctrl-C ends it early. Returns the text shown."""
        tokens = self.prompt(question)
        if tokens is None:
            self.note(f"[the message is too long: the window holds {self.model.model_config.max_seq_len} "
                      f"tokens, {self.model.max_new_tokens} of them for the response]")
            return ""
        rng = sampling.row_keys(self.seed, [self.turn]) if self.sampled else None
        self.turn += 1
        stream, shown = TextStream(self.model.tokenizer, self.stops), []

        def show(text: str) -> None:
            self.write(text)
            shown.append(text)  # only once written: an interrupted write was never seen

        try:
            run = self.decoder.start([tokens], rng=rng)
            while not run.done and not stream.stopped:
                run.advance(self.chunk)
                show(stream.update(run.tokens()[0]))
            show(stream.update(run.tokens()[0], final=True))
        except KeyboardInterrupt:
            self.note("\n[stopped]")
        self.write("\n")
        return "".join(shown)

    def handle(self, line: str) -> bool:
        """Run one input line; False when the session should end."""
        line = line.rstrip("\n")
        command, _, argument = line.strip().partition(" ")
        if command in ("/quit", "/exit"):
            return False
        if command == "/reset":
            self.history, self.turn = [], 0
            self.note("[conversation reset]")
        elif command == "/system":
            if argument.strip():
                try:
                    self.system = resolve_system_message(argument.strip())
                except ValueError as error:
                    self.note(f"[{str(error).replace('--system_message', '/system')}]")
                    return True
            self.note(f"[system message: {self.system!r}]")
        elif command == "/help":
            self.note(HELP)
        elif command.startswith("/") and " " not in command and len(command) > 1:
            self.note(f"[unknown command {command}; {HELP}]")
        elif line.strip():
            self.history.append((line, self.reply(line)))
        return True


def read_line(interactive: bool) -> str | None:
    """The next input line, None at end of input."""
    if interactive:
        try:
            return input(">>> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line or None


def run_session(session: ChatSession, interactive: bool) -> None:
    while True:
        try:
            line = read_line(interactive)
        except KeyboardInterrupt:
            session.note("")  # Ctrl-C at the prompt: a fresh line, as a shell does
            continue
        if line is None:
            if interactive:
                session.note("")
            return
        if not session.handle(line):
            return


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="orca-jax chat", description=__doc__.split("\n\n")[0])
    add_decoding_flags(parser)
    parser.add_argument("--chunk_tokens", type=int, default=CHUNK_TOKENS, help="tokens decoded per streamed update")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        config, model_fields, flags = parse_flags(argv, parser)
        if flags.chunk_tokens < 1:
            raise UserError(f"--chunk_tokens {flags.chunk_tokens} must be positive")
        system = resolve_system_message(flags.system_message) or ""
        model = load_model(config, model_fields, flags)
        if model.mesh is not None and model.mesh.shape["data"] * model.mesh.shape["fsdp"] != 1:
            raise UserError(f"--mesh {flags.mesh}: chat decodes one row, so data and fsdp must be 1 "
                            "(split the model over tensor, e.g. --mesh 1,1,4)")
        decoder = model.decoder(flags)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"orca-jax chat: {error}", file=sys.stderr)
        return 1
    session = ChatSession(model, decoder, system=system, seed=flags.seed, sampled=flags.temperature > 0,
                          stops=flags.stop, write=write, note=note, chunk=flags.chunk_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        note(f"orca-jax chat: {flags.params} ({model.template.name} template). {HELP}")
    run_session(session, interactive)
    return 0
