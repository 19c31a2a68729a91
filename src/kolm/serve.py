"""Serve: an OpenAI-compatible HTTP API over one artifact, with a receipt per request.

`/v1/chat/completions` (the last user message is the input), `/v1/completions`,
`/v1/models`, `/healthz` and `/metrics` (Prometheus text). llama.cpp contexts
are not thread-safe, so one worker thread owns the Runner and takes requests
from a bounded queue; when the queue is full the server answers 503 at once.
Binds to 127.0.0.1 unless told otherwise, and then requires an API key (which
then guards every route but `/healthz`). Bodies are capped (`max_body_bytes`) and
refused with 413 before they are read whole. A request field that kolm cannot
honour (`n` > 1, `logprobs`, tools, ...) is refused with 400 naming it; sampling
fields are accepted but the recorded greedy decoding answers (so receipts
replay), and the `x-kolm-ignored` header names them. `usage` counts the model's
tokens.
`stream: true` answers with server-sent events as OpenAI's SDK reads them: a role
chunk (chat), content chunks as tokens are decoded (whole characters only), a
chunk with `finish_reason`, a usage chunk when `stream_options.include_usage`,
then `data: [DONE]`. The receipt is written when the content has been sent — or
when the client left first, then marked `incomplete` — so its id cannot be in the
headers: the `finish_reason` chunk carries it as `kolm_receipt` (and the path that
answered as `kolm_path`). "Delivered" means every content chunk was handed to the
connection; the worker waits for that at most `STREAM_REPORT_S` seconds (a
stalled client's receipt is marked incomplete).
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
import uuid
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from kolm.errors import InputError, KolmError
from kolm.runner import Answered, Result, Runner

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20
STREAM_REPORT_S = 10.0
# Accepted; the artifact's recorded greedy decoding answers anyway (named in x-kolm-ignored).
IGNORED_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
    }
)
# Accepted and meaningless here: client bookkeeping.
PASSIVE_FIELDS = frozenset({"user", "metadata", "store"})
# Accepted only at the value kolm gives anyway; any other value is a 400 naming the field.
ONLY_VALUE = {
    "n": (1,),
    "best_of": (1,),
    "stream": (False, True),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "echo": (False,),
    "suffix": ("",),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (False, True),
    "response_format": ({"type": "text"},),
}


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

    def submit_stream(self, text: str, loop: asyncio.AbstractEventLoop) -> StreamJob:
        job = StreamJob(text, loop)
        self.queue.put_nowait((text, job, loop))  # raises queue.Full
        return job

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            text, fut, loop = item
            if isinstance(fut, StreamJob):
                self._count(self._stream(fut))
                continue
            try:
                result: Result | BaseException = self.runner(text)
            except BaseException as e:  # delivered to the request, which answers 500
                result = e
            self._count(result)
            loop.call_soon_threadsafe(_settle, fut, result)

    def _stream(self, job: StreamJob) -> Result | BaseException:
        """Answer one stream: deltas as decoded, then the receipt once the stream reports."""
        try:
            answered: Answered = self.runner.answer(job.text, on_delta=job.delta)
            job.push(("end", None))
            delivered = job.reported.wait(STREAM_REPORT_S) and job.delivered
            result: Result | BaseException = self.runner.record(answered, not delivered)
        except BaseException as e:
            result = e
        job.push(("done", result))
        return result

    def _count(self, result: Result | BaseException) -> None:
        with self.stats.lock:
            if isinstance(result, Result):
                self.stats.inferences += 1
                self.stats.inference_seconds += result.latency_s
                self.stats.fallbacks += result.path != "student"
                self.stats.drift += result.drift is not None

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)
        self.runner.close()


class StreamJob:
    """One streamed request, between the worker thread and the response.

    The worker pushes ("delta", text) as tokens are decoded, ("end", None) when the
    answer is done, then ("done", Result or exception) once the receipt is written.
    The response reports whether the client got all the content (`report`)."""

    def __init__(self, text: str, loop: asyncio.AbstractEventLoop):
        self.text, self.loop = text, loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.reported = threading.Event()
        self.delivered = False

    def push(self, item: tuple) -> None:
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    def delta(self, text: str) -> None:
        self.push(("delta", text))

    def report(self, delivered: bool) -> None:
        """First report wins: the content was all sent, or the client left."""
        if not self.reported.is_set():
            self.delivered = delivered
            self.reported.set()


class _Stream(StreamingResponse):
    """A streaming response that tells its job when it ends, however it ends."""

    def __init__(self, job: StreamJob, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.report(False)  # no-op when the content was all sent


def _settle(fut: asyncio.Future, result) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class BadRequest(Exception):
    """A request kolm refuses; becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def make_app(
    worker: Worker,
    model_name: str,
    api_key: str | None = None,
    max_input_chars: int = 8000,
    max_body_bytes: int = MAX_BODY_BYTES,
):
    app = FastAPI(title="kolm", docs_url=None, redoc_url=None)
    runner = worker.runner
    key = api_key.encode("utf-8") if api_key else None

    @app.middleware("http")
    async def count_statuses(request: Request, call_next):
        """Every response is counted by status here, the unexpected 500s too."""
        try:
            response = await call_next(request)
        except Exception as e:  # a bug: answer like OpenAI does, and count it
            response = _error(500, f"internal error: {type(e).__name__}", "server_error")
        with worker.stats.lock:
            worker.stats.requests[response.status_code] += 1
        return response

    def authorized(request: Request) -> bool:
        if key is None:
            return True
        # Header values arrive as latin-1 text; compare their bytes, so any byte is a wrong key.
        given = request.headers.get("authorization", "").encode("latin-1")
        given = given.removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(given, key)

    async def read_body(request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise _too_large(f"{int(declared)} bytes", max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise _too_large(f"more than {max_body_bytes} bytes", max_body_bytes)
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise BadRequest(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "the request body must be a JSON object")
        return body

    async def admit(request: Request, extract, fields: frozenset) -> tuple[str, list[str], dict]:
        """The input text, the ignored sampling fields and the body; BadRequest otherwise."""
        if not authorized(request):
            raise BadRequest(401, "missing or wrong API key", "invalid_api_key")
        body = await read_body(request)
        if body.get("model") not in (model_name, None):
            raise BadRequest(
                404,
                f"model {body.get('model')!r} does not exist; this server serves {model_name!r}",
                "model_not_found",
            )
        ignored = _check_fields(body, fields)
        _stream_options(body)
        text = extract(body)
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(400, "no input text found in the request")
        if len(text) > max_input_chars:
            raise BadRequest(
                413,
                f"input is {len(text)} characters; the limit is {max_input_chars}",
                "input_too_long",
            )
        return text, ignored, body

    async def answer(text: str) -> Result:
        try:
            fut = worker.submit(text, asyncio.get_running_loop())
        except queue.Full:
            raise BadRequest(503, "the model's queue is full; retry shortly") from None
        try:
            return await fut
        except KolmError as e:
            raise _failure(e) from None

    async def start_stream(text: str) -> tuple[StreamJob, str]:
        """Queue a stream and wait for its first piece, so a bad input is still a 4xx."""
        try:
            job = worker.submit_stream(text, asyncio.get_running_loop())
        except queue.Full:
            raise BadRequest(503, "the model's queue is full; retry shortly") from None
        kind, value = await job.items.get()
        if kind == "done":  # failed before the first token
            if isinstance(value, KolmError):
                raise _failure(value)
            raise value
        return job, value

    async def respond(request: Request, extract, fields: frozenset, kind: str):
        try:
            text, ignored, body = await admit(request, extract, fields)
            headers = {"x-kolm-ignored": ",".join(ignored)} if ignored else {}
            if body.get("stream") is True:
                job, first = await start_stream(text)
                usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))
                events = _events(job, first, _Chunks(kind, model_name, usage_chunk))
                return _Stream(job, events, media_type="text/event-stream", headers=headers)
            result = await answer(text)
        except BadRequest as e:
            return _error(
                e.status, e.message, _KINDS.get(e.status, "invalid_request_error"), e.code
            )
        headers.update({"x-kolm-receipt": result.receipt or "", "x-kolm-path": result.path})
        return JSONResponse(envelope(result, kind), headers=headers)

    def envelope(result: Result, kind: str) -> dict:
        if kind == "chat.completion":
            choice: dict = {"message": {"role": "assistant", "content": result.output}}
        else:
            choice = {"text": result.output}
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-"
            f"{(result.receipt or 'x')[:24]}",
            "object": kind,
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {"index": 0, **choice, "finish_reason": result.finish_reason, "logprobs": None}
            ],
            "usage": usage(result),
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await respond(request, _last_user_message, CHAT_FIELDS, "chat.completion")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await respond(request, _prompt, COMPLETION_FIELDS, "text_completion")

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return _unauthorized()
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "kolm"}],
        }

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "artifact": runner.artifact.id, "queue": worker.queue.qsize()}

    @app.get("/metrics")
    async def metrics(request: Request):
        if not authorized(request):
            return _unauthorized()
        return PlainTextResponse(_metrics_text(worker), media_type="text/plain; version=0.0.4")

    return app


