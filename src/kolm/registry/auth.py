"""Registry credentials and the `WWW-Authenticate` challenges that ask for them.

Credentials come from `KOLM_REGISTRY_USER` / `KOLM_REGISTRY_PASSWORD`, else from
docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`,
its `auths` entries; credential helpers are not run). Anonymous when neither has
any. Parses challenges; fetching tokens is the client's job. Never logs secrets.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_CONFIG_BYTES = 1 << 20
_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = "env"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """`bearer` or `basic` (lowercase)."""
    params: dict[str, str]


def find_credentials(registry: str) -> Credentials | None:
    """The credentials for `registry`: environment first, then docker's config.json."""
    user, password = os.environ.get("KOLM_REGISTRY_USER"), os.environ.get("KOLM_REGISTRY_PASSWORD")
    if user and password is not None:
        return Credentials(user, password, "env")
    return _docker_credentials(registry)


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker"
    return Path(folder) / "config.json"


def _docker_credentials(registry: str) -> Credentials | None:
    path = docker_config_path()
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        auths = json.loads(path.read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v2/")
    entry = next((auths[k] for k in keys if isinstance(auths.get(k), dict)), None)
    return _entry_credentials(entry, str(path)) if entry else None


def _entry_credentials(entry: dict, source: str) -> Credentials | None:
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]), source)
    try:
        user, _, password = (
            base64.b64decode(entry.get("auth", ""), validate=True).decode().partition(":")
        )
    except (ValueError, UnicodeDecodeError):
        return None
    return Credentials(user, password, source) if user else None


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge in a `WWW-Authenticate` header, or None if there is none."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)
