"""The proposals page and the report links of ``propose``, on a real repository.

A proposal opened with ``modelsmith propose`` on the local forge is shown by the dashboard
(served over real HTTP on 127.0.0.1) with every gate the plan would apply -- pass or fail,
its numbers, its reason -- and links to its evidence, each of which opens a page that
exists (on the dashboard and in the static report). After the merge, the action reconcile
would take is shown the same way; a plan that cannot be made shows why; an empty fleet
shows that nothing waits. ``propose``'s description links to the published report's pages
when a URL is configured, and those pages are files ``modelsmith report`` writes.
"""

from __future__ import annotations

import json
import posixpath
import re
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx2 as httpx
import pytest
from click.testing import CliRunner
from markupsafe import escape

from conftest import git
from evaluations import GOOD, POOR, canary_fork, lineage
from modelsmith.app.facade import Modelsmith
from modelsmith.cli import cli
from modelsmith.errors import ModelsmithError
from modelsmith.events.gitstore import GitEventStore
from modelsmith.serving.http import make_asgi_server
from modelsmith.ui.render import number
from modelsmith.ui.site import build_app
from modelsmith.ui.source import Source

SPEC = "specialists/rtb-quality.yaml"
BRANCH = "modelsmith/propose/rtb-quality/production-v1"
URL = "https://reports.example.org/fleet/"


@pytest.fixture
def fork(demo_repo, monkeypatch):
    """The demo fork with v1 in canary (after shadow, with traffic in both) and a lineage
    of three evaluated versions: v1's production proposal passes every gate but approval."""
    monkeypatch.delenv("MODELSMITH_REPORT_URL", raising=False)
    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    return canary_fork(demo_repo)


def run(repo: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code == code, result.output
    return result.output


class Links(HTMLParser):
    """Every ``<a href>`` of a page, with its class; and the text of the whole page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            a = dict(attrs)
            self.links.append((a.get("href") or "", a.get("class") or ""))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Links:
    found = Links()
    found.feed(html)
    return found


def rows(html: str, section: str) -> dict[str, str]:
    """Gate name -> its table row's HTML, in the first ``<section>`` whose opening tag
    contains ``section``."""
    start = html.index(section)
    chunk = html[start:html.index("</section>", start)]
    return {m.group(1): m.group(0) for m in re.finditer(
        r'<tr data-gate="([a-z]+)".*?</tr>', chunk, re.S)}


@contextmanager
def dashboard(source: Source):
    """The dashboard's app on the real HTTP server, on 127.0.0.1; an httpx client on it."""
    server = make_asgi_server(build_app(source), "127.0.0.1", 0)
    server.start()
    try:
        host, port = server.server_address
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=60) as client:
            yield client
    finally:
        server.stop(2.0)


