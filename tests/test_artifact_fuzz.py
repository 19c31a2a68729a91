"""Fuzz the archive reader: a signed artifact mutated 1,000 ways, random bytes, zip bombs.

Every mutation must be refused with a KolmError — never another exception, never
a hang — or be accepted only when every verified byte (manifest, signatures,
each part) is unchanged, as when a flip lands in a timestamp or a deflate
stream's unused padding bits. Bombs must be refused before they inflate, with
bounded memory (tracemalloc peak, not wall time).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import signal
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.archive import MAX_META_BYTES
from kolm.artifact import minimal_manifest, open_artifact, write_artifact
from kolm.errors import ArtifactError, KolmError
from kolm.keys import KeyStore

PARTS = {
    "adapter.gguf": b"GGUF" + bytes(range(256)) * 6,  # stored, like real GGUF parts
    "config.json": b'{"instruction": "sort tickets", "decoding": {"temperature": 0}}',
    "train.jsonl": b"".join(b'{"input":"ticket %d","output":"billing"}\n' % i for i in range(20)),
    "verifier.json": b'{"kind": "label", "labels": ["billing", "shipping"]}',
}


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """One small signed artifact, its bytes, its keys and its verified content."""
    root = tmp_path_factory.mktemp("fuzz")
    keys = KeyStore(root / "home")
    src = root / "src"
    src.mkdir()
    for name, data in PARTS.items():
        (src / name).write_bytes(data)
    path = root / "m.kolm"
    write_artifact(path, {n: src / n for n in PARTS}, minimal_manifest("fuzz"), keys)
    art = open_artifact(path, keys)
    return {"path": path, "data": path.read_bytes(), "keys": keys, "id": art.id,
            "content": content(path)}  # fmt: skip


def content(path: Path) -> dict[str, bytes]:
    """Every member's bytes, read by the standard zip reader (the verified bytes)."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


