"""A loopback teacher: a real HTTP server speaking OpenAI chat-completions and
Anthropic messages, answering from a seeded, noisy oracle, with injectable faults.

Used by tests and benchmarks in place of a paid frontier API (which cannot be
reached here). The official `openai` and `anthropic` SDKs talk to it unmodified.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "timeout", "truncated", "nonjson")


@dataclass
class Oracle:
    truth: dict[str, str]
    labels: list[str]
    p_correct: float = 0.7
    p_malformed: float = 0.1
    faults: dict[str, float] = field(default_factory=dict)
    """fault name → probability on a request's first attempt (retries then succeed)."""
    latency_s: float = 0.0
    timeout_sleep_s: float = 2.0
    retry_after: str = "0.2"
    reject_auth: bool = False
    """Answer every request with 401, echoing the key as some providers do."""
    seed: int = 0
    requests: int = 0
    answered: Counter = field(default_factory=Counter)
    faults_sent: Counter = field(default_factory=Counter)
    auth_seen: set = field(default_factory=set)
    _attempts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> str:
        oracle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's
                # algorithm and delayed ACKs add ~40 ms to every response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                oracle._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that time out or are killed reset connections; expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- answering ----------------------------------------------------------------
    def answer_for(self, text: str, sample: object) -> str:
        rng = random.Random(f"{self.seed}|{text}|{sample}")
        truth = self.truth.get(text, self.labels[0])
        roll = rng.random()
        if roll < self.p_correct:
            return truth if rng.random() < 0.8 else f"{truth.title()}."  # harmless variation
        if roll < self.p_correct + self.p_malformed:
            return rng.choice(
                ["I'm not sure, maybe it depends?", "```\n???\n```", f"the answer is {truth} or so"]
            )
        return rng.choice([x for x in self.labels if x != truth] or [truth])

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("content-length", 0))) or b"{}")
        anthropic = h.path.rstrip("/").endswith("/messages")
        auth = h.headers.get("x-api-key") or h.headers.get("authorization", "")
        text = _last_user_text(body["messages"])
        with self._lock:
            self.requests += 1
            self.auth_seen.add(auth)
            key = (text, body.get("seed"), anthropic)
            if body.get("seed") is None:  # Anthropic has no seed: count samples per input
                key = (text, self.answered[(text, None, anthropic)], anthropic)
            self._attempts[key] += 1
            first_attempt = self._attempts[key] == 1
        if self.reject_auth:
            msg = json.dumps(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {auth}",
                        "type": "invalid_request_error",
                    }
                }
            )
            return _send(h, 401, msg.encode())
        rng = random.Random(f"fault|{self.seed}|{key}")
        fault = None
        if first_attempt:
            roll, acc = rng.random(), 0.0
            for name in FAULTS:
                acc += self.faults.get(name, 0.0)
                if roll < acc:
                    fault = name
                    break
        if self.latency_s:
            time.sleep(self.latency_s)
        if fault:
            with self._lock:
                self.faults_sent[fault] += 1
            return self._fault(h, fault)
        reply = self.answer_for(text, key[1])
        with self._lock:
            self.answered[(text, None, anthropic) if body.get("seed") is None else key] += 1
        payload = _anthropic_reply(body, reply) if anthropic else _openai_reply(body, reply)
        _send(h, 200, json.dumps(payload).encode())

    def _fault(self, h: BaseHTTPRequestHandler, fault: str) -> None:
        if fault == "429":
            _send(
                h,
                429,
                b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                {"retry-after": self.retry_after},
            )
        elif fault == "500":
            _send(h, 500, b'{"error": {"message": "internal error", "type": "server_error"}}')
        elif fault == "timeout":
            time.sleep(self.timeout_sleep_s)
            _send(h, 200, b"{}")
        elif fault == "truncated":
            _send(
                h, 200, b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess'
            )
        else:
            _send(h, 200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")


def _last_user_text(messages: list[dict]) -> str:
    content = [m for m in messages if m["role"] == "user"][-1]["content"]
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content)
    return content


def _openai_reply(body: dict, text: str) -> dict:
    prompt = sum(len(str(m["content"]).split()) for m in body["messages"])
    return {
        "id": "chatcmpl-oracle",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "oracle"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt + len(text.split()),
        },
    }


def _anthropic_reply(body: dict, text: str) -> dict:
    prompt = sum(len(str(m["content"]).split()) for m in body["messages"]) + len(
        str(body.get("system", "")).split()
    )
    return {
        "id": "msg_oracle",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "oracle"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": len(text.split())},
    }


def _send(
    h, status: int, data: bytes, headers: dict | None = None, content_type: str = "application/json"
) -> None:
    try:
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (e.g. its timeout fired)
