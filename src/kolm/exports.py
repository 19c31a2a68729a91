"""Exports: write a verified artifact in the shape another runtime loads.

Three targets: `gguf` (one merged GGUF that plain llama.cpp loads), `ollama` (a
Modelfile beside its GGUF files: FROM, ADAPTER or merged weights, TEMPLATE in Go
template syntax, stop tokens, SYSTEM) and `peft` (a Hugging Face PEFT folder,
Q/K rows back in Hugging Face order). Each carries the manifest id and K it came
from, in `kolm-export.json` and in the GGUF header / Modelfile comment.
Knows the artifact's parts and the three formats; knows nothing of training or
evaluation, and does not import torch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kolm.artifact import ADAPTER_PART, Artifact, open_artifact, utc_now
from kolm.basemodel import file_sha256, gguf_metadata
from kolm.errors import ExportError
from kolm.export import MODULE_NAMES, PERMUTED_ARCHS
from kolm.keys import KeyStore
from kolm.merge import PRECISIONS, merge_gguf, restamp
from kolm.prompt import PromptFormat

TARGETS = ("gguf", "ollama", "peft")
RECORD = "kolm-export.json"
PEFT_BASE = "base/base.gguf"
"""Where a peft export puts the base GGUF that transformers loads."""
_HF_MODULES = {v: k for k, v in MODULE_NAMES.items()}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class ExportResult:
    """What an export wrote, and where it came from."""

    to: str
    out: str
    artifact_id: str
    k: float | None
    precision: str
    files: dict[str, str] = field(default_factory=dict)
    """File name → sha256, for every file written beside the record."""
    not_carried: list[str] = field(default_factory=list)
    """Parts of the artifact's behaviour the target runtime does not get."""
    created_at: str = ""

    def to_dict(self) -> dict:
        return {"format": "kolm-export", "version": 1, **asdict(self)}


def export_artifact(
    artifact: str | Path,
    to: str,
    out: Path,
    precision: str | None = None,
    keys: KeyStore | None = None,
    threads: int = 1,
) -> ExportResult:
    """Verify `artifact`, then write it to folder `out` for runtime `to`."""
    if to not in TARGETS:
        raise ExportError(
            f"unknown export target {to!r}", hint=f"choose one of {', '.join(TARGETS)}"
        )
    art = open_artifact(artifact, keys)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k = art.manifest.get("kscore", {}).get("K")
    stamp = {"kolm.manifest_id": art.id, "kolm.task": art.manifest["task"]["name"]}
    if k is not None:
        stamp["kolm.k"] = f"{k:.4f}"
    writer = {"gguf": _to_gguf, "ollama": _to_ollama, "peft": _to_peft}[to]
    chosen, files = writer(art, out, _precision(art, to, precision), stamp, threads)
    result = ExportResult(
        to,
        str(out),
        art.id,
        k,
        chosen,
        {name: file_sha256(out / name) for name in files},
        _not_carried(art),
        utc_now(),
    )
    (out / RECORD).write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return result


def built_precision(art: Artifact) -> str:
    """`adapter` for base + adapter artifacts, else the merged build's precision."""
    if ADAPTER_PART in art.manifest["parts"]:
        return "adapter"
    return str(art.manifest.get("precision", {}).get("kind", "f16"))


def _precision(art: Artifact, to: str, asked: str | None) -> str:
    built = built_precision(art)
    if asked is not None and asked not in PRECISIONS:
        raise ExportError(f"unknown precision {asked!r}", hint=f"one of {', '.join(PRECISIONS)}")
    if to == "peft":
        if built != "adapter":
            raise ExportError(
                f"this artifact is a merged {built} build: it has no adapter to export to PEFT",
                hint="compile with `--quantize adapter` (the default) to export a PEFT folder",
            )
        return "adapter"
    if built != "adapter":
        if asked not in (None, built):
            raise ExportError(
                f"this artifact is already a merged {built} build; re-quantizing it to {asked} "
                "would compound the loss",
                hint=f"export it as {built}, or compile with --quantize {asked}",
            )
        return built
    if asked == "adapter" and to == "gguf":
        raise ExportError(
            "a gguf export is one merged file; `adapter` keeps base and adapter apart",
            hint="use --to ollama for base + ADAPTER, or pick f16/q8_0/q4_0/q4_k",
        )
    return asked or ("adapter" if to == "ollama" else "f16")


def _model_gguf(art: Artifact, dest: Path, precision: str, stamp: dict, threads: int) -> None:
    """The merged model at `precision`, with the export's keys in its header."""
    base = art.base_path()
    if ADAPTER_PART in art.manifest["parts"]:
        merge_gguf(base, art.materialize(ADAPTER_PART), dest, precision, stamp, threads)
    else:
        restamp(base, dest, stamp)


def _to_gguf(art: Artifact, out: Path, precision: str, stamp: dict, threads: int):
    name = f"{art.manifest['task']['name']}-{precision}.gguf"
    _model_gguf(art, out / name, precision, stamp, threads)
    return precision, [name]


def _to_ollama(art: Artifact, out: Path, precision: str, stamp: dict, threads: int):
    config = art.read_json("config.json")
    if precision == "adapter":
        shutil.copyfile(art.base_path(), out / "base.gguf")
        shutil.copyfile(art.materialize(ADAPTER_PART), out / "adapter.gguf")
        files = ["base.gguf", "adapter.gguf"]
    else:
        files = [f"{art.manifest['task']['name']}-{precision}.gguf"]
        _model_gguf(art, out / files[0], precision, stamp, threads)
    text = modelfile(config, files, stamp)
    (out / "Modelfile").write_text(text)
    return precision, [*files, "Modelfile"]


