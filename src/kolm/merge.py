"""Merge: fold a GGUF LoRA adapter into its base GGUF, then quantize the result.

Works in GGUF space with the `gguf` package: each base tensor the adapter
touches is dequantized, gets `alpha/r · B·A` added (the adapter's B rows are
already in llama.cpp's Q/K order, so the sum is too), and every matrix is written
at F16. Further precisions (Q8_0, Q4_0, Q4_K) come from llama.cpp's own quantizer
(`llama_model_quantize`, bundled with llama-cpp-python), which falls back per
tensor where a K-quant does not fit the row width; the fallbacks are reported.
Knows GGUF tensors and llama.cpp's quantizer; knows nothing of artifacts,
training or evaluation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kolm.errors import TrainingError
from kolm.export import read_lora
from kolm.spec import QUANTIZE_CHOICES

PRECISIONS = QUANTIZE_CHOICES
"""`adapter`: base as shipped + separate adapter; the others: one merged model."""
_FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k": 15}
"""llama.cpp `llama_ftype` per precision (q4_k is Q4_K_M, llama.cpp's usual mix)."""
_WANTED = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K"}
_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type")


@dataclass
class MergeReport:
    """What a merge wrote: the file, its size and the tensor types it holds."""

    path: str
    precision: str
    size: int
    merged_tensors: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    """Matrices not stored at the requested type (e.g. Q4_K rows not a multiple of 256)."""
    quantizer: str = ""

    def note(self) -> str:
        """One line for a summary: what fell back, or nothing."""
        if not self.fallbacks:
            return ""
        kinds = Counter(f.split(" -> ")[-1] for f in self.fallbacks)
        how = ", ".join(f"{n} to {t}" for t, n in sorted(kinds.items()))
        return (
            f"{len(self.fallbacks)} {'matrix is' if len(self.fallbacks) == 1 else 'matrices are'} "
            f"not {_WANTED[self.precision]} ({how}): "
            "llama.cpp falls back where a row width is not a multiple of the K-quant block "
            "(256) and keeps the token embedding / output matrix wider"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def merge_gguf(
    base: Path,
    adapter: Path | None,
    out: Path,
    precision: str = "f16",
    metadata: dict[str, str] | None = None,
    threads: int = 1,
) -> MergeReport:
    """Write `base` + `adapter` (None: the base alone) at `precision` to `out`.

    `metadata` adds string keys to the GGUF header (e.g. `kolm.manifest_id`)."""
    if precision not in _WANTED:
        raise TrainingError(
            f"precision {precision!r} is not a merged precision",
            hint=f"choose one of {', '.join(_WANTED)}",
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if precision == "f16":
        merged = _write_f16(base, adapter, tmp, metadata or {})
        quantizer = "gguf (numpy)"
    else:
        with tempfile.TemporaryDirectory(dir=out.parent) as d:
            f16 = Path(d) / "merged-f16.gguf"
            merged = _write_f16(base, adapter, f16, metadata or {})
            quantize(f16, tmp, precision, threads)
        quantizer = "llama.cpp llama_model_quantize"
    tmp.replace(out)
    return describe(out, precision, merged, quantizer)


def describe(path: Path, precision: str, merged: int = 0, quantizer: str = "") -> MergeReport:
    """The report for a merged GGUF already on disk (e.g. one cached by an earlier compile)."""
    types, fallbacks = tensor_types(path, precision)
    return MergeReport(
        str(path), precision, path.stat().st_size, merged, types, fallbacks, quantizer
    )


def _write_f16(base: Path, adapter: Path | None, out: Path, metadata: dict[str, str]) -> int:
    """Every matrix at F16 (merged where the adapter touches it), vectors as they were."""
    import gguf
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    alpha, pairs = read_lora(adapter) if adapter is not None else (0.0, {})
    reader = GGUFReader(str(base))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(out), arch)
    _copy_metadata(reader, writer)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in sorted((metadata or {}).items()):
        writer.add_string(key, value)
    merged = 0
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name in pairs:
            a, b = pairs.pop(t.name)
            w = w + (alpha / a.shape[0]) * (b @ a)
            merged += 1
        dtype = np.float16 if w.ndim == 2 else np.float32
        writer.add_tensor(t.name, np.ascontiguousarray(w, dtype=dtype))
    if pairs:
        raise TrainingError(
            f"the adapter names tensors the base does not have: {', '.join(sorted(pairs)[:3])}",
            hint="the adapter was trained on a different base",
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return merged


def restamp(src: Path, dst: Path, metadata: dict[str, str]) -> None:
    """Copy a GGUF tensor for tensor (no re-quantizing), adding string keys to its header."""
    import gguf
    from gguf import GGUFReader

    reader = GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    _copy_metadata(reader, writer, skip=("GGUF.", "general.architecture", *metadata))
    for key, value in sorted(metadata.items()):
        writer.add_string(key, value)
    for t in reader.tensors:
        raw = t.tensor_type.name not in ("F16", "F32")
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type if raw else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _copy_metadata(reader, writer, skip: tuple[str, ...] = _SKIP_KEYS) -> None:
    from gguf import GGUFValueType

    for key, f in reader.fields.items():
        if key.startswith(skip):
            continue
        main = f.types[0]
        sub = f.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), main, sub_type=sub)


def quantize(src: Path, dst: Path, precision: str, threads: int = 1) -> None:
    """llama.cpp's quantizer, F16 GGUF → `precision` (its per-tensor fallbacks included)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[precision]
    params.nthread = threads
    with _quiet_stderr():
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), llama_cpp.byref(params)
        )
    if rc != 0:
        raise TrainingError(
            f"llama.cpp could not quantize {src} to {precision} (code {rc})",
            hint="try a wider precision (f16 or q8_0)",
        )


def tensor_types(path: Path, precision: str) -> tuple[dict[str, int], list[str]]:
    """Counts of tensor types in a GGUF, and the matrices not at the requested type."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    want = _WANTED[precision]
    counts: Counter[str] = Counter()
    fallbacks = []
    for t in reader.tensors:
        kind = t.tensor_type.name
        counts[kind] += 1
        if len(t.shape) == 2 and not kind.startswith(want) and not _mixed_ok(precision, kind):
            fallbacks.append(f"{t.name} ({int(t.shape[0])} wide) -> {kind}")
    return dict(sorted(counts.items())), fallbacks


def _mixed_ok(precision: str, kind: str) -> bool:
    """Q4_K_M deliberately keeps some tensors at Q6_K; that is the mix, not a fallback."""
    return precision == "q4_k" and kind in ("Q5_K", "Q6_K")


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp's quantizer logs every tensor to fd 2; keep it off the user's terminal."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
