"""The recipe pack: what the compiler learned for certain about a task's answers.

A pack is three lookup tables from an answer-so-far (token ids) to the one next
token that always followed it in the accepted outputs: the exact answer prefix
(which holds the closed label set as a token trie), the last k tokens, and the
last k tokens under the most recent JSON key. `next_token` asks them from the
most specific to the least. For JSON outputs it also keeps the skeleton's
value closers: per key, the one token that always ended that key's string value
(`",` before the next key, `"}` after the last), which no n-gram can predict
because it follows the value's variable tokens, and, for answers that copy their
inputs, per key the **value anchors**: short byte strings that, wherever one occurs
exactly once in an input, were always followed there by that key's value (`$`
before a total, `due on ` before a date), so a value can be drafted from the input
before its first byte is written. The pack serializes to a compact, versioned byte
string: the same tables always give the same bytes.

It knows token ids and bytes; it does not know the tokenizer, the model or how
the tables were mined (that is `mine`), nor how drafts are verified (`draft`).
Reading is bounded: the tables inflate to at most `MAX_BODY_BYTES`, the header
must have its fields with their types, and `check_vocab` refuses a pack naming
a token the model does not have (llama.cpp aborts the process on one).
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from kolm.errors import ArtifactError

MAGIC = b"KOLMRCP\x00"
VERSION = 1
PART = "recipes.pack"
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Most bytes the tables may inflate to (a real pack's are a few MB at most)."""
_HEADER = {"eos": int, "order": int, "max_prefix": int, "json_keys": bool, "stats": dict}
_REBUILD = "rebuild the artifact with `kolm compile`, or run with --no-recipes"
_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,64})"\s*:')
_OPEN_VALUE = re.compile(rb'"\s*:\s*"(?:[^"\\]|\\.)*\Z')


def copy_continuation(
    text: bytes, source: bytes, max_bytes: int = 24, allowed: bytes | None = None
) -> bytes:
    """What followed the answer's open string value in `source`, when that is unambiguous.

    The value so far (after the last quote; at least 2 bytes) is looked up in the
    source text, longest suffix first; every occurrence must continue the same way.
    The continuation stops before a quote, comma, colon, semicolon, bracket or line break,
    and, with `allowed` (the bytes this key's values were seen to use), before any other byte."""
    if text.count(b'"') % 2 == 0:
        return b""
    value = text[text.rfind(b'"') + 1 :]
    for n in range(min(len(value), 16), 1, -1):
        suffix = value[-n:]
        spots = _find_all(source, suffix)
        if not spots:
            continue
        nexts = {source[p + n : p + n + 4] for p in spots}
        if len(nexts) != 1:
            return b""
        return _cut(source[spots[0] + n : spots[0] + n + max_bytes], allowed)
    return b""


_STOP = re.compile(rb'["\n,;:()\[\]{}]')
START = b"\x00"
"""Marks the start of the input for anchors (a value that opens the input has the
anchor `START`)."""
MAX_ANCHORS = 32
MAX_ANCHOR_BYTES = 16


def anchored_value(
    source: bytes, anchors: Sequence[bytes], max_bytes: int = 24, allowed: bytes | None = None
) -> bytes:
    """A string value drafted from `source` before any of it is written.

    The first of `anchors` (most supported first) that occurs exactly once in the
    source (with `START` before it) gives the value's start; the draft is what
    follows, cut as `copy_continuation` cuts it."""
    hay = START + source
    for a in anchors:
        spots = _find_all(hay, a)
        if len(spots) != 1:
            continue
        start = spots[0] + len(a)
        cont = _cut(hay[start : start + max_bytes], allowed)
        if cont:
            return cont
    return b""


def _cut(cont: bytes, allowed: bytes | None) -> bytes:
    cont = _STOP.split(cont, maxsplit=1)[0]
    if allowed is not None:
        cont = cont[: next((i for i, b in enumerate(cont) if b not in allowed), len(cont))]
    return cont


def _find_all(hay: bytes, needle: bytes) -> list[int]:
    out, i = [], hay.find(needle)
    while i >= 0 and len(out) < 8:
        out.append(i)
        i = hay.find(needle, i + 1)
    return out


def open_value(text: bytes) -> bool:
    """Whether `text` ends inside an object's string value (after `"key": "`)."""
    return _OPEN_VALUE.search(text[-256:]) is not None


def json_objects(outputs: Sequence[str]) -> Iterator[dict]:
    """The outputs that parse as JSON objects, parsed, in order."""
    for o in outputs:
        try:
            value = json.loads(o)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def json_key(text: bytes) -> str:
    """The most recent complete JSON object key in `text` ('' when there is none)."""
    last = b""
    for m in _KEY.finditer(text):
        last = m.group(1)
    return last.decode("utf-8", "replace")


