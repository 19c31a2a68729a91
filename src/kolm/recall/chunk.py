"""Split extracted text into overlapping chunks that respect its structure.

Prose is read as Markdown: a heading starts a new chunk and its trail
("Refunds > Electronics") heads every chunk under it; paragraphs, fenced code
blocks and table rows stay whole unless one alone exceeds the size, in which
case it is cut at sentence or line ends. Records (CSV rows, JSON objects) are
never split. Consecutive chunks overlap by the last block of the previous one
(or its tail, when that block is long). Every chunk carries a reference to
where it came from: page and line span (lines of the extracted text: for HTML
and DOCX that is the Markdown they were turned into), or record numbers for
CSV/JSON.

Knows text layout; knows nothing about file formats, embeddings or storage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kolm.recall.extract import Extracted

_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@dataclass(frozen=True)
class ChunkConfig:
    """How text is cut; stored in the index so a re-index with other settings re-chunks."""

    max_chars: int = 600
    """Longest chunk body in characters (about 150 tokens of English)."""
    overlap_chars: int = 80
    """Up to this much of the end of one chunk starts the next."""

    def to_dict(self) -> dict:
        return {"max_chars": self.max_chars, "overlap_chars": self.overlap_chars}


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a file."""

    text: str
    """The chunk as embedded and shown to the model (heading trail first)."""
    ref: str
    """Where it came from, e.g. `p. 2, lines 4-9`, `lines 10-24` or `records 3-7`."""


@dataclass
class _Block:
    kind: str  # heading | para | code | row (table) | record (CSV/JSON)
    text: str
    first: int
    last: int
    page: int | None = None
    level: int = 0


@dataclass
class _Acc:
    blocks: list[_Block] = field(default_factory=list)

    def size(self) -> int:
        return sum(len(b.text) + 1 for b in self.blocks)

    def has_body(self) -> bool:
        return any(b.kind != "heading" for b in self.blocks)


def chunk(doc: Extracted, cfg: ChunkConfig | None = None) -> list[Chunk]:
    """Chunks of one extracted file, in reading order."""
    cfg = cfg or ChunkConfig()
    blocks: list[_Block] = []
    for page in doc.pages:
        blocks += _blocks(page.text, doc.layout, page.number)
    return _pack(blocks, cfg)


def _blocks(text: str, layout: str, page: int | None) -> list[_Block]:
    lines = text.splitlines()
    if layout == "rows":
        return [
            _Block("record", s.strip(), i, i, page) for i, s in enumerate(lines, 1) if s.strip()
        ]
    if layout == "code":
        return _paragraphs(lines, page, "code")
    return _prose(lines, page)


def _paragraphs(lines: list[str], page: int | None, kind: str) -> list[_Block]:
    out: list[_Block] = []
    start = None
    for i, line in enumerate([*lines, ""], 1):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            out.append(
                _Block(kind, "\n".join(lines[start - 1 : i - 1]).strip("\n"), start, i - 1, page)
            )
            start = None
    return out


def _prose(lines: list[str], page: int | None) -> list[_Block]:
    out: list[_Block] = []
    para: list[tuple[int, str]] = []
    i = 0

    def flush_para() -> None:
        if para:
            text = " ".join(s.strip() for _, s in para)
            out.append(_Block("para", text, para[0][0], para[-1][0], page))
            para.clear()

    while i < len(lines):
        line, n = lines[i], i + 1
        if _FENCE.match(line):
            flush_para()
            end = next(
                (j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j])), len(lines) - 1
            )
            out.append(_Block("code", "\n".join(lines[i : end + 1]), n, end + 1, page))
            i = end + 1
            continue
        if m := _HEADING.match(line):
            flush_para()
            out.append(_Block("heading", m.group(2).strip("# "), n, n, page, len(m.group(1))))
        elif line.lstrip().startswith("|"):
            flush_para()
            if not re.fullmatch(r"\s*\|[\s:|-]*\|?\s*", line):  # skip |---|---| separators
                out.append(_Block("row", line.strip(), n, n, page))
        elif not line.strip():
            flush_para()
        else:
            para.append((n, line))
        i += 1
    flush_para()
    return out


def _pack(blocks: list[_Block], cfg: ChunkConfig) -> list[Chunk]:
    chunks: list[Chunk] = []
    trail: list[_Block] = []
    acc = _Acc()
    for block in blocks:
        if block.kind == "heading":
            _emit(acc, trail, chunks)
            trail = [h for h in trail if h.level < block.level] + [block]
            acc = _Acc([block])
            continue
        for piece in _split_long(block, cfg.max_chars):
            if acc.has_body() and acc.size() + len(piece.text) > cfg.max_chars:
                _emit(acc, trail, chunks)
                acc = _Acc(_overlap(acc, cfg.overlap_chars))
            acc.blocks.append(piece)
    _emit(acc, trail, chunks)
    return chunks


def _emit(acc: _Acc, trail: list[_Block], chunks: list[Chunk]) -> None:
    if not acc.has_body():
        return
    body = "\n".join(b.text for b in acc.blocks)
    headed = acc.blocks[0].kind == "heading"
    path = [h.text for h in trail if not (headed and h is acc.blocks[0])]
    if path and not headed:
        body = " > ".join(path) + "\n" + body
    elif path and headed:
        body = " > ".join(path) + " > " + body
    chunks.append(Chunk(body, _ref(acc.blocks)))


def _ref(blocks: list[_Block]) -> str:
    first, last = blocks[0], blocks[-1]
    if first.page is not None:
        if first.page != last.page:
            return f"pp. {first.page}-{last.page}"
        return f"p. {first.page}, lines {first.first}-{last.last}"
    unit = "records" if first.kind == "record" else "lines"
    return f"{unit} {first.first}-{last.last}"


def _overlap(acc: _Acc, overlap: int) -> list[_Block]:
    """The start of the next chunk: the previous chunk's last block, or its tail."""
    last = acc.blocks[-1]
    if overlap <= 0 or last.kind == "heading":
        return []
    if len(last.text) <= overlap:
        return [last]
    if last.kind in ("record", "row", "code"):
        return []  # never cut a record or a code block in half
    tail = last.text[-overlap:]
    tail = tail[tail.find(" ") + 1 :] if " " in tail else tail
    return [_Block(last.kind, "…" + tail, last.last, last.last, last.page)]


def _span(block: _Block) -> tuple[int, int, int | None]:
    return block.first, block.last, block.page


def _split_long(block: _Block, max_chars: int) -> list[_Block]:
    """A block longer than max_chars, cut at sentence ends (prose) or line ends (code)."""
    if len(block.text) <= max_chars:
        return [block]
    parts = block.text.splitlines() if "\n" in block.text else _SENTENCE_END.split(block.text)
    out: list[_Block] = []
    buf = ""
    for part in parts:
        if len(part) > max_chars:  # a single sentence or line longer than a chunk
            cut = len(part) - (len(part) % max_chars or max_chars)
            for i in range(0, cut, max_chars):  # by index: re-slicing the rest is quadratic
                out.append(_Block(block.kind, part[i : i + max_chars], *_span(block)))
            part = part[cut:]
        if buf and len(buf) + len(part) + 1 > max_chars:
            out.append(_Block(block.kind, buf, block.first, block.last, block.page))
            buf = ""
        buf = f"{buf}\n{part}" if buf and "\n" in block.text else f"{buf} {part}".strip()
    if buf:
        out.append(_Block(block.kind, buf, block.first, block.last, block.page))
    return out