def modelfile(config: dict, files: list[str], stamp: dict) -> str:
    """An Ollama Modelfile: FROM (and ADAPTER), TEMPLATE, SYSTEM, PARAMETERs."""
    fmt = PromptFormat.from_dict(config["prompt_format"])
    system = config["instruction"]
    if '"""' in system:
        raise ExportError('the instruction contains """, which a Modelfile cannot quote')
    d = config["decoding"]
    lines = [
        f"# kolm export of task {stamp['kolm.task']}: manifest {stamp['kolm.manifest_id']}"
        + (f", K {stamp['kolm.k']}" if "kolm.k" in stamp else ""),
        f"FROM ./{files[0]}",
        *([f"ADAPTER ./{files[1]}"] if len(files) > 1 else []),
        f'TEMPLATE """{go_template(fmt)}"""',
        f'SYSTEM """{system}"""',
        *(f"PARAMETER stop {json.dumps(s)}" for s in stop_tokens(fmt)),
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {int(d['max_tokens'])}",
        f"PARAMETER num_ctx {int(d['n_ctx'])}",
        f"PARAMETER seed {int(d['seed'])}",
    ]
    return "\n".join(lines) + "\n"


def go_template(fmt: PromptFormat) -> str:
    """The chat template as Ollama's Go template: the structural text around .System and .Prompt."""
    segs = fmt.chat([("system", "S"), ("user", "U")])
    pieces = [s.text for s in segs if s.structural]
    text = (
        _go_literal(pieces[0])
        + "{{ .System }}"
        + _go_literal(pieces[1])
        + "{{ .Prompt }}"
        + _go_literal(pieces[2])
    )
    if '"""' in text:
        raise ExportError('the chat template contains """, which a Modelfile cannot quote')
    return text


def _go_literal(text: str) -> str:
    """Template text with any `{{` written so Go prints it instead of running it."""
    return text.replace("{{", '{{ "{{" }}')


def stop_tokens(fmt: PromptFormat) -> list[str]:
    return [fmt.eos] if fmt.eos else []


def _to_peft(art: Artifact, out: Path, precision: str, stamp: dict, threads: int):
    from safetensors.numpy import save_file

    config = art.read_json("config.json")
    base = art.base_path()
    tensors = peft_tensors(art.materialize(ADAPTER_PART), base)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={**stamp, "format": "pt"})
    train = config["train"]
    (out / "adapter_config.json").write_text(
        json.dumps(adapter_config(train, art.manifest["base"]["name"], tensors), indent=1) + "\n"
    )
    # In a subfolder: transformers reads a folder holding adapter_config.json as an
    # adapter and would go looking for the base by name.
    (out / "base").mkdir(exist_ok=True)
    shutil.copyfile(base, out / PEFT_BASE)
    return precision, ["adapter_model.safetensors", "adapter_config.json", PEFT_BASE]


def adapter_config(train: dict, base_name: str, tensors: dict) -> dict:
    """PEFT's LoraConfig for the adapter, with the modules that were actually trained."""
    targets = sorted({name.split(".")[-3] for name in tensors})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": int(train["lora_rank"]),
        "lora_alpha": float(train["lora_alpha"]),
        "lora_dropout": float(train.get("lora_dropout", 0.0)),
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def peft_tensors(adapter: Path, base: Path) -> dict:
    """The GGUF adapter's tensors under PEFT's names, Q/K rows back in Hugging Face order."""
    import numpy as np

    from kolm.export import read_lora

    arch = str(gguf_metadata(base, ("general.architecture",))["general.architecture"])
    heads = gguf_metadata(base, (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"))
    n_head = int(heads[f"{arch}.attention.head_count"])
    n_kv = int(heads.get(f"{arch}.attention.head_count_kv", n_head))
    _, pairs = read_lora(adapter)
    out = {}
    for name, (a, b) in pairs.items():
        _, layer, module, _ = name.split(".")
        hf = _HF_MODULES[module]
        if arch in PERMUTED_ARCHS and hf in ("q_proj", "k_proj"):
            b = unpermute_rows(b, n_head if hf == "q_proj" else n_kv)
        group = "self_attn" if hf in _ATTN else "mlp"
        stem = f"base_model.model.model.layers.{layer}.{group}.{hf}"
        out[f"{stem}.lora_A.weight"] = np.ascontiguousarray(a, dtype=np.float32)
        out[f"{stem}.lora_B.weight"] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def unpermute_rows(w, n_head: int):
    """Inverse of `export.permute_rows`: llama.cpp's Q/K row order back to Hugging Face's."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _not_carried(art: Artifact) -> list[str]:
    """What `kolm run` does that the exported model alone does not."""
    notes = []
    config = art.read_json("config.json")
    if "recall" in config:
        notes.append("recall index: prompts are not grounded in the corpus")
    if config["decoding"].get("constrain"):
        notes.append("grammar constraint from the verifier")
    if "verifier.json" in art.manifest["parts"]:
        notes.append("verifier checks and receipts (answers are not verified or logged)")
    return notes
