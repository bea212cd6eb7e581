"""The dashboard and the static report in a real browser: Debian's headless Chromium driven
by Playwright (``executable_path=/usr/bin/chromium``; never a downloaded browser).

Every page the static report writes is opened on a running ``modelsmith ui`` (a real
process) with no console error, no uncaught exception and no failed request; the fleet's
numbers are ``modelsmith status --json``'s; an evaluation shows its failing scenarios'
reasons and filters to them; the static report opens from ``file://`` and its links land on
its files; hostile input (a scenario input with ``<script>``, a 63-character name, an empty
fleet) is escaped and rendered. Without Chromium (or Playwright) the tests are skipped
saying so, unless ``MODELSMITH_REQUIRE_BROWSER=1`` (CI), where they fail instead.

``python tests/test_ui_browser.py REPO OUT.png`` takes the README's screenshot of REPO's
fleet page (docs/dashboard.png, from the demo fork).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from ui_repo import HOSTILE, LONG_NAME, NAME, Built, UiProcess, build, fork

pytestmark = pytest.mark.xdist_group("ui-browser")  # one browser per worker, one worker

CHROMIUM = os.environ.get("MODELSMITH_CHROMIUM", "/usr/bin/chromium")
#: Without the background-networking flags Chromium dials out (updates, sync, QUIC probes),
#: which a closed network refuses and Chromium reports as errors.
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def _missing(reason: str):
    if os.environ.get("MODELSMITH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (MODELSMITH_REQUIRE_BROWSER=1: the browser tests must run)")
    pytest.skip(reason)


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium; or set "
                 "MODELSMITH_CHROMIUM)")
    playwright = sync_playwright().start()
    try:
        chromium = launch(playwright)
    except Exception as exc:
        playwright.stop()
        _missing(f"Chromium at {CHROMIUM} does not start: {exc}")
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(fork(tmp_path_factory.mktemp("ui-browser") / "repo"))


@pytest.fixture(scope="module")
def dashboard(built: Built):
    with UiProcess(built.root) as ui:
        yield ui


def page_paths(root: Path) -> list[str]:
    """The dashboard path of every file the static report writes for ``root``."""
    from modelsmith.app import Modelsmith
    from modelsmith.ui.pages import pages

    app = Modelsmith.open(root, fetch=False)
    try:
        source = app.dashboard()
        return [page.path(params) for page in pages() for params in page.instances(source)]
    finally:
        app.close()


class Watched:
    """A browser page with every console error, uncaught exception, failed request and
    answer >= 400 kept in :attr:`problems`."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        page = self.page
        page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text} at {m.location}"))
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status}: {r.url}"))

    def _failed(self, request) -> None:
        # The page's own poll of /api/tip (every 3 s) is cut off when the test moves on to
        # the next page; under load that happens while it is in flight. Anything else that
        # fails, or that poll failing any other way, is a problem.
        if request.url.endswith("/api/tip") and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"request failed: {request.url}: {request.failure}")

    def open(self, url: str) -> int:
        """Go to ``url`` and wait for it to settle; its HTTP status (200 for a file)."""
        answer = self.page.goto(url, wait_until="load", timeout=60_000)
        self.page.wait_for_load_state("networkidle", timeout=60_000)
        return answer.status if answer is not None and answer.status else 200

    def charts_drawn(self) -> None:
        """Every chart element holds a drawing (Plotly ran on its figure)."""
        undrawn = self.page.eval_on_selector_all(
            "[data-chart]", "els => els.filter(e => !e.querySelector('svg')).length")
        assert undrawn == 0, f"{undrawn} chart(s) not drawn on {self.page.url}"

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _modelsmith(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelsmith", "--no-fetch", *args],
                          capture_output=True, text=True, timeout=600)


def _shot(watched: Watched, folder: Path, path: str) -> None:
    name = path.strip("/").replace("/", "_") or "index"
    watched.page.screenshot(path=str(folder / f"{name[:120]}.png"), full_page=True)


def test_every_page_opens_without_an_error(browser, built: Built, dashboard: UiProcess,
                                           tmp_path: Path):
    paths = page_paths(built.root)
    # The fixture's log has a page of every kind: fleet, proposals, log, evaluations,
    # candidates and specialists, for both specialists.
    assert len(paths) >= 15, paths
    assert f"/specialists/{LONG_NAME}" in paths
    with Watched(browser) as watched:
        for path in paths:
            status = watched.open(dashboard.url + path)
            assert status == 200, path
            assert watched.problems == [], (path, watched.problems)
            assert watched.page.locator("main").inner_text().strip(), path
            watched.charts_drawn()
            _shot(watched, tmp_path, path)
    assert not any("Traceback" in line or line.startswith("modelsmith ui: ")
                   for line in dashboard.lines), dashboard.lines


