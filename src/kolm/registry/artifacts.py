"""`.kolm` files as OCI artifacts: publish, pull (verified before it lands), and referrers.

An artifact is one OCI image manifest with kolm's `artifactType`, the empty
config, and one layer: the whole `.kolm` file, so a pull is byte-identical.
Annotations say task, base, K (and its formula), signer key id, format version,
artifact id and creation time. A pull streams the layer to a temporary file,
checks its digest, runs the full `open_artifact` verification (signature, trust,
every part), and only then moves it into place. Held-out metrics (`--with-eval`)
and receipts checkpoints travel as referrers (`subject` = the artifact manifest).
It knows OCI through `client`, and artifacts through `kolm.artifact`; nothing of
training or inference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from kolm.artifact import MANIFEST, SIGNATURE, Artifact, open_artifact, utc_now
from kolm.errors import ArtifactError, RegistryError, SignatureError
from kolm.keys import KeyStore
from kolm.registry.auth import Credentials
from kolm.registry.client import CHUNK, MAX_JSON_BYTES, OCI_MANIFEST, Client, sha256_digest
from kolm.registry.refs import Ref, parse_ref

ARTIFACT_TYPE = "application/vnd.kolm.artifact.v1"
LAYER_TYPE = "application/vnd.kolm.artifact.v1+zip"
EVAL_TYPE = "application/vnd.kolm.eval.v1+json"
CHECKPOINT_TYPE = "application/vnd.kolm.receipts.checkpoint.v1"
CHECKPOINT_LAYER = "application/vnd.kolm.receipts.checkpoint.v1+text"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EVAL_FORMAT = "kolm.eval/v1"
A = "vnd.kolm."
"""Prefix of kolm's manifest annotations."""
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
PROGRESS_MIN_BYTES = 8 << 20
_SAFE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.kolm")


@dataclass(frozen=True)
class PushResult:
    ref: str
    digest: str
    """The manifest's digest: `REGISTRY/NAME@DIGEST` pins exactly this artifact."""
    size: int
    uploaded: bool
    """False when the registry already held the file's blob (nothing was sent)."""
    seconds: float
    annotations: dict[str, str]
    eval_digest: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PullResult:
    ref: str
    digest: str
    out: str
    size: int
    artifact_id: str
    signed_by: str
    trust: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _ref(ref: str | Ref) -> Ref:
    return ref if isinstance(ref, Ref) else parse_ref(ref)


# -- push -------------------------------------------------------------------------
def publish(
    artifact_path: str | Path,
    ref: str | Ref,
    *,
    with_eval: bool = False,
    insecure: bool = False,
    credentials: Credentials | None = None,
    keys: KeyStore | None = None,
    progress: bool = False,
    chunk_bytes: int | None = None,
) -> PushResult:
    """Verify ARTIFACT, then push it to REF (a tag); with_eval adds its metrics as a referrer.

    chunk_bytes uploads the file in PATCHes of that size instead of one PUT."""
    ref, keys, path = _ref(ref), keys or KeyStore(), Path(artifact_path)
    if ref.digest:
        raise RegistryError(f"push to a tag, not a digest: {ref}", hint="e.g. REGISTRY/NAME:v1")
    t0 = time.perf_counter()
    art = open_artifact(path, keys)  # never publish what does not verify here
    eval_doc = eval_document(path, art) if with_eval else None
    layer_digest, size = _file_digest(path), path.stat().st_size
    with Client(ref, insecure, credentials) as c:
        body = functools.partial(_chunks, path, size, progress, "push")
        uploaded = c.push_blob(layer_digest, size, body, chunk_bytes)
        c.push_bytes(EMPTY)
        annotations = artifact_annotations(art)
        layer = {
            "mediaType": LAYER_TYPE,
            "digest": layer_digest,
            "size": size,
            "annotations": {TITLE: _title(path)},
        }
        data = _dumps(_manifest(ARTIFACT_TYPE, [layer], annotations))
        digest, _ = c.put_manifest(ref.reference, data, OCI_MANIFEST)
        subject = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data)}
        eval_digest = None
        if eval_doc is not None:
            eval_digest = _push_referrer(
                c,
                subject,
                EVAL_TYPE,
                EVAL_TYPE,
                eval_doc,
                {CREATED: utc_now(), A + "artifact.id": art.id},
            )
    return PushResult(
        str(ref),
        digest,
        size,
        uploaded,
        round(time.perf_counter() - t0, 3),
        annotations,
        eval_digest,
    )


