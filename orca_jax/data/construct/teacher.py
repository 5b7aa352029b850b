"""A client for OpenAI-compatible chat-completions endpoints (a hosted API or a local server).

One `complete()` is one HTTP attempt; `ask()` adds pacing and retries. Transient trouble (429,
5xx, timeouts, dropped connections, unparsable replies) is retried with backoff; anything else, or
trouble that outlasts `max_attempts`, comes back as a `Failure` with its reason. The API key goes
only into the Authorization header and is scrubbed from every reason, since error bodies can
echo request headers.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Mapping

from orca_jax.data.construct.ratelimit import RateLimiter, backoff_delay

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
                raise ValueError(f"teacher.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: Mapping) -> "TeacherConfig":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in config]
        if missing:
            raise ValueError(f"teacher config lacks {missing}")
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


class ChatClient:
    """Sends chat-completion requests; keeps one keep-alive connection per thread."""

    def __init__(self, config: TeacherConfig, api_key: str):
        url = urllib.parse.urlsplit(config.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"teacher.base_url {config.base_url!r} is not an http(s) URL")
        self._config = config
        self._api_key = api_key
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._path = url.path.rstrip("/") + "/chat/completions"
        self._local = threading.local()

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._local.connection = kind(self._host, self._port, timeout=self._config.timeout_s)
        return self._local.connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def complete(self, system: str, question: str) -> Answer:
        """One attempt; raises TeacherError."""
        body = json.dumps({
            "model": self._config.model,
            "messages": chat_messages(system, question),
            "temperature": self._config.temperature,
            "max_tokens": self._config.max_tokens,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:  # local servers often want none
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            connection = self._connection()
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except TimeoutError:
            self._drop_connection()
            raise TeacherError(f"timeout after {self._config.timeout_s} s", retryable=True) from None
        except (OSError, http.client.HTTPException) as err:
            self._drop_connection()
            raise TeacherError(self.redact(f"connection: {type(err).__name__}: {err}"), retryable=True) from None
        if response.status != 200:
            excerpt = self.redact(payload[:_EXCERPT_CHARS].decode("utf-8", "replace"))
            raise TeacherError(
                f"HTTP {response.status}: {excerpt}",
                retryable=response.status in RETRYABLE_STATUSES,
                retry_after_s=_retry_after(response.getheader("Retry-After")),
            )
        return self._parse(payload, system, question)

    def _parse(self, payload: bytes, system: str, question: str) -> Answer:
        try:
            reply = json.loads(payload)
            choice = reply["choices"][0]
            finish_reason = choice.get("finish_reason") or "unknown"
            text = choice["message"]["content"]
            usage = reply.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", estimate_prompt_tokens(system, question)))
            completion_tokens = int(usage.get("completion_tokens", len(text or "") // 4))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            excerpt = self.redact(payload[:_EXCERPT_CHARS].decode("utf-8", "replace"))
            raise TeacherError(f"malformed reply ({type(err).__name__}): {excerpt!r}", retryable=True) from None
        if not isinstance(text, str):
            # No content at all (e.g. a content filter): asking again gives the same.
            raise TeacherError(f"reply without content (finish_reason={finish_reason})", retryable=False)
        if not text.strip():
            # The data builder rejects empty responses; at temperature > 0 another try usually says something.
            raise TeacherError(f"empty reply (finish_reason={finish_reason})", retryable=True)
        return Answer(text, finish_reason, prompt_tokens, completion_tokens)


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
    sleep=time.sleep,
) -> Answer | Failure:
    """Ask until an answer, a non-retryable error, or `max_attempts` attempts."""
    estimate = estimate_prompt_tokens(system, question) + config.max_tokens
    attempt = 0
    while True:
        attempt += 1
        limiter.acquire(estimate)
        try:
            answer = client.complete(system, question)
        except TeacherError as err:
            limiter.settle(estimate, 0)
            if not err.retryable or attempt == config.max_attempts:
                return Failure(reason=err.reason, attempts=attempt)
            delay = backoff_delay(attempt - 1, config.backoff_initial_s, config.backoff_max_s, rng)
            sleep(max(delay, err.retry_after_s or 0.0))
            continue
        limiter.settle(estimate, answer.prompt_tokens + answer.completion_tokens)
        return answer
