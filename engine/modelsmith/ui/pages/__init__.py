"""The pages: each a :class:`Page` (its path pattern, how it renders, and, for the static
report, every instance of it there is). The dashboard routes :data:`PAGES` and the report
writes them; a page's module holds its data gathering and names its template."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from modelsmith.errors import ModelsmithError

from ..render import View, segment
from ..source import Source

RenderFn = Callable[[Source, View, Mapping[str, str]], str]
InstancesFn = Callable[[Source], Iterable[Mapping[str, str]]]


class NotFound(ModelsmithError):
    """What a page was asked for is not in the log (the dashboard answers 404)."""


@dataclass(frozen=True)
class Page:
    name: str
    pattern: str  # a Starlette path: "/specialists/{name}" (also the report's file path)
    render: RenderFn
    instances: InstancesFn  # every path parameters the static report writes a file for

    def path(self, params: Mapping[str, str]) -> str:
        """The page's path for ``params`` (each a path segment)."""
        return self.pattern.format(**{k: segment(v) for k, v in params.items()})


def pages() -> list[Page]:
    """Every page, the most specific patterns first (the dashboard's route order)."""
    from . import candidate, evaluation, fleet, log, proposals, specialist

    return [fleet.PAGE, proposals.PAGE, *log.PAGES, *evaluation.PAGES, candidate.PAGE,
            specialist.PAGE]
