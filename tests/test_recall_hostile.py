"""Recall against hostile input: corpus files built to exhaust or escape, crafted indexes,
and query text written as FTS5 syntax.

Each test writes the hostile thing for real and runs the real code (Magika, pypdf,
python-docx, the packaged MiniLM embedder, sqlite-vec + FTS5). Limits are lowered
with monkeypatch where the real value would make the test slow; the code path is
the same."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.errors import RecallError
from kolm.recall import Embedder, Index, build_index
from kolm.recall import extract as extract_mod
from kolm.recall import index as index_mod
from kolm.recall.chunk import chunk
from kolm.recall.extract import Extracted, Page, Skipped, extract
from kolm.recall.index import collect, connect

FACT = "The Harbor Lantern warranty covers the glass for seven years."


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def good_index(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.md").write_text(f"# Warranty\n\n{FACT}\n")
    (root / "b.md").write_text("Kettles may be returned within 21 days with the receipt.\n")
    out = root.parent / "good.sqlite"
    build_index([root], out, base_dir=root, embedder=embedder)
    return out


def _docx_bytes(text: str) -> bytes:
    import docx

    d = docx.Document()
    d.add_paragraph(text)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _status(rep) -> dict[str, tuple[str, str]]:
    return {f.path: (f.status, f.reason) for f in rep.files}


# -- corpus files ---------------------------------------------------------------------


def test_docx_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    """A DOCX whose document.xml inflates 1000x is refused before python-docx reads it."""
    monkeypatch.setattr(extract_mod, "MAX_UNZIPPED_BYTES", 4 * 1024 * 1024)
    src = zipfile.ZipFile(io.BytesIO(_docx_bytes("hi")))
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "word/document.xml":
                data = data.replace(b"hi</w:t>", b"hi" + b" " * 8_000_000 + b"</w:t>")
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    with pytest.raises(Skipped, match="inflates to .* zip bomb") as e:
        extract(path, "docx")
    assert e.value.status == "refused"


def test_pdf_over_the_page_limit_is_refused(tmp_path, monkeypatch):
    from pypdf import PdfWriter

    monkeypatch.setattr(extract_mod, "MAX_PDF_PAGES", 3)
    w = PdfWriter()
    for _ in range(5):
        w.add_blank_page(100, 100)
    w.write(str(tmp_path / "many.pdf"))
    with pytest.raises(Skipped, match="has 5 pages .limit 3.") as e:
        extract(tmp_path / "many.pdf", "pdf")
    assert e.value.status == "refused"


def test_text_over_the_limit_is_refused_not_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(extract_mod, "MAX_TEXT_CHARS", 1000)
    (tmp_path / "big.md").write_text("word " * 400)
    with pytest.raises(Skipped, match="over 1,000 characters") as e:
        extract(tmp_path / "big.md", "markdown")
    assert e.value.status == "refused"


@pytest.mark.parametrize(
    "name,kind,body",
    [
        ("deep.json", "json", "[" * 100_000 + "]" * 100_000),
        ("deep.html", "html", "<div>" * 20_000 + "x" + "</div>" * 20_000),
    ],
)
def test_deep_nesting_is_reported_as_such(tmp_path, name, kind, body):
    (tmp_path / name).write_text(body)
    with pytest.raises(Skipped, match="nested too deeply") as e:
        extract(tmp_path / name, kind)
    assert e.value.status == "failed"


def test_one_huge_line_is_chunked_in_linear_time():
    """16M characters with no sentence end: the old slicing copied the rest each cut (~30 s)."""
    text = "a" * 16_000_000
    t = time.perf_counter()
    pieces = chunk(Extracted([Page(text)], "prose"))
    assert time.perf_counter() - t < 12
    assert len(pieces) == 16_000_000 // 600 + 1  # 26,666 full pieces and a 400-char tail
    assert pieces[0].text == "a" * 600 and pieces[-1].text.endswith("a" * 400)


def test_corpus_links_out_of_the_folder_are_refused_and_reported(tmp_path, embedder):
    secret = tmp_path / "secret.txt"
    secret.write_text("the root password is hunter2")
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text(FACT)
    (root / "leak.md").symlink_to(secret)
    (root / "alias.md").symlink_to(root / "a.md")  # inside the folder: indexed as a.md
    (root / "sub" / "loop").symlink_to(root)  # a folder loop is not followed
    rep = build_index([root], tmp_path / "i.sqlite", base_dir=tmp_path, embedder=embedder)
    status = _status(rep)
    assert status["docs/a.md"][0] == "indexed"
    assert status["docs/leak.md"][0] == "refused"
    assert "outside the corpus folder" in status["docs/leak.md"][1]
    assert not any("secret" in p for p in status)
    idx = Index(tmp_path / "i.sqlite", embedder)
    assert not idx.search("root password", k=5, mode="keyword")
    assert {f["path"]: f["status"] for f in idx.stats()["files"]}["docs/leak.md"] == "refused"


def test_file_names_that_are_not_utf8_are_indexed_with_escaped_names(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"caf\xe9.md"), "wb") as f:
        f.write(FACT.encode())
    rep = build_index([root], tmp_path / "i.sqlite", base_dir=root, embedder=embedder)
    assert _status(rep) == {"caf\\xe9.md": ("indexed", "")}
    hits = Index(tmp_path / "i.sqlite", embedder).search("lantern glass warranty", k=1)
    assert hits[0].path == "caf\\xe9.md"


def test_oversized_and_unreadable_files_are_reported_not_dropped(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(index_mod, "MAX_FILE_BYTES", 10_000)
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text(FACT)
    (root / "huge.txt").write_text("x" * 20_000)
    (root / "nested.json").write_text("[" * 5000 + "]" * 5000)
    (root / "junk.md").write_bytes(os.urandom(4096))
    rep = build_index([root], tmp_path / "i.sqlite", base_dir=root, embedder=embedder)
    status = _status(rep)
    assert status["a.md"][0] == "indexed"
    assert (
        status["huge.txt"][0] == "refused" and "larger than 10,000 bytes" in status["huge.txt"][1]
    )
    assert status["nested.json"][0] in ("unsupported", "failed") and status["nested.json"][1]
    assert status["junk.md"][0] in ("unsupported", "failed", "empty", "indexed")
    assert {f.path for f in rep.skipped()} >= {"huge.txt", "nested.json"}
    again = build_index([root], tmp_path / "i.sqlite", base_dir=root, embedder=embedder)
    assert _status(again)["huge.txt"][0] == "refused"  # reported again, every build


# -- crafted index files --------------------------------------------------------------


def _crafted(tmp_path: Path, good: Path, *sql: str) -> Path:
    path = tmp_path / "crafted.sqlite"
    shutil.copy(good, path)
    conn = connect(path)
    for s in sql:
        conn.execute(s)
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    "sql,match",
    [
        (["DROP TABLE chunks"], "not a kolm index: chunks"),
        (["DROP TABLE chunk_text"], "not a kolm index: chunk_text"),
        (["UPDATE meta SET value = '{' WHERE key = 'chunking'"], "not a kolm index"),
        (["UPDATE meta SET value = '[1]' WHERE key = 'embedder'"], "not a kolm index"),
        (
            [  # a view that never ends: `stats()` on the old code looped forever
                "DROP TABLE files",
                "CREATE VIEW files AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                "SELECT x + 1 FROM c LIMIT 10) SELECT 'p' AS path, 'k' AS kind, 's' AS status, "
                "'r' AS reason, x AS chunks FROM c",
            ],
            "not a kolm index: files",
        ),
    ],
)
def test_crafted_index_is_refused_at_open(tmp_path, good_index, embedder, sql, match):
    with pytest.raises(RecallError, match=match):
        Index(_crafted(tmp_path, good_index, *sql), embedder)


def test_damaged_index_raises_recall_error_on_search(tmp_path, good_index, embedder):
    idx = Index(_crafted(tmp_path, good_index, "DELETE FROM chunks"), embedder)
    with pytest.raises(RecallError, match="is damaged"):
        idx.search("lantern warranty", k=2)
    idx = Index(_crafted(tmp_path, good_index, "UPDATE chunks SET text = X'6869'"), embedder)
    hits = idx.search("lantern warranty", k=2, mode="vector")  # blobs come back as text
    assert [h.text for h in hits] == ["hi", "hi"]
    idx = Index(_crafted(tmp_path, good_index, "UPDATE chunks SET text = X'FF00FE'"), embedder)
    with pytest.raises(RecallError, match="is damaged .*decode"):
        idx.search("lantern warranty", k=2, mode="vector")


@pytest.mark.parametrize(
    "data", [b"", b"not sqlite at all", b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_files_that_are_not_indexes_are_refused(tmp_path, embedder, data):
    (tmp_path / "x.sqlite").write_bytes(data)
    with pytest.raises(RecallError, match="not a kolm index"):
        Index(tmp_path / "x.sqlite", embedder)


# -- query text -----------------------------------------------------------------------

FTS5_SYNTAX = ['"', 'a" OR "b', "NEAR(", "NEAR(a b, 3)", "*", "a*", "OR", "AND NOT", "^x",
               "text:lantern", "{text}: x", "-x", "(", ")", "+", ":", "\x00", "ﬁ", "٣"]  # fmt: skip


@pytest.mark.parametrize("query", FTS5_SYNTAX)
def test_fts5_syntax_in_the_query_is_plain_text(good_index, embedder, query):
    idx = Index(good_index, embedder)
    for mode in ("keyword", "hybrid"):
        assert isinstance(idx.search(query, k=3, mode=mode), list)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_keyword_search_never_raises_on_any_text(good_index, embedder, query):
    idx = Index(good_index, embedder)
    hits = idx.search(query, k=3, mode="keyword")
    assert len(hits) <= 3


def test_keyword_query_with_many_words_is_bounded(good_index, embedder):
    """50,000 distinct words took 14 s (FTS5 is quadratic in OR terms); capped at 256."""
    idx = Index(good_index, embedder)
    words = " ".join(f"w{i}" for i in range(50_000)) + " lantern"
    t = time.perf_counter()
    idx.search(words, k=3, mode="keyword")
    assert time.perf_counter() - t < 3
    assert idx.search("lantern " + words, k=1, mode="keyword")[0].path == "a.md"


def test_summary_lists_refused_files(tmp_path, embedder):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text(FACT)
    (root / "out.md").symlink_to(tmp_path / "nowhere.md")  # dangling: not a file, left out
    (root / "leak.md").symlink_to(Path("/etc/hostname"))
    rep = build_index([root], tmp_path / "i.sqlite", base_dir=root, embedder=embedder)
    assert [s["path"] for s in rep.summary()["skipped"]] == ["leak.md"]
    assert json.dumps(rep.summary())  # the CLI prints it
    assert [n for _, n in collect([root], root)] == ["a.md", "leak.md"]