@dataclass(frozen=True)
class Pack:
    """Deterministic continuations, most specific context first."""

    eos: int
    """The end-of-answer token id the outputs were mined with."""
    order: int
    """Longest n-gram context, in tokens."""
    max_prefix: int
    """Longest answer prefix kept in `prefix`."""
    json_keys: bool
    """Whether `keyed` contexts apply (JSON outputs)."""
    copy_input: bool = False
    """Whether string values are drafted from the input when its text continues them
    unambiguously (mining measured that answers copy from their inputs)."""
    prefix: dict[tuple[int, ...], int] = field(default_factory=dict)
    ngrams: dict[tuple[int, ...], int] = field(default_factory=dict)
    keyed: dict[tuple[str, tuple[int, ...]], int] = field(default_factory=dict)
    value_bytes: dict[str, bytes] = field(default_factory=dict)
    """Per JSON key, every byte its string values used: a value copied from the input
    stops before any other byte (so `INV-204` stops before the space after it)."""
    closers: dict[str, int] = field(default_factory=dict)
    """Per JSON key, the token that always ended its string value (the skeleton between
    one value and the next key); proposed after a value copied from the input."""
    anchors: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    """Per JSON key, input byte strings always followed by that key's value where they
    occur once (`START` + text: the input opens with it); most supported first."""
    stats: dict = field(default_factory=dict)
    """What mining saw and measured (sequences, tokens, expected hit rate, ...)."""

    def max_token(self) -> int:
        """The largest token id the pack can propose (its end-of-answer token included)."""
        tables = (self.prefix, self.ngrams)
        ids = [self.eos, *(t for tab in tables for t in tab.values()), *self.keyed.values()]
        ids += self.closers.values()
        ids += [t for tab in tables for ctx in tab for t in ctx]
        ids += [t for _, ctx in self.keyed for t in ctx]
        return max(ids)

    def check_vocab(self, n_vocab: int) -> None:
        """Refuse a pack that names a token id the model does not have."""
        top = self.max_token()
        if top >= n_vocab:
            raise ArtifactError(
                f"{PART} names token {top}, but the model has only {n_vocab} tokens: "
                "the pack was mined for another tokenizer, or is hostile",
                hint=_REBUILD,
            )

    @property
    def entries(self) -> int:
        return len(self.prefix) + len(self.ngrams) + len(self.keyed)

    def next_token(self, answer: Sequence[int], key: str | None = None) -> int | None:
        """The token that always followed this answer-so-far, or None when unsure."""
        n = len(answer)
        if n <= self.max_prefix:
            t = self.prefix.get(tuple(answer))
            if t is not None:
                return t
        use_key = self.json_keys and key is not None
        for k in range(min(self.order, n), 0, -1):
            ctx = tuple(answer[n - k :])
            if use_key:
                t = self.keyed.get((key, ctx))
                if t is not None:
                    return t
            t = self.ngrams.get(ctx)
            if t is not None:
                return t
        return None

    def to_bytes(self) -> bytes:
        header = {
            "eos": self.eos,
            "order": self.order,
            "max_prefix": self.max_prefix,
            "json_keys": self.json_keys,
            "copy_input": self.copy_input,
            "stats": self.stats,
        }
        if self.closers:
            header["closers"] = dict(sorted(self.closers.items()))
        if self.value_bytes:
            header["value_bytes"] = {k: v.hex() for k, v in sorted(self.value_bytes.items())}
        if self.anchors:
            header["anchors"] = {k: [a.hex() for a in v] for k, v in sorted(self.anchors.items())}
        keys = sorted({k for k, _ in self.keyed})
        header["keys"] = keys
        index = {k: i for i, k in enumerate(keys)}
        body = bytearray()
        _put_table(body, sorted(self.prefix.items()), None)
        _put_table(body, sorted(self.ngrams.items()), None)
        keyed = sorted(((index[k], ctx), t) for (k, ctx), t in self.keyed.items())
        _put_table(body, [(ctx, t) for (_, ctx), t in keyed], [i for (i, _), _ in keyed])
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        packed = zlib.compress(bytes(body), 9)
        return MAGIC + struct.pack("<HI", VERSION, len(head)) + head + packed

    @classmethod
    def from_bytes(cls, data: bytes) -> Pack:
        try:
            return _parse(data)
        except ArtifactError:
            raise
        except Exception as e:  # truncated or damaged bytes raise many types
            raise ArtifactError(
                f"{PART} is damaged ({type(e).__name__}: {e})", hint=_REBUILD
            ) from None


def _put_table(out: bytearray, items: list, key_ids: list[int] | None) -> None:
    out += struct.pack("<I", len(items))
    for i, (ctx, tok) in enumerate(items):
        out += struct.pack("<B", len(ctx))
        if key_ids is not None:
            out += struct.pack("<H", key_ids[i])
        out += struct.pack(f"<{len(ctx)}I", *ctx)
        out += struct.pack("<I", tok)


