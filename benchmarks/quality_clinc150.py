"""Quality on CLINC150 intents: seeds + oracle-labeled pool → student, scored on the test split.

    .venv/bin/python benchmarks/quality_clinc150.py                 # 8 intents, ~5 min on 2 cores
    .venv/bin/python benchmarks/quality_clinc150.py --full          # all 150 intents (hours on CPU)

Data: ../shared/data/clinc150 (Larson et al., EMNLP 2019; CC BY 3.0), read in
place. The teacher is the loopback oracle (OpenAI protocol) that answers right
with probability p and otherwise wrong or malformed; kolm asks it k times per
input and keeps the verified majority.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intents", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=10, help="labeled seed examples per intent")
    ap.add_argument(
        "--pool", type=int, default=40, help="unlabeled train inputs per intent (max 90)"
    )
    ap.add_argument("--p", type=float, default=0.7, help="oracle accuracy per sample")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--full", action="store_true", help="all 150 intents, all train inputs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.full:
        args.intents, args.pool = 150, 90
    from tests.oracle import Oracle

    from kolm.compiler import compile_task
    from kolm.runner import eval_artifact
    from kolm.spec import load_spec

    data = json.loads(DATA.read_text())
    rng = random.Random(args.seed)
    intents = sorted(rng.sample(sorted({label for _, label in data["train"]}), args.intents))
    train = {i: [t for t, label in data["train"] if label == i] for i in intents}
    test = [(t, label) for t, label in data["test"] if label in intents]
    truth = {t: label for t, label in data["train"] + data["test"] if label in intents}
    oracle = Oracle(truth, intents, p_correct=args.p, p_malformed=0.1, seed=args.seed)
    url = oracle.start()
    os.environ.setdefault("KOLM_OPENAI_COMPATIBLE_API_KEY", "benchmark")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["KOLM_HOME"] = str(tmp / "home")
        seeds = [{"input": t, "output": i} for i in intents for t in train[i][: args.seeds]]
        pool = [t for i in intents for t in train[i][args.seeds : args.seeds + args.pool]]
        (tmp / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seeds))
        (tmp / "pool.txt").write_text("\n".join(pool) + "\n")
        (tmp / "test.jsonl").write_text(
            "".join(json.dumps({"input": t, "output": i}) + "\n" for t, i in test)
        )
        desc = (
            "Classify the user's request into one intent. Answer with the intent name only, one of: "
            + ", ".join(intents)
            + "."
        )
        (tmp / "kolm.yaml").write_text(
            f"name: clinc{args.intents}\ndescription: {json.dumps(desc)}\nexamples: seeds.jsonl\nunlabeled: pool.txt\n"
            f"heldout_fraction: 0.2\ntrain: {{epochs: {args.epochs}, max_seq_len: 192}}\n"
            f"teacher: {{model: 'openai-compatible:oracle@{url}/v1', k: {args.k}}}\n"
        )
        result = compile_task(load_spec(tmp / "kolm.yaml"), tmp / "m.kolm", force=True)
        compiled_s = time.perf_counter() - t0
        m = eval_artifact(tmp / "m.kolm", tmp / "test.jsonl")
        label_acc = _label_accuracy(result, truth)
        teacher_test = sum(oracle.answer_for(t, 0).strip(".").lower() == i for t, i in test) / len(
            test
        )
    oracle.stop()
    man = result.manifest
    d = man["distill"]
    rows = [
        ("intents / seeds per intent / pool", f"{args.intents} / {args.seeds} / {len(pool)}"),
        ("oracle p (one sample right)", f"{args.p:.2f}"),
        ("pool labeled (verified majority of k)", f"{d['labeled']} of {d['inputs']}, k={args.k}"),
        ("teacher-label accuracy vs truth", f"{label_acc:.1%}"),
        ("teacher accuracy, test split (1 sample)", f"{teacher_test:.1%}"),
        (
            "student accuracy, test split",
            f"{m['accuracy']:.1%} (macro-F1 {m['macro_f1']:.1%}, n={m['n']})",
        ),
        ("untrained base accuracy (held-out)", f"{man['metrics']['base']['accuracy']:.1%}"),
        (
            "student / teacher agreement (held-out)",
            f"{man['metrics']['student_teacher_agreement']:.1%}",
        ),
        ("K-score (held-out)", f"{man['kscore']['K']:.3f}"),
        ("student latency p50 (test)", f"{m['latency_p50_s'] * 1000:.0f} ms"),
        ("wall time: compile / total", f"{compiled_s:.0f} s / {time.perf_counter() - t0:.0f} s"),
    ]
    width = max(len(a) for a, _ in rows)
    print("\n".join(f"{a:<{width}}  {b}" for a, b in rows))


def _label_accuracy(result, truth: dict) -> float:
    import zipfile

    with zipfile.ZipFile(result.artifact) as z:
        items = [json.loads(x) for x in z.read("distilled.jsonl").decode().splitlines()]
    labeled = [x for x in items if x["output"]]
    return sum(x["output"] == truth[x["input"]] for x in labeled) / max(1, len(labeled))


if __name__ == "__main__":
    main()