CHAT_FIELDS = frozenset({"model", "messages", "stream_options"})
COMPLETION_FIELDS = frozenset({"model", "prompt", "stream_options"})
_KINDS = {401: "authentication_error", 503: "overloaded_error", 500: "server_error"}


def usage(result: Result) -> dict:
    n_in, n_out = result.prompt_tokens, result.completion_tokens
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def _failure(e: KolmError) -> BadRequest:
    if isinstance(e, InputError):
        return BadRequest(400, e.message)
    return BadRequest(500, e.message)  # the model or the fallback teacher failed


def _stream_options(body: dict) -> None:
    opts = body.get("stream_options")
    if opts is None:
        return
    if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
        raise BadRequest(400, "stream_options may hold only include_usage", "unsupported_field")
    if opts.get("include_usage") not in (None, True, False):
        raise BadRequest(400, "stream_options.include_usage must be true or false")


class _Chunks:
    """The JSON of one stream's chunks, chat (`chat.completion.chunk`) or text completion."""

    def __init__(self, kind: str, model: str, with_usage: bool):
        self.chat = kind == "chat.completion"
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.head = {
            "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self.with_usage = with_usage

    def piece(self, text: str, finish: str | None = None, **extra) -> str:
        if self.chat:
            choice: dict = {"delta": {"content": text} if text else {}}
        else:
            choice = {"text": text}
        choice = {"index": 0, **choice, "logprobs": None, "finish_reason": finish}
        return self._event({"choices": [choice], **extra})

    def role(self) -> str:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}}
        return self._event({"choices": [{**choice, "logprobs": None, "finish_reason": None}]})

    def usage(self, result: Result) -> str:
        return self._event({"choices": [], "usage": usage(result)}, final=True)

    def _event(self, fields: dict, final: bool = False) -> str:
        data = {**self.head, **fields}
        if self.with_usage and not final:
            data["usage"] = None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(job: StreamJob, first: str, chunks: _Chunks):
    """The server-sent events of one stream; reports delivery before the receipt is written."""
    if chunks.chat:
        yield chunks.role()
    text = first
    while True:
        if text:
            yield chunks.piece(text)
        kind, text = await job.items.get()
        if kind == "done":
            return  # decoding failed mid-answer: the stream ends without [DONE]
        if kind == "end":
            break
    job.report(True)  # resumed after the last content chunk was sent
    _, result = await job.items.get()
    if isinstance(result, BaseException):
        return  # the receipt could not be written: the stream ends without [DONE]
    yield chunks.piece("", result.finish_reason, kolm_receipt=result.receipt, kolm_path=result.path)
    if chunks.with_usage:
        yield chunks.usage(result)
    yield "data: [DONE]\n\n"


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}}, status_code=status
    )


