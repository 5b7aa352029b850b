"""A client for OpenAI-compatible chat-completions endpoints (a hosted API or a local server), on the
`openai` SDK.

One `complete()` is one HTTP attempt; `ask()` adds pacing and retries. The retry policy is this
module's alone: the SDK is built with `max_retries=0`, because each attempt must pass the project's
rate limiter (RPM/TPM) and be counted in the failures journal, and the SDK's own loop would retry
behind both. Transient trouble (408/409/429/5xx, timeouts, dropped connections, unparsable replies)
is retried with exponential backoff and full jitter, never sooner than the server's `Retry-After`;
anything else, or trouble that outlasts `max_attempts`, comes back as a `Failure` with its reason.

The API key goes only to the SDK (the Authorization header). Error bodies can echo request headers,
so every text that leaves this module is scrubbed first and cut to length second: cutting first
could split the key and leave a prefix that no longer matches it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping

import openai

from orca_jax.data.construct.ratelimit import RateLimiter, backoff_delay
from orca_jax.errors import UserError

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_EXCERPT_CHARS = 200


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The `teacher` block of configs/construct.py (documented there)."""

    base_url: str
    model: str
    temperature: float
    max_tokens: int
    api_key_env: str
    concurrency: int
    requests_per_minute: float
    tokens_per_minute: float
    timeout_s: float
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    price_per_1k_prompt_tokens: float
    price_per_1k_completion_tokens: float

    def __post_init__(self):
        for name in ("max_tokens", "concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise UserError(f"teacher.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: Mapping) -> "TeacherConfig":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in config]
        if missing:
            raise UserError(f"teacher config lacks {missing}")
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_per_1k_prompt_tokens
                + completion_tokens * self.price_per_1k_completion_tokens) / 1000.0


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str
    attempts: int


