"""Prompts: the one function that turns (instruction, input) into the model's text.

Training and runtime both call `render`, so the student sees the same text in
both. The chat template comes from the base GGUF and is stored in the artifact.
This module knows nothing about tokenizers or weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Used when a base GGUF carries no chat template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PromptFormat:
    """How a base model wants its conversation written."""

    template: str
    """Jinja2 chat template, as in the GGUF's `tokenizer.chat_template`."""
    eos: str
    """Text of the end-of-turn token appended to every training answer."""
    bos: str = ""
    """Text of the begin-of-sequence token, exposed to templates that use it."""

    def render(self, instruction: str, user_input: str) -> str:
        """The prompt text up to where the answer begins."""
        messages = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": user_input},
        ]
        return _compile(self.template).render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos, eos_token=self.eos
        )

    def prefix(self, instruction: str) -> str:
        """The part of every prompt that comes before the input (shared by all calls)."""
        marker = "\x00KOLM-INPUT\x00"
        text = self.render(instruction, marker)
        return text[: text.index(marker)]

    def to_dict(self) -> dict[str, str]:
        return {"template": self.template, "eos": self.eos, "bos": self.bos}

    @classmethod
    def from_dict(cls, d: dict) -> PromptFormat:
        return cls(template=d["template"], eos=d["eos"], bos=d.get("bos", ""))


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


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
