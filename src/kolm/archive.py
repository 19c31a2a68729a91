"""Reading an untrusted zip with bounded work: the door every `.kolm` comes through.

Before any member is decompressed this module checks the archive's shape:
how many members, that every name is unique and a plain relative name, and
that no member claims an extreme compression ratio. Reads are capped by a
limit the caller gives (a small fixed one for the manifest and signatures, the
signed size for a part) and never trust the sizes the zip headers declare:
a read stops at limit + 1 bytes. Every error the zip and decompression
libraries raise on damaged input becomes an ArtifactError. It knows nothing
about manifests or signatures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kolm.errors import ArtifactError, KolmError

MAX_MEMBERS = 256
"""A compiled artifact has about ten members; thousands would only cost time."""
MAX_META_BYTES = 1 << 20
"""manifest.json, signature.json and model.sig are each a few kB; 1 MiB is ample."""
MAX_RATIO = 200
"""Largest uncompressed/compressed ratio accepted. Text and JSONL deflate ~3-20×;
deflate's ceiling is ~1032×, reached only by bombs and runs of one byte."""
MAX_DIRECTORY_BYTES = 1 << 20
"""Central directory size accepted (~100 bytes an entry); checked before it is parsed."""
RATIO_FLOOR = 1 << 16
"""Members smaller than this (uncompressed) skip the ratio check: they cost nothing."""
CHUNK = 1 << 20


@contextlib.contextmanager
def zip_errors(path: Path) -> Iterator[None]:
    """Turn whatever the zip/zlib/lzma/bz2 readers raise on damaged input into an ArtifactError."""
    try:
        yield
    except KolmError:
        raise
    except Exception as e:  # those readers raise many types on hostile input
        raise ArtifactError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e})",
            hint="copy it again from its source",
        ) from None


@contextlib.contextmanager
def open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The zip at `path`, opened only after its end record passes `check_end_record`."""
    with zip_errors(path), open(path, "rb") as f:
        check_end_record(f, path)
        with zipfile.ZipFile(f) as z:
            yield z


def check_end_record(f: BinaryIO, path: Path) -> None:
    """Refuse a declared member count or central directory size over the limits, before
    the zip reader builds an entry for every record (~500 bytes of memory each)."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return  # not a zip: the zip reader says so
    count, cd_size = struct.unpack("<HI", tail[at + 10 : at + 16])
    locator = tail[at - 20 : at] if at >= 20 else b""
    if locator[:4] == b"PK\x06\x07":  # zip64: the real figures are in its own end record
        (offset,) = struct.unpack("<Q", locator[8:16])
        f.seek(min(offset, size))
        record = f.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            count, cd_size = struct.unpack("<QQ", record[32:48])
    if count > MAX_MEMBERS or cd_size > MAX_DIRECTORY_BYTES:
        raise ArtifactError(
            f"{path} declares {count} members in a {cd_size}-byte directory; a .kolm has at "
            f"most {MAX_MEMBERS} members",
            hint="this is not an artifact kolm wrote; do not use it",
        )


def members(z: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """name → entry, after refusing too many members, unsafe or duplicate names, bombs."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArtifactError(
            f"{path} has {len(infos)} members; a .kolm has at most {MAX_MEMBERS}",
            hint="this is not an artifact kolm wrote; do not use it",
        )
    names = [i.orig_filename for i in infos]
    unsafe = [n for n in names if not safe_name(n)]
    if unsafe:
        raise ArtifactError(f"{path} has unsafe member names: {', '.join(map(repr, unsafe))}")
    dups = sorted(n for n, c in Counter(names).items() if c > 1)
    if dups:
        raise ArtifactError(
            f"{path} has duplicate members: {', '.join(dups)}",
            hint="zip tools disagree on which copy they use; kolm refuses such files",
        )
    for i in infos:
        if i.file_size > RATIO_FLOOR and i.file_size > MAX_RATIO * max(1, i.compress_size):
            raise ArtifactError(
                f"{path}: member {i.filename} would inflate {i.compress_size} bytes to "
                f"{i.file_size} (over {MAX_RATIO}×): refused as a zip bomb"
            )
    return {i.filename: i for i in infos}


def safe_name(name: object) -> bool:
    """A plain relative member name: no absolute path, `..`, backslash, NUL or empty part."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    return all(p not in ("", ".", "..") for p in name.split("/"))


def read_capped(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, what: str) -> bytes:
    """The member's bytes, refusing it (without inflating it) if it exceeds `cap`."""
    if info.file_size > cap:
        raise ArtifactError(f"{what} declares {info.file_size} bytes; at most {cap} are read")
    with z.open(info) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ArtifactError(f"{what} is larger than {cap} bytes")
    return data


def read_hashed(f: BinaryIO, size: int, keep: bool) -> tuple[str, int, bytes | None]:
    """(sha256, bytes read, the bytes if `keep`) reading at most `size` + 1 bytes."""
    h, n, kept = hashlib.sha256(), 0, [] if keep else None
    while n <= size and (block := f.read(min(CHUNK, size + 1 - n))):
        h.update(block)
        n += len(block)
        if kept is not None:
            kept.append(block)
    return h.hexdigest(), n, b"".join(kept) if kept is not None else None


def copy_checked(src: BinaryIO, dest: Path, sha: str, size: int | None, what: str) -> None:
    """Copy into `dest` atomically, hashing as it goes; leave nothing behind on a mismatch."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    h, n = hashlib.sha256(), 0
    limit = size + 1 if size is not None else None
    try:
        with open(tmp, "wb") as out:
            while block := src.read(CHUNK if limit is None else min(CHUNK, limit - n)):
                h.update(block)
                out.write(block)
                n += len(block)
        if h.hexdigest() != sha or (size is not None and n != size):
            raise ArtifactError(
                f"{what} changed since it was verified (sha256 or size differs)",
                hint="the file was replaced or damaged; verify it again with `kolm verify`",
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()
