"""A minimal OpenAI-compatible chat-completions server on loopback, for the teacher-client tests.

It answers `POST /v1/chat/completions` with a reply computed from the user turn (`reply_for`), so a
test can tell whether each answer belongs to its question. Faults are planned per question: the
first attempts of a question get the faults listed for it, later attempts succeed. Faults:

    "429"        Too Many Requests with Retry-After: 0
    "500"        an internal error whose body echoes the request's Authorization header, as a
                 careless proxy might (the client must scrub the key from what it records)
    "slow"       the reply comes after `slow_s` seconds (longer than the client's timeout)
    "malformed"  200 with a truncated JSON body
    "drop"       the connection is closed without any reply
    "500long"    a 500 whose body echoes the key so that it straddles character 200 (a cut-then-redact
                 client would write its first 12 characters)
    "malformed_key"  200 with a truncated JSON body holding the key across character 200
    "429wait"    Too Many Requests with Retry-After: RETRY_AFTER_S (the client must wait that long)
    "unparseable"  200 with a well-formed reply whose text is UNPARSEABLE_TEXT (no scores for a judge)

`reply` (default `reply_for` of the user turn) makes the reply text from the messages, and
`plan_key` the key the plan is looked up by (default the user turn), so tests/judge_server.py reuses
this server as a judge.
"""

from __future__ import annotations

import collections
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

FAULTS = ("429", "500", "slow", "malformed", "drop", "500long", "malformed_key")
EXTRA_FAULTS = ("429wait", "unparseable")
RETRY_AFTER_S = 0.4
UNPARSEABLE_TEXT = "Both assistants did their best; I would rather not give numbers."
# Where a key echoed by "500long" / "malformed_key" starts: 12 characters before the 200-character cut.
KEY_AT = 188


def body_with_key_at(prefix: str, key: str, suffix: str) -> bytes:
    """`prefix` + padding + key + `suffix`, the key starting at character KEY_AT."""
    return (prefix + "x" * max(0, KEY_AT - len(prefix)) + key + suffix).encode("utf-8")


def reply_for(question: str) -> str:
    return f"Let us think step by step about: {question}"


class TeacherServer:
    """Start with `with TeacherServer(...) as server:`; `server.base_url` is the API root."""

    def __init__(
        self,
        api_key: str,
        plan: Mapping[str, Sequence[str]] | None = None,
        reply_delay_s: float = 0.0,
        slow_s: float = 1.0,
        reply: Callable[[list], str] | None = None,
        plan_key: Callable[[list], str] | None = None,
    ):
        plan = plan or {}
        unknown = {fault for faults in plan.values() for fault in faults} - set(FAULTS + EXTRA_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        self.api_key = api_key
        self.plan = {question: list(faults) for question, faults in plan.items()}
        self.reply_delay_s = reply_delay_s
        self.slow_s = slow_s
        self.reply = reply or (lambda messages: reply_for(messages[-1]["content"]))
        self.plan_key = plan_key or (lambda messages: messages[-1]["content"])
        self.request_times = collections.defaultdict(list)  # per plan key, time.monotonic() of each attempt
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # per question, every attempt
        self.answers = collections.Counter()  # per question, 200 replies with a well-formed body
        self.faults_served = collections.Counter()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "TeacherServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_fault(self, question: str) -> str | None:
        with self.lock:
            attempt = self.requests[question]
            self.requests[question] += 1
            self.request_times[question].append(time.monotonic())
            faults = self.plan.get(question, ())
            fault = faults[attempt] if attempt < len(faults) else None
            if fault:
                self.faults_served[fault] += 1
            return fault

    def count_answer(self, question: str) -> None:
        with self.lock:
            self.answers[question] += 1


def _handler_for(server: TeacherServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection reuse is exercised

        def log_message(self, *args) -> None:
            pass

        def _send_json(self, status: int, payload, headers: Mapping[str, str] | None = None) -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            authorization = self.headers.get("Authorization", "")
            if self.path != "/v1/chat/completions":
                return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            if authorization != f"Bearer {server.api_key}":
                return self._send_json(401, {"error": {"message": "invalid api key"}})
            try:
                request = json.loads(body)
                messages = request["messages"]
                question = server.plan_key(messages)
                request["model"]
            except (ValueError, KeyError, IndexError, TypeError):
                return self._send_json(400, {"error": {"message": "bad request"}})
            fault = server.next_fault(question)
            try:
                self._reply(fault, authorization, messages, question)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a slow reply

        def _reply(self, fault, authorization, messages, question) -> None:
            if fault == "429":
                return self._send_json(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
            if fault == "429wait":
                return self._send_json(429, {"error": {"message": "rate limited"}}, {"Retry-After": str(RETRY_AFTER_S)})
            if fault == "500":
                return self._send_json(500, {"error": {"message": f"upstream failed ({authorization})"}})
            if fault == "malformed":
                return self._send_json(200, b'{"choices": [{"message": {"content": "trunc')
            if fault == "500long":
                key = authorization.removeprefix("Bearer ")
                return self._send_json(500, body_with_key_at('{"error": {"message": "upstream ', key, '"}}'))
            if fault == "malformed_key":
                key = authorization.removeprefix("Bearer ")
                return self._send_json(200, body_with_key_at('{"choices": [{"message": {"content": "', key, ' tru'))
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            time.sleep(server.slow_s if fault == "slow" else server.reply_delay_s)
            text = UNPARSEABLE_TEXT if fault == "unparseable" else server.reply(messages)
            prompt_chars = sum(len(message["content"]) for message in messages)
            self._send_json(200, {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4},
            })
            if fault != "slow":
                server.count_answer(question)

    return Handler


def leaked_runs(text: str, key: str, run: int = 8) -> list[str]:
    """The runs of `run` characters of `key` found in `text` (the tests want none)."""
    return sorted({key[i:i + run] for i in range(len(key) - run + 1) if key[i:i + run] in text})
