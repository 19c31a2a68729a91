"""Detect what a file is from its bytes (Magika), and map that to an extractor kind.

Routing is by content: a PDF named `.txt` is a PDF. The file name is consulted
only to refine plain text that Magika calls generic text (`.md` → Markdown),
never to decide between text and a binary format. Knows Magika's labels and
groups; knows nothing about extracting text or chunking it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kolm.errors import RecallError

TEXT_KINDS = ("text", "markdown", "html", "pdf", "docx", "csv", "json", "code")
"""Kinds with a text extractor."""
IMAGE = "image"
"""Read through OCR when the tesseract binary is installed."""
UNSUPPORTED_YET = ("audio", "video")
"""Recognised, reported as "not supported yet"."""

_BY_LABEL = {
    "pdf": "pdf",
    "docx": "docx",
    "html": "html",
    "xhtml": "html",
    "markdown": "markdown",
    "csv": "csv",
    "tsv": "csv",
    "json": "json",
    "jsonl": "json",
    "txt": "text",
    "empty": "empty",
}
_BY_GROUP = {"code": "code", "text": "text", "image": "image", "audio": "audio", "video": "video"}
_MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")


@dataclass(frozen=True)
class Detection:
    """What Magika said about one file, and the kind kolm routes it to."""

    kind: str
    """One of TEXT_KINDS, `image`, `audio`, `video`, `empty`, or `other` (no extractor)."""
    label: str
    """Magika's content-type label (e.g. `pdf`, `python`, `png`)."""
    group: str
    """Magika's group (e.g. `document`, `code`, `image`)."""
    score: float
    """Magika's confidence in the label."""


def detect(path: Path) -> Detection:
    """Identify one file by content."""
    result = _magika().identify_path(Path(path))
    if not result.ok:
        raise RecallError(f"{path}: Magika could not read it ({result.status})")
    out = result.output
    label, group = str(out.label), str(out.group)
    return Detection(
        _kind(label, group, Path(path).suffix.lower()), label, group, float(result.score)
    )


def _kind(label: str, group: str, suffix: str) -> str:
    kind = _BY_LABEL.get(label) or _BY_GROUP.get(group, "other")
    if kind == "text" and suffix in _MARKDOWN_SUFFIXES:
        return "markdown"
    return kind


@lru_cache(maxsize=1)
def _magika():
    try:
        from magika import Magika
    except ImportError:
        raise RecallError(
            "file type detection needs the `magika` package",
            hint="pip install magika (kolm's install.sh installs it)",
        ) from None
    return Magika()
