"""Each precision of one compiled artifact: size, held-out accuracy, agreement, p50 latency.

    .venv/bin/python benchmarks/precision.py ARTIFACT.kolm [--threads 1] [--limit N]

ARTIFACT must be a default (base + adapter) build. For each precision the adapter
is merged into the base (kolm.merge; f16 by gguf, the rest by llama.cpp's
quantizer) and the merged model answers the artifact's held-out inputs with the
artifact's own decoding settings and recipe pack, as `kolm run` would. Agreement
is the share of held-out answers byte-identical to the unmerged student's;
artifact size is the .kolm file with the merged model in place of base + adapter.
Prints a table, then one JSON object per precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def heldout(art) -> tuple[list[str], list[str]]:
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    return [r["input"] for r in rows], [r["output"] for r in rows]


def answers(art, model: Path, adapter: Path | None, inputs: list[str], threads: int):
    """Outputs and p50 latency of one model on the inputs, loaded as `kolm run` loads it."""
    from kolm.evaluate import percentile
    from kolm.prompt import PromptFormat
    from kolm.runner import load_grammar, load_pack
    from kolm.runtime import Decoding, Student

    config = art.read_json("config.json")
    decoding = replace(Decoding(**config["decoding"]), threads=threads)
    student = Student(
        model,
        adapter,
        PromptFormat.from_dict(config["prompt_format"]),
        config["instruction"],
        decoding,
        pack=load_pack(art),
        grammar=load_grammar(art) if decoding.constrain else None,
    )
    try:
        student.answer(inputs[0])  # warm-up
        got = [student.answer(x) for x in inputs]
    finally:
        student.close()
    return [a.output for a in got], percentile([a.latency_s for a in got], 50)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--limit", type=int, help="only the first N held-out inputs")
    ap.add_argument("--precisions", default="f16,q8_0,q4_0,q4_k")
    args = ap.parse_args()

    from kolm.artifact import ADAPTER_PART, BASE_PART, open_artifact
    from kolm.merge import merge_gguf
    from kolm.precision import measure
    from kolm.runner import load_verifier

    art = open_artifact(args.artifact)
    if ADAPTER_PART not in art.manifest["parts"]:
        sys.exit("this benchmark needs a base + adapter artifact (compiled with quantize: adapter)")
    inputs, gold = heldout(art)
    inputs, gold = inputs[: args.limit], gold[: args.limit]
    verifier = load_verifier(art)

    def accuracy(outputs: list[str]) -> float:
        norm = verifier.check if verifier else None
        same = [
            (norm(o).normalized == norm(g).normalized) if norm else o.strip() == g.strip()
            for o, g in zip(outputs, gold, strict=True)
        ]
        return sum(same) / len(same)

    base, adapter = art.base_path(), art.materialize(ADAPTER_PART)
    parts = art.manifest["parts"]
    rest = args.artifact.stat().st_size - parts[ADAPTER_PART]["size"]
    rest -= parts[BASE_PART]["size"] if BASE_PART in parts else 0
    ref, ref_p50 = answers(art, base, adapter, inputs, args.threads)
    ref_acc = accuracy(ref)
    rows = [
        (
            measure(
                "adapter", base.stat().st_size + adapter.stat().st_size, ref, ref, ref_acc, ref_p50
            ),
            args.artifact.stat().st_size,
        )
    ]
    with tempfile.TemporaryDirectory() as d:
        for kind in args.precisions.split(","):
            merged = merge_gguf(base, adapter, Path(d) / f"{kind}.gguf", kind, threads=args.threads)
            outs, p50 = answers(art, Path(merged.path), None, inputs, args.threads)
            rep = measure(kind, merged.size, outs, ref, accuracy(outs), p50, merged.note(), ref_acc)
            rows.append((rep, rest + merged.size))
            Path(merged.path).unlink()
    print(
        f"artifact {args.artifact} ({art.manifest['task']['name']}), {len(inputs)} held-out inputs, "
        f"{args.threads} llama.cpp thread(s)"
    )
    print(
        f"{'precision':<10} {'artifact MB':>11} {'model MB':>9} {'accuracy':>9} {'agreement':>10} {'p50 ms':>7}  flag"
    )
    for rep, size in rows:
        print(
            f"{rep.kind:<10} {size / 1e6:>11.1f} {rep.model_bytes / 1e6:>9.1f} {rep.accuracy:>9.1%} "
            f"{rep.agreement:>10.1%} {rep.latency_p50_s * 1000:>7.0f}  {'FLAGGED' if rep.flagged else ''}"
        )
    for rep, size in rows:
        print(json.dumps(rep.to_dict() | {"artifact_bytes": size, "heldout": len(inputs)}))


if __name__ == "__main__":
    main()