def _unauthorized() -> JSONResponse:
    return _error(401, "missing or wrong API key", "authentication_error", "invalid_api_key")


def _too_large(size: str, limit: int) -> BadRequest:
    return BadRequest(
        413,
        f"the request body is {size}; the limit is {limit} (kolm serve --max-body-bytes)",
        "request_too_large",
    )


def _check_fields(body: dict, own: frozenset) -> list[str]:
    """Refuse what cannot be honoured, naming the field; return the sampling fields ignored."""
    for name, value in body.items():
        if name in own or name in PASSIVE_FIELDS or name in IGNORED_FIELDS:
            continue
        if name in ONLY_VALUE:
            if value is None or any(
                value == v and type(value) is type(v) for v in ONLY_VALUE[name]
            ):
                continue
            allowed = " or ".join(json.dumps(v) for v in ONLY_VALUE[name])
            raise BadRequest(
                400,
                f"{name}={json.dumps(value)[:60]} is not supported; kolm serve accepts only "
                f"{name}={allowed}",
                "unsupported_field",
            )
        raise BadRequest(400, f"unsupported field {name!r}", "unsupported_field")
    return sorted(n for n in body if n in IGNORED_FIELDS and body[n] is not None)


def _metrics_text(worker: Worker) -> str:
    s = worker.stats
    with s.lock:
        requests = sorted(s.requests.items())
    lines = ["# TYPE kolm_requests_total counter"]
    lines += [f'kolm_requests_total{{status="{k}"}} {v}' for k, v in requests]
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
    return "\n".join(lines) + "\n"


def _prompt(body: dict) -> str | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest(400, "prompt must be one string (batches of prompts: send one each)")
        return prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest(400, "prompt must be a string")
    return prompt


def _last_user_message(body: dict) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    content = users[-1].get("content")
    if isinstance(content, list):
        return "".join(_text_part(i, p) for i, p in enumerate(content))
    if content is not None and not isinstance(content, str):
        raise BadRequest(400, "the last user message's content must be a string or a list of parts")
    return content


def _text_part(i: int, part: object) -> str:
    if not isinstance(part, dict) or part.get("type", "text") != "text":
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise BadRequest(
            400, f"message content part {i} is {kind!r}; only text parts are supported"
        )
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequest(400, f"message content part {i} has a non-string 'text'")
    return text
