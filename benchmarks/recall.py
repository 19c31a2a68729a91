"""Recall: indexing throughput, query latency at 10k/100k chunks vs brute force, recall@5.

    .venv/bin/python benchmarks/recall.py [--sizes 10000 100000] [--queries 200] [--docs 60]

1. Indexing: a synthetic Markdown corpus (--docs files of policy-like prose) is
   built into an index with the real packaged MiniLM embedder; reports chunks/s
   for the whole build and for embedding alone, then re-indexes the unchanged
   corpus and reports that nothing was embedded.
2. Latency: N random unit vectors (384 dims) with random-word texts go into an
   index with the same schema and the same queries `Index.search` runs;
   reports p50/p95 of the vector query (sqlite-vec) and of the hybrid query
   (vector + FTS5 + fusion, query embedding excluded), and of a brute-force
   NumPy scan of the same vectors for the same top-k (dot product + argpartition),
   with the ratio and the top-k overlap between the two.
3. Retrieval quality: recall@5 on the labelled fixture of the shipped example
   (examples/brindlewood-qa: each question names the file whose chunk holds the
   answer): a hit is a top-5 chunk from that file whose text contains the answer.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 384
TOPIC_WORDS = [
    "warranty",
    "frame",
    "battery",
    "refund",
    "courier",
    "invoice",
    "voucher",
    "rental",
    "deposit",
    "parcel",
    "store",
    "inspection",
    "motor",
    "paint",
    "wheel",
    "brake",
    "chain",
    "saddle",
    "helmet",
    "lock",
    "light",
    "tyre",
    "pump",
    "route",
]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def synthetic_docs(root: Path, n: int, rng: np.random.Generator) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sections = []
        for s in range(6):
            words = rng.choice(TOPIC_WORDS, size=3)
            paras = [
                " ".join(
                    f"The {w} policy number {i}-{s}-{p} applies to {rng.integers(2, 99)} cases."
                    for w in rng.choice(TOPIC_WORDS, size=4)
                )
                for p in range(3)
            ]
            sections.append(f"## {' '.join(words).title()}\n\n" + "\n\n".join(paras))
        (root / f"doc{i:03d}.md").write_text(f"# Handbook {i}\n\n" + "\n\n".join(sections))


def bench_indexing(docs: int, tmp: Path) -> dict:
    from kolm.recall import Embedder, build_index

    rng = np.random.default_rng(0)
    corpus = tmp / "corpus"
    synthetic_docs(corpus, docs, rng)
    t = time.perf_counter()
    emb = Embedder()
    emb.encode(["warm up"])
    load_s = time.perf_counter() - t
    out = tmp / "corpus.sqlite"
    rep = build_index([corpus], out, base_dir=corpus, embedder=emb)
    again = build_index([corpus], out, base_dir=corpus, embedder=emb)
    return {
        "files": docs,
        "chunks": rep.chunks_total,
        "embedder_load_s": round(load_s, 2),
        "build_s": round(rep.seconds, 2),
        "chunks_per_s_build": round(rep.chunks_total / rep.seconds, 1),
        "chunks_per_s_embed_only": round(rep.chunks_embedded / rep.embed_seconds, 1),
        "reindex_unchanged_s": round(again.seconds, 2),
        "reindex_chunks_embedded": again.chunks_embedded,
        "index_bytes": out.stat().st_size,
    }


class _FixedEmbedder:
    """Stands in for the model in the latency test: returns the query's prepared vector."""

    def __init__(self, info, table: dict[str, np.ndarray]):
        self.info, self.table = info, table

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts])


def synthetic_index(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    from kolm.recall.chunk import ChunkConfig
    from kolm.recall.embed import EmbedderInfo
    from kolm.recall.index import _prepare, connect

    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vocab = np.array([f"w{i}" for i in range(5000)])
    conn = connect(path)
    _prepare(conn, EmbedderInfo("synthetic", DIM, "0" * 64, False), ChunkConfig())
    batch = 5000
    for start in range(0, n, batch):
        rows = range(start, min(n, start + batch))
        texts = [" ".join(vocab[rng.zipf(1.3, 40) % 5000]) for _ in rows]
        conn.executemany(
            "INSERT INTO chunks(rowid, id, path, ordinal, ref, text) VALUES (?, ?, 'syn', ?, '', ?)",
            [(r + 1, f"c{r}", r, t) for r, t in zip(rows, texts, strict=True)],
        )
        conn.executemany(
            "INSERT INTO chunk_text(rowid, text) VALUES (?, ?)",
            [(r + 1, t) for r, t in zip(rows, texts, strict=True)],
        )
        conn.executemany(
            "INSERT INTO chunk_vectors(rowid, embedding) VALUES (?, ?)",
            [(r + 1, vecs[r].tobytes()) for r in rows],
        )
        conn.commit()
    conn.close()
    return vecs


def bench_latency(n: int, queries: int, k: int, tmp: Path) -> dict:
    from kolm.recall import Index
    from kolm.recall.embed import EmbedderInfo

    rng = np.random.default_rng(n)
    path = tmp / f"syn{n}.sqlite"
    t = time.perf_counter()
    vecs = synthetic_index(path, n, rng)
    build_s = time.perf_counter() - t
    qs = rng.standard_normal((queries, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    words = [f"w{i} w{i * 7 % 5000} w{i * 13 % 5000}" for i in range(queries)]
    table = dict(zip(words, qs, strict=True))
    info = EmbedderInfo("synthetic", DIM, "0" * 64, False)
    idx = Index(path, embedder=_FixedEmbedder(info, table))  # type: ignore[arg-type]

    vec_ms, hyb_ms, np_ms, overlap = [], [], [], []
    for text, q in zip(words, qs, strict=True):
        t = time.perf_counter()
        got = [r for r, _ in idx._vector(text, k)]
        vec_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        idx.search(text, k=k, mode="hybrid")
        hyb_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])] + 1
        np_ms.append((time.perf_counter() - t) * 1000)
        overlap.append(len(set(got) & set(top.tolist())) / k)
    idx.close()
    return {
        "chunks": n,
        "k": k,
        "queries": queries,
        "build_s": round(build_s, 1),
        "index_bytes": path.stat().st_size,
        "vector_p50_ms": round(pct(vec_ms, 50), 2),
        "vector_p95_ms": round(pct(vec_ms, 95), 2),
        "hybrid_p50_ms": round(pct(hyb_ms, 50), 2),
        "hybrid_p95_ms": round(pct(hyb_ms, 95), 2),
        "numpy_p50_ms": round(pct(np_ms, 50), 2),
        "numpy_p95_ms": round(pct(np_ms, 95), 2),
        "sqlite_vec_over_numpy_p50": round(pct(vec_ms, 50) / pct(np_ms, 50), 2),
        "topk_overlap_with_numpy": round(statistics.mean(overlap), 4),
    }


