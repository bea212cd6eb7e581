"""An evaluation down to the scenario; two evaluations side by side.

``/specialists/<name>/evaluations/<event id>``: an ``EvalCompleted``'s numbers, each with
the split it is measured on (composite and core on core, held-out and dev on theirs,
unseen on the core scenarios outside the lineage, with n and CI), then every scenario run
from its ``results.jsonl`` evidence: input, every output, expected answer, score, pass,
format and each criterion's kind, score, weight, required flag and reason. Filters (failing
only, split, tag) work on the page, in the static report too.

``/specialists/<name>/compare/<a>/<b>``: evaluation ``b`` against baseline ``a``, the
paired comparison of :func:`modelsmith.evaluation.service.compare` (core, and beside it
unseen, dev and held-out where both ran them: mean difference, CI, n, wins and losses,
the share of resamples that favour ``b``) and every scenario both ran, side by side with
both outputs. The static report writes each evaluation against the specialist's previous
evaluation on the same suite (by suite hash): one comparison per evaluation at most.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from modelsmith.errors import ModelsmithError
from modelsmith.evaluation.service import RESULTS, compare
from modelsmith.events.projection import EvalRecord
from modelsmith.events.types import Event

from ..render import View, render
from ..source import Source
from . import NotFound, Page

SPLITS = ("core", "dev", "heldout")


def _evaluation(source: Source, name: str, event_id: str) -> Event:
    event = source.event(event_id)
    if event is None or event.type != "EvalCompleted" or event.stream != name:
        raise NotFound(f"no evaluation {event_id!r} of {name!r} in the event log")
    return event


def _records(source: Source, name: str) -> list[EvalRecord]:
    """Every evaluation of ``name`` (its candidates' and its base models'), oldest first."""
    s = source.state().specialists.get(name)
    if s is None:
        return []
    found = [e for c in s.candidates.values() for e in c.evals] + list(s.model_evals)
    return sorted(found, key=lambda r: r.seq)


def pairs(source: Source) -> set[tuple[str, str, str]]:
    """The comparisons the static report writes: (specialist, baseline, candidate) for
    each evaluation and the specialist's previous one with the same suite hash."""
    def make() -> set[tuple[str, str, str]]:
        out = set()
        for name in source.state().specialists:
            last: dict[str, str] = {}
            for rec in _records(source, name):
                if rec.suite_hash in last:
                    out.add((name, last[rec.suite_hash], rec.event_id))
                last[rec.suite_hash] = rec.event_id
        return out
    return source.memo("compare-pairs", make)


def _text(value: Any) -> str:
    """An expected answer (text, or any JSON value) as the page shows it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)


def _counts(runs: list[Any]) -> dict[str, dict[str, int]]:
    """Per split: scenarios (own inputs), variants, passed and failed inputs."""
    out = {s: {"scenarios": 0, "variants": 0, "passed": 0, "failed": 0} for s in SPLITS}
    for run in runs:
        c = out.setdefault(run.split, {"scenarios": 0, "variants": 0, "passed": 0,
                                       "failed": 0})
        c["scenarios" if run.variant is None else "variants"] += 1
        c["passed" if run.passed else "failed"] += 1
    return out


def header(data: Mapping[str, Any], counts: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """The evaluation's scores, each with the split it is measured on, its n and CI."""
    core_n = counts.get("core", {}).get("scenarios") or None
    rows = [
        {"label": "composite", "split": "core (own inputs and variants, weighted)",
         "value": data.get("composite"), "n": core_n, "ci": data.get("ci")},
        {"label": "core", "split": "core (own inputs)", "value": data.get("core"),
         "n": core_n, "ci": None},
        {"label": "robustness", "split": "core (variants)", "value": data.get("robustness"),
         "n": counts.get("core", {}).get("variants") or None, "ci": None},
        {"label": "unseen", "split": "core outside the lineage", "value": data.get("unseen"),
         "n": data.get("unseen_n"), "ci": data.get("unseen_ci")},
        {"label": "dev", "split": "dev", "value": data.get("dev"), "n": data.get("dev_n"),
         "ci": data.get("dev_ci")},
        {"label": "held-out", "split": "heldout (never in the composite)",
         "value": data.get("heldout"), "n": data.get("heldout_n")
         or counts.get("heldout", {}).get("scenarios") or None,
         "ci": data.get("heldout_ci")},
        {"label": "pass rate", "split": "core", "value": data.get("pass_rate"), "n": core_n,
         "ci": None},
        {"label": "micro", "split": "core (every input alike)", "value": data.get("micro"),
         "n": None, "ci": None},
    ]
    metric = data.get("decision_metric")
    rows.insert(0, {"label": f"decision ({metric})" if metric else "decision",
                    "split": {"dev": "dev", "unseen": "core outside the lineage"}.get(
                        metric or "", "none qualifies (too few unseen, no dev split)"),
                    "value": data.get("decision"), "n": data.get("decision_n") or None,
                    "ci": data.get(f"{metric}_ci") if metric else None})
    return rows


def _scenario_rows(runs: list[Any]) -> list[dict[str, Any]]:
    return [{"run": run, "expected": _text(run.expected), "tags": " ".join(run.tags),
             "failing": "no" if run.passed else "yes"} for run in runs]


