"""Export: write a trained PEFT LoRA adapter as a GGUF adapter llama.cpp loads, and
read one back.

Knows the Hugging Face → GGUF tensor names for llama-family bases, the row
permutation llama.cpp applies to Q and K weights (so B matrices of q_proj/k_proj
must be permuted the same way), and the tensor type that makes llama.cpp's
adapter path batch-invariant (below), with the padding and scaling it needs,
which `read_lora` undoes. Knows nothing about training or the artifact.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from kolm.basemodel import gguf_metadata
from kolm.errors import TrainingError

# Hugging Face module name → llama.cpp tensor name inside `blk.N.`
MODULE_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
# Architectures whose converter permutes Q/K rows (rotary layout differs from HF).
PERMUTED_ARCHS = {"llama"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

ADAPTER_TYPES = ("q8_0", "f32")
"""How the adapter's tensors are stored. llama.cpp adds a LoRA's update with two
small matmuls per weight. At F32 (or F16) the CPU backend sums those in an order
that depends on the batch's shape, so a token's logits differ, by up to ~0.9,
between a one-token step and a later row of a batched evaluation, and the recipe
pack's drafts (verified in one batch) are not bit-exact. At Q8_0 the matmuls take
the per-row 8-bit dot products the base's own weights take, and every row of a
batch matches the one-token step (docs/benchmarks.md, "A batch-invariant adapter").
The shipped tickets example's 64 held-out answers are the same at either type."""
Q8_BLOCK = 32
"""Q8_0 packs 32 values along a tensor's first GGUF dimension, which is the rank for
lora_b: the rank is padded with zeros to a multiple of it. B·A is unchanged, and
alpha is scaled by the same factor, since llama.cpp scales the update by alpha / rank."""
RANK_KEY = "kolm.adapter.rank"
"""The trained rank, before padding (absent in adapters written at F32)."""
ALPHA_KEY = "kolm.adapter.alpha"
"""The trained alpha (`adapter.lora.alpha` is scaled for the padding and for B_SCALE_KEY)."""
B_SCALE_KEY = "kolm.adapter.b_scale"
"""The power of two B was multiplied by before quantizing (alpha divided by it, so the
update is unchanged): it keeps Q8_0's float16 block scales out of the subnormal range
for a B whose entries are all small."""


