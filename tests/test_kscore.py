"""K-score arithmetic, the gate's verdicts, ROI, and the evaluation metrics."""

import pytest

from kolm.evaluate import field_accuracy, label_metrics, task_metrics
from kolm.kscore import SIZE_REFERENCE_BYTES, KInputs, gate, kscore, roi
from kolm.verifier import synthesize


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


def test_known_inputs_give_the_documented_score():
    s = kscore(inputs())
    assert pytest.approx(0.9 / 0.95) == s.A
    assert pytest.approx(1 - 300_000_000 / SIZE_REFERENCE_BYTES) == s.S
    assert s.L == 1.0 and s.C == 1.0 and pytest.approx(0.98) == s.V
    assert pytest.approx(0.40 * 0.9 / 0.95 + 0.15 * s.S + 0.15 + 0.15 + 0.15 * 0.98) == s.K
    # The worked example in docs/k-score.md.
    assert round(s.K, 4) == 0.962


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
