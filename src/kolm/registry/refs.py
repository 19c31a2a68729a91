"""References to artifacts in an OCI registry: `REGISTRY/NAME:TAG` or `REGISTRY/NAME@DIGEST`.

Parses and checks a reference against the OCI distribution grammar, and decides
which scheme a registry is spoken to with: plain http only for loopback hosts or
when the user says `--insecure`, https otherwise. Knows nothing of HTTP itself.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from kolm.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_EXAMPLE = "localhost:5000/team/support-tickets:v1"


@dataclass(frozen=True)
class Ref:
    """One reference: registry host[:port], repository name, and a tag or a digest."""

    registry: str
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Ref:
        return Ref(self.registry, self.name, self.tag, digest)

    def __str__(self) -> str:
        tail = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.registry}/{self.name}{tail}"


def parse_ref(text: str) -> Ref:
    """A Ref, or RegistryError saying which part of `text` is wrong."""
    text = text.strip()
    for scheme in ("http://", "https://", "oci://"):
        if text.startswith(scheme):
            _bad(text, f"write it without {scheme!r}; use --insecure for plain http")
    host, _, rest = text.partition("/")
    if not rest or not _looks_like_host(host):
        _bad(text, "it must start with the registry host, e.g. localhost:5000/ or ghcr.io/")
    rest, at, digest = rest.partition("@")
    name, tag = _split_tag(rest)
    if not _NAME.fullmatch(name):
        _bad(text, f"repository name {name!r} must be lowercase letters, digits and . _ - /")
    if tag is not None and not _TAG.fullmatch(tag):
        _bad(text, f"tag {tag!r} must be 1-128 of letters, digits, . _ - (not starting . or -)")
    if at and not _DIGEST.fullmatch(digest):
        _bad(text, f"digest {digest!r} must be sha256: and 64 lowercase hex digits")
    return Ref(host.lower(), name, tag if tag or at else "latest", digest or None)


def _split_tag(rest: str) -> tuple[str, str | None]:
    last = rest.rsplit("/", 1)[-1]
    if ":" not in last:
        return rest, None
    name, _, tag = rest.rpartition(":")
    return name, tag


def _looks_like_host(host: str) -> bool:
    if not _HOST.fullmatch(host):
        return False
    return "." in host or ":" in host or host.lower() == "localhost"


def _bad(text: str, why: str) -> None:
    raise RegistryError(
        f"not a registry reference: {text!r}: {why}",
        hint=f"write REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:…, e.g. {_EXAMPLE}",
    )


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    name = host[1 : host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url(registry: str, insecure: bool) -> str:
    """`http://` for loopback or --insecure, else `https://`."""
    return f"{'http' if insecure or is_loopback(registry) else 'https'}://{registry}"