def _get_table(buf: memoryview, pos: int, keyed: bool) -> tuple[list, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    rows = []
    for _ in range(n):
        (k,) = struct.unpack_from("<B", buf, pos)
        pos += 1
        kid = None
        if keyed:
            (kid,) = struct.unpack_from("<H", buf, pos)
            pos += 2
        ctx = struct.unpack_from(f"<{k}I", buf, pos)
        pos += 4 * k
        (tok,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        rows.append((kid, tuple(ctx), tok))
    return rows, pos


def _parse(data: bytes) -> Pack:
    if not data.startswith(MAGIC):
        raise ArtifactError(f"{PART} is not a recipe pack (bad magic)")
    version, head_len = struct.unpack_from("<HI", data, len(MAGIC))
    if version > VERSION:
        raise ArtifactError(
            f"{PART} has version {version}, newer than this kolm reads ({VERSION})",
            hint="upgrade kolm, or run with --no-recipes",
        )
    start = len(MAGIC) + 6
    header = _header(data[start : start + head_len])
    z = zlib.decompressobj()
    buf = memoryview(z.decompress(data[start + head_len :], MAX_BODY_BYTES))
    if z.unconsumed_tail:
        raise ArtifactError(
            f"{PART} inflates past {MAX_BODY_BYTES:,} bytes (a compression bomb)", hint=_REBUILD
        )
    if z.unused_data or not z.eof:
        raise ArtifactError(f"{PART} is truncated or has trailing bytes")
    prefix, pos = _get_table(buf, 0, False)
    ngrams, pos = _get_table(buf, pos, False)
    keyed, pos = _get_table(buf, pos, True)
    if pos != len(buf):
        raise ArtifactError(f"{PART} has {len(buf) - pos} trailing bytes")
    keys = header["keys"]
    if any(kid >= len(keys) for kid, _, _ in keyed):
        raise ArtifactError(f"{PART} names a JSON key it does not list", hint=_REBUILD)
    return Pack(
        eos=header["eos"],
        order=header["order"],
        max_prefix=header["max_prefix"],
        json_keys=header["json_keys"],
        copy_input=header["copy_input"],
        prefix={ctx: t for _, ctx, t in prefix},
        ngrams={ctx: t for _, ctx, t in ngrams},
        keyed={(keys[kid], ctx): t for kid, ctx, t in keyed},
        closers=header["closers"],
        value_bytes={k: bytes.fromhex(v) for k, v in header["value_bytes"].items()},
        anchors={k: tuple(bytes.fromhex(a) for a in v) for k, v in header["anchors"].items()},
        stats=header["stats"],
    )


def _header(raw: bytes) -> dict:
    """The JSON header, with every field the reader uses present and of its type."""
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ArtifactError(f"{PART} header is not a JSON object", hint=_REBUILD)
    header.setdefault("copy_input", False)
    header.setdefault("closers", {})
    header.setdefault("value_bytes", {})
    header.setdefault("anchors", {})
    want = {
        **_HEADER,
        "copy_input": bool,
        "keys": list,
        "closers": dict,
        "value_bytes": dict,
        "anchors": dict,
    }
    bad = [k for k, t in want.items() if type(header.get(k)) is not t]
    keys = header.get("keys")
    if isinstance(keys, list) and (
        not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys)
    ):
        bad.append("keys")
    closers = header.get("closers")
    if isinstance(closers, dict) and not all(
        type(t) is int and 0 <= t < 2**31 for t in closers.values()
    ):
        bad.append("closers")
    value_bytes = header.get("value_bytes")
    if isinstance(value_bytes, dict) and not all(_is_hex(v) for v in value_bytes.values()):
        bad.append("value_bytes")
    anchors = header.get("anchors")
    if isinstance(anchors, dict) and not all(
        isinstance(v, list)
        and 0 < len(v) <= MAX_ANCHORS
        and all(_is_hex(a, MAX_ANCHOR_BYTES) and a for a in v)
        for v in anchors.values()
    ):
        bad.append("anchors")
    ints = ("eos", "order", "max_prefix")
    bad += [k for k in ints if k not in bad and not 0 <= header[k] < 2**31]
    if bad:
        raise ArtifactError(
            f"{PART} header has missing or invalid fields: {', '.join(sorted(set(bad)))}",
            hint=_REBUILD,
        )
    return header


_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _is_hex(v, max_bytes: int = 256) -> bool:
    """Lower-case hex of at most `max_bytes` bytes, nothing else (no spaces)."""
    if not isinstance(v, str) or len(v) > 2 * max_bytes or not _HEX.fullmatch(v):
        return False
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True
