"""The one error format of synapsebench and its exit codes.

Every error a user can cause names the file, the field path inside it, what was expected and what
was received, so a message reads ``suites/x.yaml: rules[1].hparams.lr: expected a number > 0 (got -0.1)``.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Process exit codes of the ``synapsebench`` command."""

    OK = 0
    RUNS_FAILED = 1
    BAD_INPUT = 2


class SpecError(ValueError):
    """Bad input: a suite file, a rule's hyperparameters or a task's options failed validation."""

    def __init__(self, path: str | Path | None, field: str, expected: str, got: object = None) -> None:
        self.path = str(path) if path is not None else "<input>"
        self.field = field
        self.expected = expected
        self.got = got
        where = f"{self.path}: {field}" if field else self.path
        got_text = "" if got is None else f" (got {_short_repr(got)})"
        super().__init__(f"{where}: expected {expected}{got_text}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Errors cross process boundaries (Ray workers), so they must copy and pickle.
        return (type(self), (self.path, self.field, self.expected, self.got))


class SpecErrors(SpecError):
    """Several :class:`SpecError` at once, so a user fixes a file in one pass."""

    def __init__(self, errors: list[SpecError]) -> None:
        if not errors:
            raise ValueError("SpecErrors needs at least one error")
        self.errors = errors
        first = errors[0]
        super().__init__(first.path, first.field, first.expected, first.got)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.errors,))


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
