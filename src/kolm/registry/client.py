"""A small client for the OCI distribution API (blobs, manifests, referrers) over httpx.

It uploads blobs (HEAD first, so a blob the registry has is not sent again; then
POST + a streamed monolithic PUT, or PATCH chunks + PUT), puts and gets manifests, streams blobs into a
file while hashing them, and lists referrers through the referrers API or, where
a registry lacks it, the spec's fallback tag (`sha256-<hex>` holding an index).
Every response body it reads is capped. It answers auth challenges (basic, and
the bearer token flow) with the credentials `auth` finds. It knows nothing of
`.kolm` files: blobs are bytes, manifests are JSON.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import BinaryIO

from kolm.errors import ArtifactError, RegistryError
from kolm.registry.auth import Challenge, Credentials, find_credentials, parse_challenge
from kolm.registry.refs import Ref, base_url, is_loopback

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MAX_MANIFEST_BYTES = 4 << 20
"""The OCI spec lets registries refuse manifests over 4 MiB; kolm reads no more."""
MAX_JSON_BYTES = 1 << 20
"""Token answers, referrer indexes and kolm's small referrer documents."""
MAX_ERROR_BYTES = 64 << 10
CHUNK = 1 << 20

Body = Callable[[], Iterable[bytes]]
"""Makes a fresh request body each call (a retry after an auth challenge sends it again)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    """Speaks to one repository of one registry."""

    def __init__(
        self,
        ref: Ref,
        insecure: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 60.0,
    ):
        import httpx

        self.ref = ref
        self.insecure = insecure
        self.base = base_url(ref.registry, insecure)
        self.credentials = credentials or find_credentials(ref.registry)
        self._auth: str | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), verify=_tls_context()
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.ref.name}/{path}"

    # -- requests, auth and bounded reads ------------------------------------------
    def send(self, method: str, url: str, what: str, *, headers=None, body=None, follow=False):
        """A streamed response (close it); answers one auth challenge, then gives up."""
        import httpx

        for attempt in (0, 1):
            hdrs = dict(headers or {})
            if self._auth:
                hdrs["Authorization"] = self._auth
            content = body() if callable(body) else body
            try:
                req = self._http.build_request(method, url, headers=hdrs, content=content)
                resp = self._http.send(req, stream=True, follow_redirects=follow)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None
            if resp.status_code != 401:
                return resp
            if attempt:  # the credentials or token it asked for were not enough
                resp.close()
                raise self._denied(what)
            challenge = parse_challenge(resp.headers.get("www-authenticate"))
            resp.close()
            self._authorize(challenge, what)
        raise AssertionError("unreachable")

    def _unreachable(self, e: Exception) -> RegistryError:
        hint = "is it running, and is the host right?"
        if not self.insecure and not is_loopback(self.ref.registry):
            hint += " kolm uses https; for a plain-http registry pass --insecure"
        return RegistryError(f"cannot reach registry {self.base}: {type(e).__name__}: {e}", hint)

    def _authorize(self, challenge: Challenge | None, what: str) -> None:
        if challenge is not None and challenge.scheme == "bearer":
            self._auth = "Bearer " + self._token(challenge, what)
        elif challenge is not None and challenge.scheme == "basic" and self.credentials:
            self._auth = self.credentials.basic()
        else:
            raise self._denied(what)

    def _denied(self, what: str) -> RegistryError:
        who = (
            f"as {self.credentials.username} ({self.credentials.source})"
            if self.credentials
            else "anonymously"
        )
        return RegistryError(
            f"{what}: registry {self.ref.registry} refused the request {who} (401)",
            hint="set KOLM_REGISTRY_USER and KOLM_REGISTRY_PASSWORD, or `docker login` to it",
        )

    def _token(self, challenge: Challenge, what: str) -> str:
        """The bearer token flow: ask the challenge's realm for a token for its scope."""
        realm = challenge.params.get("realm", "")
        host = realm.split("://", 1)[-1].split("/", 1)[0]
        if not realm.startswith("https://") and not (
            realm.startswith("http://") and (self.insecure or is_loopback(host))
        ):
            raise RegistryError(f"{what}: the registry's token realm {realm!r} is not https")
        params = {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        try:
            resp = self._http.send(
                self._http.build_request("GET", realm, params=params, headers=headers), stream=True
            )
        except Exception as e:
            raise self._unreachable(e) from None
        if resp.status_code in (401, 403):
            resp.close()
            raise self._denied(what)
        doc = read_json(self.check(resp, f"{what}: token from {realm}"), MAX_JSON_BYTES, "token")
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: the token service at {realm} answered no token")
        return token

    def check(self, resp, what: str, ok: tuple[int, ...] = (200,)):
        """`resp` if its status is in `ok`, else a RegistryError with the registry's reason."""
        if resp.status_code in ok:
            return resp
        try:
            text = read_capped(resp, MAX_ERROR_BYTES, "error body", strict=False)
        finally:
            resp.close()
        reason = _oci_errors(text) or text.decode("utf-8", "replace").strip()[:300]
        hint = None
        if resp.status_code == 404:
            hint = f"check the name and tag: {self.ref}"
        elif resp.status_code in (401, 403):
            hint = "set KOLM_REGISTRY_USER and KOLM_REGISTRY_PASSWORD, or `docker login` to it"
        raise RegistryError(f"{what}: registry answered {resp.status_code} {reason}".rstrip(), hint)

    # -- blobs ---------------------------------------------------------------------
    def blob_exists(self, digest: str) -> bool:
        resp = self.send("HEAD", self.url(f"blobs/{digest}"), "checking a blob", follow=True)
        if resp.status_code in (200, 404):
            resp.close()
            return resp.status_code == 200
        self.check(resp, f"checking blob {digest}")
        return False

    def push_blob(self, digest: str, size: int, body: Body, chunk: int | None = None) -> bool:
        """Upload a blob unless the registry has it; True when bytes were sent.

        One streamed PUT (monolithic), or with `chunk` PATCHes of that many bytes and
        a closing PUT (for registries or proxies that cap request bodies)."""
        if self.blob_exists(digest):
            return False
        what = f"uploading blob {digest[:19]}…"
        location = self._upload_location(self.send("POST", self.url("blobs/uploads/"), what), what)
        headers = {"Content-Type": "application/octet-stream"}
        if chunk and size > chunk:
            location = self._patch_chunks(location, _rechunk(body(), chunk), what)
            size, body = 0, b""
        sep = "&" if "?" in location else "?"
        headers["Content-Length"] = str(size)
        put = self.send("PUT", f"{location}{sep}digest={digest}", what, headers=headers, body=body)
        self.check(put, what, ok=(201,)).close()
        return True

    def _upload_location(self, resp, what: str) -> str:
        resp = self.check(resp, what, ok=(202,))
        resp.close()
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        return str(resp.url.join(location))

    def _patch_chunks(self, location: str, chunks: Iterable[bytes], what: str) -> str:
        start = 0
        for piece in chunks:
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(piece)),
                "Content-Range": f"{start}-{start + len(piece) - 1}",
            }
            resp = self.send("PATCH", location, what, headers=headers, body=piece)
            location = self._upload_location(resp, what)
            start += len(piece)
        return location

    def push_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.push_blob(digest, len(data), lambda: [data])
        return digest

    def fetch_blob(self, digest: str, size: int, sink: BinaryIO, progress=None) -> None:
        """Stream a blob into `sink`, hashing it; RegistryError unless it is `digest`, `size`."""
        _require_sha256(digest)
        what = f"downloading blob {digest[:19]}…"
        resp = self.check(self.send("GET", self.url(f"blobs/{digest}"), what, follow=True), what)
        h, n = hashlib.sha256(), 0
        try:
            for chunk in resp.iter_bytes():
                n += len(chunk)
                if n > size:
                    raise _tampered(digest, f"it is longer than the {size} bytes its manifest says")
                h.update(chunk)
                sink.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        finally:
            resp.close()
        if n != size:
            raise _tampered(digest, f"it is {n} bytes, not the {size} its manifest says")
        if "sha256:" + h.hexdigest() != digest:
            raise _tampered(digest, f"its content hashes to sha256:{h.hexdigest()}")

    def fetch_small(self, digest: str, size: int, cap: int = MAX_JSON_BYTES) -> bytes:
        if size > cap:
            raise RegistryError(f"blob {digest} is {size} bytes, over the {cap} kolm reads")
        import io

        buf = io.BytesIO()
        self.fetch_blob(digest, size, buf)
        return buf.getvalue()

    # -- manifests -----------------------------------------------------------------
    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; a pinned digest must match."""
        what = f"reading manifest {self.ref.registry}/{self.ref.name}:{reference}"
        headers = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
        resp = self.check(
            self.send("GET", self.url(f"manifests/{reference}"), what, headers=headers), what
        )
        data = read_capped(resp, MAX_MANIFEST_BYTES, "manifest")
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"{what}: the registry sent a manifest whose digest is {digest}",
                hint="the registry is serving altered content; do not use it",
            )
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        return data, media, digest

    def get_manifest_json(self, reference: str) -> tuple[dict, str, str, int]:
        data, media, digest = self.get_manifest(reference)
        doc = _loads(data, f"manifest {reference}")
        return doc, doc.get("mediaType") or media, digest, len(data)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> tuple[str, dict]:
        """PUT a manifest; (its digest, the response headers)."""
        what = f"writing manifest {self.ref.registry}/{self.ref.name}:{reference}"
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{what}: {len(data)} bytes is over the 4 MiB registries accept")
        resp = self.send(
            "PUT",
            self.url(f"manifests/{reference}"),
            what,
            headers={"Content-Type": media_type},
            body=data,
        )
        self.check(resp, what, ok=(201,)).close()
        return sha256_digest(data), dict(resp.headers)

    # -- referrers -----------------------------------------------------------------
    def referrers(self, digest: str, artifact_type: str | None = None) -> list[dict]:
        """Descriptors of the manifests whose `subject` is `digest` (API, else fallback tag)."""
        what = f"listing referrers of {digest[:19]}…"
        resp = self.send(
            "GET", self.url(f"referrers/{digest}"), what, headers={"Accept": OCI_INDEX}
        )
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        if resp.status_code == 200 and media == OCI_INDEX:
            found = _loads(read_capped(resp, MAX_MANIFEST_BYTES, "referrers"), "referrers").get(
                "manifests"
            )
        elif resp.status_code in (200, 400, 404, 405):  # no referrers API: the fallback tag
            resp.close()
            found = self._fallback_index(digest).get("manifests")
        else:
            self.check(resp, what)
        found = [d for d in (found or []) if isinstance(d, dict)]
        return [d for d in found if artifact_type in (None, d.get("artifactType"))]

    def _fallback_index(self, digest: str) -> dict:
        tag = fallback_tag(digest)
        resp = self.send(
            "GET", self.url(f"manifests/{tag}"), "reading referrers", headers={"Accept": OCI_INDEX}
        )
        if resp.status_code == 404:
            resp.close()
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        data = read_capped(
            self.check(resp, f"reading referrers tag {tag}"), MAX_MANIFEST_BYTES, "index"
        )
        return _loads(data, f"referrers tag {tag}")

    def add_fallback_referrer(self, subject: str, descriptor: dict) -> None:
        """Add `descriptor` to the subject's fallback-tag index (read, append, PUT)."""
        index = self._fallback_index(subject)
        manifests = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
        if any(d.get("digest") == descriptor["digest"] for d in manifests):
            return
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*manifests, descriptor]}
        self.put_manifest(fallback_tag(subject), _dumps(index), OCI_INDEX)