def test_the_fleet_page_shows_the_status_tables_numbers(browser, built: Built,
                                                         dashboard: UiProcess):
    answer = _modelsmith("-C", str(built.root), "status", "--json")
    assert answer.returncode == 0, answer.stderr
    status = json.loads(answer.stdout)
    assert {r["name"] for r in status["specialists"]} == {NAME, LONG_NAME}
    with Watched(browser) as watched:
        assert watched.open(dashboard.url + "/") == 200
        page = watched.page
        assert page.locator("#event-count").inner_text() == str(status["events"])
        assert page.locator("#specialist-count").inner_text() == str(
            len(status["specialists"]))
        for row in status["specialists"]:
            tr = page.locator(f'#fleet tbody tr[data-name="{row["name"]}"]')
            assert tr.count() == 1, row["name"]
            for stage in ("production", "canary", "shadow"):
                held = row[stage]
                shown = tr.locator(f'[data-field="{stage}"]').inner_text().strip()
                assert shown == (held["version"] if held else "—"), (row["name"], stage)
            assert tr.locator('[data-field="candidates"]').inner_text() == str(
                row["candidates"])
            assert tr.locator('[data-field="events"]').inner_text() == str(row["events"])
        assert watched.problems == []
    rtb = next(r for r in status["specialists"] if r["name"] == NAME)
    # The log the fixture wrote: v1 in production, v3 in canary after v2's rollback, v4 in
    # shadow (so the comparison above is not between two empty tables).
    assert [rtb[s]["version"] for s in ("production", "canary", "shadow")] == \
        ["v1", "v3", "v4"]


def _failing_reasons(root: Path, event_id: str) -> dict[str, list[str]]:
    """Each failing scenario's criterion reasons, read from the evaluation's evidence."""
    from modelsmith.evaluation.service import load_runs
    from modelsmith.events.gitstore import GitEventStore

    store = GitEventStore(root)
    runs = load_runs(store, store.get(event_id))
    return {r.id: [c.reason for c in r.criteria if c.score < 1] for r in runs if not r.passed}


def test_an_evaluation_shows_why_a_scenario_failed(browser, built: Built,
                                                   dashboard: UiProcess):
    event_id = built.evaluations["v1"]
    failing = _failing_reasons(built.root, event_id)
    assert failing and all(failing.values())
    with Watched(browser) as watched:
        assert watched.open(f"{dashboard.url}/specialists/{NAME}/evaluations/{event_id}") \
            == 200
        body = watched.page.locator("body").inner_text()
        for scenario, reasons in failing.items():
            assert scenario in body
            for reason in reasons:
                assert reason in body, (scenario, reason)
        assert watched.problems == []


def test_the_failing_filter_hides_passing_scenarios(browser, built: Built,
                                                    dashboard: UiProcess):
    """The page's contract with app.js: a filter with data-field="failing" over the
    scenarios' table, whose rows carry data-failing="yes" or "no"."""
    event_id = built.evaluations["v1"]
    with Watched(browser) as watched:
        watched.open(f"{dashboard.url}/specialists/{NAME}/evaluations/{event_id}")
        page = watched.page
        control = page.locator('.filter[data-field="failing"]')
        assert control.count() >= 1, "the evaluation page has no failing filter"
        control = control.first
        table = control.get_attribute("data-target")
        rows = page.locator(f"#{table} tbody tr")
        total = rows.count()
        failing = page.locator(f'#{table} tbody tr[data-failing="yes"]').count()
        assert 0 < failing < total
        if control.evaluate("e => e.type") == "checkbox":
            control.check()
        else:
            control.select_option("yes")
        visible = page.locator(f"#{table} tbody tr:visible")
        assert visible.count() == failing
        for i in range(visible.count()):
            assert visible.nth(i).get_attribute("data-failing") == "yes"
        if control.evaluate("e => e.type") == "checkbox":
            control.uncheck()
            assert visible.count() == total
        assert watched.problems == []


def test_the_static_report_opens_from_files_and_its_links_land(browser, built: Built,
                                                               tmp_path: Path):
    out = tmp_path / "report"
    written = _modelsmith("-C", str(built.root), "report", "--out", str(out), "--json")
    assert written.returncode == 0, written.stderr
    files = sorted(out.rglob("*.html"))
    from modelsmith.ui.render import View

    expected = {out / View("/").file(p) for p in page_paths(built.root)}
    assert set(files) == expected
    assert json.loads(written.stdout)["pages"] == len(files)
    shots = tmp_path / "shots"
    shots.mkdir()
    with Watched(browser) as watched:
        for f in files:
            watched.open(f.as_uri())
            assert watched.problems == [], (f, watched.problems)
            watched.charts_drawn()
            assert watched.page.evaluate("document.body.dataset.static") == "yes"
        _shot(watched, shots, "index")
        for start in (out / "index.html", out / "specialists" / f"{NAME}.html"):
            watched.open(start.as_uri())
            hrefs = watched.page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
            assert hrefs, start
            for href in hrefs:
                url = urlparse(href)
                assert url.scheme == "file", (start, href)  # nothing points off the report
                target = Path(unquote(url.path))
                assert target.is_file(), (start, href)
                assert out in target.parents, (start, href)
            # Following a link in the browser lands on a page, not an error.
            first = watched.page.locator("main a[href]").first
            first.click()
            watched.page.wait_for_load_state("load")
            assert Path(unquote(urlparse(watched.page.url).path)).is_file()
            assert watched.problems == []


