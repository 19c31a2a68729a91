"""Floor: a classical baseline a label-task student must beat to earn its place.

TF-IDF features (word 1–2-grams and character 2–5-grams within word
boundaries, sublinear term frequency) feed a logistic regression, trained on
the same training rows as the student and scored on the same held-out split,
with the same label metrics, on one thread. It takes seconds on a CPU. scikit-learn is
imported only when a floor is computed, never by `verify`, `inspect` or `run`.
Knows texts and labels; does not know models, prompts or the K-score.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

METHOD = "tfidf(word 1-2 + char_wb 2-5, sublinear) + logistic regression (C=10)"
C = 10.0
"""Inverse regularization strength; 10 measured best of {1, 10, 100} on the shipped example."""


@dataclass(frozen=True)
class Floor:
    """The baseline's held-out scores."""

    method: str
    accuracy: float
    macro_f1: float
    train_examples: int
    heldout_examples: int
    seconds: float
    correct: tuple[bool, ...] = ()
    """Per held-out row, whether the floor got it right (for a paired comparison)."""

    def against(self, student_correct: Sequence[bool]) -> dict:
        """The rows only the student or only the floor gets right, and how likely a split
        that lopsided is by chance (exact McNemar test; small p: a real difference)."""
        from kolm.evaluate import paired_p_value

        pairs = list(zip(student_correct, self.correct, strict=True))
        only_student = sum(s and not f for s, f in pairs)
        only_floor = sum(f and not s for s, f in pairs)
        return {
            "only_student": only_student,
            "only_floor": only_floor,
            "p_value": round(paired_p_value(only_student, only_floor), 4),
        }

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "train_examples": self.train_examples,
            "heldout_examples": self.heldout_examples,
            "seconds": round(self.seconds, 2),
        }


def unfitted_model():
    """The baseline as an unfitted scikit-learn pipeline (`METHOD`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )
    return make_pipeline(features, LogisticRegression(C=C, max_iter=5000))


def predict_labels(
    train_inputs: Sequence[str], train_labels: Sequence[str], inputs: Sequence[str]
) -> list[str]:
    """Fit the baseline on (input, label) rows and predict a label per input."""
    classes = sorted(set(train_labels))
    if len(classes) < 2:  # logistic regression needs two classes; one class is a constant
        return [classes[0] if classes else ""] * len(inputs)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    model = unfitted_model()
    with threadpool_limits(limits=1):  # BLAS threads only spin on a shared 2-core machine
        model.fit(list(train_inputs), list(train_labels))
        return [str(y) for y in model.predict(list(inputs))]


def label_floor(
    train: Sequence[tuple[str, str]], heldout: Sequence[tuple[str, str]], labels: list[str]
) -> Floor:
    """Train on `train` (input, canonical label) rows; score on `heldout` like the student."""
    from kolm.evaluate import label_metrics

    t = time.perf_counter()
    got = predict_labels([x for x, _ in train], [y for _, y in train], [x for x, _ in heldout])
    gold = [y for _, y in heldout]
    correct = tuple(g == y for g, y in zip(got, gold, strict=True))
    accuracy = sum(correct) / (len(gold) or 1)
    macro = label_metrics(got, gold, labels)["macro_f1"]
    return Floor(METHOD, accuracy, macro, len(train), len(gold), time.perf_counter() - t, correct)
