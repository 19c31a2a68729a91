"""Prompts: the one function that turns (instruction, input, context) into the model's tokens.

Training, evaluation, `run`, `serve` and the local teacher all build prompts
here, so the student sees the same tokens everywhere. The rule that keeps user
text from forging a turn: only the chat template's own text may become special
(control) tokens. The template is rendered once per conversation shape with
placeholders for the message contents; its pieces are *structural* segments and
every content — instruction, user input, retrieved chunks, demonstrations — is
a *plain* segment, tokenized with special tokens off. Content never passes
through Jinja, so it cannot change the structure either.

Rendering an untrusted template (it travels inside artifacts) is sandboxed and
bounded in loop iterations, arithmetic and output size.

This module knows nothing about tokenizers or weights: callers pass a
`tokenize(text, special)` function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from kolm.errors import BaseModelError

# Used when a base GGUF carries no chat template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MAX_TEMPLATE_CHARS = 64_000
"""A chat template longer than this is refused before it is parsed."""
MAX_RENDERED_CHARS = 64_000
"""The template's own text (placeholders aside) may not render longer than this."""
MAX_LOOP_ITERATIONS = 10_000
"""Iterations of `range()` a template may run in one rendering."""

_SLOT = "\x00kolm-slot-{}\x00"
_SLOT_STEM = "\x00kolm-slot-"

Tokenize = Callable[[str, bool], list[int]]
"""tokenize(text, special) -> token ids; special=False must never produce control tokens."""


@dataclass(frozen=True)
class Segment:
    """A run of prompt text and whether it may contain control tokens."""

    text: str
    structural: bool
    """True only for text the chat template wrote; such text is tokenized with special tokens."""


def user_turn(user_input: str, context: Sequence[str] = ()) -> str:
    """The user message's content: retrieved chunks (if any), then the input."""
    if not context:
        return user_input
    chunks = "\n\n".join(context)
    return f"Context:\n{chunks}\n\nInput:\n{user_input}"


def token_ids(segments: Sequence[Segment], tokenize: Tokenize) -> list[int]:
    """Tokenize each segment on its own: special tokens only in structural ones."""
    ids: list[int] = []
    for s in segments:
        if s.text:
            ids += tokenize(s.text, s.structural)
    return ids


@dataclass(frozen=True)
class PromptFormat:
    """How a base model wants its conversation written."""

    template: str
    """Jinja2 chat template, as in the GGUF's `tokenizer.chat_template`."""
    eos: str
    """Text of the end-of-turn token appended to every training answer."""
    bos: str = ""
    """Text of the begin-of-sequence token, exposed to templates that use it."""

    def chat(
        self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True
    ) -> list[Segment]:
        """Segments of a whole conversation of (role, content) pairs."""
        roles = tuple(role for role, _ in messages)
        pieces = _skeleton(self.template, self.bos, self.eos, roles, add_generation_prompt)
        out = [Segment(pieces[0], True)]
        for (_, content), piece in zip(messages, pieces[1:], strict=True):
            out += [Segment(content, False), Segment(piece, True)]
        return out

    def segments(
        self, instruction: str, user_input: str, context: Sequence[str] = ()
    ) -> list[Segment]:
        """The prompt up to where the answer begins: system instruction, user turn."""
        return self.chat([("system", instruction), ("user", user_turn(user_input, context))])

    def prefix_segments(self, instruction: str) -> list[Segment]:
        """The segments every prompt starts with (everything before the user's content)."""
        return self.segments(instruction, "")[:3]

    def render(self, instruction: str, user_input: str, context: Sequence[str] = ()) -> str:
        """The prompt as text, for display only: tokenize `segments`, never this."""
        return "".join(s.text for s in self.segments(instruction, user_input, context))

    def answer_segments(self, output: str) -> list[Segment]:
        """A training answer: the output as plain text, then the end-of-turn token."""
        return [Segment(output, False), Segment(self.eos, True)]

    def to_dict(self) -> dict[str, str]:
        return {"template": self.template, "eos": self.eos, "bos": self.bos}

    @classmethod
    def from_dict(cls, d: dict) -> PromptFormat:
        return cls(template=d["template"], eos=d["eos"], bos=d.get("bos", ""))


@lru_cache(maxsize=64)
def _skeleton(
    template: str, bos: str, eos: str, roles: tuple[str, ...], add_generation_prompt: bool
) -> tuple[str, ...]:
    """The template's own text around each message: len(roles) + 1 pieces."""
    messages = [{"role": r, "content": _SLOT.format(i)} for i, r in enumerate(roles)]
    text = _render_bounded(
        template,
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
    pieces = []
    for i in range(len(roles)):
        head, sep, text = text.partition(_SLOT.format(i))
        if not sep or _SLOT_STEM in head:
            raise BaseModelError(
                f"the chat template does not write the {roles[i]} message's content exactly "
                "once and in order, so kolm cannot keep that text out of its control tokens",
                hint="use a base whose chat template writes each message's content verbatim",
            )
        pieces.append(head)
    if _SLOT_STEM in text:
        raise BaseModelError("the chat template repeats a message's content")
    pieces.append(text)
    return tuple(pieces)


def _render_bounded(template: str, **variables) -> str:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise BaseModelError(
            f"the chat template is {len(template):,} characters (at most {MAX_TEMPLATE_CHARS:,})"
        )
    out, size = [], 0
    try:
        for chunk in _compile(template).generate(**variables):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise BaseModelError(
                    f"the chat template renders more than {MAX_RENDERED_CHARS:,} characters",
                    hint="the template loops or grows without bound; use a well-formed one",
                )
            out.append(chunk)
    except BaseModelError:
        raise
    except Exception as e:  # jinja2 syntax/security/undefined errors, our own limits
        raise BaseModelError(f"the chat template cannot be rendered: {e}") from None
    return "".join(out)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Bounded(ImmutableSandboxedEnvironment):
        """Counts `range` iterations and refuses huge repetitions and powers."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
                raise ValueError("exponent too large in chat template")
            if operator == "*":
                n = right if isinstance(right, int) else left if isinstance(left, int) else 1
                other = left if n is right else right
                if isinstance(other, str | list | tuple) and n * len(other) > MAX_RENDERED_CHARS:
                    raise ValueError("repetition too large in chat template")
            return super().call_binop(context, operator, left, right)

    budget = [MAX_LOOP_ITERATIONS]

    def bounded_range(*args):
        for i in range(*args):
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f"more than {MAX_LOOP_ITERATIONS:,} loop iterations")
            yield i

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = _Bounded(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["range"] = bounded_range
    compiled = env.from_string(template)

    class _Fresh:
        """Resets the loop budget for each rendering."""

        def generate(self, **variables):
            budget[0] = MAX_LOOP_ITERATIONS
            return compiled.generate(**variables)

    return _Fresh()


def format_from_gguf(path) -> PromptFormat:
    """Read the chat template and special tokens from a base GGUF's header."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def scalar(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    template = scalar("tokenizer.chat_template") or CHATML
    tokens = reader.fields.get("tokenizer.ggml.tokens")

    def token_text(key: str) -> str:
        idx = scalar(key)
        if idx is None or tokens is None:
            return ""
        return bytes(tokens.parts[tokens.data[int(idx)]]).decode("utf-8", "replace")

    eos = token_text("tokenizer.ggml.eos_token_id") or "<|im_end|>"
    return PromptFormat(
        template=str(template), eos=eos, bos=token_text("tokenizer.ggml.bos_token_id")
    )
