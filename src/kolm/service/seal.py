"""A tenant's teacher key, sealed (AES-GCM) while its job waits in the service database.

The sealing secret lives only in memory: from `KOLM_SERVICE_SECRET` when set (the server
and every `kolm worker` must then share it, and a job resumed after a crash can open its
key again), else random per server process (a job resumed after a restart waits in
`needs_key` until its key is sent again). The clear key is never written anywhere.
This module knows nothing of jobs or HTTP.
"""

from __future__ import annotations

import hashlib
import os
import secrets

SECRET_ENV = "KOLM_SERVICE_SECRET"


def service_secret() -> bytes:
    """32 bytes from KOLM_SERVICE_SECRET (any text, hashed), or fresh random bytes."""
    text = os.environ.get(SECRET_ENV)
    return hashlib.sha256(text.encode()).digest() if text else secrets.token_bytes(32)


def seal(key: str, secret: bytes, job_id: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(secret).encrypt(nonce, key.encode(), job_id.encode())


def unseal(blob: bytes, secret: bytes, job_id: str) -> str | None:
    """The clear key, or None when this process's secret cannot open it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(secret).decrypt(blob[:12], blob[12:], job_id.encode()).decode()
    except (InvalidTag, ValueError):
        return None
