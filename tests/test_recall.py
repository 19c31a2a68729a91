"""Recall: detection by content, extraction per kind, chunking, the index and its search.

Fixtures are made by the tests (PDF with fpdf2, DOCX with python-docx, WAV with
the standard library); embeddings come from the real packaged MiniLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from kolm.errors import RecallError
from kolm.recall import ChunkConfig, Embedder, Index, build_index
from kolm.recall.chunk import chunk
from kolm.recall.detect import detect
from kolm.recall.embed import DEFAULT_EMBEDDER, embedder_for
from kolm.recall.extract import Extracted, Page, Skipped, extract
from kolm.recall.index import collect, fuse

PROSE = (
    "The Harbor Lantern warranty covers the glass for 7 years. "
    "Claims need the serial number printed under the base. "
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("Returns policy", level=1)
    d.add_paragraph("Opened kettles may be returned within 21 days with the receipt.")
    d.add_heading("Fees", level=2)
    table = d.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "item", "restocking fee"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "kettle", "4 euros"
    d.save(str(path))
    return path


def make_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(range(256)) * 64)
    return path


HTML = """<!doctype html><html><head><title>Lantern care</title>
<style>body { color: red }</style><script>var secret = "do not index";</script></head>
<body><h1>Lantern care</h1><p>Clean the Harbor Lantern lens with a dry cloth only.</p>
<h2>Batteries</h2><p>Use two AA cells; rechargeable cells last about 40 hours.</p>
<ul><li>Never submerge the lantern.</li><li>Store it above 5 degrees.</li></ul></body></html>
"""
MARKDOWN = """# Shipping

Orders ship from Rotterdam within 2 working days.

## Islands

Deliveries to the Wadden islands add one day and a 3 euro surcharge.

