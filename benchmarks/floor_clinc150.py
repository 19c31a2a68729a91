"""The classical floor (TF-IDF + logistic regression, kolm.floor) on two label tasks.

    .venv/bin/python benchmarks/floor_clinc150.py [--data PATH/data_full.json]

1. The shipped example, examples/support-tickets: the split compile makes
   (kolm.data.split_heldout with the spec's seed and heldout_fraction).
2. CLINC150, all 150 in-scope intents: trained on `train` (15,000), scored on
   `test` (4,500); the out-of-scope rows are left out. Data read in place from
   ../shared/data/clinc150 (Larson et al., EMNLP 2019; CC BY 3.0).

No LLM is involved; this is the bar a compiled student has to clear.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
EXAMPLE = REPO / "examples" / "support-tickets" / "kolm.yaml"


def support_tickets():
    from kolm.data import load_examples, split_heldout
    from kolm.floor import label_floor
    from kolm.spec import load_spec

    spec = load_spec(EXAMPLE)
    examples = load_examples(spec.examples)
    train, held = split_heldout(examples, spec.heldout_fraction, spec.seed)
    labels = sorted({e.output for e in examples})
    rows = [(e.input, e.output) for e in train], [(e.input, e.output) for e in held]
    return label_floor(*rows, labels)


def clinc150(path: Path):
    from kolm.floor import label_floor

    data = json.loads(path.read_text())
    labels = sorted({label for _, label in data["train"]})
    return label_floor(data["train"], data["test"], labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=CLINC, help="CLINC150 data_full.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [("support-tickets (shipped split)", support_tickets())]
    if args.data.is_file():
        rows.append(("clinc150 (150 intents, test split)", clinc150(args.data)))
    else:
        print(f"skipping clinc150: {args.data} not found (pass --data)", file=sys.stderr)
    print(f"method: {rows[0][1].method}")
    width = max(len(name) for name, _ in rows)
    for name, f in rows:
        print(
            f"{name:<{width}}  accuracy {f.accuracy:.1%}  macro-F1 {f.macro_f1:.1%}  "
            f"train {f.train_examples} / held-out {f.heldout_examples}  {f.seconds:.1f} s"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