@contextlib.contextmanager
def deadline(seconds: float):
    def hung(*_):
        raise TimeoutError(f"open_artifact took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def attempt(data: bytes, where: Path, keys: KeyStore, what: str):
    """Open mutated bytes: the Artifact if accepted, None if refused with a KolmError."""
    path = where / "mut.kolm"
    path.write_bytes(data)
    try:
        with deadline(5):
            return open_artifact(path, keys)
    except KolmError:
        return None
    except Exception as e:  # the property under test: nothing else may escape
        pytest.fail(f"{what}: {type(e).__name__}: {e} escaped instead of a KolmError")


def check_accepted(signed, where: Path, art, what: str) -> None:
    """An accepted mutation must have left every verified byte as it was."""
    assert art.id == signed["id"], what
    assert content(where / "mut.kolm") == signed["content"], what
    for name, data in PARTS.items():
        assert art.read_bytes(name) == data, what


# -- the zip's layout, to say where an accepted byte mutation landed ------------------


def regions(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, label) for every header and data block of a zip."""
    out = []
    with zipfile.ZipFile(_bytes_path(data)) as z:
        for i in z.infolist():
            n, e = struct.unpack("<HH", data[i.header_offset + 26 : i.header_offset + 30])
            start = i.header_offset + 30 + n + e
            out.append((i.header_offset, start, f"local header {i.filename}"))
            out.append((start, start + i.compress_size, f"data {i.filename}"))
        cd = z.start_dir
    out.append((cd, len(data) - 22, "central directory"))
    out.append((len(data) - 22, len(data), "end record"))
    return out


_TMP: dict[str, Path] = {}


def _bytes_path(data: bytes) -> Path:
    path = _TMP["dir"] / "layout.zip"
    path.write_bytes(data)
    return path


LOCAL_FIELDS = [(0, "signature"), (4, "version"), (6, "flags"), (8, "method"), (10, "time"),
                (12, "date"), (14, "crc"), (18, "compressed size"), (22, "size"),
                (26, "name length"), (28, "extra length"), (30, "name")]  # fmt: skip
CENTRAL_FIELDS = [(0, "signature"), (4, "made by"), (6, "version"), (8, "flags"), (10, "method"),
                  (12, "time"), (14, "date"), (16, "crc"), (20, "compressed size"), (24, "size"),
                  (28, "name length"), (30, "extra length"), (32, "comment length"), (34, "disk"),
                  (36, "internal attrs"), (38, "external attrs"), (42, "offset"), (46, "name")]  # fmt: skip


def where(data: bytes, layout: list[tuple[int, int, str]], offset: int) -> str:
    for start, end, label in layout:
        if start <= offset < end:
            if label.startswith("local header"):
                return f"{label}: {_field(LOCAL_FIELDS, offset - start)}"
            if label == "central directory":
                return f"central directory: {_central_field(data, start, offset)}"
            if label.startswith("data"):
                return label + (" (last byte)" if offset == end - 1 else "")
            return label
    return "between blocks"


def _field(fields, rel: int) -> str:
    return [name for off, name in fields if off <= rel][-1]


def _central_field(data: bytes, pos: int, offset: int) -> str:
    while pos <= offset:
        n, e, c = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        size = 46 + n + e + c
        if offset < pos + size:
            return _field(CENTRAL_FIELDS, offset - pos)
        pos += size
    return "?"


# -- mutations ---------------------------------------------------------------------


def rebuild(data: bytes, order, extra=None) -> bytes:
    """The same members (optionally with `extra` ones inserted) written in `order`."""
    with zipfile.ZipFile(_bytes_path(data)) as z:
        infos = z.infolist()
        members = [(i, z.read(i)) for i in infos]
    members = [members[k] for k in order]
    for pos, info, blob in extra or []:
        members.insert(pos, (info, blob))
    out = _TMP["dir"] / "rebuilt.zip"
    with zipfile.ZipFile(out, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we make on purpose
        for info, blob in members:
            z.writestr(copy.copy(info), blob)
    return out.read_bytes()


def mutations(data: bytes, rng: random.Random, n: int):
    """(kind, description, mutated bytes) — byte edits, cuts, reorders, duplicates, junk."""
    with zipfile.ZipFile(_bytes_path(data)) as z:
        infos = z.infolist()
    count = len(infos)
    kinds = ["flip"] * 35 + ["set"] * 25 + ["truncate"] * 12 + ["reorder"] * 6
    kinds += ["swap-raw"] * 6 + ["duplicate"] * 8 + ["junk"] * 8
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind in ("flip", "set"):
            i = rng.randrange(len(data))
            b = bytearray(data)
            b[i] = b[i] ^ (1 << rng.randrange(8)) if kind == "flip" else rng.randrange(256)
            yield kind, i, bytes(b)
        elif kind == "truncate":
            cut = rng.randrange(len(data))
            yield kind, cut, data[:cut]
        elif kind == "reorder":
            order = list(range(count))
            rng.shuffle(order)
            yield kind, order, rebuild(data, order)
        elif kind == "swap-raw":
            a, b = sorted(rng.sample(range(count), 2))
            yield kind, (a, b), _swap_raw(data, infos, a, b)
        elif kind == "duplicate":
            k = rng.randrange(count)
            with zipfile.ZipFile(_bytes_path(data)) as z:
                blob = z.read(infos[k])
            if rng.random() < 0.5:  # a hostile copy, placed anywhere (first included)
                blob = blob[:-1] + bytes([blob[-1] ^ 1]) if blob else b"x"
            pos = rng.randrange(count + 1)
            yield (
                kind,
                (infos[k].filename, pos),
                rebuild(data, range(count), [(pos, infos[k], blob)]),
            )
        else:
            name = rng.choice(["junk.bin", "payload.sh", "a/b.json", "../up", "/abs", "x\\y", "."])
            pos = rng.randrange(count + 1)
            junk = [(pos, zipfile.ZipInfo(name), rng.randbytes(rng.randrange(64)))]
            yield kind, name, rebuild(data, range(count), junk)


def _swap_raw(data: bytes, infos, a: int, b: int) -> bytes:
    """Swap two members' raw local blocks, leaving the central directory pointing at the old places."""
    starts = [i.header_offset for i in infos]
    ends = starts[1:] + [min(_central_start(data), len(data))]
    blocks = [data[s:e] for s, e in zip(starts, ends, strict=True)]
    blocks[a], blocks[b] = blocks[b], blocks[a]
    return data[: starts[0]] + b"".join(blocks) + data[ends[-1] :]


def _central_start(data: bytes) -> int:
    return struct.unpack("<I", data[-6:-2])[0]


def test_a_thousand_mutations_are_refused_or_change_nothing_verified(signed, tmp_path):
    _TMP["dir"] = tmp_path
    rng = random.Random(13)
    data, keys = signed["data"], signed["keys"]
    layout = regions(data)
    outcome: Counter[str] = Counter()
    accepted_at: Counter[str] = Counter()
    t0 = time.perf_counter()
    for kind, detail, mutated in mutations(data, rng, 1000):
        what = f"{kind} {detail}"
        art = attempt(mutated, tmp_path, keys, what)
        if art is None:
            outcome[f"{kind}: refused"] += 1
            continue
        check_accepted(signed, tmp_path, art, what)
        outcome[f"{kind}: accepted, nothing verified changed"] += 1
        if kind in ("flip", "set"):
            accepted_at[where(data, layout, detail) if mutated != data else "same byte"] += 1
    seconds = time.perf_counter() - t0
    print(f"\n1000 mutations in {seconds:.1f} s: {dict(sorted(outcome.items()))}")
    print(f"accepted byte edits landed in: {dict(accepted_at.most_common())}")
    assert sum(outcome.values()) == 1000
    for kind in ("truncate", "swap-raw", "duplicate", "junk"):
        assert not outcome[f"{kind}: accepted, nothing verified changed"], kind
    refused_edits = outcome["flip: refused"] + outcome["set: refused"]
    edits = refused_edits + sum(accepted_at.values())
    assert refused_edits > 0.6 * edits  # most bytes of a small artifact are verified content
    # every byte of a stored part is content: no edit there can pass
    assert not [k for k in accepted_at if k.startswith("data adapter.gguf")], accepted_at
    assert seconds < 60


# -- random bytes ------------------------------------------------------------------


def test_random_bytes_never_get_past_the_reader(signed, tmp_path):
    """A fuzz target on the raw reader: noise, noise with a zip end record, noisy splices."""
    _TMP["dir"] = tmp_path
    rng = random.Random(7)
    data, keys = signed["data"], signed["keys"]
    cases = []
    for _ in range(100):
        cases.append(rng.randbytes(rng.randrange(4096)))
    for _ in range(100):
        body = rng.randbytes(rng.randrange(2048))
        cases.append(body + b"PK\x05\x06" + rng.randbytes(18))
    for _ in range(100):
        at = rng.randrange(len(data))
        cases.append(data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at + 16 :])
    t0 = time.perf_counter()
    accepted = 0
    for k, case in enumerate(cases):
        art = attempt(case, tmp_path, keys, f"random case {k}")
        if art is not None:
            check_accepted(signed, tmp_path, art, f"random case {k}")
            accepted += 1
    assert accepted <= 5
    assert time.perf_counter() - t0 < 30


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    at=st.integers(min_value=0),
    cut=st.integers(min_value=0, max_value=64),
    insert=st.binary(max_size=64),
)
def test_property_any_splice_is_refused_or_changes_nothing(signed, tmp_path, at, cut, insert):
    """Replace any span of the file with any bytes: refused, or the verified content is intact."""
    _TMP["dir"] = tmp_path
    data = signed["data"]
    at %= len(data)
    mutated = data[:at] + insert + data[at + cut :]
    art = attempt(mutated, tmp_path, signed["keys"], f"splice at {at} cut {cut} insert {insert!r}")
    if art is not None:
        check_accepted(signed, tmp_path, art, "splice")


