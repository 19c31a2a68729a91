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
