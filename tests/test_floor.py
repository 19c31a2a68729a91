"""The classical floor: TF-IDF + logistic regression on a small synthetic label task, and how
compile's summary, `kolm inspect` and the reports show it (without importing scikit-learn)."""

import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from kolm.floor import METHOD, label_floor, predict_labels
from kolm.report import floor_verdict

REPO = Path(__file__).resolve().parents[1]
WORDS = {
    "billing": ["invoice", "charged", "refund of fee", "payment card", "billing cycle"],
    "login": ["password", "log in", "sign in", "two-factor code", "locked out"],
    "shipping": ["parcel", "delivery", "tracking number", "courier", "package late"],
}
FILLER = ["hello", "please help", "since yesterday", "my account", "thanks", "urgent", "again"]


def synthetic(n_per_label: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in WORDS.items():
        for _ in range(n_per_label):
            parts = rng.sample(FILLER, 3) + [rng.choice(words)]
            rng.shuffle(parts)
            rows.append((" ".join(parts), label))
    rng.shuffle(rows)
    return rows


def test_floor_learns_a_keyword_task_and_scores_like_the_student_metrics():
    train, held = synthetic(12, seed=1), synthetic(6, seed=2)
    f = label_floor(train, held, sorted(WORDS))
    assert f.method == METHOD and f.train_examples == 36 and f.heldout_examples == 18
    assert f.accuracy == 1.0 and f.macro_f1 == 1.0  # the keywords decide; chance is 1/3
    assert f.seconds < 30
    d = f.to_dict()
    assert set(d) == {
        "method",
        "accuracy",
        "macro_f1",
        "train_examples",
        "heldout_examples",
        "seconds",
    }
    assert f.correct == (True,) * 18


def test_floor_against_the_student_counts_the_rows_only_one_gets_right():
    train = synthetic(12, seed=1)
    held = [(x, "login" if y == "billing" else y) for x, y in synthetic(4, seed=3)]
    f = label_floor(train, held, sorted(WORDS))  # wrong on the 4 relabeled rows
    student = [True] * 12
    student[0] = student[1] = False
    cmp = f.against(student)
    wrong = [i for i, ok in enumerate(f.correct) if not ok]
    assert len(wrong) == 4
    assert cmp["only_student"] == len(set(wrong) - {0, 1})
    assert cmp["only_floor"] == len({0, 1} - set(wrong))
    assert 0 < cmp["p_value"] <= 1


def test_floor_scores_wrong_predictions_as_wrong():
    """Held-out billing rows relabeled `login`: the floor still says billing, and scores 8/12."""
    train = synthetic(12, seed=1)
    held = [(x, "login" if y == "billing" else y) for x, y in synthetic(4, seed=3)]
    f = label_floor(train, held, sorted(WORDS))
    assert f.accuracy == 8 / 12 and f.macro_f1 < 1.0


def test_one_training_class_predicts_it():
    assert predict_labels(["a", "b"], ["x", "x"], ["c", "d"]) == ["x", "x"]


def test_floor_verdict_flags_a_student_below_the_floor():
    floor = {"method": METHOD, "accuracy": 0.75, "macro_f1": 0.743}
    below = floor_verdict({"student": {"accuracy": 0.70}, "floor": floor})
    assert below.startswith("75.0% (macro-F1 74.3%)") and "BELOW the floor by 5.0 points" in below
    above = floor_verdict({"student": {"accuracy": 0.766}, "floor": floor})
    assert "above the floor by 1.6 points" in above and "BELOW" not in above
    assert "p =" not in above  # a manifest from before the row-by-row comparison
    paired = {**floor, "only_student": 10, "only_floor": 9, "p_value": 1.0}
    line = floor_verdict({"student": {"accuracy": 0.766}, "floor": paired})
    assert "(10 rows only the student gets right, 9 only the floor; p = 1.00," in line
    assert line.endswith("p = 1.00, could be chance)")
    sure = {**floor, "only_student": 12, "only_floor": 1, "p_value": 0.0034}
    assert "p = 0.00, unlikely to be chance" in floor_verdict(
        {"student": {"accuracy": 0.9}, "floor": sure}
    )
    assert floor_verdict({"student": {"accuracy": 0.9}}) is None


def _below_floor_manifest() -> dict:
    """A compile manifest (v2 K) whose student (50%) is below its floor (80%)."""
    from kolm.artifact import minimal_manifest

    student = {
        "accuracy": 0.5,
        "verifier_pass_rate": 1.0,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.1,
    }
    k_inputs = {
        "student_accuracy": 0.5,
        "teacher_accuracy": 1.0,
        "size_bytes": 1,
        "student_latency_s": 0.1,
        "teacher_latency_s": 1.0,
        "student_usd_per_call": 0.0,
        "teacher_usd_per_call": 0.001,
        "coverage": 1.0,
    }
    return {
        **minimal_manifest(labels=["a", "b"]),
        "metrics": {
            "heldout_examples": 10,
            "student": student,
            "base": {**student, "accuracy": 0.0},
            "teacher": {"source": "gold", "note": "n", "accuracy": 1.0, "latency_s": 1.0},
            "student_teacher_agreement": None,
            "llamacpp_torch_agreement": 1.0,
            "train": {"steps": 4, "final_loss": 0.1},
            "floor": {"method": METHOD, "accuracy": 0.8, "macro_f1": 0.79},
        },
        "kscore": {
            "K": 0.6667,
            "formula": "weighted-harmonic-v2",
            "components": {"A": 0.5, "S": 1.0, "L": 1.0, "C": 1.0, "V": 1.0},
            "weights": {},
            "inputs": k_inputs,
        },
        "gate": {"min_k": 0.7, "passed": False, "reasons": [], "overridden": True},
        "economics": {
            "teacher_usd_per_call": 0.001,
            "student_usd_per_call": 0.0,
            "compile_usd": 0.0,
            "hardware_usd_per_hour": 0,
            "teacher_source": "gold",
        },
    }


def test_inspect_and_reports_show_the_floor_without_importing_sklearn(tmp_path, kolm_home):
    """An artifact whose metrics carry a floor above the student: every view says BELOW."""
    from kolm.artifact import write_artifact
    from kolm.keys import KeyStore
    from kolm.report import write_reports

    (tmp_path / "config.json").write_text("{}")
    manifest = _below_floor_manifest()
    out = tmp_path / "t.kolm"
    write_artifact(out, {"config.json": tmp_path / "config.json"}, manifest, KeyStore())
    code = (
        "import sys\nfrom kolm import cli\n"
        f"cli.cli.main(['inspect', {str(out)!r}], standalone_mode=False)\n"
        "print('sklearn loaded' if 'sklearn' in sys.modules else 'sklearn not loaded')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    floor_row = next(x for x in r.stdout.splitlines() if x.startswith("TF-IDF floor"))
    assert "80.0%" in floor_row and "BELOW the floor by 30.0 points" in floor_row
    assert "weighted harmonic mean" in r.stdout and r.stdout.strip().endswith("sklearn not loaded")

    html = write_reports(out, manifest, {"heldout": [], "latencies_s": []}).read_text()
    md = out.with_name("t.report.md").read_text()
    assert "- Student, held-out: 50.0%\n" in md  # a manifest without the interval
    for text in (html, md):
        assert "BELOW the floor by 30.0 points" in text
        assert "floor: TF-IDF + logistic regression" in text and "weighted harmonic mean" in text


def test_compile_summary_flags_a_student_below_the_floor(tmp_path, capsys):
    from kolm.cli.compile import _print_compile_summary

    art = tmp_path / "t.kolm"
    art.write_bytes(b"x")
    result = SimpleNamespace(
        manifest=_below_floor_manifest(),
        artifact=art,
        artifact_id="ab" * 32,
        distill=None,
        cached_training=False,
        timings={"train": 1.0},
        report=tmp_path / "t.report.html",
    )
    _print_compile_summary(result)
    out = capsys.readouterr().out
    assert re.search(
        r"TF-IDF floor +80\.0% \(macro-F1 79\.0%\); the student's 50\.0% is BELOW", out
    )
    assert re.search(r"K-score +0\.667 \(A=0\.50 S=1\.00 L=1\.00 C=1\.00 V=1\.00\) gate 0\.70", out)
    assert re.search(r"student accuracy +50\.0%\n", out)  # an older manifest: no interval


def test_floor_on_the_shipped_example_split_is_the_recorded_figure():
    """compile's floor stage on examples/support-tickets' split: 48/64 (the 75.0% in the docs)."""
    from kolm.compiler import _floor
    from kolm.data import load_examples, split_heldout
    from kolm.spec import load_spec
    from kolm.verifier import synthesize

    spec = load_spec(REPO / "examples/support-tickets/kolm.yaml")
    examples = load_examples(spec.examples)
    train, held = split_heldout(examples, spec.heldout_fraction, spec.seed)  # as prepare() does
    v = synthesize([e.output for e in examples])
    p = SimpleNamespace(train=train, heldout=held, verifier=v, labels=list(v.labels))
    lines = []
    f = _floor(p, lines.append, [True] * 64)
    assert (f["train_examples"], f["heldout_examples"]) == (259, 64)
    assert f["accuracy"] == 0.75 and f["macro_f1"] == 0.7434
    assert (f["only_student"], f["only_floor"]) == (16, 0)  # a student right on every row
    assert lines == ["kolm: TF-IDF + logistic regression floor on the same split"]


def test_the_accuracy_interval_bounds_solve_the_wilson_equation():
    """Each Wilson bound p solves (p̂ - p)² = z² p (1 - p) / n, and the interval holds p̂."""
    from kolm.evaluate import wilson_interval

    z = 1.96
    for k, n in ((49, 64), (1, 20), (600, 600), (0, 12), (551, 600)):
        lo, hi = wilson_interval(k, n)
        p = k / n
        assert lo <= p <= hi
        for bound in (lo, hi):
            if 0 < bound < 1:
                assert abs((p - bound) ** 2 - z * z * bound * (1 - bound) / n) < 1e-12
    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(600, 600)[1] == 1.0
    from scipy.stats import binomtest  # scipy's z is 1.95996…, kolm's 1.96

    for k, n in ((49, 64), (1, 20), (551, 600)):  # 49/64: the shipped example's 76.6%
        ref = binomtest(k, n).proportion_ci(method="wilson")
        got = wilson_interval(k, n)
        assert abs(got[0] - ref.low) < 1e-4 and abs(got[1] - ref.high) < 1e-4
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_paired_p_value_is_the_exact_two_sided_binomial_test():
    from scipy.stats import binomtest

    from kolm.evaluate import paired_p_value

    for a, b in ((10, 9), (5, 0), (0, 5), (12, 1), (30, 14), (3, 3)):
        assert abs(paired_p_value(a, b) - binomtest(a, a + b, 0.5).pvalue) < 1e-12
    assert paired_p_value(0, 0) == 1.0
