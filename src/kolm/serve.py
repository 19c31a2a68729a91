"""Serve: an OpenAI-compatible HTTP API over one artifact, with a receipt per request.

`/v1/chat/completions` (the last user message is the input), `/v1/completions`,
`/v1/models`, `/healthz` and `/metrics` (Prometheus text). llama.cpp contexts
are not thread-safe, so one worker thread owns the Runner and takes requests
from a bounded queue; when the queue is full the server answers 503 at once.
Binds to 127.0.0.1 unless told otherwise, and then requires an API key.
Knows HTTP; the answering is `runner.Runner`'s. (FastAPI is imported at module
level because it resolves the handlers' annotations by name; only `kolm serve`
imports this module.)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from kolm.runner import Result, Runner

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)
    inference_seconds: float = 0.0
    inferences: int = 0
    fallbacks: int = 0
    drift: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    """One thread that owns the model; requests wait in a bounded queue."""

    def __init__(self, runner: Runner, queue_size: int):
        self.runner = runner
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stats = Stats()
        self._thread = threading.Thread(target=self._loop, name="kolm-model", daemon=True)
        self._thread.start()

    def submit(self, text: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        fut = loop.create_future()
        self.queue.put_nowait((text, fut, loop))  # raises queue.Full
        return fut

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            text, fut, loop = item
            try:
                result: Result | BaseException = self.runner(text)
            except BaseException as e:  # delivered to the request, which answers 500
                result = e
            with self.stats.lock:
                if isinstance(result, Result):
                    self.stats.inferences += 1
                    self.stats.inference_seconds += result.latency_s
                    self.stats.fallbacks += result.path != "student"
                    self.stats.drift += result.drift is not None
            loop.call_soon_threadsafe(_settle, fut, result)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)
        self.runner.close()


def _settle(fut: asyncio.Future, result) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def make_app(
    worker: Worker, model_name: str, api_key: str | None = None, max_input_chars: int = 8000
):
    app = FastAPI(title="kolm", docs_url=None, redoc_url=None)
    runner = worker.runner

    def error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
        worker.stats.requests[status] += 1
        return JSONResponse(
            {"error": {"message": message, "type": kind, "code": code}}, status_code=status
        )

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given, api_key)

    async def answer(request: Request, extract) -> tuple[Result | None, JSONResponse | None]:
        if not authorized(request):
            return None, error(
                401, "missing or wrong API key", "authentication_error", "invalid_api_key"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None, error(400, "the request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return None, error(
                400, "the request body must be a JSON object", "invalid_request_error"
            )
        if body.get("model") not in (model_name, None):
            return None, error(
                404,
                f"model {body.get('model')!r} does not exist; this server serves {model_name!r}",
                "invalid_request_error",
                "model_not_found",
            )
        if body.get("stream"):
            return None, error(400, "stream=true is not supported", "invalid_request_error")
        text = extract(body)
        if not isinstance(text, str) or not text.strip():
            return None, error(400, "no input text found in the request", "invalid_request_error")
        if len(text) > max_input_chars:
            return None, error(
                413,
                f"input is {len(text)} characters; the limit is {max_input_chars}",
                "invalid_request_error",
                "input_too_long",
            )
        try:
            fut = worker.submit(text, asyncio.get_running_loop())
        except queue.Full:
            return None, error(503, "the model's queue is full; retry shortly", "overloaded_error")
        try:
            result = await fut
        except Exception as e:
            return None, error(500 if not hasattr(e, "exit_code") else 400, str(e), "server_error")
        worker.stats.requests[200] += 1
        return result, None

    def headers(result: Result) -> dict[str, str]:
        return {"x-kolm-receipt": result.receipt or "", "x-kolm-path": result.path}

    def usage(result: Result) -> dict:
        n_in, n_out = len(result.input.split()), len(result.output.split())
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        result, err = await answer(request, _last_user_message)
        if err:
            return err
        return JSONResponse(
            {
                "id": f"chatcmpl-{(result.receipt or 'x')[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.output},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage(result),
            },
            headers=headers(result),
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        result, err = await answer(request, lambda b: b.get("prompt"))
        if err:
            return err
        return JSONResponse(
            {
                "id": f"cmpl-{(result.receipt or 'x')[:24]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {"index": 0, "text": result.output, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": usage(result),
            },
            headers=headers(result),
        )

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong API key", "authentication_error", "invalid_api_key")
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "kolm"}],
        }

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "artifact": runner.artifact.id, "queue": worker.queue.qsize()}

    @app.get("/metrics")
    async def metrics():
        s = worker.stats
        lines = ["# TYPE kolm_requests_total counter"]
        lines += [f'kolm_requests_total{{status="{k}"}} {v}' for k, v in sorted(s.requests.items())]
        lines += [
            "# TYPE kolm_inference_seconds summary",
            f"kolm_inference_seconds_sum {s.inference_seconds:.6f}",
            f"kolm_inference_seconds_count {s.inferences}",
            "# TYPE kolm_fallback_total counter",
            f"kolm_fallback_total {s.fallbacks}",
            "# TYPE kolm_drift_total counter",
            f"kolm_drift_total {s.drift}",
            "# TYPE kolm_queue_depth gauge",
            f"kolm_queue_depth {worker.queue.qsize()}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app


def _last_user_message(body: dict) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    content = users[-1].get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content
