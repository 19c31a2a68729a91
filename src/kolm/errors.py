"""The one family of errors kolm raises.

Every message says what is wrong and what to do next. The CLI turns these into
a message and an exit code in one place (`cli.main`); nothing else prints them.
"""

from __future__ import annotations


class KolmError(Exception):
    """Base of every error kolm raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SpecError(KolmError):
    """The task spec or its example files are invalid. Carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(
            f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}",
            hint="fix these and run the command again; nothing was written",
        )


class BaseModelError(KolmError):
    """The base model cannot be found or loaded."""

    exit_code = 3


class ArtifactError(KolmError):
    """A .kolm file is missing, truncated, corrupt or tampered with."""

    exit_code = 4


class SignatureError(ArtifactError):
    """A .kolm file is unsigned, its signature is invalid, or the key is not trusted."""


class TrainingError(KolmError):
    """Training or adapter export failed."""

    exit_code = 5


class RuntimeFailure(KolmError):
    """The runtime could not load or answer."""

    exit_code = 6


class TeacherError(KolmError):
    """The teacher cannot be used (bad name, missing key, refused request, down)."""

    exit_code = 7


class GateError(KolmError):
    """The compiled model scored below the ship gate; no artifact was written."""

    exit_code = 8


class ReceiptError(KolmError):
    """The receipts log cannot be read, or a receipt cannot be found or replayed."""

    exit_code = 9


class InputError(KolmError):
    """One input cannot be answered (empty, too long for the context); others still can.

    A batch records it for that line and goes on, and exits with this code at the end."""

    exit_code = 11


class RecallError(KolmError):
    """A corpus cannot be indexed, or an index cannot be opened, read or queried."""

    exit_code = 12


class RegistryError(KolmError):
    """An OCI registry cannot be reached, refuses a request, or answers something malformed."""

    exit_code = 13


class ServiceError(KolmError):
    """`kolm server` or its client refused or failed a request (key, quota, upload, server down).

    A remote compile that ran and failed exits with the job's own code instead."""

    exit_code = 14


class ExportError(KolmError):
    """An artifact cannot be exported to the runtime asked for (e.g. PEFT from a merged build)."""

    exit_code = 15
