"""Where the dashboard's pages about the log live: the path scheme ``modelsmith ui`` serves
and ``modelsmith report`` writes (``specialists/<name>.html``,
``specialists/<name>/candidates/<version>.html``,
``specialists/<name>/evaluations/<event id>.html``), here so that what links to the report
from outside it (``propose``'s pull request body) builds the same paths without the ui.
"""

from __future__ import annotations

import re
from functools import lru_cache
from hashlib import sha1
from urllib.parse import quote

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: The event log's path segment for every stream at once: a leading ``_`` is never in a
#: specialist name (so a specialist may be called ``all``).
ALL_STREAMS = "_all"


def segment(value: str) -> str:
    """A path segment for ``value``: itself when it is a plain name (specialist names,
    versions and event ids are), else a digest (a file name that is always safe)."""
    text = str(value)
    return text if _SAFE.fullmatch(text) else "x-" + sha1(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=1 << 16)
def page_path(*parts: str) -> str:
    """The dashboard path of the page at ``parts`` (``/specialists/rtb``)."""
    return "/" + "/".join(quote(segment(p), safe="") for p in parts if p != "")


def report_file(path: str) -> str:
    """The static report's file for the dashboard path ``path``."""
    return "index.html" if path in ("", "/") else path.strip("/") + ".html"


def report_link(base_url: str, *parts: str) -> str:
    """The published report's page at ``parts``, under ``base_url``."""
    return base_url.rstrip("/") + "/" + report_file(page_path(*parts))


def specialist_link(base_url: str, name: str) -> str:
    return report_link(base_url, "specialists", name)


def candidate_link(base_url: str, name: str, version: str) -> str:
    return report_link(base_url, "specialists", name, "candidates", version)


def evaluation_link(base_url: str, name: str, event_id: str) -> str:
    return report_link(base_url, "specialists", name, "evaluations", event_id)
