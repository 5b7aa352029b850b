"""A judge on loopback: tests/teacher_server.py's chat-completions server answering as a Vicuna-style
reviewer, with scores that follow from the answers' text so a test can compute the expected table.

An answer's quality is the N of a "[quality N]" tag in it (else a hash of its text, 1-10). The judge
gives the answer shown first one point more (at most 10), as real judges favour the first answer;
averaging both orders must take that out. For the math reviewer (its prompt asks for a Python tuple)
the scores come as "(a, b)" at the end of the review, as that prompt asks, not on the first line.
"""

from __future__ import annotations

import hashlib
import re

from teacher_server import TeacherServer

_ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\n\[The End of Assistant \1's Answer\]", re.S)
_QUESTION = re.compile(r"^\[Question\]\n(.*?)\n\n\[The Start of Assistant 1", re.S)


def quality(answer: str) -> int:
    tag = re.search(r"\[quality (\d+)\]", answer)
    return int(tag.group(1)) if tag else 1 + int(hashlib.sha256(answer.encode()).hexdigest(), 16) % 10


def shown_scores(first: str, second: str) -> tuple[int, int]:
    return min(10, quality(first) + 1), quality(second)


def parts(messages: list) -> tuple[str, str, str]:
    user = messages[-1]["content"]
    answers = dict(_ANSWER.findall(user))
    return _QUESTION.match(user).group(1), answers["1"], answers["2"]


def judge_reply(messages: list) -> str:
    _, first, second = parts(messages)
    one, two = shown_scores(first, second)
    if "Python tuple" in messages[-1]["content"]:
        return f"Solving it myself first: the answer is 42.\nAssistant 1 ... Assistant 2 ...\n({one}, {two})"
    return f"{one} {two}\nAssistant 1 was judged on its merits, and so was Assistant 2."


def plan_key(question: str, first_answer: str) -> str:
    return f"{question}|{first_answer}"


def judge_plan_key(messages: list) -> str:
    question, first, _ = parts(messages)
    return plan_key(question, first)


def judge_server(api_key: str, plan=None, **kwargs) -> TeacherServer:
    return TeacherServer(api_key, plan, reply=judge_reply, plan_key=judge_plan_key, **kwargs)