def _others(source: Source, view: View, name: str, event: Event) -> list[dict[str, Any]]:
    """The specialist's other evaluations, each with a link to the comparison with this
    one (older as baseline); in the static report only the comparisons it writes."""
    written = pairs(source) if view.static else None
    out = []
    for rec in _records(source, name):
        if rec.event_id == event.id:
            continue
        a, b = (rec.event_id, event.id) if rec.seq < event.seq else (event.id, rec.event_id)
        url = None
        if written is None or (name, a, b) in written:
            url = view.url("specialists", name, "compare", a, b)
        out.append({"record": rec, "url": url, "older": rec.seq < event.seq,
                    "same_suite": rec.suite_hash == event.data.get("suite_hash"),
                    "link": view.url("specialists", name, "evaluations", rec.event_id)})
    return out


def render_evaluation(source: Source, view: View, params: Mapping[str, str]) -> str:
    name = params["name"]
    event = _evaluation(source, name, params["event_id"])
    try:
        runs, problem = source.runs(event), None
    except ModelsmithError as exc:  # no results.jsonl
        runs, problem = [], str(exc)
    except (ValueError, TypeError) as exc:  # one that does not parse
        runs, problem = [], f"its {RESULTS} evidence does not parse: {exc}"
    counts = _counts(runs)
    state = source.state().specialists.get(name)
    version = event.data.get("version")
    candidate = bool(version and state is not None and version in state.candidates)
    return render("evaluation.html", view, source, name=name, event=event, d=event.data,
                  header=header(event.data, counts), counts=counts, problem=problem,
                  rows=_scenario_rows(runs), candidate=candidate,
                  splits=[s for s in SPLITS if counts[s]["scenarios"] or counts[s]["variants"]],
                  tags=sorted({t for run in runs for t in run.tags}),
                  others=_others(source, view, name, event),
                  commit=source.commit_of(event.id))


def _pair_rows(base_runs: list[Any], cand_runs: list[Any]) -> list[dict[str, Any]]:
    """Every scenario input of either evaluation (split, id, variant), the two side by
    side; the changed ones first, the largest change first."""
    def key(run: Any) -> tuple[str, str, int]:
        return (run.split, run.id, -1 if run.variant is None else run.variant)

    a = {key(r): r for r in base_runs}
    b = {key(r): r for r in cand_runs}
    out = []
    for k in a.keys() | b.keys():
        ra, rb = a.get(k), b.get(k)
        delta = None if ra is None or rb is None else round(rb.score - ra.score, 6)
        out.append({"split": k[0], "id": k[1], "variant": None if k[2] < 0 else k[2],
                    "a": ra, "b": rb, "delta": delta,
                    "input": (rb or ra).input, "expected": _text((rb or ra).expected),
                    "input_a": ra.input if ra is not None and rb is not None
                    and ra.input != rb.input else None,
                    "changed": "yes" if delta is None or delta != 0 else "no",
                    "direction": "only" if delta is None else
                    "better" if delta > 0 else "worse" if delta < 0 else "same"})
    out.sort(key=lambda r: (r["delta"] is None, -abs(r["delta"] or 0),
                            SPLITS.index(r["split"]) if r["split"] in SPLITS else 9,
                            r["id"], -1 if r["variant"] is None else r["variant"]))
    return out


class _Read:
    """The store as :func:`compare` reads it, a stream's events read once per tip (the
    static report compares every evaluation: not one pass over the stream each)."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def read(self, stream: str | None = None, after: int | None = None) -> Iterator[Event]:
        events = self._source.events(stream)
        return iter(events if after is None else events[after:] if stream else
                    [e for e in events if e.position > after])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source.store, name)


def render_compare(source: Source, view: View, params: Mapping[str, str]) -> str:

    name = params["name"]
    base = _evaluation(source, name, params["a"])
    cand = _evaluation(source, name, params["b"])

    def run() -> tuple[Any, str | None]:
        try:
            return compare(_Read(source), name, base.id, cand.id), None  # type: ignore[arg-type]
        except ModelsmithError as exc:  # no evidence, or no core scenario in common
            return None, str(exc)
        except (ValueError, TypeError) as exc:  # evidence that does not parse
            return None, f"the {RESULTS} evidence does not parse: {exc}"

    comparison, problem = source.memo(("compare", name, base.id, cand.id), run)
    rows: list[dict[str, Any]] = []
    if comparison is not None:
        rows = _pair_rows(source.runs(base), source.runs(cand))
    splits = [{"split": comparison.split, "result": comparison.result, "main": True}] \
        if comparison is not None else []
    if comparison is not None:
        splits += [{"split": k, "result": r, "main": False}
                   for k, r in comparison.also.items()]
    written = pairs(source) if view.static else None
    swap = None
    if written is None or (name, cand.id, base.id) in written:
        swap = view.url("specialists", name, "compare", cand.id, base.id)
    return render("compare.html", view, source, name=name, base=base, cand=cand,
                  comparison=comparison, problem=problem, splits=splits, rows=rows,
                  row_splits=sorted({r["split"] for r in rows},
                                    key=lambda s: SPLITS.index(s) if s in SPLITS else 9),
                  swap=swap)


def _instances(source: Source) -> Iterator[dict[str, str]]:
    for name in source.state().specialists:
        for rec in _records(source, name):
            yield {"name": name, "event_id": rec.event_id}


PAGES = [
    Page("compare", "/specialists/{name}/compare/{a}/{b}", render_compare,
         lambda source: [{"name": n, "a": a, "b": b} for n, a, b in sorted(pairs(source))]),
    Page("evaluation", "/specialists/{name}/evaluations/{event_id}", render_evaluation,
         _instances),
]
