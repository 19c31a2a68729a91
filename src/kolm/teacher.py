"""Teachers: ask a frontier API or a local model for an answer, robustly.

A teacher is named `provider:model`. Built-in providers — `openai`,
`openai-compatible` (vLLM, Ollama, Together, OpenRouter, Mistral, a llama.cpp
server...), `anthropic` and `local` (a GGUF through llama.cpp in-process) — are
registered in the same registry plugins use (`register_backend`, or the
`kolm.teachers` entry point group). Keys come from environment variables or
`$KOLM_HOME/credentials.json`, never from a spec, and are scrubbed from every
error. This module knows requests and retries; it knows nothing of caches,
verifiers or budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from kolm.errors import TeacherError


class TransientError(Exception):
    """A failure worth retrying (timeout, 429, 5xx, garbled body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TeacherRef:
    """A parsed `provider:model[@base_url]`."""

    provider: str
    model: str
    base_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> TeacherRef:
        provider, sep, rest = text.partition(":")
        if not sep or not rest:
            raise TeacherError(
                f"teacher {text!r} must look like provider:model", hint=_providers_hint()
            )
        model, at, url = rest.partition("@")
        if provider == "openai-compatible" and not at:
            raise TeacherError(
                f"teacher {text!r} needs a base URL: openai-compatible:<model>@<base_url>"
            )
        return cls(provider, model, url or None)

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True)
class Request:
    """One chat request; its JSON form (with the sample index) keys the cache."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs; the first may be the system prompt."""
    temperature: float
    max_tokens: int

    def to_dict(self) -> dict:
        return {
            "messages": [{"role": r, "content": c} for r, c in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Settings:
    timeout_s: float = 60.0
    max_retries: int = 6
    backoff_s: float = 0.5
    backoff_cap_s: float = 30.0


class Backend(Protocol):
    ref: TeacherRef

    async def complete(self, request: Request, sample: int) -> Completion:
        """One attempt; raise TransientError for retryable failures, TeacherError for fatal ones."""
        ...

    async def aclose(self) -> None: ...


BackendFactory = Callable[[TeacherRef, Settings], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(provider: str, factory: BackendFactory) -> None:
    if not provider or provider != provider.lower() or ":" in provider:
        raise ValueError(f"invalid provider name {provider!r}")
    if provider in _BACKENDS:
        raise ValueError(f"teacher provider {provider!r} is already registered")
    _BACKENDS[provider] = factory


def make_backend(ref: TeacherRef, settings: Settings) -> Backend:
    if ref.provider not in _BACKENDS:
        _load_plugins()
    factory = _BACKENDS.get(ref.provider)
    if factory is None:
        raise TeacherError(f"unknown teacher provider {ref.provider!r}", hint=_providers_hint())
    return factory(ref, settings)


async def complete_with_retries(
    backend: Backend, request: Request, sample: int, settings: Settings
) -> Completion:
    """Call once, retrying transient failures with exponential backoff, jitter and Retry-After."""
    for attempt in range(settings.max_retries + 1):
        try:
            return await backend.complete(request, sample)
        except TransientError as e:
            if attempt == settings.max_retries:
                raise TeacherError(
                    f"{backend.ref} failed {attempt + 1} times; last error: {e}",
                    hint="the teacher is down or overloaded; rerun later — finished calls are cached",
                ) from None
            delay = min(settings.backoff_cap_s, settings.backoff_s * 2**attempt)
            delay *= random.uniform(0.5, 1.5)
            if e.retry_after is not None:
                delay = max(delay, min(e.retry_after, settings.backoff_cap_s * 4))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


# -- keys ---------------------------------------------------------------------------
_KEY_ENV = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "openai-compatible": ("KOLM_OPENAI_COMPATIBLE_API_KEY", "OPENAI_API_KEY"),
}


_ONLY_KEYS: ContextVar[dict[str, str] | None] = ContextVar("kolm_teacher_keys", default=None)


@contextlib.contextmanager
def only_keys(keys: dict[str, str]):
    """In this context, teacher keys come from `keys` alone (not the environment or the
    credentials file): `kolm server` runs a tenant's job with the key sent with it."""
    token = _ONLY_KEYS.set(dict(keys))
    try:
        yield
    finally:
        _ONLY_KEYS.reset(token)


def api_key(provider: str, required: bool) -> str | None:
    """The key for `provider` from the environment or `$KOLM_HOME/credentials.json`
    (or, inside `only_keys`, from those keys alone)."""
    only = _ONLY_KEYS.get()
    if only is not None:
        if only.get(provider) or not required:
            return only.get(provider)
        raise TeacherError(
            f"no API key for teacher provider {provider!r} was sent with this job",
            hint="set the provider's key variable where you run `kolm compile --remote`",
        )
    for var in _KEY_ENV.get(provider, ()):
        if os.environ.get(var):
            return os.environ[var]
    from kolm.keys import kolm_home

    path = kolm_home() / "credentials.json"
    if path.is_file():
        try:
            value = json.loads(path.read_text()).get(provider)
        except (OSError, ValueError):
            raise TeacherError(f"{path} is not valid JSON ({{provider: key}})") from None
        if value:
            return str(value)
    if required:
        names = " or ".join(_KEY_ENV.get(provider, ()))
        raise TeacherError(
            f"no API key for teacher provider {provider!r}",
            hint=f'set {names}, or add {{"{provider}": "..."}} to {path}',
        )
    return None


def redact(text: str, *secrets: str | None) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


# -- OpenAI and OpenAI-compatible ---------------------------------------------------
class OpenAIBackend:
    def __init__(self, ref: TeacherRef, settings: Settings):
        import openai

        self.ref = ref
        self._key = api_key(ref.provider, required=ref.provider == "openai") or "unused"
        self._openai = openai
        kwargs = {"base_url": ref.base_url} if ref.base_url else {}
        self._client = openai.AsyncOpenAI(
            api_key=self._key, max_retries=0, timeout=settings.timeout_s, **kwargs
        )

    async def complete(self, request: Request, sample: int) -> Completion:
        with _sdk_errors(self._openai, self.ref, self._key):
            resp = await self._client.chat.completions.create(
                model=self.ref.model,
                messages=[],
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                seed=sample,
                # The SDK type-walks `messages` recursively (~11 ms of CPU for a 17-turn
                # few-shot prompt); plain JSON sent as a body field skips that.
                extra_body={"messages": request.to_dict()["messages"]},
            )
            text = resp.choices[0].message.content
            usage = resp.usage
        if not isinstance(text, str):
            raise TransientError("response without text")
        return Completion(
            text,
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
        )

    async def aclose(self) -> None:
        await self._client.close()


# -- Anthropic ----------------------------------------------------------------------
class AnthropicBackend:
    def __init__(self, ref: TeacherRef, settings: Settings):
        import anthropic

        self.ref = ref
        self._key = api_key("anthropic", required=True)
        self._anthropic = anthropic
        kwargs = {"base_url": ref.base_url} if ref.base_url else {}
        self._client = anthropic.AsyncAnthropic(
            api_key=self._key, max_retries=0, timeout=settings.timeout_s, **kwargs
        )

    async def complete(self, request: Request, sample: int) -> Completion:
        system = "\n".join(c for r, c in request.messages if r == "system")
        turns = [{"role": r, "content": c} for r, c in request.messages if r != "system"]
        with _sdk_errors(self._anthropic, self.ref, self._key):
            resp = await self._client.messages.create(
                model=self.ref.model,
                system=system,
                messages=turns,
                max_tokens=request.max_tokens,
                # Sent as a raw body field: recent SDK releases dropped the keyword.
                extra_body={"temperature": min(request.temperature, 1.0)},
            )
            text = "".join(b.text for b in resp.content if getattr(b, "type", "") == "text")
            usage = resp.usage
        return Completion(text, usage.input_tokens or 0, usage.output_tokens or 0)

    async def aclose(self) -> None:
        await self._client.close()


# -- local llama.cpp ----------------------------------------------------------------
class LocalBackend:
    """A GGUF run in-process by llama.cpp; calls are serialized (contexts are not thread-safe)."""

    def __init__(self, ref: TeacherRef, settings: Settings):
        from kolm.basemodel import resolve

        self.ref = ref
        self._path = resolve(ref.model).gguf
        self._llm = None
        self._lock = asyncio.Lock()

    def _load(self):
        if self._llm is None:
            from llama_cpp import Llama

            from kolm.prompt import format_from_gguf

            self._fmt = format_from_gguf(self._path)
            self._llm = Llama(model_path=str(self._path), n_ctx=2048, seed=0, verbose=False)
        return self._llm

    async def complete(self, request: Request, sample: int) -> Completion:
        async with self._lock:
            out = await asyncio.to_thread(self._run, request, sample)
        return out

    def prompt_tokens(self, request: Request) -> list[int]:
        """Only the template's structure may become control tokens; message contents are plain."""
        from kolm.prompt import token_ids

        llm = self._load()

        def tokenize(text: str, special: bool) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

        return token_ids(self._fmt.chat(request.messages), tokenize)

    def _run(self, request: Request, sample: int) -> Completion:
        llm = self._load()
        prompt = self.prompt_tokens(request)
        out = llm.create_completion(
            prompt,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            top_k=40,
            top_p=0.95,
            min_p=0.05,
            repeat_penalty=1.0,
            seed=sample,
            stop=[self._fmt.eos] if self._fmt.eos else None,
        )
        usage = out["usage"]
        return Completion(
            (out["choices"][0]["text"] or "").strip(),
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )

    async def aclose(self) -> None:
        if self._llm is not None:
            self._llm.close()


@contextlib.contextmanager
def _sdk_errors(sdk, ref: TeacherRef, key: str | None):
    """Map an official SDK's exceptions (openai and anthropic share their names) to
    retryable TransientError or fatal TeacherError, with the key scrubbed."""
    try:
        yield
    except sdk.APIStatusError as e:
        raise _status_error(ref, e.status_code, e.response.headers, str(e), key) from None
    except (sdk.APIConnectionError, sdk.APITimeoutError) as e:
        raise TransientError(redact(f"{type(e).__name__}: {e}", key)) from None
    except (sdk.APIResponseValidationError, ValueError, AttributeError, IndexError, TypeError) as e:
        raise TransientError(f"garbled response: {type(e).__name__}") from None


def _status_error(
    ref: TeacherRef, status: int, headers, message: str, key: str | None
) -> Exception:
    message = redact(message, key)
    if status == 429 or status >= 500 or status == 408:
        return TransientError(f"HTTP {status}", retry_after=_retry_after(headers))
    if status in (401, 403):
        return TeacherError(
            f"{ref} refused the API key (HTTP {status})", hint="check the key in your environment"
        )
    return TeacherError(f"{ref} rejected the request (HTTP {status}): {message[:300]}")


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _providers_hint() -> str:
    return (
        "providers: "
        + ", ".join(sorted(_BACKENDS))
        + " (e.g. openai-compatible:<model>@http://127.0.0.1:8000/v1)"
    )


def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="kolm.teachers"):
        if ep.name not in _BACKENDS:
            register_backend(ep.name, ep.load())


register_backend("openai", OpenAIBackend)
register_backend("openai-compatible", OpenAIBackend)
register_backend("anthropic", AnthropicBackend)
register_backend("local", LocalBackend)