def permute_rows(w, n_head: int):
    """llama.cpp's Q/K row order: per head, interleave the two rotary halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_lora_gguf(
    model, base_gguf: Path, out: Path, alpha: float, tensor_type: str = "q8_0"
) -> int:
    """Write the adapter of a PEFT model; returns the number of tensor pairs written."""
    import numpy as np
    from peft import get_peft_model_state_dict

    arch = str(gguf_metadata(base_gguf, ("general.architecture",)).get("general.architecture", ""))
    heads = gguf_metadata(
        base_gguf, (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv")
    )
    n_head = int(heads.get(f"{arch}.attention.head_count", 0))
    n_kv = int(heads.get(f"{arch}.attention.head_count_kv", n_head))
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    with warnings.catch_warnings():
        # peft looks for a config.json beside the base to check the vocabulary; a GGUF has none.
        warnings.simplefilter("ignore", UserWarning)
        state = get_peft_model_state_dict(model)
    for key, tensor in state.items():
        m = _KEY.search(key)
        if not m or m.group(2) not in MODULE_NAMES:
            raise TrainingError(
                f"cannot export adapter tensor {key!r} to GGUF (unsupported module)"
            )
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = (
            tensor.detach().float().cpu().numpy()
        )
    named = {}
    for (layer, module), ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        if arch in PERMUTED_ARCHS and module in ("q_proj", "k_proj"):
            b = permute_rows(b, n_head if module == "q_proj" else n_kv)
        named[f"blk.{layer}.{MODULE_NAMES[module]}.weight"] = (a, b)
    write_adapter(named, arch, alpha, out, tensor_type)
    return len(pairs)


def write_adapter(
    pairs: dict, arch: str, alpha: float, out: Path, tensor_type: str = "q8_0"
) -> str:
    """Write (A, B) pairs keyed by base tensor name as a GGUF LoRA adapter.

    A is rank × in, B is out × rank (PEFT's layout), float32 arrays. Returns the
    tensor type written: `q8_0` falls back to `f32` when an input width is not a
    multiple of 32 (no such base is registered today)."""
    import gguf
    import numpy as np

    if tensor_type not in ADAPTER_TYPES:
        raise TrainingError(
            f"adapter tensor type {tensor_type!r} is not supported",
            hint=f"choose one of {', '.join(ADAPTER_TYPES)}",
        )
    ranks = {a.shape[0] for a, _ in pairs.values()}
    if len(ranks) != 1:
        raise TrainingError(f"the adapter's pairs have different ranks: {sorted(ranks)}")
    rank = ranks.pop()
    if tensor_type == "q8_0" and not _fits_q8(pairs):
        tensor_type = "f32"
    stored = -(-rank // Q8_BLOCK) * Q8_BLOCK if tensor_type == "q8_0" else rank
    b_scale = _b_scale(pairs) if tensor_type == "q8_0" else 1.0
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha) * stored / rank / b_scale)
    if tensor_type == "q8_0":
        writer.add_uint32(RANK_KEY, rank)
        writer.add_float32(ALPHA_KEY, float(alpha))
        writer.add_float32(B_SCALE_KEY, b_scale)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, (a, b) in pairs.items():
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if tensor_type == "f32":
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
            continue
        a = np.pad(a, ((0, stored - rank), (0, 0)))
        b = np.pad(b * np.float32(b_scale), ((0, 0), (0, stored - rank)))
        for suffix, m in (("lora_a", a), ("lora_b", b)):
            data = gguf.quants.quantize(np.ascontiguousarray(m), q8)
            writer.add_tensor(f"{name}.{suffix}", data, raw_shape=data.shape, raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensor_type


def _fits_q8(pairs: dict) -> bool:
    """Whether every A's input width fills whole Q8_0 blocks (B's rank is padded)."""
    return not any(a.shape[1] % Q8_BLOCK for a, _ in pairs.values())


def _b_scale(pairs: dict) -> float:
    """2^k bringing the largest |B| entry into [0.5, 1] (k from 0 to 16)."""
    import math

    import numpy as np

    top = max((float(np.abs(b).max()) for _, b in pairs.values() if b.size), default=0.0)
    if not top or not math.isfinite(top):
        return 1.0
    return float(2.0 ** min(16, max(0, math.floor(-math.log2(top)))))


def read_lora(adapter: Path):
    """The adapter's alpha and (A, B) float32 pairs by base tensor name, at the trained
    rank: the zero padding of a Q8_0 adapter is cut off and alpha scaled back with it."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(adapter))
    alpha_field = r.fields.get("adapter.lora.alpha")
    if alpha_field is None:
        raise TrainingError(f"{adapter} is not a GGUF LoRA adapter (no adapter.lora.alpha)")
    alpha = float(alpha_field.contents())
    rank_field = r.fields.get(RANK_KEY)
    rank = int(rank_field.contents()) if rank_field is not None else None
    scale_field = r.fields.get(B_SCALE_KEY)
    b_scale = float(scale_field.contents()) if scale_field is not None else 1.0
    pairs: dict[str, dict[str, object]] = {}
    stored = None
    for t in r.tensors:
        name, _, kind = t.name.rpartition(".lora_")
        m = dequantize(t.data, t.tensor_type).astype("float32", copy=False)
        if kind == "a":
            stored = m.shape[0]
        if rank is not None:
            m = m[:rank] if kind == "a" else m[:, :rank] / b_scale
        pairs.setdefault(name, {})[kind] = m
    alpha_field = r.fields.get(ALPHA_KEY)
    if alpha_field is not None:
        alpha = float(alpha_field.contents())
    elif rank is not None and stored:
        alpha = alpha * rank / stored
    return alpha, {n: (ab["a"], ab["b"]) for n, ab in pairs.items()}


def adapter_format(adapter: Path) -> dict:
    """How an adapter GGUF stores its tensors: type, trained rank and stored rank."""
    from gguf import GGUFReader

    r = GGUFReader(str(adapter))
    rank_field = r.fields.get(RANK_KEY)
    types = sorted({t.tensor_type.name.lower() for t in r.tensors})
    stored = next((int(t.shape[1]) for t in r.tensors if t.name.endswith(".lora_a")), 0)
    return {
        "tensor_type": "/".join(types),
        "rank": int(rank_field.contents()) if rank_field is not None else stored,
        "stored_rank": stored,
    }


def requantize(adapter: Path, arch: str, tensor_type: str = "q8_0") -> bool:
    """Rewrite an adapter written at another type (an older compile's cached F32 one)
    at `tensor_type`, in place; returns whether it was rewritten."""
    if adapter_format(adapter)["tensor_type"] == tensor_type:
        return False
    import os
    import tempfile

    alpha, pairs = read_lora(adapter)
    if tensor_type == "q8_0" and not _fits_q8(pairs):
        return False  # it would be written at F32 again
    fd, name = tempfile.mkstemp(dir=adapter.parent, prefix=adapter.name + ".", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        write_adapter(pairs, arch, alpha, tmp, tensor_type)
        tmp.replace(adapter)
        return True
    finally:
        tmp.unlink(missing_ok=True)
