"""Extract text from one file, by the kind `detect` found, with well-kept libraries.

PDF through pypdf (one page at a time, so chunks can cite pages), DOCX through
python-docx (headings become Markdown headings, tables become table rows),
HTML through BeautifulSoup + markdownify (scripts and styles dropped), CSV and
JSON through the standard library (one record per line), code and plain text
as they are, images through the `tesseract` binary when it is installed.
Audio and video are recognised and refused as "not supported yet".

Knows file formats; knows nothing about chunk sizes, embeddings or indexes.
A file that cannot be read raises `Skipped` with a status and a reason, which
the indexer records instead of stopping.

Corpus files are untrusted, so every extractor is bounded: a DOCX whose parts
inflate past `MAX_UNZIPPED_BYTES`, a PDF with more than `MAX_PDF_PAGES` pages,
and any file whose text passes `MAX_TEXT_CHARS` are refused (status `refused`)
rather than read to the end; input nested too deeply for the parsers is
reported as such.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kolm.errors import RecallError

MAX_TEXT_CHARS = 16_000_000
"""Most text one file may yield (about 27,000 chunks); more is refused, not cut."""
MAX_PDF_PAGES = 5_000
"""Most pages read from one PDF."""
MAX_UNZIPPED_BYTES = 128 * 1024 * 1024
"""Most bytes a DOCX's zip parts may declare, summed (a zip bomb declares far more)."""
_SPLIT_HINT = "split it into smaller files, or leave it out of the corpus"


class Skipped(RecallError):
    """A file was not indexed; `status` says why in one word."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        """`unsupported`, `failed`, `empty` or `refused` (over a limit, or outside the corpus)."""


@dataclass(frozen=True)
class Page:
    """Text from one page (PDF) or the whole file (everything else)."""

    text: str
    number: int | None = None
    """1-based page number for paged formats; None otherwise."""


@dataclass(frozen=True)
class Extracted:
    """A file's text and how the chunker should read it."""

    pages: list[Page]
    layout: str
    """`prose` (Markdown-like: headings, paragraphs, tables, code fences),
    `rows` (one record per line, never split) or `code` (blank-line blocks)."""


def extract(path: Path, kind: str) -> Extracted:
    """Text of `path`, read as `kind` (from `detect`)."""
    fn = _EXTRACTORS.get(kind)
    if fn is None:
        raise Skipped("unsupported", _unsupported_reason(kind))
    try:
        out = fn(Path(path))
    except Skipped:
        raise
    except RecursionError:
        raise Skipped("failed", f"this {kind} file is nested too deeply to read") from None
    except Exception as e:  # every library raises its own types on damaged input
        raise Skipped("failed", f"{kind} extraction failed: {type(e).__name__}: {e}") from None
    if not any(p.text.strip() for p in out.pages):
        raise Skipped("empty", f"no text found in this {kind} file")
    _check_text_size(sum(len(p.text) for p in out.pages), kind)
    return out


def _check_text_size(chars: int, kind: str) -> None:
    if chars > MAX_TEXT_CHARS:
        raise Skipped(
            "refused",
            f"this {kind} file yields over {MAX_TEXT_CHARS:,} characters of text; {_SPLIT_HINT}",
        )


def _unsupported_reason(kind: str) -> str:
    if kind in ("audio", "video"):
        return f"{kind} is not supported yet"
    if kind == "empty":
        return "the file is empty"
    return f"no extractor for this kind of file ({kind})"


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _plain(path: Path) -> Extracted:
    return Extracted([Page(_read_text(path))], "prose")


def _code(path: Path) -> Extracted:
    return Extracted([Page(_read_text(path))], "code")


def _pdf(path: Path) -> Extracted:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise Skipped("failed", "the PDF is encrypted with a password")
    n = len(reader.pages)
    if n > MAX_PDF_PAGES:
        raise Skipped(
            "refused", f"the PDF has {n:,} pages (limit {MAX_PDF_PAGES:,}); {_SPLIT_HINT}"
        )
    pages, chars = [], 0
    for i, page in enumerate(reader.pages):
        pages.append(Page(page.extract_text() or "", i + 1))
        chars += len(pages[-1].text)
        _check_text_size(chars, "pdf")
    return Extracted(pages, "prose")


def _docx(path: Path) -> Extracted:
    import docx
    from docx.table import Table

    _check_unzipped(path)
    lines: list[str] = []
    for block in docx.Document(str(path)).iter_inner_content():
        if isinstance(block, Table):
            lines += ["", *(_table_row(row) for row in block.rows), ""]
        else:
            lines.append(_docx_paragraph(block))
    return Extracted([Page("\n".join(lines))], "prose")


def _check_unzipped(path: Path) -> None:
    """Refuse a zip whose parts declare more than MAX_UNZIPPED_BYTES (zipfile never
    inflates a member past its declared size, so the declared sizes bound the reads)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        total = sum(i.file_size for i in z.infolist())
    if total > MAX_UNZIPPED_BYTES:
        raise Skipped(
            "refused",
            f"the DOCX inflates to {total:,} bytes (limit {MAX_UNZIPPED_BYTES:,}): "
            f"a zip bomb or an oversized document; {_SPLIT_HINT}",
        )


def _docx_paragraph(p) -> str:
    text = p.text.strip()
    style = (p.style.name or "") if p.style is not None else ""
    if style.startswith("Heading") and style[7:].strip().isdigit() and text:
        return f"\n{'#' * min(6, int(style[7:]))} {text}\n"
    if style == "Title" and text:
        return f"\n# {text}\n"
    if style.startswith("List") and text:
        return f"- {text}"
    return f"{text}\n"


def _table_row(row) -> str:
    cells = [" ".join(c.text.split()) for c in row.cells]
    return "| " + " | ".join(cells) + " |"


def _html(path: Path) -> Extracted:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    text = MarkdownConverter(heading_style="ATX", bullets="-").convert_soup(soup)
    return Extracted([Page(text)], "prose")


def _csv(path: Path) -> Extracted:
    text = _read_text(path)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in r)]
    if not rows:
        return Extracted([Page("")], "rows")
    header, body = rows[0], rows[1:] or [rows[0]]
    lines = [_record_line(dict(zip(header, r, strict=False))) for r in body]
    return Extracted([Page("\n".join(lines))], "rows")


def _json(path: Path) -> Extracted:
    text = _read_text(path)
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else None
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSONL
        data = records
    if records is not None and all(isinstance(r, dict) for r in records):
        return Extracted([Page("\n".join(_record_line(r) for r in records))], "rows")
    return Extracted([Page(json.dumps(data, indent=1, ensure_ascii=False))], "code")


def _record_line(record: dict) -> str:
    def value(v) -> str:
        s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        return " ".join(s.split())

    return "; ".join(f"{k}: {value(v)}" for k, v in record.items() if v not in ("", None))


def _image(path: Path) -> Extracted:
    exe = shutil.which("tesseract")
    if exe is None:
        raise Skipped(
            "unsupported", "image: OCR needs the tesseract binary (apt-get install tesseract-ocr)"
        )
    proc = subprocess.run(
        [exe, str(path), "stdout"], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise Skipped("failed", f"tesseract failed: {proc.stderr.strip()[:200]}")
    return Extracted([Page(proc.stdout)], "prose")


_EXTRACTORS = {
    "text": _plain,
    "markdown": _plain,
    "html": _html,
    "pdf": _pdf,
    "docx": _docx,
    "csv": _csv,
    "json": _json,
    "code": _code,
    "image": _image,
}
