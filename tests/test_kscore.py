"""K-score arithmetic, the gate's verdicts, ROI, the classical floor, and the evaluation metrics."""

import re
from pathlib import Path

import pytest

from kolm.evaluate import field_accuracy, label_metrics, task_metrics
from kolm.kscore import (
    FORMULA,
    LEGACY_FORMULA,
    SIZE_REFERENCE_BYTES,
    WEIGHTS,
    KInputs,
    combine,
    gate,
    kscore,
    roi,
)
from kolm.verifier import synthesize

from .conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "k-score.md"
FIXTURES = Path(__file__).parent / "fixtures"


def inputs(**kw) -> KInputs:
    base = dict(
        student_accuracy=0.9,
        teacher_accuracy=0.95,
        size_bytes=300_000_000,
        student_latency_s=0.1,
        teacher_latency_s=0.8,
        student_usd_per_call=0.0,
        teacher_usd_per_call=0.002,
        coverage=0.98,
    )
    return KInputs(**{**base, **kw})


def _doc_table(after: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line containing `after` in the doc."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if not set("".join(cells)) <= set("- "):
            rows.append(cells)
    return rows[1:]  # without the header


def test_known_inputs_give_the_documented_score():
    s = kscore(inputs())
    assert pytest.approx(0.9 / 0.95) == s.A
    assert pytest.approx(1 - 300_000_000 / SIZE_REFERENCE_BYTES) == s.S
    assert s.L == 1.0 and s.C == 1.0 and pytest.approx(0.98) == s.V
    harmonic = 1 / (0.40 / s.A + 0.15 / s.S + 0.15 + 0.15 + 0.15 / 0.98)
    assert pytest.approx(harmonic) == s.K
    # The first worked example in docs/k-score.md, row by row.
    rows = {r[0]: r for r in _doc_table("## Worked examples")}
    for c in WEIGHTS:
        value, term = float(rows[c][2]), float(rows[c][3])
        assert round(getattr(s, c), 4) == value and round(WEIGHTS[c] / getattr(s, c), 4) == term
    assert round(s.K, 4) == float(rows["K"][3])
    assert s.to_dict()["formula"] == FORMULA


def test_worked_examples_at_three_accuracies_match_the_doc():
    """The A = 0.25 / 0.5 / 0.9 table: every figure recomputed from the shipped example's inputs."""
    rows = _doc_table("worked-examples:")
    assert [float(r[0]) for r in rows] == [0.25, 0.5, 0.9]
    for a, s_, l_, c_, v, k_new, k_old, verdict in rows:
        s = kscore(
            KInputs(
                student_accuracy=float(a),
                teacher_accuracy=1.0,
                size_bytes=108_200_000,
                student_latency_s=0.129,
                teacher_latency_s=1.0,
                student_usd_per_call=0.0,
                teacher_usd_per_call=0.001,
                coverage=1.0,
            )
        )
        assert (round(s.S, 4), s.L, s.C, s.V) == (float(s_), float(l_), float(c_), float(v))
        assert round(s.K, 4) == float(k_new)
        assert round(combine(s.parts, LEGACY_FORMULA), 4) == float(k_old)
        assert verdict == ("passes" if gate(s, 0.70).passed else "blocked")
    # The accuracy each formula needs to reach 0.70 with the other components as above.
    new, old = re.search(r"needs A ≥ ([\d.]+) \(([\d.]+) before\)", DOC.read_text()).groups()
    rest = {"S": float(rows[0][1]), "L": 1.0, "C": 1.0, "V": 1.0}
    a_new = 0.40 / (1 / 0.70 - sum(WEIGHTS[c] / x for c, x in rest.items()))
    a_old = (0.70 - sum(WEIGHTS[c] * x for c, x in rest.items())) / 0.40
    assert (f"{a_new:.3f}", f"{a_old:.3f}") == (new, old)
    assert combine({**rest, "A": a_new}) == pytest.approx(0.70)
    assert combine({**rest, "A": a_old}, LEGACY_FORMULA) == pytest.approx(0.70)


def test_k_is_zero_when_any_component_is_zero():
    perfect = dict.fromkeys(WEIGHTS, 1.0)
    assert combine(perfect) == pytest.approx(1.0)
    for c in WEIGHTS:
        assert combine({**perfect, c: 0.0}) == 0.0
    assert kscore(inputs(coverage=0.0)).K == 0.0
    assert kscore(inputs(teacher_accuracy=0.0)).K == 0.0
    assert kscore(inputs(size_bytes=SIZE_REFERENCE_BYTES)).K == 0.0
    verdict = gate(kscore(inputs(coverage=0.0)), 0.70)
    assert not verdict.passed and "V (coverage) = 0.00" in verdict.reasons[0]


def test_a_free_teacher_does_not_zero_the_cost_component():
    assert kscore(inputs(teacher_usd_per_call=0.0)).C == 1.0
    assert kscore(inputs(teacher_usd_per_call=0.0, student_usd_per_call=1e-6)).C == 0.0


def test_weak_accuracy_is_no_longer_bought_back_by_the_other_components():
    """40% of the teacher's accuracy, everything else perfect: passed the old gate, fails the new."""
    weak = kscore(inputs(student_accuracy=0.4, teacher_accuracy=1.0, size_bytes=0, coverage=1.0))
    assert (weak.S, weak.L, weak.C, weak.V) == (1.0, 1.0, 1.0, 1.0)
    assert combine(weak.parts, LEGACY_FORMULA) == pytest.approx(0.76)  # ≥ 0.70: shipped before
    assert pytest.approx(0.625) == weak.K
    verdict = gate(weak, 0.70)
    assert not verdict.passed and "weakest: A (accuracy) = 0.40, costs 0.375" in verdict.reasons[0]


def test_old_artifacts_keep_and_show_their_recorded_k(kolm_home):
    """kscore-v1.kolm: signed by kolm 0.1's formula (no kscore.formula); K is shown as recorded."""
    env = {"KOLM_HOME": str(kolm_home)}
    r = run_cli("keys", "trust", str(FIXTURES / "kscore-v1.pub"), env=env)
    assert r.returncode == 0, r.stderr
    path = str(FIXTURES / "kscore-v1.kolm")
    assert run_cli("verify", path, env=env).returncode == 0
    r = run_cli("inspect", path, env=env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("K-score"))
    assert "0.901 (A=0.77 S=0.97" in line and "weighted arithmetic mean (kolm 0.1)" in line
    assert "0.887" not in r.stdout  # never rescored on read
    # The oldest fixture recorded no metrics and no K: inspect still reads it.
    assert run_cli("keys", "trust", str(FIXTURES / "format-v1.pub"), env=env).returncode == 0
    r = run_cli("inspect", str(FIXTURES / "format-v1.kolm"), env=env)
    assert r.returncode == 0 and "fixture-v1" in r.stdout and "K-score" not in r.stdout


def test_components_are_clamped_to_unit_range():
    s = kscore(
        inputs(
            student_accuracy=1.0,
            teacher_accuracy=0.5,
            size_bytes=10 * SIZE_REFERENCE_BYTES,
            student_latency_s=2.0,
            teacher_latency_s=0.5,
            student_usd_per_call=0.01,
        )
    )
    assert s.A == 1.0 and s.S == 0.0 and s.L == 0.25 and s.C == 0.0
    assert kscore(inputs(teacher_accuracy=0.0)).A == 0.0


def test_gate_blocks_and_names_the_weakest_component():
    low = kscore(inputs(student_accuracy=0.2, coverage=0.5))
    verdict = gate(low, 0.70)
    assert not verdict.passed
    assert "below the gate 0.70 by" in verdict.reasons[0] and "A (accuracy)" in verdict.reasons[0]
    assert gate(kscore(inputs()), 0.70).passed
    floor = gate(kscore(inputs()), 0.70, min_accuracy=0.95)
    assert not floor.passed and "accuracy 90.0% is below the floor 95.0%" in floor.reasons[0]


def test_gate_beat_floor_blocks_a_student_a_tfidf_classifier_beats():
    good = kscore(inputs())  # 90% held-out, K well above 0.70
    below = gate(good, 0.70, floor=0.92)
    assert not below.passed
    assert below.reasons == [
        "accuracy 90.0% is below the TF-IDF floor 92.0% by 2.0% (gate.beat_floor)"
    ]
    assert gate(good, 0.70, floor=0.90).passed  # level with the floor is not below it
    assert gate(good, 0.70, floor=None).passed  # no floor (not a label task, or not asked)


def test_roi_break_even():
    econ = {"teacher_usd_per_call": 0.002, "student_usd_per_call": 0.0002, "compile_usd": 9.0}
    r = roi(econ, 100_000)
    assert r["frontier_usd_per_month"] == 200.0 and r["compiled_usd_per_month"] == 20.0
    assert r["break_even_calls"] == 5000.0 and r["break_even_days"] == 1.5
    assert roi({**econ, "student_usd_per_call": 0.01}, 10)["break_even_calls"] is None


def test_label_metrics_macro_f1_and_confusion():
    gold = ["a", "a", "b", "b", "c"]
    got = ["a", "b", "b", "b", "zzz"]
    m = label_metrics(got, gold, ["a", "b", "c"])
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert m["per_class"]["c"]["f1"] == 0.0
    # a, b, c and the out-of-set "zzz" (counted once as "(other)", F1 0)
    assert m["macro_f1"] == pytest.approx((0.6667 + 0.8 + 0.0 + 0.0) / 4, abs=1e-4)
    assert m["confusion"]["labels"][-1] == "(other)" and m["confusion"]["matrix"][2][-1] == 1


def test_macro_f1_averages_classes_predicted_but_never_expected():
    gold = ["a", "a", "b", "b"]
    got = ["a", "c", "b", "b"]  # "c" is a valid label the gold data never uses
    m = label_metrics(got, gold, ["a", "b", "c"])
    f1_a, f1_b = m["per_class"]["a"]["f1"], m["per_class"]["b"]["f1"]
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3, abs=1e-4)
    perfect = label_metrics(["a", "b"], ["a", "b"], ["a", "b", "c"])
    assert perfect["macro_f1"] == 1.0  # a label neither expected nor predicted is not averaged


def test_json_metrics_per_field():
    v = synthesize(['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}'])
    m = task_metrics(
        "json",
        ['{"b": "x", "a": 1}', '{"a": 3, "b": "y"}', "oops"],
        ['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}', '{"a": 5, "b": "z"}'],
        v,
    )
    assert m["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["exact_match"] == 0.0  # key order differs; accuracy compares canonical JSON
    assert m["schema_valid_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["field_accuracy"] == {
        "a": pytest.approx(1 / 3, abs=1e-4),
        "b": pytest.approx(2 / 3, abs=1e-4),
    }
    assert field_accuracy(["{}"], ["[1]"]) == {}


def test_text_metrics_normalized_match():
    v = synthesize(["Hello there.", "Good morning!", "See you."])
    m = task_metrics("text", ["hello  there.", "Good night"], ["Hello there.", "Good morning!"], v)
    assert m["exact_match"] == 0.0 and m["normalized_match"] == 0.5
