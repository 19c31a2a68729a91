"""The verifier synthesized from seed outputs: kinds, rules, normalization, round trip."""

import json

import pytest

from kolm.errors import SpecError
from kolm.verifier import Verifier, check_seeds, infer_schema, synthesize


def test_closed_label_set_normalizes_harmless_variation():
    v = synthesize(["billing", "bug_report", "billing", "bug_report", "billing", "bug_report"])
    assert v.kind == "label" and v.labels == ("billing", "bug_report")
    assert v.check("Billing.").normalized == "billing" and v.check("Billing.").ok
    bad = v.check("shipping")
    assert not bad.ok and bad.failed.startswith("label")


def test_passing_gives_the_normalized_answer_or_none():
    v = synthesize(["billing", "refund", "billing", "refund", "billing", "refund"])
    assert v.passing("  Billing ") == "billing"
    assert v.passing("shipping") is None


def test_json_schema_is_inferred_with_required_keys_types_and_enums():
    seeds = [
        json.dumps({"name": n, "priority": p, "amount": a, "tags": ["x"]})
        for n, p, a in [
            ("Ann", "high", 3),
            ("Bob", "low", 4),
            ("Cy", "high", 5),
            ("Di", "low", 6),
            ("Ed", "high", 1),
        ]
    ]
    v = synthesize(seeds)
    assert v.kind == "json"
    schema = v.schema
    assert schema["required"] == ["amount", "name", "priority", "tags"]
    assert schema["properties"]["priority"]["enum"] == ["high", "low"]
    assert "enum" not in schema["properties"]["name"]  # names never repeat: no enum
    assert schema["properties"]["amount"]["type"] == "integer"
    assert v.check('{"name": "Zed", "priority": "low", "amount": 2, "tags": []}').ok
    assert v.check('```json\n{"name": "Zed", "priority": "low", "amount": 2, "tags": []}\n```').ok
    assert v.check(
        '{"name": "Zed", "priority": "urgent", "amount": 2, "tags": []}'
    ).failed.startswith("json_schema")
    assert v.check('{"name": "Zed", "priority": "low", "tags": []}').failed.startswith(
        "json_schema"
    )
    assert v.check(
        '{"name": "Zed", "priority": "low", "amount": 2, "tags": [], "x": 1}'
    ).failed.startswith("json_schema")
    assert v.check("{nope").failed == "json: not valid JSON"
    # Key order and spacing do not change the vote.
    a = v.check('{"name":"Q","priority":"low","amount":2,"tags":[]}').normalized
    b = v.check('{"tags": [], "amount": 2, "priority": "low", "name": "Q"}').normalized
    assert a == b


def test_numbers_and_free_text():
    n = synthesize(["3", "4.5", "1,200", "7"])
    assert n.kind == "number" and n.check("1200.0").normalized == "1200"
    assert not n.check("many").ok
    t = synthesize(
        ["The meeting moved to Friday.", "Call Ann back before noon.", "Ship the order today."]
    )
    assert t.kind == "text"
    assert t.check("Short   answer").normalized == "Short answer"
    assert t.check("two\nlines").failed.startswith("single_line")
    assert t.check("x" * 500).failed.startswith("max_length")


def test_user_checks_and_seed_rejection(tmp_path):
    v = synthesize(["A-1", "B-2", "C-3"], regex=r"[A-Z]-\d")
    assert not v.check("A1").ok and v.check("D-9").ok
    with pytest.raises(SpecError, match="fails regex"):
        check_seeds(v, ["A-1", "bad"])
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["id"]}))
    js = synthesize(['{"id": 1}'], json_schema=schema)
    assert js.kind == "json" and not js.check("{}").ok
    (tmp_path / "bad.json").write_text('{"type": 12}')
    with pytest.raises(SpecError, match="not a valid JSON Schema"):
        synthesize(["{}"], json_schema=tmp_path / "bad.json")
    with pytest.raises(SpecError, match="not installed"):
        synthesize(["a", "b"], functions=["no_such_check"]).check("a")


def test_round_trip_as_data():
    v = synthesize([json.dumps({"k": "v", "n": i}) for i in range(5)])
    again = Verifier.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again == v
    for out in ['{"k": "v", "n": 9}', '{"k": 1}', "x"]:
        assert again.check(out) == v.check(out)
    with pytest.raises(SpecError, match="newer kolm"):
        Verifier.from_dict({**v.to_dict(), "version": 99})


def test_infer_schema_mixed_types():
    assert infer_schema([1, 2.5]) == {"type": "number"}
    assert infer_schema(["a", None]) == {"type": ["null", "string"]}


def test_labels_with_too_few_examples_per_class_are_named_in_a_warning():
    from kolm.verifier import label_shortfall

    outputs = ["billing", "billing", "billing", "shipping", "shipping", "refund", "login"]
    v = synthesize(outputs)
    assert v.kind == "text"  # too few per class to read as a label set
    warning = label_shortfall(v, outputs)
    assert warning is not None and "3 of 4 classes have fewer than 3 examples" in warning
    assert "'login' (1)" in warning and "'refund' (1)" in warning and "'shipping' (2)" in warning
    assert "'billing'" not in warning
    one_each = ["billing", "shipping", "refund", "login"]
    assert "4 of 4 classes" in label_shortfall(synthesize(one_each), one_each)
    labels = ["billing", "shipping"] * 3
    assert label_shortfall(synthesize(labels), labels) is None  # a label task already
    prose = ["The parcel is late.", "Refund sent to the card.", "Fixed in 2.1.", "See FAQ 4."]
    assert label_shortfall(synthesize(prose), prose) is None  # free text, nothing repeats
