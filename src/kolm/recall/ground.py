"""Grounding: the top-k chunks for an input, as the prompt shows them, with their ids.

Compile and run both ground through a `Grounder`, so the same question over the
same index yields the same chunks in the same order (queries are embedded one
at a time, ties broken by insertion order), and the ids recorded in a receipt
bring back exactly what the model was shown. Knows the index and the chunk
format; knows nothing about prompts, tokenizers or models (`kolm.prompt` puts
these strings into the user turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kolm.recall.embed import EmbedderInfo, embedder_for
from kolm.recall.index import Hit, Index

INDEX_PART = "index.sqlite"
"""The artifact part that holds the index."""


@dataclass
class Grounder:
    """Retrieves and remembers the chunks for each input."""

    index: Index
    k: int = 3
    mode: str = "hybrid"
    _seen: dict[str, list[Hit]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls, path: Path, info: EmbedderInfo, k: int, mode: str, embedder: str | Path | None = None
    ) -> Grounder:
        """An index file queried with the embedder that built it (checked by hash)."""
        return cls(Index(path, embedder_for(info, embedder)), k, mode)

    def hits(self, text: str) -> list[Hit]:
        if text not in self._seen:
            self._seen[text] = self.index.search(text, k=self.k, mode=self.mode)
        return self._seen[text]

    def context(self, text: str) -> list[str]:
        """The chunks as the prompt shows them (source line, then text)."""
        return [h.formatted() for h in self.hits(text)]

    def ids(self, text: str) -> list[str]:
        return [h.id for h in self.hits(text)]

    def contexts(self, texts: Sequence[str]) -> list[list[str]]:
        return [self.context(t) for t in texts]

    def by_ids(self, ids: Sequence[str]) -> list[str]:
        """The chunks a receipt recorded, formatted as they were shown."""
        return [h.formatted() for h in self.index.get(ids)]

    def close(self) -> None:
        self.index.close()