def test_an_open_proposal_shows_its_gates_with_numbers_and_evidence(fork, tmp_path):
    run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production")
    (waiting,) = json.loads(run(fork, "plan", "--json"))["proposals"]
    by_name = {g["name"]: g for g in waiting["gates"]}
    assert by_name["composite"]["passed"] and not by_name["approval"]["passed"]
    source = Modelsmith.open(fork, fetch=False).dashboard()
    with dashboard(source) as client:
        answer = client.get("/proposals")
        assert answer.status_code == 200
        html = answer.text
        section = ('data-specialist="rtb-quality" data-stage="production" '
                   'data-version="v1"')
        assert section in html
        assert f'<code class="forge-ref">{BRANCH}</code>' in html
        author = git(fork, "log", "-1", "--format=%an", BRANCH).strip()
        assert f'<td class="author">{author}</td>' in html
        assert '<span class="badge pass">ready</span>' in html
        gates = rows(html, section)
        assert set(gates) == set(by_name)
        for name, gate in by_name.items():
            row = gates[name]
            assert f'data-passed="{"yes" if gate["passed"] else "no"}"' in row
            assert ('<span class="badge pass">pass</span>' if gate["passed"]
                    else '<span class="badge fail">fail</span>') in row
            for key, value in gate["numbers"].items():
                if key == "event_id":
                    continue
                assert (f'<div class="number" data-number="{key}"><small>{key}</small> '
                        f'{number(value)}</div>') in row, (name, key)
            assert f'<td class="reason">{escape(gate["detail"])}</td>' in row
        # The composite gate counted v1 and its two ancestors: each evaluation is linked.
        composite = parse(gates["composite"])
        evidence = [href for href, cls in composite.links if "evidence" in cls]
        assert len(evidence) == 3 and all("/evaluations/" in h for h in evidence)
        # The order gate rests on the promotion into canary: a log event, linked to its row
        # on the log page that holds it.
        order = [href for href, cls in parse(gates["order"]).links if "evidence" in cls]
        assert len(order) == 1 and order[0].startswith("/log/_all/") and "#e-" in order[0]
        # Every link of the page opens a page that exists.
        links = {href for href, _ in parse(html).links}
        assert "/specialists/rtb-quality/candidates/v1" in links
        for href in sorted(links):
            page = client.get(href)
            assert page.status_code == 200, href
        ids = [h.rsplit("/", 1)[1] for h in evidence]
        assert set(ids) == {e.id for e in GitEventStore(fork).read("rtb-quality")
                            if e.type == "EvalCompleted"}

    # The static report: the same page with relative links, each to a file written.
    out = tmp_path / "report"
    Modelsmith.open(fork, fetch=False).write_report(out)
    page = (out / "proposals.html").read_text()
    assert section in page and f'<code class="forge-ref">{BRANCH}</code>' in page
    for href, _ in parse(page).links:
        assert (out / posixpath.normpath(href.split("#")[0])).is_file(), href
    assert all((out / "specialists" / "rtb-quality" / "evaluations" / f"{i}.html").is_file()
               for i in ids)


def test_failing_gates_show_their_numbers(fork):
    """v2 descends from v1 and scores poorly: its proposal's composite gate fails, and the
    page shows the lowest decision metric the plan computed."""
    store = GitEventStore(fork)
    poor = lineage(fork, "v2", runs=(GOOD, GOOD, POOR), run_id="run2")
    store.append("rtb-quality", poor, store.last_seq("rtb-quality"))
    run(fork, "propose", "rtb-quality", "--version", "v2", "--stage", "shadow")
    run(fork, "propose", "rtb-quality", "--version", "v9", "--stage", "shadow")
    proposals = {p["version"]: p for p in json.loads(run(fork, "plan", "--json"))["proposals"]}
    composite = next(g for g in proposals["v2"]["gates"] if g["name"] == "composite")
    assert not composite["passed"] and composite["numbers"]["lowest"] < 0.9
    source = Modelsmith.open(fork, fetch=False).dashboard()
    with dashboard(source) as client:
        html = client.get("/proposals").text
    v2 = rows(html, 'data-stage="shadow" data-version="v2"')
    assert 'data-passed="no"' in v2["composite"]
    assert (f'<div class="number" data-number="lowest"><small>lowest</small> '
            f'{number(composite["numbers"]["lowest"])}</div>') in v2["composite"]
    assert 'data-number="target"><small>target</small> 0.900' in v2["composite"]
    v9 = rows(html, 'data-stage="shadow" data-version="v9"')
    assert list(v9) == ["version"] and 'data-passed="no"' in v9["version"]
    assert "v9 is not a registered candidate of rtb-quality" in v9["version"]
    assert html.count('<span class="badge fail">not ready</span>') == 2


def test_after_the_merge_the_action_is_shown_with_its_gates(fork):
    run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production")
    git(fork, "merge", "--no-ff", "-q", BRANCH, "-m",
        f"Merge {BRANCH}\n\nApproved-by: alice\nApproved-by: bob")
    (action,) = json.loads(run(fork, "plan", "--json"))["actions"]
    source = Modelsmith.open(fork, fetch=False).dashboard()
    with dashboard(source) as client:
        html = client.get("/proposals").text
    assert 'id="no-proposals"' in html
    section = f'data-kind="{action["kind"]}" data-specialist="rtb-quality"'
    assert action["kind"] == "promote" and section in html
    gates = rows(html, section)
    assert set(gates) == {g["name"] for g in action["gates"]}
    assert all('data-passed="yes"' in row for row in gates.values())
    assert "approved by alice, bob" in html


