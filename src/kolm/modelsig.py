"""OpenSSF model signing: an in-toto statement of file digests in a DSSE envelope.

A `.kolm` carries, besides kolm's own `signature.json`, a member `model.sig` in
the layout the OpenSSF model-signing project (sigstore/model-transparency) uses
for key-based signatures: a Sigstore bundle (v0.3 JSON) whose `dsseEnvelope`
holds an in-toto Statement v1 with the `https://model_signing/signature/v1.0`
predicate. The predicate lists every other member of the archive (name,
sha256); the statement's one subject is the sha256 over those digests in name
order. The envelope is signed with Ed25519 over DSSE's PAE encoding by the same
key as `signature.json`; the bundle names the key by the sha256 of its PEM.

This module builds, signs and checks that envelope, and verifies a directory of
extracted files against it. It knows nothing about zips or manifests: it maps
names to digests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from kolm.errors import SignatureError
from kolm.keys import KeyStore, key_id, public_pem

MODEL_SIG = "model.sig"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SERIALIZATION = {
    "method": "files",
    "hash_type": "sha256",
    "allow_symlinks": False,
    "ignore_paths": [MODEL_SIG],
}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def root_digest(digests: dict[str, str]) -> str:
    """sha256 over the raw digests in name order (the statement's subject digest)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(bytes.fromhex(digests[name]))
    return h.hexdigest()


def statement(model_name: str, digests: dict[str, str]) -> dict:
    """The in-toto Statement v1 listing each file's sha256."""
    resources = [
        {"name": name, "algorithm": "sha256", "digest": digests[name]} for name in sorted(digests)
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(digests)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": dict(SERIALIZATION), "resources": resources},
    }


def key_hint(public_raw: bytes) -> str:
    """How a model-signing bundle names its key: sha256 (hex) of the PEM public key."""
    return hashlib.sha256(public_pem(public_raw).encode()).hexdigest()


def sign_bundle(model_name: str, digests: dict[str, str], keys: KeyStore) -> bytes:
    """The bytes of `model.sig`: a bundle holding the signed DSSE envelope."""
    payload = json.dumps(statement(model_name, digests), sort_keys=True).encode()
    raw = keys.public_raw()
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [
            {
                "sig": base64.b64encode(keys.sign_raw(pae(PAYLOAD_TYPE, payload))).decode(),
                "keyid": key_id(raw),
            }
        ],
    }
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(raw)}, "tlogEntries": []},
        "dsseEnvelope": envelope,
    }
    return json.dumps(bundle, indent=2, sort_keys=True).encode()


def open_bundle(data: bytes, public_raw: bytes) -> dict[str, str]:
    """Check `model.sig`'s signature with this key; return name → sha256 it vouches for."""
    bundle = _json(data, "model.sig")
    envelope = bundle.get("dsseEnvelope")
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE or not isinstance(envelope, dict):
        raise SignatureError("model.sig is not a model-signing bundle (v0.3 with a DSSE envelope)")
    material = bundle.get("verificationMaterial")
    key = material.get("publicKey") if isinstance(material, dict) else None
    hint = key.get("hint") if isinstance(key, dict) else None
    if hint is not None and hint != key_hint(public_raw):
        raise SignatureError("model.sig names a different key than signature.json")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"model.sig: payloadType is not {PAYLOAD_TYPE}")
    payload = _b64(envelope.get("payload"), "payload")
    if not _signed_by(envelope.get("signatures"), pae(PAYLOAD_TYPE, payload), public_raw):
        raise SignatureError(
            "model.sig: the DSSE signature does not match its statement",
            hint="the statement was changed after signing; do not use this file",
        )
    return statement_digests(_json(payload, "model.sig statement"))


def _signed_by(signatures: object, message: bytes, public_raw: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("model.sig: the DSSE envelope has no signatures")
    public = Ed25519PublicKey.from_public_bytes(public_raw)
    for s in signatures:
        if not isinstance(s, dict) or (s.get("keyid") or key_id(public_raw)) != key_id(public_raw):
            continue
        try:
            public.verify(_b64(s.get("sig"), "sig"), message)
            return True
        except InvalidSignature:
            continue
    return False


def statement_digests(st: object) -> dict[str, str]:
    """name → sha256 from a verified statement, after checking its shape and subject."""
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"model.sig: the payload is not an in-toto {STATEMENT_TYPE}")
    if st.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"model.sig: predicateType is not {PREDICATE_TYPE}")
    digests: dict[str, str] = {}
    try:
        for r in st["predicate"]["resources"]:
            name, digest = r["name"], r["digest"]
            if r["algorithm"] != "sha256" or not isinstance(name, str) or name in digests:
                raise ValueError(name)
            if len(bytes.fromhex(digest)) != 32:
                raise ValueError(digest)
            digests[name] = digest.lower()
        (subject,) = st["subject"]
        subject_digest = subject["digest"]["sha256"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SignatureError("model.sig: the statement's resources are malformed") from None
    if subject_digest != root_digest(digests):
        raise SignatureError("model.sig: the subject digest does not match the resources")
    return digests


def diff(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """`missing: …`, `extra: …`, `changed: …` lines between two name → digest maps."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(n for n in set(want) & set(got) if want[n] != got[n])
    lines = [f"missing: {', '.join(missing)}"] * bool(missing)
    lines += [f"extra: {', '.join(extra)}"] * bool(extra)
    lines += [f"changed: {', '.join(changed)}"] * bool(changed)
    return lines


def verify_directory(root: Path, public_key_pem: str) -> dict[str, str]:
    """Verify an extracted `.kolm` (a folder holding `model.sig`) the way a
    model-signing pipeline does: check the envelope with the PEM public key, hash
    every file, and compare. Returns the verified name → sha256; raises SignatureError."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = s.load_pem_public_key(public_key_pem.encode())
    if not isinstance(public, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    raw = public.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    root = Path(root)
    want = open_bundle((root / MODEL_SIG).read_bytes(), raw)
    got = {
        p.relative_to(root).as_posix(): _file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MODEL_SIG
    }
    problems = diff(want, got)
    if problems:
        raise SignatureError(f"{root} does not match model.sig — " + "; ".join(problems))
    return want


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise SignatureError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignatureError(f"{what} is not a JSON object")
    return obj


def _b64(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True) if value is not None else b""
    except ValueError:
        raise SignatureError(f"model.sig: {what} is not base64") from None
