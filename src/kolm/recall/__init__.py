"""Recall: a user's corpus becomes a searchable index that grounds prompts.

One module per concern: `detect` (what a file is, by content), `extract` (its
text, by kind), `chunk` (structure-aware pieces with sources), `embed` (offline
vectors), `index` (sqlite-vec + FTS5, hybrid search). Importing this package
loads none of torch, sentence-transformers or Magika; they load on first use.
"""

from kolm.recall.chunk import Chunk, ChunkConfig
from kolm.recall.embed import DEFAULT_EMBEDDER, Embedder, EmbedderInfo
from kolm.recall.index import FileReport, Hit, Index, IndexReport, build_index

__all__ = [
    "DEFAULT_EMBEDDER",
    "Chunk",
    "ChunkConfig",
    "Embedder",
    "EmbedderInfo",
    "FileReport",
    "Hit",
    "Index",
    "IndexReport",
    "build_index",
]
