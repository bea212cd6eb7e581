"""The static report: every page of the dashboard written as a file, with relative links.

``index.html`` is the fleet; ``specialists/<name>.html``, ``.../candidates/<v>.html``,
``.../evaluations/<event id>.html`` and the rest follow the dashboard's paths, and
``assets/`` holds the style sheet, the script and the charting library (plotly.js from the
plotly package): the folder opens from ``file://``, from GitHub Pages or from a pull
request's artifact, with nothing fetched from anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelsmith.errors import ModelsmithError

from .pages import NotFound, pages
from .render import View
from .site import asset, assets
from .source import Source

Say = Callable[[str], None]


class ReportError(ModelsmithError):
    """The report cannot be written where it was asked for."""


@dataclass
class Written:
    out: Path
    pages: int
    tip: str | None
    skipped: list[str] = field(default_factory=list)  # pages whose data is gone (why)

    def to_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "pages": self.pages, "tip": self.tip,
                "index": str(self.out / "index.html"), "skipped": self.skipped}


def write_report(source: Source, out: Path, *, say: Say = lambda _m: None) -> Written:
    """Write every page of ``source`` into ``out`` (made, or emptied of an earlier report's
    pages first: a folder holding anything else is refused)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "modelsmith-report.json").is_file():
        raise ReportError(f"{out}: not empty and not an earlier Modelsmith report; give an "
                          "empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tip = source.tip()
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        (stage / "assets").mkdir()
        for name in assets():
            (stage / "assets" / name).write_bytes(asset(name) or b"")
        written, skipped = 0, []
        for page in pages():
            instances = list(page.instances(source))
            for params in instances:
                path = page.path(params)
                view = View(path, static=True)
                try:
                    html = page.render(source, view, params)
                except (NotFound, ModelsmithError) as exc:  # e.g. evidence gone from the log
                    skipped.append(f"{path}: {exc}")
                    continue
                target = stage / view.file(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(html, encoding="utf-8")
                written += 1
            if instances:
                say(f"{page.name}: {len(instances)} page(s)")
        # GitHub Pages runs Jekyll, which drops paths starting with "_" (the log's _all/).
        (stage / ".nojekyll").write_text("")
        (stage / "modelsmith-report.json").write_text(json.dumps(
            {"tip": tip, "pages": written}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Written(out, written, tip, skipped)