```bash
kolm track --order 1234
```
"""
CSV = "sku,name,price\nHL-7,Harbor Lantern,49.00\nKT-2,Copper Kettle,35.50\nMG-1,Stone Mug,9.90\n"
CODE = '''"""Price helpers for the shop."""


def with_vat(price: float, rate: float = 0.21) -> float:
    """Add Dutch VAT to a price."""
    return round(price * (1 + rate), 2)


def discount(price: float, pct: int) -> float:
    return round(price * (100 - pct) / 100, 2)
'''


def corpus(root: Path) -> Path:
    """One file of every supported kind, plus things that must be reported."""
    root.mkdir(parents=True, exist_ok=True)
    make_pdf(root / "warranty.pdf", [PROSE * 3, "Page two: the lantern battery lasts 40 hours."])
    make_docx(root / "returns.docx")
    (root / "care.html").write_text(HTML)
    (root / "shipping.md").write_text(MARKDOWN)
    (root / "prices.csv").write_text(CSV)
    (root / "stores.json").write_text(
        json.dumps(
            [
                {"city": "Utrecht", "opens": "09:00", "closed": "Sunday"},
                {"city": "Leiden", "opens": "10:00", "closed": "Monday"},
            ]
        )
    )
    (root / "vat.py").write_text(CODE)
    return root


EXPECT = {
    "warranty.pdf": ("pdf", "serial number printed under the base"),
    "returns.docx": ("docx", "returned within 21 days"),
    "care.html": ("html", "dry cloth only"),
    "shipping.md": ("markdown", "3 euro surcharge"),
    "prices.csv": ("csv", "name: Copper Kettle"),
    "stores.json": ("json", "city: Leiden"),
    "vat.py": ("code", "def with_vat"),
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_each_kind_is_detected_extracted_and_chunked(tmp_path, name):
    root = corpus(tmp_path / "docs")
    kind, phrase = EXPECT[name]
    d = detect(root / name)
    assert d.kind == kind, d
    chunks = chunk(extract(root / name, d.kind))
    assert chunks and any(phrase in c.text for c in chunks), [c.text for c in chunks]
    assert all(c.ref for c in chunks)


def test_html_drops_scripts_and_keeps_headings(tmp_path):
    root = corpus(tmp_path / "docs")
    text = "\n".join(c.text for c in chunk(extract(root / "care.html", "html")))
    assert "do not index" not in text and "color: red" not in text
    assert "Lantern care > Batteries" in text


def test_docx_headings_and_table_rows(tmp_path):
    root = corpus(tmp_path / "docs")
    chunks = chunk(extract(root / "returns.docx", "docx"))
    fees = [c.text for c in chunks if "restocking" in c.text]
    assert fees and fees[0].startswith("Returns policy > Fees")
    assert "| kettle | 4 euros |" in fees[0]


def test_pdf_chunks_cite_their_page(tmp_path):
    pdf = make_pdf(tmp_path / "w.pdf", [PROSE, "Page two: the battery lasts 40 hours."])
    chunks = chunk(extract(pdf, "pdf"), ChunkConfig(max_chars=120, overlap_chars=0))
    page2 = [c for c in chunks if "40 hours" in c.text]
    assert page2 and page2[0].ref.startswith("p. 2")
    assert chunks[0].ref.startswith("p. 1")


def test_magika_beats_the_extension(tmp_path):
    fake = make_pdf(tmp_path / "notes.txt", [PROSE])
    d = detect(fake)
    assert (d.kind, d.label) == ("pdf", "pdf")
    assert "serial number" in extract(fake, d.kind).pages[0].text


def test_audio_is_reported_as_not_supported_yet(tmp_path):
    d = detect(make_wav(tmp_path / "call.wav"))
    assert d.kind == "audio"
    with pytest.raises(Skipped, match="not supported yet") as e:
        extract(tmp_path / "call.wav", d.kind)
    assert e.value.status == "unsupported"


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_image_text_is_read_by_ocr(tmp_path):
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (900, 120), 255)
    font = ImageFont.load_default(size=48)
    ImageDraw.Draw(img).text((20, 30), "LANTERN WARRANTY 7 YEARS", fill=0, font=font)
    img.save(tmp_path / "scan.png")
    d = detect(tmp_path / "scan.png")
    assert d.kind == "image"
    assert "WARRANTY" in extract(tmp_path / "scan.png", d.kind).pages[0].text.upper()


def test_chunker_respects_structure():
    text = (
        "# Guide\n\nIntro paragraph.\n\n## Setup\n\n"
        + "A sentence about setup that runs on. " * 12
        + "\n\n```python\nprint('a')\n\nprint('b')\n```\n\n| k | v |\n|---|---|\n| a | 1 |\n"
    )
    chunks = chunk(Extracted([Page(text)], "prose"), ChunkConfig(max_chars=200, overlap_chars=60))
    texts = [c.text for c in chunks]
    assert texts[0].startswith("Guide\nIntro paragraph.") or texts[0].startswith("Guide")
    setup = [t for t in texts if "setup" in t]
    assert len(setup) >= 2 and all(t.startswith("Guide > Setup") for t in setup)
    code = [t for t in texts if "print('a')" in t]
    assert code and "print('b')" in code[0]  # a fenced block is never split at its blank line
    assert any("| a | 1 |" in t for t in texts)
    assert not any("|---|" in t for t in texts)
    # overlap: the second setup chunk starts with the end of the first
    tail = setup[0].split()[-3:]
    assert " ".join(tail) in setup[1]
    assert all(len(t) <= 200 + 60 + 40 for t in texts)


def test_records_are_never_split():
    lines = "\n".join(f"id: {i}; note: " + "x" * 50 for i in range(20))
    chunks = chunk(Extracted([Page(lines)], "rows"), ChunkConfig(max_chars=200, overlap_chars=80))
    rows = [r for c in chunks for r in c.text.splitlines()]
    assert all(len(r) == len(lines.splitlines()[0]) or r.startswith("id: 1") for r in rows)
    assert {r.split(";")[0] for r in rows} == {f"id: {i}" for i in range(20)}
    assert chunks[0].ref == "records 1-3"


def test_fuse_is_reciprocal_rank_fusion():
    fused = fuse([[1, 2, 3], [3, 1]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_build_reports_every_file_and_search_finds_the_answer(tmp_path, embedder):
    root = corpus(tmp_path / "docs")
    (root / "empty.txt").write_bytes(b"")
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<>> stream\n" + bytes(range(256)) * 8)
    make_wav(root / "call.wav")
    (root / ".hidden.md").write_text("# not indexed")
    logs: list[str] = []
    rep = build_index(
        [root], tmp_path / "i.sqlite", base_dir=root, embedder=embedder, log=logs.append
    )
    status = {f.path: f.status for f in rep.files}
    assert all(status[n] == "indexed" for n in EXPECT), status
    assert status["empty.txt"] == "empty"
    assert status["broken.pdf"] in ("failed", "empty", "unsupported")
    assert status["call.wav"] == "unsupported"
    assert ".hidden.md" not in status
    skipped = {f.path: f.reason for f in rep.skipped()}
    assert set(skipped) == {"empty.txt", "broken.pdf", "call.wav"}
    assert "not supported yet" in skipped["call.wav"]
    assert any("call.wav" in m for m in logs)
    assert rep.chunks_embedded == rep.chunks_total > 0

    idx = Index(tmp_path / "i.sqlite", embedder)
    for mode in ("hybrid", "vector", "keyword"):
        hits = idx.search("How long is the lantern glass warranty?", k=3, mode=mode)
        assert any(h.path == "warranty.pdf" for h in hits), (mode, hits)
    hits = idx.search("surcharge for deliveries to the Wadden islands", k=2)
    assert hits[0].path == "shipping.md" and hits[0].ref.startswith("lines")
    assert hits == idx.search("surcharge for deliveries to the Wadden islands", k=2)
    assert idx.get([h.id for h in hits]) == [
        type(h)(h.id, h.path, h.ref, h.text, 0.0) for h in hits
    ]
    assert hits[0].formatted().startswith("[source: shipping.md (lines ")
    stats = idx.stats()
    assert stats["chunks"] == rep.chunks_total and stats["embedder"]["dim"] == 384
    assert {f["path"] for f in stats["files"]} >= set(EXPECT) | {"call.wav"}


def test_reindexing_an_unchanged_corpus_embeds_nothing(tmp_path, embedder):
    root = corpus(tmp_path / "docs")
    out = tmp_path / "i.sqlite"
    first = build_index([root], out, base_dir=root, embedder=embedder)
    ids = sorted(r for (r,) in Index(out, embedder).conn.execute("SELECT id FROM chunks"))
    again = build_index([root], out, base_dir=root, embedder=embedder)
    assert again.chunks_embedded == 0
    assert again.count("unchanged") == len(EXPECT) and again.chunks_total == first.chunks_total
    assert ids == sorted(r for (r,) in Index(out, embedder).conn.execute("SELECT id FROM chunks"))

    (root / "shipping.md").write_text(MARKDOWN.replace("2 working days", "3 working days"))
    (root / "vat.py").unlink()
    third = build_index([root], out, base_dir=root, embedder=embedder)
    n_md = next(f.chunks for f in third.files if f.path == "shipping.md")
    assert third.chunks_embedded == n_md
    assert {f.path for f in third.files if f.status == "removed"} == {"vat.py"}
    idx = Index(out, embedder)
    assert (
        idx.conn.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0] == third.chunks_total
    )
    assert idx.conn.execute("SELECT count(*) FROM chunks WHERE path = 'vat.py'").fetchone()[0] == 0


def test_other_chunk_settings_rechunk_everything(tmp_path, embedder):
    root = corpus(tmp_path / "docs")
    out = tmp_path / "i.sqlite"
    build_index([root], out, base_dir=root, embedder=embedder)
    rep = build_index([root], out, base_dir=root, embedder=embedder, cfg=ChunkConfig(200, 40))
    assert rep.count("indexed") == len(EXPECT) and rep.chunks_embedded == rep.chunks_total


def test_sources_may_be_globs_and_files_and_must_exist(tmp_path):
    root = corpus(tmp_path / "docs")
    got = collect(["docs/*.md", "docs/vat.py"], tmp_path)
    assert [n for _, n in got] == ["docs/shipping.md", "docs/vat.py"]
    with pytest.raises(RecallError, match="nothing found at nope/, docs/\\*.rst"):
        collect(["nope/", "docs/*.rst"], tmp_path)
    assert root.is_dir()


def test_embedder_identity(tmp_path, embedder):
    info = embedder.info
    assert (info.name, info.dim, info.packaged) == (DEFAULT_EMBEDDER, 384, True)
    by_path = Embedder(embedder.folder)
    assert by_path.info.sha256 == info.sha256 and not by_path.info.packaged
    assert embedder_for(info).info == info
    copy = tmp_path / "minilm"
    shutil.copytree(embedder.folder, copy)
    (copy / "vocab.txt").write_text("changed")
    with pytest.raises(RecallError, match="not the one this index was built with"):
        embedder_for(info, copy)
    with pytest.raises(RecallError, match="neither a packaged embedder"):
        Embedder(tmp_path / "nothing-here")


def test_an_index_built_by_another_embedder_is_refused(tmp_path, embedder):
    root = corpus(tmp_path / "docs")
    out = tmp_path / "i.sqlite"
    build_index([root / "shipping.md"], out, base_dir=root, embedder=embedder)
    other = tmp_path / "other"
    shutil.copytree(embedder.folder, other)
    (other / "README.txt").write_text("a different model folder")
    with pytest.raises(RecallError, match="built with embedder"):
        build_index([root / "shipping.md"], out, base_dir=root, embedder=Embedder(other))


def test_a_file_that_is_not_an_index_is_refused(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RecallError, match="not a kolm index"):
        Index(bad)
    with pytest.raises(RecallError, match="no such index"):
        Index(tmp_path / "missing.sqlite")


def test_importing_recall_loads_no_heavy_module():
    code = (
        "import sys, kolm.recall, kolm.recall.index; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'magika') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
