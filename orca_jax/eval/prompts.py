"""How an evaluation example becomes prompt token ids: each benchmark's own zero-shot format, the
system message, the prompt style, and what to do with a prompt too long for the model's window.

Benchmark text (`benchmark_text`), as each benchmark's authors prompt zero-shot without exemplars:
- AGIEval: its official zero-shot prompt, `passage + "Q: " + question + " Answer Choices: " +
  " ".join(options) + "\\nA: Among A through {last letter}, the answer is"` (the AGIEval repository's
  convert_zero_shot, byte for byte: the passage runs straight into "Q:", as there).
- BBH: the input as written. In the raw style it is wrapped as BBH's answer-only prompts are,
  `"Q: " + input + "\\nA:"`, so that a base model continues with an answer.
- The demo: its question.

Prompt styles (`PROMPT_STYLES`):
- 'chat': that text is the user turn of the chat template the model was trained with (data.template),
  after the system message; an empty system message drops the system section, as in training.
- 'raw': BOS + the text alone, no template and no system message (a base model's view).

System messages (`resolve_system_message`): Orca evaluated with an empty system message by default;
`--system_message` also takes one of the paper's 16 (Table 2, by number) or any text. The demo's
questions carry their own system message, used unless one is given.
"""

from __future__ import annotations

import dataclasses
import string

from orca_jax.data.construct.system_messages import SYSTEM_MESSAGES
from orca_jax.data.templates import Template, get_template
from orca_jax.data.tokenizer import Tokenizer
from orca_jax.errors import UserError
from orca_jax.eval.benchmarks import Example

PROMPT_STYLES = ("chat", "raw")
LONG_PROMPT_POLICIES = ("truncate", "skip")
# Marks where a passage was cut, so a reader of the saved prompt sees that it was.
TRUNCATION_MARK = "... "


class PromptError(UserError):
    """A prompt setting that cannot be used; the message names the flag."""


def resolve_system_message(value: str | None) -> str | None:
    """`--system_message` -> the text: None (unset: each example's own, else empty), 'empty' -> '',
    '1'..'16' -> the paper's Table 2 message of that number, anything else -> itself."""
    if value is None:
        return None
    if value == "empty":
        return ""
    if value.strip().isdigit():
        number = int(value)
        if number not in SYSTEM_MESSAGES:
            raise PromptError(f"--system_message {value}: the paper's messages are numbered 1-{len(SYSTEM_MESSAGES)}")
        return SYSTEM_MESSAGES[number]
    return value


def agieval_text(passage: str, question: str, options: tuple[str, ...]) -> str:
    """AGIEval's official zero-shot prompt (English multiple-choice tasks)."""
    letters = string.ascii_uppercase
    last = letters[(len(options) if len(options) != 1 else 5) - 1]  # AGIEval's own rule for one option
    return (f"{passage}Q: {question} Answer Choices: {' '.join(options)}\n"
            f"A: Among A through {last}, the answer is")


def benchmark_text(example: Example, style: str) -> str:
    """The example's prompt text in `style`."""
    if example.benchmark == "agieval":
        return agieval_text(example.passage, example.question, example.options)
    if example.benchmark == "bbh":
        return f"Q: {example.question}\nA:" if style == "raw" else example.question
    return example.question


@dataclasses.dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    """BOS + the rendered prompt, ready to decode from; [] when the example was skipped."""
    text: str
    """What the tokens spell (after truncation), saved with each result."""
    truncated: bool = False
    skipped: bool = False


class PromptBuilder:
    """Renders and encodes examples for one evaluation's settings, fitting them into `max_tokens`."""

    def __init__(self, tokenizer: Tokenizer, template: str | Template, *, style: str = "chat",
                 system_message: str | None = None, max_tokens: int, long_prompts: str = "truncate"):
        if style not in PROMPT_STYLES:
            raise PromptError(f"--prompt_style {style!r}: choose one of {PROMPT_STYLES}")
        if long_prompts not in LONG_PROMPT_POLICIES:
            raise PromptError(f"--long_prompts {long_prompts!r}: choose one of {LONG_PROMPT_POLICIES}")
        if max_tokens < 2:
            raise PromptError(f"no room for a prompt: {max_tokens} tokens left in the model's window")
        self.tokenizer, self.template = tokenizer, get_template(template)
        self.style, self.system_message = style, system_message
        self.max_tokens, self.long_prompts = max_tokens, long_prompts

    def system_for(self, example: Example) -> str:
        if self.style == "raw":
            return ""
        if self.system_message is not None:
            return self.system_message
        return example.system_prompt or ""

    def render(self, example: Example) -> str:
        text = benchmark_text(example, self.style)
        if self.style == "raw":
            return text
        return self.template.render_prompt(self.system_for(example), text)

    def _encode(self, text: str) -> list[int]:
        return [self.tokenizer.bos_id] + self.tokenizer.encode(text)

    def build(self, example: Example) -> Prompt:
        """The example's prompt; too long for the window, its passage is cut from the left (keeping the
        end, which the question refers to) or the example is skipped, as `long_prompts` says."""
        text = self.render(example)
        tokens = self._encode(text)
        if len(tokens) <= self.max_tokens:
            return Prompt(tokens, text)
        if self.long_prompts == "skip":
            return Prompt([], text, skipped=True)
        return self._truncate(example, text)

    def _truncate(self, example: Example, text: str) -> Prompt:
        # AGIEval's passage is the context to cut; BBH and demo questions have none, so their own text
        # is cut instead, options and all question text after it being what the answer needs.
        field = "passage" if example.passage else "question"
        words = getattr(example, field).split(" ")

        def attempt(dropped: int) -> tuple[str, list[int]]:
            kept = TRUNCATION_MARK + " ".join(words[dropped:])
            candidate = self.render(dataclasses.replace(example, **{field: kept}))
            return candidate, self._encode(candidate)

        # Binary search for the fewest dropped words that fit: token counts grow with the words kept.
        low, high = 1, len(words)
        best = None
        while low <= high:
            middle = (low + high) // 2
            candidate, tokens = attempt(middle)
            if len(tokens) <= self.max_tokens:
                best, high = (candidate, tokens), middle - 1
            else:
                low = middle + 1
        if best is None:
            return Prompt([], text, skipped=True)
        return Prompt(best[1], best[0], truncated=True)
