"""The 16 system messages of the Orca paper's Table 2 and which sub-collection may use which.

The texts are data, not prose: they are kept byte for byte as the OpenOrca release carries them
(checked against the `system_prompt` values counted in Open-Orca/OpenOrca's 1M-GPT4 file), typos,
the curly apostrophe of "don’t", "step-bystep" in 11 and the odd spacing of "Part  # :" in 15
included. A model trained on them learns exactly these strings, so "fixing" them changes the data.
Message 1 is the paper's "<empty system message>": an empty string.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SYSTEM_MESSAGES: dict[int, str] = {
    1: "",
    2: "You are an AI assistant. Provide a detailed answer so user don’t need to search outside to "
       "understand the answer.",
    3: "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    4: "You are a helpful assistant, who always provide explanation. Think like you are answering to a "
       "five year old.",
    5: "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
    6: "You are an AI assistant that helps people find information. Provide a detailed answer so user "
       "don’t need to search outside to understand the answer.",
    7: "You are an AI assistant. User will you give you a task. Your goal is to complete the task as "
       "faithfully as you can. While performing the task think step-by-step and justify your steps.",
    8: "You should describe the task and explain your answer. While answering a multiple choice "
       "question, first output the correct answer(s). Then explain why other answers are wrong. Think "
       "like you are answering to a five year old.",
    9: "Explain how you used the definition to come up with the answer.",
    10: "You are an AI assistant. You should describe the task and explain your answer. While answering "
        "a multiple choice question, first output the correct answer(s). Then explain why other answers "
        "are wrong. You might need to use additional knowledge to answer the question.",
    11: "You are an AI assistant that helps people find information. User will you give you a question. "
        "Your task is to answer as faithfully as you can. While answering think step-bystep and justify "
        "your answer.",
    12: "User will you give you a task with some instruction. Your job is follow the instructions as "
        "faithfully as you can. While answering think step-by-step and justify your answer.",
    13: "You are a teacher. Given a task, you explain in simple steps what the task is asking, any "
        "guidelines it provides and how to use those guidelines to find the answer.",
    14: "You are an AI assistant, who knows every language and how to translate one language to "
        "another. Given a task, you explain in simple steps what the task is asking, any guidelines "
        "that it provides. You solve the task and show how you used the guidelines to solve the task.",
    15: "Given a definition of a task and a sample input, break the definition into small parts.\n"
        "Each of those parts will have some instruction. Explain their meaning by showing an example "
        "that meets the criteria in the instruction. Use the following format:\n"
        "Part  # : a key part of the definition.\n"
        "Usage: Sample response that meets the criteria from the key part. Explain why you think it "
        "meets the criteria.",
    16: "You are an AI assistant that helps people find information.",
}

# The paper's Figure 6 / Section 3.1: which messages each sub-collection samples from.
PAPER_ASSIGNMENT: dict[str, tuple[int, ...]] = {
    "cot": (6, 11, 16),
    "niv": (1, 2, 5, 7, 9, 12, 13, 14, 15),
    "t0": (1, 2, 3, 5, 7),
    "flan": (3, 4, 7, 8, 10),
}

# Both ask the model to "first output the correct answer(s)" of a multiple choice question, so the
# paper gives them only to queries that have options; such a query may still draw any other message.
MULTIPLE_CHOICE_ONLY: frozenset[int] = frozenset({8, 10})


class SystemMessagePicker:
    """Draws a message number for each query of one sub-collection, with configurable weights."""

    def __init__(self, collection: str, numbers: Sequence[int], weights: Sequence[float] = ()):
        unknown = [n for n in numbers if n not in SYSTEM_MESSAGES]
        if unknown:
            raise ValueError(f"{collection}: system messages {unknown} are not among Table 2's 1..16")
        if not numbers:
            raise ValueError(f"{collection}: no system messages assigned")
        weights = tuple(weights) or (1.0,) * len(numbers)
        if len(weights) != len(numbers) or any(w < 0 for w in weights):
            raise ValueError(
                f"{collection}: message_weights {weights} must be {len(numbers)} non-negative numbers, "
                f"one per message of {tuple(numbers)}"
            )
        self.collection = collection
        self._any_query = [(n, w) for n, w in zip(numbers, weights) if n not in MULTIPLE_CHOICE_ONLY]
        self._multiple_choice = list(zip(numbers, weights))
        if sum(w for _, w in self._any_query) <= 0:
            raise ValueError(
                f"{collection}: queries without options need a message outside {sorted(MULTIPLE_CHOICE_ONLY)} "
                f"with positive weight; got {tuple(numbers)} weighted {weights}"
            )

    def pick(self, rng: random.Random, multiple_choice: bool) -> int:
        choices = self._multiple_choice if multiple_choice else self._any_query
        numbers, weights = zip(*choices)
        return rng.choices(numbers, weights=weights)[0]