def test_a_plan_that_cannot_be_made_says_why(fork):
    spec = fork / SPEC
    spec.write_text(spec.read_text().replace("kind: Specialist", "kind: Specialist\nbogus: 1"))
    with pytest.raises(ModelsmithError) as failed:
        Modelsmith.open(fork, fetch=False).plan_report()
    source = Modelsmith.open(fork, fetch=False).dashboard()
    with dashboard(source) as client:
        answer = client.get("/proposals")
    assert answer.status_code == 200
    assert '<p class="warn" id="plan-error">The plan cannot be made: ' in answer.text
    assert str(escape(str(failed.value))) in answer.text


def test_an_empty_fleet_and_an_unwired_plan(demo_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_NO_FETCH", "1")
    git(demo_repo, "checkout", "-q", "-b", "main")
    git(demo_repo, "add", "-A")
    git(demo_repo, "commit", "-q", "-m", "the fork")
    source = Modelsmith.open(demo_repo, fetch=False).dashboard()
    with dashboard(source) as client:
        html = client.get("/proposals").text
    assert 'id="no-proposals"' in html and "plan-error" not in html
    bare = Source(GitEventStore(demo_repo))
    with dashboard(bare) as client:
        html = client.get("/proposals").text
    assert "No plan is wired to this view." in html


def test_the_plan_is_kept_a_few_seconds_besides_the_tip(demo_repo):
    calls = []

    def plan():
        calls.append(1)
        return {"tip": None, "actions": [], "proposals": [], "holds": {}, "warnings": []}

    kept = Source(GitEventStore(demo_repo), plan=plan, plan_ttl=3600)
    kept.plan()
    kept.plan()
    assert len(calls) == 1
    fresh = Source(GitEventStore(demo_repo), plan=plan, plan_ttl=0)
    fresh.plan()
    fresh.plan()
    assert len(calls) == 3  # a new pull request shows without the log moving

    def failing():
        raise ModelsmithError("forge unreachable")

    assert Source(GitEventStore(demo_repo), plan=failing).plan() == {
        "error": "forge unreachable"}


def report_links(body: str) -> list[str]:
    return re.findall(r"\]\((https?://[^)]+)\)", body)


def test_propose_links_to_the_published_report(fork, tmp_path, monkeypatch):
    plain = json.loads(run(fork, "propose", "rtb-quality", "--version", "v1", "--stage",
                           "production", "--json"))
    assert "### Report" not in plain["body"] and report_links(plain["body"]) == []
    git(fork, "branch", "-q", "-D", BRANCH)

    out = json.loads(run(fork, "propose", "rtb-quality", "--version", "v1", "--stage",
                         "production", "--report-url", URL, "--json"))
    links = report_links(out["body"])
    evaluations = [e.id for e in GitEventStore(fork).read("rtb-quality")
                   if e.type == "EvalCompleted" and e.data["version"] == "v1"]
    base = URL.rstrip("/")
    assert links == [f"{base}/specialists/rtb-quality.html",
                     f"{base}/specialists/rtb-quality/candidates/v1.html",
                     *(f"{base}/specialists/rtb-quality/evaluations/{i}.html"
                       for i in evaluations)]
    # The commit on the proposal's branch carries the same body.
    assert links == report_links(git(fork, "log", "-1", "--format=%B", BRANCH))
    # Each link names a page the static report writes.
    site = tmp_path / "site"
    Modelsmith.open(fork, fetch=False).write_report(site)
    for link in links:
        assert (site / link[len(base) + 1:]).is_file(), link
    git(fork, "branch", "-q", "-D", BRANCH)

    # MODELSMITH_REPORT_URL configures it too; a bad --report-url is a clear message.
    monkeypatch.setenv("MODELSMITH_REPORT_URL", "https://elsewhere.example/r")
    body = json.loads(run(fork, "propose", "rtb-quality", "--version", "v1", "--stage",
                          "production", "--json"))["body"]
    assert report_links(body)[0] == "https://elsewhere.example/r/specialists/rtb-quality.html"
    bad = run(fork, "propose", "rtb-quality", "--version", "v1", "--stage", "production",
              "--report-url", "reports", code=2)
    assert "--report-url" in bad and "http" in bad
