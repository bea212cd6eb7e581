"""Problems found in declarative files, each pointing at file:line:column and a field path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from modelsmith.errors import EXIT_INVALID, ModelsmithError


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one file.

    ``file`` is relative to the repository root when the file lies inside it; ``line`` and
    ``column`` are 1-based and ``None`` when no position applies (a missing file, say);
    ``field`` is a dotted path such as ``spec.target.composite`` or ``rubric[0].pattern``.
    """

    file: str
    line: int | None
    column: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sort_key(self) -> tuple[str, int, int]:
        return (self.file, self.line or 0, self.column or 0)


class SpecError(ModelsmithError):
    """Raised by the loaders; carries every issue found, not just the first."""

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.issues: list[SpecIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    exit_code = EXIT_INVALID

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def user_lines(self) -> list[str]:
        return [str(self), "the repository's specs are invalid (see `modelsmith validate`)"]