def test_hostile_input_is_escaped_and_shown(browser, built: Built, dashboard: UiProcess,
                                            tmp_path: Path):
    path = f"/specialists/{LONG_NAME}/evaluations/{built.hostile_eval}"
    out = tmp_path / "report"
    assert _modelsmith("-C", str(built.root), "report", "--out", str(out)).returncode == 0
    from modelsmith.ui.render import View

    with Watched(browser) as watched:
        for url in (dashboard.url + path, (out / View("/").file(path)).as_uri()):
            watched.open(url)
            page = watched.page
            assert page.evaluate("typeof window.__pwned") == "undefined", url
            assert HOSTILE in page.locator("main").inner_text(), url
            assert page.locator('img[src="x"]').count() == 0, url
            assert page.eval_on_selector_all("script", """ss => ss.filter(s =>
                s.type !== "application/json" && s.textContent.includes("__pwned")).length""") \
                == 0, url
        for url in (dashboard.url + "/", dashboard.url + f"/specialists/{LONG_NAME}",
                    dashboard.url + "/log", (out / "index.html").as_uri()):
            watched.open(url)
            assert LONG_NAME in watched.page.locator("main").inner_text(), url
            assert watched.page.evaluate("typeof window.__pwned") == "undefined", url
        assert watched.problems == []


def test_an_open_page_follows_the_log_and_keeps_its_token(browser, tmp_path: Path):
    """Opened once with ?token=, the page keeps the cookie (its /api/tip polls pass) and
    reads itself again when another writer appends: the new count shows, no restart."""
    from datetime import UTC, datetime

    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.types import Event, MetricsObserved

    root = build(fork(tmp_path / "repo")).root
    token = "a-browser-token"
    with UiProcess(root, token=token) as ui, Watched(browser) as watched:
        page = watched.page
        refused = page.goto(ui.url + "/", wait_until="load", timeout=60_000)
        assert refused is not None and refused.status == 401
        watched.problems.clear()  # the refusal itself was the point
        assert watched.open(f"{ui.url}/?token={token}") == 200
        assert page.url == ui.url + "/"  # the token left the address bar
        before = int(page.locator("#event-count").inner_text())
        store = GitEventStore(root)
        now = datetime.now(UTC)
        seen = MetricsObserved(version="v1", stage="production", window_start=now,
                               window_end=now, requests=3, metrics={"format_rate": 1.0})
        store.append(NAME, [Event.new(seen, actor="serve")], store.last_seq(NAME))
        page.wait_for_function(
            f"() => document.getElementById('event-count')?.textContent === '{before + 1}'",
            timeout=90_000)
        assert page.locator("body").get_attribute("data-tip") == store.tip()
        page.wait_for_load_state("networkidle", timeout=60_000)
        assert watched.problems == []


@pytest.mark.parametrize("declared", [True, False], ids=["demo-files", "bare-repo"])
def test_an_empty_fleet_renders(browser, tmp_path: Path, declared: bool):
    if declared:
        root = fork(tmp_path / "repo")  # specialists declared, no event yet
    else:
        import pygit2

        root = tmp_path / "repo"
        root.mkdir()
        pygit2.init_repository(str(root))  # nothing at all
    out = tmp_path / "report"
    written = _modelsmith("-C", str(root), "report", "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert "Traceback" not in written.stderr
    with UiProcess(root) as ui, Watched(browser) as watched:
        for path in page_paths(root):
            assert watched.open(ui.url + path) == 200, path
            assert watched.page.locator("main").inner_text().strip(), path
        assert watched.page.goto(ui.url + "/").status == 200
        assert watched.page.locator("#event-count").inner_text() == "0"
        for f in sorted(out.rglob("*.html")):
            watched.open(f.as_uri())
        assert watched.problems == []
    assert not any("Traceback" in line for line in ui.lines), ui.lines


def screenshot(repo: Path, png: Path, path: str = "/", size: tuple[int, int] = (1200, 200)) -> None:
    """The README's picture: ``repo``'s page at ``path`` on a running ``modelsmith ui``
    (``size``: the window; the shot is the whole page)."""
    from playwright.sync_api import sync_playwright

    with UiProcess(repo) as ui, sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            with Watched(chromium) as watched:
                watched.context.close()
                watched.context = chromium.new_context(
                    viewport={"width": size[0], "height": size[1]})
                watched.page = watched.context.new_page()
                watched.open(ui.url + path)
                watched.page.screenshot(path=str(png), full_page=path == "/")
        finally:
            chromium.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python tests/test_ui_browser.py REPO OUT.png [PAGE]  (PAGE: a path, "
                 "e.g. /specialists/rtb-quality: its first 1400x1250 pixels)")
    Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) == 4:
        screenshot(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], (1400, 1250))
    else:
        screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
