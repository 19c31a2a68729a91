"""Local signing keys: an Ed25519 pair and an HMAC secret under the user's config dir.

This module makes keys on first use, signs bytes, checks signatures against the
set of trusted public keys, rotates, exports and imports public keys. It knows
nothing about artifacts beyond "bytes to sign".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from kolm.errors import KolmError, SignatureError


def kolm_home() -> Path:
    """`$KOLM_HOME`, else `$XDG_CONFIG_HOME/kolm`, else `~/.config/kolm`."""
    if os.environ.get("KOLM_HOME"):
        return Path(os.environ["KOLM_HOME"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "kolm"


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verified:
    """What a signature check established."""

    key_id: str
    trust: str
    """`own` (this machine's current key), `own-retired`, or `trusted` (imported)."""
    hmac: str
    """`ok` when the local HMAC key made it, `not-local` when made elsewhere."""


class KeyStore:
    """The keys under one directory (default: `kolm_home()/keys`)."""

    def __init__(self, home: Path | None = None):
        self.dir = (home or kolm_home()) / "keys"

    # -- creation ---------------------------------------------------------------
    def ensure(self) -> None:
        """Create the key pair and HMAC secret if they do not exist yet."""
        if (self.dir / "signing.key").exists():
            return
        self._write_new_pair()

    def _write_new_pair(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "trusted").mkdir(exist_ok=True)
        private = Ed25519PrivateKey.generate()
        _write_secret(self.dir / "signing.key", _private_raw(private).hex().encode())
        if not (self.dir / "hmac.key").exists():
            _write_secret(self.dir / "hmac.key", secrets.token_hex(32).encode())

    # -- reading ----------------------------------------------------------------
    def _private(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.ensure()
        raw = bytes.fromhex((self.dir / "signing.key").read_text().strip())
        return Ed25519PrivateKey.from_private_bytes(raw)

    def public_raw(self) -> bytes:
        return _public_raw(self._private().public_key())

    def key_id(self) -> str:
        return key_id(self.public_raw())

    def _hmac_key(self) -> bytes:
        self.ensure()
        return bytes.fromhex((self.dir / "hmac.key").read_text().strip())

    def hmac_id(self) -> str:
        return hashlib.sha256(b"kolm-hmac-id" + self._hmac_key()).hexdigest()[:16]

    def trusted(self) -> dict[str, str]:
        """key id → trust kind, for every key this machine accepts."""
        found = {self.key_id(): "own"}
        for kind, folder in (("own-retired", "retired"), ("trusted", "trusted")):
            for p in sorted((self.dir / folder).glob("*.pub")):
                raw = _decode_public(p.read_text())
                found.setdefault(key_id(raw), kind)
        return found

    # -- signing ----------------------------------------------------------------
    def sign(self, data: bytes) -> dict[str, str]:
        private = self._private()
        return {
            "algorithm": "ed25519",
            "key_id": key_id(_public_raw(private.public_key())),
            "public_key": base64.b64encode(_public_raw(private.public_key())).decode(),
            "signature": base64.b64encode(private.sign(data)).decode(),
            "hmac_sha256": self.mac(data),
            "hmac_key_id": self.hmac_id(),
        }

    def sign_raw(self, data: bytes) -> bytes:
        """A bare Ed25519 signature over `data` (for envelopes that carry their own framing)."""
        return self._private().sign(data)

    def mac(self, data: bytes) -> str:
        return hmac.new(self._hmac_key(), data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, sig: dict) -> Verified:
        """Check a signature document over `data`; raise SignatureError if it fails."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            raw = base64.b64decode(sig["public_key"], validate=True)
            signature = base64.b64decode(sig["signature"], validate=True)
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
        except (KeyError, TypeError, ValueError):
            raise SignatureError("the signature block is malformed") from None
        except InvalidSignature:
            raise SignatureError(
                "the signature does not match the manifest: the artifact was changed after signing"
            ) from None
        kid = key_id(raw)
        trust = self.trusted().get(kid)
        if trust is None:
            raise SignatureError(
                f"signed by key {kid}, which this machine does not trust",
                hint="if you trust its maker, get their public key (`kolm keys export`) "
                "and run `kolm keys trust THEIR_KEY.pub`",
            )
        mac_state = "not-local"
        if sig.get("hmac_key_id") == self.hmac_id():
            if not hmac.compare_digest(self.mac(data), str(sig.get("hmac_sha256", ""))):
                raise SignatureError("the HMAC does not match the manifest")
            mac_state = "ok"
        return Verified(kid, trust, mac_state)

    # -- management -------------------------------------------------------------
    def export_public(self) -> str:
        b64 = base64.b64encode(self.public_raw()).decode()
        return f"kolm-ed25519 {b64} {self.key_id()}\n"

    def export_public_pem(self) -> str:
        """The public key as PEM (SubjectPublicKeyInfo), for verifiers outside kolm."""
        return public_pem(self.public_raw())

    def trust(self, text: str) -> str:
        raw = _decode_public(text)
        kid = key_id(raw)
        folder = self.dir / "trusted"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{kid}.pub").write_text(f"kolm-ed25519 {base64.b64encode(raw).decode()} {kid}\n")
        return kid

    def rotate(self) -> tuple[str, str]:
        """Retire the current key (still trusted for old artifacts) and make a new one."""
        old = self.key_id()
        retired = self.dir / "retired"
        retired.mkdir(exist_ok=True)
        (retired / f"{old}.pub").write_text(self.export_public())
        os.replace(self.dir / "signing.key", retired / f"{old}.{int(time.time())}.key")
        self._write_new_pair()
        return old, self.key_id()


def _private_raw(private) -> bytes:
    from cryptography.hazmat.primitives import serialization as s

    return private.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())


def _public_raw(public) -> bytes:
    from cryptography.hazmat.primitives import serialization as s

    return public.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)


def public_pem(public_raw: bytes) -> str:
    """PEM (SubjectPublicKeyInfo) text of a raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(public_raw)
    return public.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo).decode()


def _decode_public(text: str) -> bytes:
    parts = text.split()
    try:
        if len(parts) < 2 or parts[0] != "kolm-ed25519":
            raise ValueError
        raw = base64.b64decode(parts[1], validate=True)
        if len(raw) != 32:
            raise ValueError
    except ValueError:
        raise KolmError(
            "not a kolm public key (expected a line 'kolm-ed25519 <base64> <key id>')",
            hint="make one with `kolm keys export`",
        ) from None
    return raw


def _write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
