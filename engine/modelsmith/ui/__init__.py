"""The dashboard and the static report: read-only pages over the event log.

:mod:`.source` is what the pages read (the log folded once per tip, the evaluations'
evidence, and what the façade wires in: the status table, the plan with its open
proposals); :mod:`.pages` are the pages, each a path pattern and a function that renders it
from a :class:`~.source.Source` through the Jinja2 templates in ``templates/``;
:mod:`.site` serves them (Starlette, loopback by default, an optional bearer token) and
:mod:`.report` writes the same pages as a static site with relative links.
"""
