"""The dashboard's server without a browser: its token, read-only methods, 404s, assets,
following the log's tip, ``modelsmith ui`` stopping on SIGTERM, and ``modelsmith report``
refusing a folder it did not write. Real HTTP on 127.0.0.1 (httpx), real processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import pytest

from ui_repo import NAME, UiProcess, build, fork

TOKEN = "s3cret-token-for-the-dashboard"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fork(tmp_path_factory.mktemp("ui-site") / "repo")
    build(root)
    return root


def _server(root: Path, token: str | None = None):
    from modelsmith.app import Modelsmith

    app = Modelsmith.open(root, fetch=False)
    server = app.ui_server("127.0.0.1", 0, token=token)
    server.start()
    host, port = server.server_address[:2]
    return app, server, f"http://{host}:{port}"


@pytest.fixture(scope="module")
def site(repo: Path):
    app, server, url = _server(repo)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    server.stop(5.0)
    app.close()


@pytest.fixture(scope="module")
def guarded(repo: Path):
    app, server, url = _server(repo, token=TOKEN)
    yield url
    server.stop(5.0)
    app.close()


def test_without_the_token_a_page_is_refused(guarded: str):
    for path in ("/", f"/specialists/{NAME}", "/log", "/api/tip", "/api/status"):
        answer = httpx.get(guarded + path, timeout=60)
        assert answer.status_code == 401, path
        assert answer.headers["content-type"].startswith("text/html")
        assert "token" in answer.text
    wrong = httpx.get(guarded + "/", headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401
    other_scheme = httpx.get(guarded + "/", headers={"Authorization": f"Basic {TOKEN}"},
                             timeout=60)
    assert other_scheme.status_code == 401
    assert httpx.get(guarded + "/?token=nope", timeout=60,
                     follow_redirects=False).status_code == 401
    assert "set-cookie" not in httpx.get(guarded + "/?token=nope", timeout=60).headers


def test_a_bearer_token_opens_every_page(guarded: str):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    page = httpx.get(guarded + "/", headers=bearer, timeout=60)
    assert page.status_code == 200 and NAME in page.text
    assert httpx.get(guarded + "/api/tip", headers=bearer, timeout=60).json()["tip"]


def test_token_in_the_address_becomes_a_cookie_and_leaves_the_address(guarded: str):
    with httpx.Client(base_url=guarded, timeout=60) as client:
        first = client.get(f"/log?stream={NAME}&token={TOKEN}", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == f"/log?stream={NAME}"
        cookie = first.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        # The client keeps the cookie: the next pages need no token.
        assert client.get("/").status_code == 200
        assert client.get(f"/specialists/{NAME}").status_code == 200
    with httpx.Client(base_url=guarded, timeout=60) as fresh:
        assert fresh.get("/").status_code == 401


def test_the_dashboard_only_reads(site: httpx.Client):
    for path in ("/", f"/specialists/{NAME}", "/log", "/api/tip", "/assets/app.js"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            answer = site.request(method, path, content=b"{}")
            assert answer.status_code == 405, (method, path)
            assert answer.headers["allow"] == "GET, HEAD", (method, path)
    head = site.head("/")
    assert head.status_code == 200 and head.content == b""


def test_an_unknown_page_is_a_404_page(site: httpx.Client):
    for path in ("/nope", "/specialists/nope", f"/specialists/{NAME}/candidates/v99",
                 f"/specialists/{NAME}/evaluations/0123456789abcdef", "/assets/nope.css",
                 "/assets/..%2Fsite.py"):
        answer = site.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html"), path
        assert "<h1>Not found</h1>" in answer.text, path


def test_assets_are_served_with_their_types(site: httpx.Client):
    css = site.get("/assets/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = site.get("/assets/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    plotly = site.get("/assets/plotly.min.js")
    assert plotly.status_code == 200
    assert plotly.headers["content-type"].startswith("text/javascript")
    assert "plotly.js" in plotly.text[:1000] and len(plotly.content) > 1_000_000
    assert css.headers["x-content-type-options"] == "nosniff"
    page = site.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for link in re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text):
        assert site.get(link).status_code == 200, link


def _events_shown(html: str) -> int:
    found = re.search(r'id="event-count">(\d+)<', html)
    assert found, "the fleet page shows no event count"
    return int(found.group(1))


def test_the_pages_follow_a_new_append_without_a_restart(tmp_path: Path):
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.types import Event, MetricsObserved

    root = fork(tmp_path / "repo")
    build(root)
    app, server, url = _server(root)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            tip = client.get("/api/tip").json()["tip"]
            before = _events_shown(client.get("/").text)
            store = GitEventStore(root)  # another writer, as `serve` or `reconcile` is
            assert tip == store.tip()
            now = datetime.now(UTC)
            seen = MetricsObserved(version="v1", stage="production", window_start=now,
                                   window_end=now, requests=7, metrics={"format_rate": 1.0})
            store.append(NAME, [Event.new(seen, actor="serve")], store.last_seq(NAME))
            moved = client.get("/api/tip").json()["tip"]
            assert moved != tip and moved == store.tip()
            assert _events_shown(client.get("/").text) == before + 1
            assert client.get("/api/status").json()["events"] == before + 1
    finally:
        server.stop(5.0)
        app.close()


def test_modelsmith_ui_stops_on_sigterm(repo: Path):
    ui = UiProcess(repo)
    try:
        assert httpx.get(ui.url + "/healthz", timeout=60).status_code == 200
        assert httpx.get(ui.url + "/", timeout=60).status_code == 200
        ui.proc.send_signal(signal.SIGTERM)
        code = ui.proc.wait(timeout=20)  # a few seconds; generous under a loaded machine
    finally:
        ui.stop()
    assert code == 0, "\n".join(ui.lines)
    assert not any("Traceback" in line for line in ui.lines), ui.lines


def _modelsmith(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelsmith", "--no-fetch", *args],
                          capture_output=True, text=True, timeout=600)


def test_modelsmith_report_refuses_a_folder_it_did_not_write(repo: Path, tmp_path: Path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n")
    refused = _modelsmith("-C", str(repo), "report", "--out", str(taken))
    assert refused.returncode != 0
    assert "not empty and not an earlier Modelsmith report" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert (taken / "notes.txt").read_text() == "mine\n"
    a_file = tmp_path / "file.html"
    a_file.write_text("x")
    refused = _modelsmith("-C", str(repo), "report", "--out", str(a_file))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    # Its own earlier report is replaced.
    out = tmp_path / "site"
    first = _modelsmith("-C", str(repo), "report", "--out", str(out))
    assert first.returncode == 0, first.stderr
    again = _modelsmith("-C", str(repo), "report", "--out", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert (out / "index.html").is_file() and (out / "assets" / "plotly.min.js").is_file()
