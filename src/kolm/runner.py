"""Load a verified artifact into a runnable student.

Joins `artifact` (verified parts on disk) and `runtime` (llama.cpp). Knows the
names of the parts a student needs; knows nothing about how they were made.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kolm.artifact import Artifact, open_artifact
from kolm.keys import KeyStore
from kolm.prompt import PromptFormat
from kolm.runtime import Decoding, Student
from kolm.verifier import Verifier


def load_student(
    artifact: Artifact | str | Path,
    base: Path | None = None,
    threads: int | None = None,
    keys: KeyStore | None = None,
) -> tuple[Artifact, Student]:
    """Verify (when given a path), materialize the parts and load them in llama.cpp."""
    art = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, keys)
    config = art.read_json("config.json")
    decoding = Decoding(**config["decoding"])
    if threads:
        decoding = replace(decoding, threads=threads)
    student = Student(
        art.base_path(base),
        art.materialize("adapter.gguf"),
        PromptFormat.from_dict(config["prompt_format"]),
        config["instruction"],
        decoding,
    )
    return art, student


def load_verifier(art: Artifact) -> Verifier | None:
    """The artifact's verifier, or None for artifacts made before verifiers existed."""
    if "verifier.json" not in art.manifest["parts"]:
        return None
    return Verifier.from_dict(art.read_json("verifier.json"))


def eval_artifact(path: Path, data: Path, base: Path | None = None, progress: bool = True) -> dict:
    """Score an artifact on new labeled data with the metrics compile uses."""
    from kolm.data import load_examples
    from kolm.evaluate import run_and_score, task_metrics
    from kolm.verifier import synthesize

    examples = load_examples(data)
    art, student = load_student(path, base=base)
    verifier = load_verifier(art) or synthesize([e.output for e in examples])
    try:
        scored = run_and_score(
            student.answer,
            [e.input for e in examples],
            [e.output for e in examples],
            desc="eval",
            progress=progress,
        )
    finally:
        student.close()
    metrics = task_metrics(verifier.kind, scored.outputs, [e.output for e in examples], verifier)
    metrics.update(
        latency_p50_s=round(scored.latency_p50_s, 4), latency_p95_s=round(scored.latency_p95_s, 4)
    )
    metrics["artifact"] = art.id
    metrics["outputs"] = scored.outputs
    return metrics
