"""The dashboard's evaluation, comparison and event log pages over a real git event log:
evaluations recorded as `evaluate` records them (results.jsonl evidence), served over real
HTTP on 127.0.0.1 and written as the static report; hostile scenario text escaped."""

from __future__ import annotations

import posixpath
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import httpx2 as httpx
import pytest

from evaluations import recorded_event
from modelsmith.app import Modelsmith
from modelsmith.evaluation.composite import compute_report
from modelsmith.evaluation.results import CriterionResult, ScenarioRun
from modelsmith.evaluation.service import REPORT, RESULTS, compare
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    EvalStarted,
    Event,
    FailuresExtracted,
    Lineage,
)
from modelsmith.serving.http import make_asgi_server
from modelsmith.specs import load_repository
from modelsmith.ui.render import LOG_PAGE
from modelsmith.ui.site import build_app
from modelsmith.ui.source import Source

NAME = "rtb-quality"
SCRIPT = "<script>alert(1)</script>"
REASON = 'expected <b>ACCEPT</b> & got <img src=x onerror="alert(2)">'
HUGE = "REJECT " * 20_000


class Rows(HTMLParser):
    """The rows (``<tr>`` attributes and text) of the table with id ``table``, and every
    link of the page."""

    def __init__(self, table: str) -> None:
        super().__init__()
        self.table, self.inside, self.depth = table, False, 0
        self.rows: list[dict] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "table":
            if a.get("id") == self.table:
                self.inside, self.depth = True, 0
            elif self.inside:
                self.depth += 1
        if tag == "tr" and self.inside and self.depth == 0:
            self.rows.append({"attrs": a, "text": "", "cells": []})
        if tag in ("td", "th") and self.inside and self.depth == 0 and self.rows:
            self.rows[-1]["cells"].append("")

    def handle_endtag(self, tag):
        if tag == "table" and self.inside:
            if self.depth == 0:
                self.inside = False
            else:
                self.depth -= 1

    def handle_data(self, data):
        if self.inside and self.rows:
            self.rows[-1]["text"] += data
            if self.rows[-1]["cells"]:
                self.rows[-1]["cells"][-1] += data


def parse(html: str, table: str) -> Rows:
    rows = Rows(table)
    rows.feed(html)
    return rows


def body(rows: Rows) -> list[dict]:
    """The table's body rows (not its header)."""
    return [r for r in rows.rows if r["attrs"]]


def recorded(root: Path, version: str | None, fail_every: int, *, hostile: bool = False,
             suite_hash: str | None = None) -> tuple[Event, list[ScenarioRun]]:
    """An EvalCompleted as `evaluate` records it: every ``fail_every``-th scenario fails,
    each run with two criteria; ``hostile``: the first input is a script, the reasons
    carry HTML and one output is huge."""
    repo = load_repository(root)
    suite = repo.suite_for(repo.specialists[NAME])
    runs = []
    for i, sc in enumerate(suite.scenarios):
        ok = not (fail_every and i % fail_every == 0)
        for variant, text in [(None, sc.input), *enumerate(sc.variants)]:
            if hostile and i == 0 and variant is None:
                text = SCRIPT
            output = HUGE if hostile and i == 1 and variant is None else \
                ("ACCEPT" if ok else "REJECT")
            criteria = [CriterionResult("label", float(ok), REASON if hostile and not ok
                                        else f"label {'matches' if ok else 'differs'}",
                                        1.0, True),
                        CriterionResult("format", 1.0, "one word", 0.25, False)]
            runs.append(ScenarioRun(id=sc.id, split=sc.split, variant=variant,
                                    tags=list(sc.tags), input=text, expected=sc.expected,
                                    outputs=[output, output + " again"] if i == 2 else [output],
                                    score=float(ok), passed=ok, format_ok=True,
                                    latency_ms=10.0, completion_tokens=1, criteria=criteria))
    report = compute_report(runs, suite.suite, n_resamples=200)
    summary = report.to_dict()
    event = recorded_event(
        runs, suite, version, report=report, model=version or "tiny-test",
        suite_hash=suite_hash or suite.suite_hash, core=summary["core"],
        heldout_ci=tuple(summary["heldout_ci"]), ci=tuple(summary["composite_ci"]),
        heldout_n=report.n_heldout, scenarios=report.n_core + report.n_heldout,
        failed=len(report.failed_ids), duration_s=1.5, commit="c0ffee" * 6 + "abcd",
        warnings=["output <i>repeats</i> the prompt"] if hostile else [])
    return event, runs


def append(store: GitEventStore, stream: str, *events: Event) -> list[Event]:
    return store.append(stream, list(events), store.last_seq(stream))