# -- zip bombs ---------------------------------------------------------------------


def zeros_deflated(mib: int) -> bytes:
    """A raw deflate stream of `mib` MiB of zeros, built without inflating anything:
    after a full flush the compressor restarts, so each further MiB is the same ~1 kB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (mib - 1) + c.flush()


def raw_zip(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip from (name, method, compressed bytes, crc, declared size): headers may lie."""
    out, cd = bytearray(), bytearray()
    for name, method, payload, crc, size in entries:
        nb, off = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                           len(payload), size, len(nb), 0) + nb + payload  # fmt: skip
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                          len(payload), size, len(nb), 0, 0, 0, 0, 0, off) + nb  # fmt: skip
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), len(out), 0
    )
    return bytes(out + cd + end)


def stored(name: str, data: bytes) -> tuple[str, int, bytes, int, int]:
    return (name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


def refuse_within_budget(path: Path, match: str, keys: KeyStore | None = None) -> tuple[int, float]:
    """Open `path`, expecting refusal; return (tracemalloc peak bytes, CPU seconds)."""
    tracemalloc.start()
    cpu = time.process_time()
    try:
        with pytest.raises(ArtifactError, match=match), deadline(10):
            open_artifact(path, keys)
        peak, seconds = tracemalloc.get_traced_memory()[1], time.process_time() - cpu
        print(f"\n{path.name} ({path.stat().st_size / 1e6:.1f} MB): refused, "
              f"peak {peak / 1e6:.2f} MB, CPU {seconds:.3f} s")  # fmt: skip
        return peak, seconds
    finally:
        tracemalloc.stop()


BOMB = zeros_deflated(1024)  # 1 GiB of zeros in about 1 MB


def test_the_bomb_is_what_it_claims():
    d = zlib.decompressobj(-15)
    assert len(d.decompress(zeros_deflated(3))) == 3 << 20 and d.eof
    assert len(BOMB) < 1_100_000


def test_manifest_bomb_declared_honestly_is_refused_without_inflating(tmp_path):
    """1 MB inflating to 1 GiB (once: 9 s and 2.1 GB of memory)."""
    path = tmp_path / "bomb.kolm"
    path.write_bytes(raw_zip([("manifest.json", zipfile.ZIP_DEFLATED, BOMB, 0, 1 << 30),
                              stored("signature.json", b"{}")]))  # fmt: skip
    peak, cpu = refuse_within_budget(path, "zip bomb")
    assert peak < 8 << 20 and cpu < 2


def test_manifest_bomb_with_a_lying_header_is_cut_at_the_cap(tmp_path):
    """The header claims exactly the cap; the stream holds 1 GiB. At most cap + 1 bytes inflate."""
    path = tmp_path / "liar.kolm"
    crc = zlib.crc32(bytes(MAX_META_BYTES))
    path.write_bytes(raw_zip([("manifest.json", zipfile.ZIP_DEFLATED, BOMB, crc, MAX_META_BYTES),
                              stored("signature.json", b"{}")]))  # fmt: skip
    peak, cpu = refuse_within_budget(path, "signature")
    assert peak < 8 * MAX_META_BYTES and cpu < 2


@pytest.mark.parametrize("honest", [True, False])
def test_part_swapped_for_a_bomb_is_refused_before_it_inflates(tmp_path, honest):
    """adapter.gguf replaced by 2 GiB of deflated zeros (once: 13 s of CPU before refusal)."""
    src = tmp_path / "src"
    src.mkdir()
    for name, data in PARTS.items():
        (src / name).write_bytes(data)
    good = tmp_path / "good.kolm"
    write_artifact(good, {n: src / n for n in PARTS}, minimal_manifest(), KeyStore())
    members = content(good)
    bomb = zeros_deflated(2048)
    size = (2 << 30) - 1 if honest else len(PARTS["adapter.gguf"])
    entries = [stored(n, d) for n, d in members.items() if n != "adapter.gguf"]
    entries.append(("adapter.gguf", zipfile.ZIP_DEFLATED, bomb, 0, size))
    path = tmp_path / "bomb.kolm"
    path.write_bytes(raw_zip(entries))
    peak, cpu = refuse_within_budget(path, "zip bomb" if honest else "changed: adapter.gguf")
    assert peak < 8 << 20 and cpu < 2


@pytest.mark.parametrize(("entries", "claimed"), [(300, None), (25_000, 5)])
def test_too_many_members_are_refused_before_the_directory_is_parsed(tmp_path, entries, claimed):
    """Each directory record costs the zip reader ~500 bytes: refuse from the end record."""
    data = bytearray(raw_zip([stored(f"{i:06d}", b"") for i in range(entries)]))
    if claimed is not None:  # the end record lies about the count; its directory size cannot
        data[-14:-10] = struct.pack("<HH", claimed, claimed)
    path = tmp_path / "many.kolm"
    path.write_bytes(bytes(data))
    peak, cpu = refuse_within_budget(path, "declares .* members")
    assert peak < 1 << 20 and cpu < 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(
    envelope=st.fixed_dictionaries(
        {}, optional={"payload": JSON | st.just("e30="), "payloadType": JSON, "signatures": JSON}
    ),
    material=JSON,
    top=JSON,
)
def test_property_a_hostile_model_sig_only_raises_signature_errors(envelope, material, top):
    """`model.sig` is parsed before its signature is checked: any shape is a SignatureError."""
    from kolm.errors import SignatureError
    from kolm.modelsig import BUNDLE_MEDIA_TYPE, open_bundle

    raw = bytes(range(32))  # any 32 bytes form an Ed25519 public key
    bundles = [top, {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": material,
                     "dsseEnvelope": {**envelope, "payloadType": "application/vnd.in-toto+json"}}]  # fmt: skip
    for bundle in bundles:
        with pytest.raises(SignatureError):
            open_bundle(json.dumps(bundle).encode(), raw)