def bench_recall_at_k(example: Path, k: int, tmp: Path) -> dict:
    from kolm.recall import Embedder, Index, build_index

    rows = [json.loads(x) for x in (example / "qa.jsonl").read_text().splitlines() if x.strip()]
    docs = example / "docs"
    out = tmp / "example.sqlite"
    emb = Embedder()
    build_index([docs], out, base_dir=docs, embedder=emb)
    idx = Index(out, emb)
    result = {"questions": len(rows), "chunks": idx.stats()["chunks"], "k": k}
    for mode in ("hybrid", "vector", "keyword"):
        found = 0
        for r in rows:
            hits = idx.search(r["input"], k=k, mode=mode)
            found += any(
                h.path == r["source"] and r["output"].lower() in h.text.lower() for h in hits
            )
        result[f"recall_at_{k}_{mode}"] = round(found / len(rows), 4)
    idx.close()
    return result


def bench_base_grounding(spec_path: Path) -> dict:
    """The untrained base on the example's held-out questions, with and without retrieved chunks.

    Same split, prompt, decoding and retrieval as `kolm compile` (no training: a lower bound
    on what grounding adds before the student learns to read its context)."""
    from kolm.basemodel import resolve
    from kolm.data import load_examples, split_heldout
    from kolm.evaluate import normalize
    from kolm.prompt import format_from_gguf
    from kolm.recall import ChunkConfig, Embedder, Index, build_index
    from kolm.recall.ground import Grounder
    from kolm.runtime import Decoding, Student
    from kolm.spec import load_spec

    spec = load_spec(spec_path)
    _, held = split_heldout(load_examples(spec.examples), spec.heldout_fraction, spec.seed)
    base = resolve(spec.base)
    r = spec.recall
    with tempfile.TemporaryDirectory() as d:
        emb = Embedder(r.embedder)
        out = Path(d) / "i.sqlite"
        build_index(
            spec.corpus,
            out,
            base_dir=spec_path.parent,
            embedder=emb,
            cfg=ChunkConfig(r.chunk_chars, r.overlap_chars),
        )
        g = Grounder(Index(out, emb), r.k, r.mode)
        student = Student(
            base.gguf,
            None,
            format_from_gguf(base.gguf),
            spec.description,
            Decoding(max_tokens=16, threads=1, n_ctx=spec.run.n_ctx),
        )
        res = {"heldout": len(held)}
        for name, ctx in (("without_context", lambda _x: []), ("with_context", g.context)):
            ok = sum(
                normalize(student.answer(e.input, ctx(e.input)).output) == normalize(e.output)
                for e in held
            )
            res[f"base_accuracy_{name}"] = round(ok / len(held), 4)
        student.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--docs", type=int, default=60, help="synthetic files for the indexing test")
    ap.add_argument("--example", type=Path, default=REPO / "examples" / "brindlewood-qa")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--base-grounding",
        action="store_true",
        help="only: the untrained base on the example's held-out split, with/without chunks",
    )
    args = ap.parse_args()
    if args.base_grounding:
        print(json.dumps(bench_base_grounding(args.example / "kolm.yaml")))
        return
    import os

    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["indexing"] = bench_indexing(args.docs, tmp)
        print(json.dumps({"indexing": results["indexing"]}), flush=True)
        results["latency"] = []
        for n in args.sizes:
            results["latency"].append(bench_latency(n, args.queries, args.k, tmp))
            print(json.dumps({"latency": results["latency"][-1]}), flush=True)
        results["retrieval"] = bench_recall_at_k(args.example, args.k, tmp)
        print(json.dumps({"retrieval": results["retrieval"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
