"""A many-class benchmark: the compiled student on all 150 CLINC150 intents vs the floor.

    .venv/bin/python benchmarks/clinc150.py --steps 0 --epochs 3 --batch-size 8 --free-only
    .venv/bin/python benchmarks/clinc150.py --per-intent 10 --heldout 4 --steps 190
    .venv/bin/python benchmarks/clinc150.py --intents 30 --steps 38 --base auto --beat-floor --free-only
    .venv/bin/python benchmarks/clinc150.py --steps 0 --work c150-b8 --decoding grammar --methods dpo,orpo,kto,simpo

Builds a task from the CLINC150 `train` split (Larson et al., EMNLP 2019; CC BY 3.0;
read in place from shared/data/clinc150): `--per-intent` training rows and `--heldout`
held-out rows for each of the 150 in-scope intents, an instruction naming every intent,
and compiles it twice with kolm (SFT once; the second compile reuses the training
cache): free decoding, then `run.constrain: true` (a llama.cpp grammar over the label
set). Prints held-out accuracy, the TF-IDF floor on the same split, the label
validity rate (share of answers that are one of the 150 labels), training steps,
seconds and peak RSS for each. `--methods` compiles once per `train.method` in the same
work folder, so the SFT stage is trained once and each preference stage continues it
(and the untrained base is scored once). `--steps 0` trains `--epochs` passes instead (the
first line: kolm's defaults, ~53 minutes on 2 cores, ~45 of them training). The
instruction alone is ~670 tokens (run once per batch in training and in the PyTorch
check, but every step still carries it), and each compile also scores the
untrained base on all 600 held-out inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [
    REPO.parent / "shared" / "data" / "clinc150" / "data_full.json",
    Path("/work/shared/data/clinc150/data_full.json"),
]


def build_task(
    data_path: Path,
    folder: Path,
    per_intent: int,
    heldout: int,
    steps: int,
    intents: int = 150,
    base: str = "smollm2-135m-instruct",
    beat_floor: bool = False,
    batch_size: int = 8,
    epochs: float = 3.0,
    learning_rate: float | None = None,
) -> Path:
    data = json.loads(data_path.read_text())
    by_label: dict[str, list[str]] = {}
    for text, label in data["train"]:
        by_label.setdefault(label, []).append(text)
    rng = random.Random(0)
    if intents < len(by_label):  # a seeded sample of the intents
        by_label = {k: by_label[k] for k in rng.sample(sorted(by_label), intents)}
    rows = []
    for label in sorted(by_label):
        texts = rng.sample(by_label[label], per_intent + heldout)
        rows += [{"input": t, "output": label} for t in texts]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    instruction = (
        "Classify the user's request into exactly one intent. Answer with the intent name only, one of: "
        + ", ".join(sorted(by_label))
        + "."
    )
    spec = {
        "name": "clinc150",
        "description": instruction,
        "examples": "examples.jsonl",
        "heldout_fraction": heldout / (per_intent + heldout),
        "seed": 0,
        "base": base,
        "gate": {"min_k": 0.7, "beat_floor": beat_floor},
        "train": {
            **({"steps": steps} if steps else {"epochs": epochs}),
            "batch_size": batch_size,
            **({"learning_rate": learning_rate} if learning_rate else {}),
            "max_seq_len": 1400,
        },
        "run": {"n_ctx": 2048},
    }
    (folder / "kolm.yaml").write_text(json.dumps(spec, indent=1))
    return folder / "kolm.yaml"


def compile_once(spec_path: Path, out: Path, constrain: bool, method: str = "sft") -> dict:
    from kolm.compiler import compile_task
    from kolm.spec import load_spec

    spec = load_spec(spec_path)
    spec = dataclasses.replace(
        spec,
        run=dataclasses.replace(spec.run, constrain=constrain),
        train=dataclasses.replace(spec.train, method=method),
    )
    t = time.perf_counter()
    result = compile_task(spec, out, progress=True, force=True)
    m = result.manifest["metrics"]
    pref = m["train"].get("preference", {})
    return {
        "method": method,
        "base": result.manifest["base"]["name"],
        "ladder": result.manifest.get("ladder"),
        "constrain": constrain,
        "heldout": m["heldout_examples"],
        "student_accuracy": round(m["student"]["accuracy"], 4),
        "floor_accuracy": round(m["floor"]["accuracy"], 4),
        "label_validity": round(m["student"]["verifier_pass_rate"], 4),
        "K": result.manifest["kscore"]["K"],
        "train_steps": m["train"]["steps"],
        "train_seconds": m["train"]["seconds"],
        "train_tokens_per_s": m["train"]["tokens_per_second"],
        "pairs": pref.get("pairs_by_source"),
        "pref_steps": pref.get("steps"),
        "pref_seconds": pref.get("seconds"),
        "agreement": m["llamacpp_torch_agreement"],
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "seconds": round(time.perf_counter() - t, 1),
    }


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=next((p for p in CANDIDATES if p.is_file()), None))
    ap.add_argument("--per-intent", type=int, default=10, help="training rows per intent")
    ap.add_argument("--heldout", type=int, default=4, help="held-out rows per intent")
    ap.add_argument(
        "--steps",
        type=int,
        default=190,
        help="optimizer steps (190: one epoch at batch 8); 0: --epochs",
    )
    ap.add_argument("--epochs", type=float, default=3.0, help="passes over the rows when --steps 0")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--learning-rate",
        type=float,
        help="train.learning_rate (default: the base's own: 0.002, 0.001 for gemma3-270m)",
    )
    ap.add_argument("--work", type=Path, default=Path("clinc150-task"))
    ap.add_argument("--intents", type=int, default=150, help="a seeded sample of the intents")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="a base name, or auto")
    ap.add_argument(
        "--beat-floor", action="store_true", help="gate.beat_floor: with --base auto, climb"
    )
    ap.add_argument("--free-only", action="store_true", help="--decoding free")
    ap.add_argument(
        "--decoding", default="free,grammar", help="free, grammar (run.constrain) or both"
    )
    ap.add_argument("--methods", default="sft", help="train.method values, comma-separated")
    args = ap.parse_args()
    if args.data is None or not args.data.is_file():
        sys.exit("clinc150 data_full.json not found; pass --data PATH")
    spec = build_task(
        args.data,
        args.work,
        args.per_intent,
        args.heldout,
        args.steps,
        args.intents,
        args.base,
        args.beat_floor,
        args.batch_size,
        args.epochs,
        args.learning_rate,
    )
    decodings = ["free"] if args.free_only else args.decoding.split(",")
    if not set(decodings) <= {"free", "grammar"}:
        sys.exit(f"--decoding takes free and/or grammar, not {args.decoding!r}")
    for method in args.methods.split(","):
        for decoding in decodings:
            constrain = decoding == "grammar"
            name = (
                f"clinc150-{constrain}.kolm"
                if method == "sft"
                else f"clinc150-{method}-{decoding}.kolm"
            )
            row = compile_once(spec, args.work / name, constrain, method)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