class TeacherError(Exception):
    """One failed attempt. `retryable` says whether another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def estimate_prompt_tokens(system: str, question: str) -> int:
    # About four characters a token for English; the reply's usage corrects it afterwards.
    return (len(system) + len(question)) // 4 + 1


def chat_messages(system: str, question: str) -> list[dict]:
    # Table 2's message 1 is the empty system message: send no system turn at all.
    system_turn = [{"role": "system", "content": system}] if system else []
    return system_turn + [{"role": "user", "content": question}]


# A key-less local server still needs some key for the SDK, which refuses none; vLLM and friends ignore it.
_PLACEHOLDER_KEY = "EMPTY"
# Runs of this many characters of the key are scrubbed too: a proxy may echo a cut header.
_KEY_RUN = 8


def redact(text: str, secret: str) -> str:
    """`text` with every run of `_KEY_RUN`+ characters of `secret` (the whole key included) replaced by
    "[redacted]"; the result is then safe to cut anywhere."""
    if not secret:
        return text
    run = min(_KEY_RUN, len(secret))
    hidden = bytearray(len(text))  # 1 where a character belongs to some run of the key
    for start in range(len(secret) - run + 1):
        piece = secret[start:start + run]
        where = text.find(piece)
        while where >= 0:
            hidden[where:where + run] = b"\x01" * run
            where = text.find(piece, where + 1)
    if not any(hidden):
        return text
    out, index = [], 0
    while index < len(text):
        if hidden[index]:
            while index < len(text) and hidden[index]:
                index += 1
            out.append("[redacted]")
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def excerpt(text: str, secret: str, chars: int = _EXCERPT_CHARS) -> str:
    """Redact first, cut second (see the module docstring)."""
    return redact(text, secret)[:chars]


def request_body(config: TeacherConfig, system: str, question: str) -> dict:
    """The chat-completions request body: sent live by `ChatClient` and written by the batch path."""
    return {
        "model": config.model,
        "messages": chat_messages(system, question),
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }


def parse_completion(payload: str, system: str, question: str, secret: str) -> Answer:
    """A chat-completion JSON body -> Answer; raises TeacherError. Shared by live replies and batch output."""
    try:
        reply = json.loads(payload) if isinstance(payload, str) else payload
        choice = reply["choices"][0]
        finish_reason = choice.get("finish_reason") or "unknown"
        text = choice["message"]["content"]
        usage = reply.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", estimate_prompt_tokens(system, question)))
        completion_tokens = int(usage.get("completion_tokens", len(text or "") // 4))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        shown = payload if isinstance(payload, str) else json.dumps(payload)
        raise TeacherError(f"malformed reply ({type(err).__name__}): {excerpt(shown, secret)!r}",
                           retryable=True) from None
    if not isinstance(text, str):
        # No content at all (e.g. a content filter): asking again gives the same.
        raise TeacherError(f"reply without content (finish_reason={finish_reason})", retryable=False)
    if not text.strip():
        # The data builder rejects empty responses; at temperature > 0 another try usually says something.
        raise TeacherError(f"empty reply (finish_reason={finish_reason})", retryable=True)
    return Answer(text, finish_reason, prompt_tokens, completion_tokens)


class ChatClient:
    """Sends chat-completion requests through one `openai.OpenAI` client (thread-safe, pooled keep-alive)."""

    def __init__(self, config: TeacherConfig, api_key: str):
        url = urllib.parse.urlsplit(config.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UserError(f"base_url {config.base_url!r} is not an http(s) URL")
        self._config = config
        self._api_key = api_key
        self._sdk = openai.OpenAI(base_url=config.base_url, api_key=api_key or _PLACEHOLDER_KEY,
                                  timeout=config.timeout_s, max_retries=0)

    def redact(self, text: str) -> str:
        return redact(text, self._api_key)

    def complete(self, system: str, question: str) -> Answer:
        """One attempt; raises TeacherError."""
        try:
            raw = self._sdk.chat.completions.with_raw_response.create(**request_body(self._config, system, question))
            payload = raw.text
        except openai.APITimeoutError:
            raise TeacherError(f"timeout after {self._config.timeout_s} s", retryable=True) from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise TeacherError(excerpt(f"connection: {type(cause).__name__}: {cause}", self._api_key),
                               retryable=True) from None
        except openai.APIStatusError as err:
            raise TeacherError(
                f"HTTP {err.status_code}: {excerpt(err.response.text, self._api_key)}",
                retryable=err.status_code in RETRYABLE_STATUSES,
                retry_after_s=_retry_after(err.response.headers.get("Retry-After")),
            ) from None
        return parse_completion(payload, system, question, self._api_key)


def _retry_after(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None  # an HTTP-date: the backoff schedule will do


def ask(
    client: ChatClient,
    config: TeacherConfig,
    limiter: RateLimiter,
    system: str,
    question: str,
    rng: random.Random,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[str], None] | None = None,
) -> Answer | Failure:
    """Ask until an answer, a non-retryable error, or `max_attempts` attempts. `check(text)` may reject
    a well-formed reply by raising TeacherError (the judge's unparseable score lines): it is retried
    under the same bounded policy."""
    estimate = estimate_prompt_tokens(system, question) + config.max_tokens
    attempt = 0
    while True:
        attempt += 1
        limiter.acquire(estimate)
        used = 0  # tokens the server says it spent: nothing when no reply came
        try:
            answer = client.complete(system, question)
            used = answer.prompt_tokens + answer.completion_tokens
            if check is not None:
                check(answer.text)
        except TeacherError as err:
            limiter.settle(estimate, used)
            if not err.retryable or attempt == config.max_attempts:
                return Failure(reason=err.reason, attempts=attempt)
            delay = backoff_delay(attempt - 1, config.backoff_initial_s, config.backoff_max_s, rng)
            sleep(max(delay, err.retry_after_s or 0.0))
            continue
        limiter.settle(estimate, used)
        return answer