@pytest.fixture
def fleet(demo_repo):
    """The demo fork's log: a base model's evaluation, v1 (hostile text) and v2
    evaluated, then an evaluation on another suite and v2 again on the first; a second
    stream of plain events."""
    store = GitEventStore(demo_repo)
    base, _ = recorded(demo_repo, None, 3)
    v1, v1_runs = recorded(demo_repo, "v1", 5, hostile=True)
    v2, _ = recorded(demo_repo, "v2", 10)
    other, _ = recorded(demo_repo, "v2", 10, suite_hash="f" * 64)
    again, _ = recorded(demo_repo, "v2", 20)
    append(store, NAME, base)
    append(store, NAME, Event.new(CandidateRegistered(
        version="v1", lineage=Lineage(base_model="tiny-test")), actor="test"), v1)
    append(store, NAME, Event.new(CandidateRegistered(
        version="v2", lineage=Lineage(base_model="tiny-test", parent="v1")),
        actor="test"), v2, other, again)
    append(store, "ops", Event.new(FailuresExtracted(eval_event=v1.id), actor="ops"))
    ids = {"base": base.id, "v1": v1.id, "v2": v2.id, "other": other.id, "again": again.id}
    return demo_repo, store, ids, v1_runs


@pytest.fixture
def served(fleet):
    _root, store, ids, runs = fleet
    server = make_asgi_server(build_app(Source(store)), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            yield client, store, ids, runs
    finally:
        server.stop()


def test_the_evaluation_page_shows_every_run_its_outputs_and_criteria(served):
    client, store, ids, runs = served
    answer = client.get(f"/specialists/{NAME}/evaluations/{ids['v1']}")
    assert answer.status_code == 200
    html = answer.text
    event = store.get(ids["v1"])
    rows = body(parse(html, "scenarios"))
    assert len(rows) == len(runs)
    for row, run in zip(rows, runs, strict=True):
        assert row["attrs"]["data-split"] == run.split
        assert row["attrs"]["data-tags"] == " ".join(run.tags)
        assert row["attrs"]["data-failing"] == ("no" if run.passed else "yes")
        assert row["attrs"]["data-id"] == run.id
        for criterion in run.criteria:
            assert criterion.kind in row["text"] and criterion.reason in row["text"]
    failing = [r for r in rows if r["attrs"]["data-failing"] == "yes"]
    assert len(failing) == sum(1 for r in runs if not r.passed) > 0
    # Every output of a run (here two repeats), the expected answer, the weights.
    repeated = next(r for r in rows if "ACCEPT again" in r["text"] or "REJECT again" in r["text"])
    assert "repeat 2" in repeated["text"] and "0.25" in repeated["text"]
    # The header's numbers, each with its split.
    scores = {r["attrs"]["data-score"]: r["text"] for r in body(parse(html, "header"))}
    assert f"{event.data['composite']:.3f}" in scores["composite"]
    assert f"{event.data['heldout']:.3f}" in scores["held-out"]
    assert str(event.data["heldout_n"]) in scores["held-out"]
    lo, hi = event.data["heldout_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in scores["held-out"] and "heldout" in scores["held-out"]
    facts = parse(html, "facts")
    assert event.data["suite_hash"][:16] in html and event.data["commit"] in html
    assert "1.5 s" in html and str(event.data["failed"]) in html
    assert store.commit_of(ids["v1"])[:12] in html
    # Filters: checkbox and selects bound to the table's row attributes, options from it.
    assert re.search(r'<input type="checkbox" class="filter" id="failing-filter" '
                     r'data-target="scenarios" data-field="failing">', html)
    tags = sorted({t for r in runs for t in r.tags})
    assert tags and all(f'<option value="{t}">' in html for t in tags)
    assert 'data-field="split"' in html and 'data-field="tags"' in html
    assert '<option value="heldout">' in html
    # Links to the candidate page and to the event on the log.
    assert f"/specialists/{NAME}/candidates/v1" in facts.links
    assert f"/log/_all/1#e-{ids['v1']}" in parse(html, "none").links


def test_hostile_scenario_text_is_escaped_and_huge_outputs_render(served):
    client, _store, ids, _runs = served
    html = client.get(f"/specialists/{NAME}/evaluations/{ids['v1']}").text
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>ACCEPT</b>" not in html and "<img src=x" not in html
    assert "expected &lt;b&gt;ACCEPT&lt;/b&gt; &amp; got &lt;img" in html
    assert "<i>repeats</i>" not in html and "&lt;i&gt;repeats&lt;/i&gt;" in html
    assert HUGE.strip() in html  # the whole output, wrapped by the style sheet
    assert re.search(r"pre \{[^}]*white-space: pre-wrap", client.get("/assets/style.css").text)


def test_the_evaluation_page_links_each_other_evaluation_to_a_comparison(served):
    client, _store, ids, _runs = served
    html = client.get(f"/specialists/{NAME}/evaluations/{ids['v2']}").text
    others = parse(html, "others")
    compares = [link for link in others.links if "/compare/" in link]
    base = f"/specialists/{NAME}/compare"
    # Older ones as baseline, newer ones against this; every other evaluation once.
    assert set(compares) == {f"{base}/{ids['base']}/{ids['v2']}",
                             f"{base}/{ids['v1']}/{ids['v2']}",
                             f"{base}/{ids['v2']}/{ids['other']}",
                             f"{base}/{ids['v2']}/{ids['again']}"}
    other_row = next(r for r in body(others) if r["attrs"]["data-same-suite"] == "no")
    assert "other suite" in other_row["text"]


def _fmt(x: float) -> str:
    return f"{x:+.4f}"


def test_the_comparison_page_shows_the_services_paired_comparison(served):
    client, store, ids, _runs = served
    html = client.get(f"/specialists/{NAME}/compare/{ids['v1']}/{ids['v2']}").text
    expected = compare(store, NAME, ids["v1"], ids["v2"])
    paired = {r["attrs"]["data-split"]: r["cells"] for r in body(parse(html, "paired"))}
    assert set(paired) == {"core", *expected.also}
    assert "heldout" in paired
    for split, result in [("core", expected.result), *expected.also.items()]:
        cells = [c.strip() for c in paired[split]]
        assert cells[1:] == [str(result.n), f"{result.mean_a:.4f}", f"{result.mean_b:.4f}",
                             _fmt(result.diff), f"[{_fmt(result.ci[0])}, {_fmt(result.ci[1])}]",
                             str(result.wins), str(result.losses), str(result.ties),
                             f"{result.p_better:.3f}", result.verdict]
    assert expected.result.wins > 0  # v2 fails fewer: the comparison has something to show
    # Side by side: the core deltas the service lists, both outputs of every input.
    pairs = body(parse(html, "pairs"))
    core = {r["attrs"]["data-id"]: r for r in pairs
            if r["attrs"]["data-split"] == "core" and "data-variant" not in r["attrs"]}
    changed = {i for i, r in core.items() if r["attrs"]["data-changed"] == "yes"}
    assert changed == {d["id"] for d in expected.deltas}
    for d in expected.deltas:
        row = core[d["id"]]
        assert f"{d['delta']:+.3f}" in row["text"]
        assert row["attrs"]["data-direction"] == ("better" if d["delta"] > 0 else "worse")
    assert 'data-field="changed"' in html and 'data-field="split"' in html
    # Hostile text is escaped here too.
    assert SCRIPT not in html and "&lt;script&gt;" in html


def test_evaluations_without_usable_evidence_say_so(fleet):
    _root, store, ids, _runs = fleet
    empty = Event.new(EvalCompleted(model="m", suite="s", suite_hash="h", run_id="r1",
                                    composite=0.5), actor="test",
                      evidence={RESULTS: b"", REPORT: b"{}"})
    broken = Event.new(EvalCompleted(model="m", suite="s", suite_hash="h", run_id="r2",
                                     composite=0.5), actor="test",
                       evidence={RESULTS: b"{not json\n", REPORT: b"{}"})
    append(store, NAME, empty, broken)
    server = make_asgi_server(build_app(Source(store)), "127.0.0.1", 0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            answer = client.get(f"/specialists/{NAME}/compare/{ids['v1']}/{empty.id}")
            assert answer.status_code == 200
            assert "share no core scenario" in answer.text
            page = client.get(f"/specialists/{NAME}/evaluations/{empty.id}")
            assert page.status_code == 200 and "ran no scenario" in page.text
            page = client.get(f"/specialists/{NAME}/evaluations/{broken.id}")
            assert page.status_code == 200 and "does not parse" in page.text
            answer = client.get(f"/specialists/{NAME}/compare/{ids['v1']}/{broken.id}")
            assert answer.status_code == 200 and "does not parse" in answer.text
    finally:
        server.stop()


def test_unknown_evaluations_and_comparisons_are_404(served):
    client, _store, ids, _runs = served
    evals = f"/specialists/{NAME}/evaluations"
    assert client.get(f"{evals}/{'0' * 32}").status_code == 404
    # An event that is not an evaluation, and an evaluation under another stream's name.
    registered = client.get(f"/log/{NAME}/1").text
    not_eval = re.search(r'id="e-([0-9a-f]+)" data-type="CandidateRegistered"', registered)
    assert client.get(f"{evals}/{not_eval.group(1)}").status_code == 404
    assert client.get(f"/specialists/ops/evaluations/{ids['v1']}").status_code == 404
    compare_path = f"/specialists/{NAME}/compare"
    assert client.get(f"{compare_path}/{ids['v1']}/{'0' * 32}").status_code == 404
    answer = client.get(f"{compare_path}/{'1' * 32}/{ids['v1']}")
    assert answer.status_code == 404 and "no evaluation" in answer.text


def _filler(store: GitEventStore, n: int) -> list[Event]:
    """``n`` more events over two streams, alternating types."""
    events = []
    for i in range(n):
        stream = "ops" if i % 3 else NAME
        payload = FailuresExtracted(eval_event=f"e{i:08d}") if i % 2 else \
            EvalStarted(model="m", suite="s", suite_hash="h", run_id=f"r{i}")
        events += append(store, stream, Event.new(payload, actor=f"filler-{i}"))
    return events


def test_the_log_is_paged_newest_first_by_stream_and_type(served):
    client, store, _ids, _runs = served
    _filler(store, 240)
    every = list(store.read())
    total = len(every)
    assert total > 2 * LOG_PAGE
    pages = -(-total // LOG_PAGE)
    newest = client.get("/log").text
    assert newest == client.get(f"/log/_all/{pages}").text == client.get("/log/_all").text
    rows = body(parse(newest, "events"))
    want = every[(pages - 1) * LOG_PAGE:][::-1]
    assert [r["attrs"]["id"] for r in rows] == [f"e-{e.id}" for e in want]
    first = body(parse(client.get("/log/_all/1").text, "events"))
    assert [r["attrs"]["id"] for r in first] == [f"e-{e.id}" for e in every[:LOG_PAGE][::-1]]
    # Each event: its type and stream as row attributes, its JSON, its commit.
    e = every[0]
    page1 = client.get("/log/_all/1").text
    assert f'id="e-{e.id}" data-type="{e.type}" data-stream="{e.stream}"' in page1
    assert store.commit_of(e.id)[:12] in page1 and f"&#34;id&#34;: &#34;{e.id}&#34;" in page1
    # Pager links: newer/older and the pages around.
    links = parse(client.get("/log/_all/2").text, "events").links
    assert "/log/_all/3" in links and "/log/_all/1" in links
    # One stream: only its events, numbered by seq.
    ops = [e for e in every if e.stream == "ops"]
    ops_rows = body(parse(client.get("/log/ops/1").text, "events"))
    assert [r["attrs"]["id"] for r in ops_rows] == [f"e-{e.id}" for e in ops[:LOG_PAGE][::-1]]
    assert {r["attrs"]["data-stream"] for r in ops_rows} == {"ops"}
    # The type filter: a select on the page, ?type= across every page on the dashboard.
    assert 'class="filter" id="type-filter" data-target="events" data-field="type"' in newest
    started = [e for e in every if e.type == "EvalStarted"]
    typed = body(parse(client.get("/log/_all", params={"type": "EvalStarted"}).text, "events"))
    newest_typed = started[(len(started) - 1) // LOG_PAGE * LOG_PAGE:]
    assert [r["attrs"]["id"] for r in typed] == [f"e-{e.id}" for e in newest_typed[::-1]]
    typed_page = client.get("/log/_all/1", params={"type": "EvalStarted"}).text
    assert "/log/_all/2?type=EvalStarted" in parse(typed_page, "events").links
    none = client.get("/log/ops", params={"type": "Promoted"})
    assert none.status_code == 200 and "No events of type Promoted" in none.text


def test_log_pages_that_are_not_there_are_404(served):
    client, *_ = served
    for path in ("/log/nobody", "/log/nobody/1", "/log/_all/0", "/log/_all/2", "/log/_all/x",
                 f"/log/{NAME}/9"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "<script" not in answer.text


def test_a_specialist_named_all_has_its_own_log_pages(served):
    """Every stream's log is under ``_all`` (never a specialist name), so a specialist may
    be called ``all``: its pages hold its events only."""
    client, store, _ids, _runs = served
    mine = append(store, "all", Event.new(EvalStarted(model="m", suite="s", suite_hash="h",
                                                      run_id="r-all"), actor="someone"))
    own = body(parse(client.get("/log/all").text, "events"))
    assert [row["attrs"]["id"] for row in own] == [f"e-{mine[0].id}"]
    every = body(parse(client.get("/log/_all").text, "events"))
    assert f"e-{mine[0].id}" in [row["attrs"]["id"] for row in every] and len(every) > 1


def test_event_links_from_other_pages_land_on_the_events_row(served):
    client, store, ids, _runs = served
    _filler(store, 150)
    html = client.get(f"/specialists/{NAME}/evaluations/{ids['v2']}").text
    link = next(a for a in parse(html, "none").links if "#e-" in a)
    path, anchor = link.split("#")
    assert anchor == f"e-{ids['v2']}"
    assert f'id="{anchor}"' in client.get(path).text


def report(root: Path, store: GitEventStore, out: Path):
    """The static report as `modelsmith report --out` writes it (the façade's pages)."""
    with Modelsmith(root, store=store, fetch=False) as app:
        return app.write_report(out)


def _resolve(page: Path, href: str, out: Path) -> Path:
    return Path(posixpath.normpath(posixpath.join(str(page.parent), href.split("#")[0])))


def test_the_static_report_writes_bounded_pages_with_relative_links(fleet, tmp_path):
    root, store, ids, _runs = fleet
    _filler(store, 130)
    out = tmp_path / "report"
    written = report(root, store, out)
    assert not written.skipped
    evals = out / "specialists" / NAME / "evaluations"
    assert {p.stem for p in evals.iterdir()} == set(ids.values())
    # Comparisons: each evaluation against the previous one on the same suite, no more.
    compared = {(p.parent.name, p.stem) for p in (out / "specialists" / NAME / "compare")
                .glob("*/*.html")}
    assert compared == {(ids["base"], ids["v1"]), (ids["v1"], ids["v2"]),
                        (ids["v2"], ids["again"])}
    # The log: pages of 100 for every stream and each stream.
    total = sum(1 for _ in store.read())
    assert len(list((out / "log" / "_all").glob("*.html"))) == -(-total // LOG_PAGE)
    ops = store.last_seq("ops")
    assert len(list((out / "log" / "ops").glob("*.html"))) == -(-ops // LOG_PAGE)
    assert (out / "log.html").is_file() and (out / "log" / "ops.html").is_file()
    # Every link of these pages is relative and names a file of the report; anchors exist.
    pages = [*evals.glob("*.html"), *(out / "specialists" / NAME / "compare").glob("*/*.html"),
             out / "log.html", *(out / "log").rglob("*.html")]
    for page in pages:
        parsed = parse(page.read_text(), "none")
        for href in parsed.links:
            assert not href.startswith(("/", "http")), (page, href)
            target = _resolve(page, href, out)
            assert target.is_file(), (page, href)
            if "#" in href:
                assert f'id="{href.split("#")[1]}"' in target.read_text(), (page, href)
    # No server-side filter form in the static report; the page filters still there.
    newest = (out / "log.html").read_text()
    assert 'name="type"' not in newest and 'id="type-filter"' in newest
    v2 = (evals / f"{ids['v2']}.html").read_text()
    compares = [a for a in parse(v2, "others").links if "compare" in a]
    assert sorted(Path(a).parent.name + "/" + Path(a).stem for a in compares) == sorted(
        [f"{ids['v1']}/{ids['v2']}", f"{ids['v2']}/{ids['again']}"])
    assert 'id="failing-filter"' in v2


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium")
def test_the_static_pages_filter_in_a_browser(fleet, tmp_path):
    from playwright.sync_api import sync_playwright

    root, store, ids, runs = fleet
    out = tmp_path / "report"
    report(root, store, out)
    page_file = out / "specialists" / NAME / "evaluations" / f"{ids['v1']}.html"
    tag = sorted({t for r in runs for t in r.tags})[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: errors.append("dialog: " + d.message))
            page.goto(page_file.as_uri())
            shown = "#scenarios > tbody > tr:not(.hidden)"
            assert page.locator(shown).count() == len(runs)
            page.check("#failing-filter")
            assert page.locator(shown).count() == sum(1 for r in runs if not r.passed)
            page.select_option("#split-filter", "heldout")
            assert page.locator(shown).count() == sum(
                1 for r in runs if not r.passed and r.split == "heldout")
            page.uncheck("#failing-filter")
            page.select_option("#split-filter", "")
            page.select_option("#tag-filter", tag)
            assert page.locator(shown).count() == sum(1 for r in runs if tag in r.tags)
            page.goto((out / "log.html").as_uri())
            page.select_option("#type-filter", "EvalCompleted")
            assert page.locator("#events tbody > tr:not(.hidden)").count() == len(ids)
            assert errors == []
        finally:
            browser.close()
