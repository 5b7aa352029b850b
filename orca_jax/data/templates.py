"""Prompt templates: how (system message, question) become the text the model conditions on, and how an
example becomes token ids plus the mask of tokens the loss is taken on.

Orca trains only on the teacher's response: the system message and the user query are conditioning,
never targets. `encode_example` therefore returns the response mask explicitly; packing turns it into
`loss_weights` (docs/contracts.md).

The prompt and the response are tokenized separately, so the response always starts at a token
boundary and decoding the masked ids gives back exactly the response text. Markers such as ChatML's
`<|im_start|>` are plain text to the tokenizer (split into ordinary pieces), which keeps the
vocabulary at pieces + pad as the contract fixes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from orca_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Template:
    """A chat format. `system` and `user` are format strings with {system} / {question}; `assistant` is
    the header the response follows. A blank system message drops the system section entirely."""

    name: str
    system: str
    user: str
    assistant: str

    def render_prompt(self, system: str, question: str) -> str:
        system_section = self.system.format(system=system) if system.strip() else ""
        return system_section + self.user.format(question=question) + self.assistant


TEMPLATES: dict[str, Template] = {
    # Orca 1 / OpenOrca style sections.
    "orca": Template(
        name="orca",
        system="### System:\n{system}\n\n",
        user="### User:\n{question}\n\n",
        assistant="### Assistant:\n",
    ),
    # Orca 2 uses ChatML.
    "chatml": Template(
        name="chatml",
        system="<|im_start|>system\n{system}<|im_end|>\n",
        user="<|im_start|>user\n{question}<|im_end|>\n",
        assistant="<|im_start|>assistant\n",
    ),
}


def get_template(template: str | Template) -> Template:
    """The template named in a config (`data.template`), or `template` itself if already one."""
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def encode_prompt(tokenizer: Tokenizer, template: str | Template, system: str, question: str) -> list[int]:
    """BOS + the rendered prompt through the assistant header: what generation starts from."""
    return [tokenizer.bos_id] + tokenizer.encode(get_template(template).render_prompt(system, question))


def encode_examples(tokenizer: Tokenizer, template: str | Template,
                    records: Sequence[dict[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`encode_example` for many records ({system_prompt, question, response} dicts) with two batched
    tokenizer calls, which is what keeps the input pipeline fast."""
    template = get_template(template)
    prompts = tokenizer.encode_batch(
        [template.render_prompt(r["system_prompt"], r["question"]) for r in records])
    responses = tokenizer.encode_batch([r["response"] for r in records])
    encoded = []
    for prompt_ids, response_ids in zip(prompts, responses):
        prompt_length = 1 + len(prompt_ids)
        tokens = np.empty(prompt_length + len(response_ids) + 1, np.int32)
        tokens[0] = tokenizer.bos_id
        tokens[1:prompt_length] = prompt_ids
        tokens[prompt_length:-1] = response_ids
        tokens[-1] = tokenizer.eos_id
        response_mask = np.zeros(len(tokens), bool)
        response_mask[prompt_length:] = True
        encoded.append((tokens, response_mask))
    return encoded


def encode_example(tokenizer: Tokenizer, template: str | Template, system: str, question: str,
                   response: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[n], response_mask bool[n]): tokens = encode_prompt(...) + response ids + [EOS],
    the mask true exactly on the response ids and the EOS."""
    record = {"system_prompt": system, "question": question, "response": response}
    return encode_examples(tokenizer, template, [record])[0]
