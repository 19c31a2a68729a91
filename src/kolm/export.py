"""Export: write a trained PEFT LoRA adapter as a GGUF adapter llama.cpp loads.

Knows the Hugging Face → GGUF tensor names for llama-family bases and the row
permutation llama.cpp applies to Q and K weights (so B matrices of q_proj/k_proj
must be permuted the same way). Knows nothing about training or the artifact.
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


def permute_rows(w, n_head: int):
    """llama.cpp's Q/K row order: per head, interleave the two rotary halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_lora_gguf(model, base_gguf: Path, out: Path, alpha: float) -> int:
    """Write the adapter of a PEFT model; returns the number of tensor pairs written."""
    import gguf
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
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for (layer, module), ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        if arch in PERMUTED_ARCHS and module in ("q_proj", "k_proj"):
            b = permute_rows(b, n_head if module == "q_proj" else n_kv)
        name = f"blk.{layer}.{MODULE_NAMES[module]}.weight"
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(pairs)
