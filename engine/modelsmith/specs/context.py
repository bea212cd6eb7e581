"""What loading carries from file to file: the issues found so far and the repository root.

Reading goes through the context so that every file is refused the same way (a symlink out
of the repository, an oversized file) and every problem becomes an issue, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SpecIssue
from .yamlio import ParseFailure, read_bounded

#: Issues reported per file before the rest are summarised (a broken 32 MiB JSONL file
#: would otherwise produce a million of them).
MAX_ISSUES_PER_FILE = 50


class LoadContext:
    """Collects issues while loading; knows the repository root for relative paths."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.issues: list[SpecIssue] = []
        self.total = 0  # issues found, shown or not
        self._per_file: dict[str, int] = {}
        #: kinds some of whose documents could not be read at all: an unknown reference to
        #: such a kind is probably one of them, so it is not reported a second time
        self.incomplete: set[str] = set()

    def rel(self, path: Path) -> str:
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    def add(
        self,
        file: str,
        line: int | None,
        column: int | None,
        field_path: str | None,
        message: str,
    ) -> None:
        self.extend([SpecIssue(file, line, column, field_path, message)])

    def add_failure(self, file: str, failure: ParseFailure) -> None:
        """Report a parse failure at the position and field it carries."""
        self.add(file, failure.line, failure.column, failure.field, failure.message)

    def extend(self, issues: Iterable[SpecIssue]) -> None:
        for issue in issues:
            self.total += 1
            count = self._per_file.get(issue.file, 0) + 1
            self._per_file[issue.file] = count
            if count <= MAX_ISSUES_PER_FILE:
                self.issues.append(issue)
            elif count == MAX_ISSUES_PER_FILE + 1:
                self.issues.append(
                    SpecIssue(
                        issue.file,
                        None,
                        None,
                        None,
                        f"more than {MAX_ISSUES_PER_FILE} issues; the rest are not shown",
                    )
                )

    @contextmanager
    def guard(self, file: str) -> Iterator[None]:
        """Last line of defence: a bug triggered by one file becomes an issue on that file
        instead of a traceback that hides the issues of every other file."""
        try:
            yield
        except Exception as exc:
            self.add(file, None, None, None, f"internal error: {type(exc).__name__}: {exc}")

    def issue_count(self, file: str) -> int:
        return self._per_file.get(file, 0)

    def read(self, path: Path, limit: int, inside: Path | None = None) -> bytes | None:
        """Read a file after checking it stays inside the repository (or ``inside``)."""
        display = self.rel(path)
        boundary = inside if inside is not None else self.root
        if boundary is not None:
            real_boundary = _real(boundary)
            real = _real(path)
            if real is None or real_boundary is None:
                self.add(display, None, None, None, "cannot resolve path (symlink loop?)")
                return None
            if not real.is_relative_to(real_boundary):
                where = "the suite folder" if inside is not None else "the repository"
                self.add(display, None, None, None, f"symlink points outside {where}: {real}")
                return None
        try:
            return read_bounded(path, limit)
        except ParseFailure as failure:
            self.add_failure(display, failure)
            return None


def _real(path: Path) -> Path | None:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return None