def artifact_annotations(art: Artifact) -> dict[str, str]:
    """What a registry shows about an artifact without anyone pulling it."""
    m = art.manifest
    notes = {
        CREATED: utc_now(),
        A + "task": m["task"]["name"],
        A + "base": m["base"]["name"],
        A + "signer": art.verified.key_id,
        A + "format.version": str(m["format_version"]),
        A + "artifact.id": art.id,
    }
    k = m.get("kscore")
    if isinstance(k, dict) and isinstance(k.get("K"), int | float):
        from kolm.report import formula_label

        notes[A + "k"] = f"{k['K']:.4f}"
        notes[A + "k.formula"] = formula_label(k)
    return notes


def _manifest(artifact_type: str, layers: list[dict], annotations: dict, subject=None) -> dict:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_TYPE, "digest": sha256_digest(EMPTY), "size": len(EMPTY)},
        "layers": layers,
        "annotations": annotations,
    }
    if subject is not None:
        doc["subject"] = subject
    return doc


def _push_referrer(
    c: Client, subject: dict, artifact_type: str, media: str, payload: bytes, notes: dict
) -> str:
    """Push `payload` as a referrer of `subject`; keep the fallback tag when the registry
    does not index referrers itself (it answers without an `OCI-Subject` header)."""
    c.push_bytes(EMPTY)
    layer = {"mediaType": media, "digest": c.push_bytes(payload), "size": len(payload)}
    data = _dumps(_manifest(artifact_type, [layer], notes, subject))
    digest, headers = c.put_manifest(sha256_digest(data), data, OCI_MANIFEST)
    if not {k.lower() for k in headers} & {"oci-subject"}:
        c.add_fallback_referrer(
            subject["digest"],
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(data),
                "artifactType": artifact_type,
                "annotations": notes,
            },
        )
    return digest


# -- pull -------------------------------------------------------------------------
def pull(
    ref: str | Ref,
    out: str | Path | None = None,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    keys: KeyStore | None = None,
    progress: bool = False,
) -> PullResult:
    """Download REF, verify it completely, and only then move it to OUT (atomically)."""
    ref, keys = _ref(ref), keys or KeyStore()
    t0 = time.perf_counter()
    with Client(ref, insecure, credentials) as c:
        doc, _, digest, _ = c.get_manifest_json(ref.reference)
        layer = _kolm_layer(doc, ref)
        dest = Path(out) if out else Path(_file_name(layer, ref))
        if dest.is_dir():
            raise RegistryError(f"{dest} is a folder", hint=f"give a file: --out {dest}/NAME.kolm")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _partial(dest) as tmp:
            with open(tmp, "wb") as f, _bar(layer["size"], progress, "pull") as bar:
                c.fetch_blob(layer["digest"], layer["size"], f, bar)
                f.flush()
                os.fsync(f.fileno())
            art = _verify(tmp, ref, doc, keys)
            os.replace(tmp, dest)
    v = art.verified
    return PullResult(
        str(ref),
        digest,
        str(dest),
        layer["size"],
        art.id,
        v.key_id,
        v.trust,
        round(time.perf_counter() - t0, 3),
    )