@functools.cache
def _tls_context():
    """One verifying TLS context per process (loading the CA bundle costs ~0.2 s each time)."""
    import httpx

    return httpx.create_ssl_context()


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterable[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def fallback_tag(digest: str) -> str:
    """The referrers fallback tag: `sha256:abc…` becomes `sha256-abc…`."""
    return digest.replace(":", "-", 1)


def read_capped(resp, cap: int, what: str, strict: bool = True) -> bytes:
    """At most `cap` bytes of a streamed body; RegistryError past it (or truncate if not strict)."""
    buf = bytearray()
    try:
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                if not strict:
                    return bytes(buf[:cap])
                raise RegistryError(f"the registry's {what} is over {cap} bytes; refused")
    finally:
        resp.close()
    return bytes(buf)


def read_json(resp, cap: int, what: str) -> dict:
    return _loads(read_capped(resp, cap, what), what)


def _loads(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise RegistryError(f"the registry's {what} is not a JSON object")
    return doc


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _oci_errors(text: bytes) -> str | None:
    try:
        errors = json.loads(text).get("errors")
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or None
    except (ValueError, AttributeError, TypeError):
        return None


def _require_sha256(digest: str) -> None:
    if not (digest.startswith("sha256:") and len(digest) == 71):
        raise RegistryError(f"digest {digest!r} is not sha256; kolm reads only sha256 blobs")


def _tampered(digest: str, why: str) -> ArtifactError:
    return ArtifactError(
        f"blob {digest} from the registry is not what its manifest names: {why}",
        hint="the registry's copy was altered or damaged; nothing was written",
    )