def _kolm_layer(doc: dict, ref: Ref) -> dict:
    kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
    if kind != ARTIFACT_TYPE:
        raise RegistryError(
            f"{ref} is not a kolm artifact (its type is {kind!r})",
            hint="push one with `kolm push ARTIFACT REF`",
        )
    layers = doc.get("layers")
    ok = isinstance(layers, list) and len(layers) == 1 and isinstance(layers[0], dict)
    layer = layers[0] if ok else {}
    if not ok or layer.get("mediaType") != LAYER_TYPE or not _is_size(layer.get("size")):
        raise RegistryError(f"{ref}: the manifest must hold exactly one {LAYER_TYPE} layer")
    if not isinstance(layer.get("digest"), str):
        raise RegistryError(f"{ref}: the layer has no digest")
    return layer


def _is_size(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _file_name(layer: dict, ref: Ref) -> str:
    title = Path(str((layer.get("annotations") or {}).get(TITLE, ""))).name
    return title if _SAFE_FILE.fullmatch(title) else ref.name.rsplit("/", 1)[-1] + ".kolm"


@contextmanager
def _partial(dest: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _verify(tmp: Path, ref: Ref, doc: dict, keys: KeyStore) -> Artifact:
    """The full `kolm verify` of the pulled bytes; errors name the ref, not the temp file."""
    try:
        art = open_artifact(tmp, keys)
    except ArtifactError as e:
        message = e.message.replace(str(tmp), "the pulled file")
        raise type(e)(f"refused {ref}: {message}; nothing was written", hint=e.hint) from None
    said = (doc.get("annotations") or {}).get(A + "artifact.id")
    if said is not None and said != art.id:
        raise ArtifactError(
            f"refused {ref}: its annotations name artifact {said[:16]}…, the file is {art.id[:16]}…",
            hint="the registry's manifest was altered; nothing was written",
        )
    return art


# -- referrers: held-out metrics and receipts checkpoints --------------------------
def eval_document(path: Path, art: Artifact) -> bytes:
    """The signed manifest (exact bytes) and signature, plus a readable summary of them."""
    summary = eval_summary(art.manifest)
    if summary["metrics"] is None and summary["kscore"] is None:
        raise ArtifactError(
            f"{path} records no held-out metrics or K to publish",
            hint="push without --with-eval, or compile it with held-out examples",
        )
    with zipfile.ZipFile(path) as z:
        body, sig = z.read(MANIFEST), z.read(SIGNATURE)
    if hashlib.sha256(body).hexdigest() != art.id:
        raise ArtifactError(f"{path} changed while it was being pushed")
    doc = {
        "format": EVAL_FORMAT,
        "artifact_id": art.id,
        "summary": summary,
        "manifest": body.decode(),
        "signature": json.loads(sig),
    }
    return _dumps(doc)


def eval_summary(m: dict) -> dict:
    return {
        "task": m["task"]["name"],
        "base": m["base"]["name"],
        "metrics": m.get("metrics"),
        "kscore": m.get("kscore"),
        "gate": m.get("gate"),
    }


def read_eval(
    ref: str | Ref,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    keys: KeyStore | None = None,
) -> dict:
    """The newest `--with-eval` referrer of REF, its signature checked; no model is pulled."""
    ref, keys = _ref(ref), keys or KeyStore()
    with Client(ref, insecure, credentials) as c:
        subject = _subject(c, ref)
        found = _newest(c.referrers(subject["digest"], EVAL_TYPE))
        if found is None:
            raise RegistryError(
                f"{ref} has no published metrics", hint="push it with `kolm push --with-eval`"
            )
        payload = _referrer_payload(c, found, EVAL_TYPE, subject["digest"])
    return {
        "ref": str(ref),
        "subject": subject["digest"],
        "referrer": found["digest"],
        **_check_eval(payload, ref, keys),
    }


def _check_eval(payload: bytes, ref: Ref, keys: KeyStore) -> dict:
    try:
        doc = json.loads(payload)
        body = doc["manifest"].encode()
        sig = doc["signature"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryError(
            f"{ref}: the published metrics are not a {EVAL_FORMAT} document"
        ) from None
    try:
        verified = keys.verify(body, sig)
    except SignatureError as e:
        raise SignatureError(
            f"refused the metrics published for {ref}: {e.message}", e.hint
        ) from None
    try:
        manifest = json.loads(body)
        summary = eval_summary(manifest)
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{ref}: the published manifest is not a kolm manifest") from None
    artifact_id = hashlib.sha256(body).hexdigest()
    if doc.get("artifact_id") != artifact_id or doc.get("summary") != summary:
        raise ArtifactError(
            f"refused the metrics published for {ref}: they disagree with "
            "the signed manifest they carry"
        )
    return {
        "artifact_id": artifact_id,
        "signed_by": verified.key_id,
        "trust": verified.trust,
        **summary,
    }


def push_checkpoint(
    ref: str | Ref,
    note: str,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
) -> str:
    """Publish a signed receipts checkpoint as a referrer of REF; its manifest digest."""
    ref = _ref(ref)
    header = note.split("\n")
    notes = {CREATED: utc_now()}
    if len(header) > 3:
        notes |= {
            A + "receipts.log": header[1],
            A + "receipts.count": header[2],
            A + "receipts.head": header[3],
        }
    with Client(ref, insecure, credentials) as c:
        subject = _subject(c, ref)
        return _push_referrer(c, subject, CHECKPOINT_TYPE, CHECKPOINT_LAYER, note.encode(), notes)


def read_checkpoints(
    ref: str | Ref,
    *,
    insecure: bool = False,
    credentials: Credentials | None = None,
    limit: int = 100,
) -> list[dict]:
    """The newest `limit` receipts checkpoints published for REF, oldest first."""
    ref = _ref(ref)
    out = []
    with Client(ref, insecure, credentials) as c:
        subject = _subject(c, ref)
        found = c.referrers(subject["digest"], CHECKPOINT_TYPE)
        for d in sorted(found, key=_created)[-limit:]:
            text = _referrer_payload(c, d, CHECKPOINT_TYPE, subject["digest"])
            out.append(
                {
                    "referrer": d["digest"],
                    "created": _created(d),
                    "text": text.decode("utf-8", "replace"),
                }
            )
    return out


def list_referrers(
    ref: str | Ref, *, insecure: bool = False, credentials: Credentials | None = None
) -> list[dict]:
    ref = _ref(ref)
    with Client(ref, insecure, credentials) as c:
        return c.referrers(_subject(c, ref)["digest"])


def _subject(c: Client, ref: Ref) -> dict:
    doc, _, digest, size = c.get_manifest_json(ref.reference)
    _kolm_layer(doc, ref)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}


def _newest(found: list[dict]) -> dict | None:
    return max(found, key=_created) if found else None


def _created(d: dict) -> str:
    return str((d.get("annotations") or {}).get(CREATED, ""))


def _referrer_payload(c: Client, d: dict, artifact_type: str, subject: str) -> bytes:
    """The single small layer of a referrer, after checking it is what the index says."""
    doc, _, _, _ = c.get_manifest_json(str(d.get("digest")))
    layers = doc.get("layers")
    if (
        doc.get("artifactType") != artifact_type
        or (doc.get("subject") or {}).get("digest") != subject
        or not isinstance(layers, list)
        or len(layers) != 1
        or not isinstance(layers[0], dict)
        or not _is_size(layers[0].get("size"))
    ):
        raise RegistryError(f"referrer {d.get('digest')} is not a {artifact_type} of {subject}")
    return c.fetch_small(str(layers[0].get("digest")), layers[0]["size"], MAX_JSON_BYTES)


# -- files and progress -------------------------------------------------------------
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _chunks(path: Path, size: int, progress: bool, desc: str):
    with open(path, "rb") as f, _bar(size, progress, desc) as bar:
        while chunk := f.read(CHUNK):
            bar(len(chunk))
            yield chunk


@contextmanager
def _bar(total: int, progress: bool, desc: str):
    """A byte progress bar on stderr for big transfers; yields an `advance(n)` callable."""
    if not progress or total < PROGRESS_MIN_BYTES:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False) as t:
        yield t.update


def _title(path: Path) -> str:
    return path.name if _SAFE_FILE.fullmatch(path.name) else "artifact.kolm"


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
