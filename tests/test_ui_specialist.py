"""The dashboard's specialist and candidate pages over a real git event log: the stage
timeline with its rollback, the score history and dataset growth (tables and plotly chart
data), candidates' lineage, datasets and training runs, links in both the dashboard and the
static report, 404s, and hostile text escaped."""

from __future__ import annotations

import json
import posixpath
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest
from starlette.testclient import TestClient

from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import (
    CandidateRegistered,
    DatasetBuilt,
    EvalCompleted,
    Event,
    Lineage,
    MetricsObserved,
    Promoted,
    PromotionRejected,
    RolledBack,
    TrainingCompleted,
    TrainingStarted,
)
from modelsmith.specs import SpecError
from modelsmith.ui.pages import NotFound, pages
from modelsmith.ui.pages.candidate import render_candidate
from modelsmith.ui.pages.specialist import render_specialist
from modelsmith.ui.render import View
from modelsmith.ui.site import assets, build_app
from modelsmith.ui.source import Source

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NAME = "rtb"
HOSTILE = "<script>alert(1)</script>"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def append(store: GitEventStore, stream: str, payload, minute: int, *,
           actor: str = "reconciler", cause: str | None = None) -> Event:
    (event,) = store.append(stream, [Event.new(payload, actor=actor, cause=cause,
                                               at=at(minute))], store.last_seq(stream))
    return event


def lineage(version: str, parent: str | None, dataset: str, **extra) -> Lineage:
    return Lineage(base_model=parent or "smollm2-135m", parent=parent, dataset_hash=dataset,
                   config_hash=f"sha256:cfg-{version}", run_id=f"run-{version}",
                   host="gpu-7", duration_s=61.5, weights_hash=f"w-{version}.dir",
                   suite_hash="suite-1", trainer_versions={"trl": "1.16.0", "peft": "0.21.2"},
                   **extra)


def evaluation(version: str | None, composite: float, decision: float | None,
               heldout: float, run: str, **extra) -> EvalCompleted:
    return EvalCompleted(version=version, model=version or "smollm2-135m", suite=NAME,
                         suite_hash="suite-1", run_id=run, composite=composite,
                         heldout=heldout, heldout_n=40, scenarios=200,
                         decision_metric="dev" if decision is not None else None,
                         decision=decision, decision_n=60 if decision is not None else 0,
                         dev=decision, dev_n=60 if decision is not None else 0,
                         weights_hash=f"w-{version}.dir" if version else None, **extra)


def story(store: GitEventStore, stream: str = NAME, reason: str = "score_mean 0.70 < 0.80"):
    """A baseline evaluation, two trained versions with their datasets and runs, v1 to
    production, v2 through canary to production, rolled back to v1, and a rejection."""
    ids = {}
    ids["base_eval"] = append(store, stream, evaluation(None, 0.41, 0.38, 0.35, "e0"), 0).id
    for n, (version, parent, rows, new, failure) in enumerate(
            [("v1", None, 1200, None, 320), ("v2", "v1", 1535, 335, 103)]):
        m = 10 + n * 20
        dataset = f"{n + 1}" * 64
        ids[f"ds-{version}"] = append(store, stream, DatasetBuilt(
            dataset_hash=dataset, rows=rows, new_rows=new, iteration=n + 1,
            sources={"failure": failure, "generator": rows - failure},
            removed={"exact_duplicate": 17 + n, "leakage": 0}, eval_event=ids["base_eval"],
            scenarios=["c1", "c2", "c3"][: n + 2]), m).id
        append(store, stream, TrainingStarted(
            run_id=f"run-{version}", method="sft+grpo", profile="cpu-tiny", host="gpu-7",
            parent=parent, dataset_hash=dataset, base=parent or "smollm2-135m",
            hyperparams={"learning_rate": 0.003, "max_steps": 150}), m + 1)
        append(store, stream, TrainingCompleted(
            run_id=f"run-{version}", method="sft+grpo", host="gpu-7", duration_s=61.5,
            metrics={"sft/loss": 0.16}), m + 2)
        ids[version] = append(store, stream, CandidateRegistered(
            version=version, lineage=lineage(version, parent, dataset,
                                             eval_event=ids["base_eval"])), m + 3).id
    ids["eval-v1-partial"] = append(store, stream, evaluation(
        "v1", 0.99, 0.99, 0.99, "e1p", limit=5), 34).id
    ids["eval-v1"] = append(store, stream, evaluation("v1", 0.81, 0.74, 0.72, "e1"), 35).id
    ids["eval-v2"] = append(store, stream, evaluation("v2", 0.96, 0.88, 0.86, "e2",
                                                       seen=12), 36).id
    ids["prod-v1"] = append(store, stream, Promoted(version="v1", stage="production"), 40,
                            actor="human:ana", cause="pr#2").id
    ids["reject"] = append(store, stream, PromotionRejected(
        version="v2", stage="production", gate="stage-order", reason="canary first"), 41).id
    ids["canary-v2"] = append(store, stream, Promoted(version="v2", stage="canary",
                                                      traffic=0.1), 42).id
    append(store, stream, MetricsObserved(version="v2", stage="canary", window_start=at(42),
                                          window_end=at(43), requests=300,
                                          metrics={"score_mean": 0.97}), 43)
    ids["prod-v2"] = append(store, stream, Promoted(version="v2", stage="production",
                                                    previous="v1"), 50,
                            actor="human:bo", cause="pr#3").id
    ids["rollback"] = append(store, stream, RolledBack(
        stage="production", from_version="v2", to_version="v1", reason=reason,
        metric="score_mean", value=0.7, threshold=0.8), 60).id
    return ids


@pytest.fixture
def log(tmp_path: Path):
    pygit2.init_repository(str(tmp_path / "repo"))
    store = GitEventStore(tmp_path / "repo", signer=None)
    ids = story(store)
    return store, ids


def section(html: str, table_id: str) -> str:
    match = re.search(rf'<table[^>]*id="{table_id}".*?</table>', html, re.S)
    assert match, f"no table {table_id}"
    return match.group(0)


def rows(html: str, table_id: str) -> list[str]:
    body = section(html, table_id).split("<tbody>", 1)[1]
    return re.findall(r"<tr.*?</tr>", body, re.S)


def text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)).strip()


def figure(html: str, chart: str) -> dict:
    match = re.search(rf'<script type="application/json" id="fig-{chart}">(.*?)</script>',
                      html, re.S)
    assert match, f"no chart {chart}"
    assert f'data-chart="fig-{chart}"' in html
    return json.loads(match.group(1))


def specialist_page(source: Source, static: bool = False, name: str = NAME) -> str:
    path = f"/specialists/{name}"
    return render_specialist(source, View(path, static=static), {"name": name})


def candidate_page(source: Source, version: str, static: bool = False) -> str:
    path = f"/specialists/{NAME}/candidates/{version}"
    return render_candidate(source, View(path, static=static),
                            {"name": NAME, "version": version})


def test_stage_timeline_rows_rollback_and_chart(log):
    store, ids = log
    html = specialist_page(Source(store))
    timeline = rows(html, "timeline")
    got = [re.search(r'data-stage="(\w+)" data-version="(\w+)"', r).groups() for r in timeline]
    assert got == [("production", "v1"), ("canary", "v2"), ("production", "v2"),
                   ("production", "v1")]
    first, canary, prod2, restored = (text(r) for r in timeline)
    assert "human:ana" in first and "pr#2" in first and "replaced by v2" in first
    assert "2026-11-01 00:40:00" in first and "2026-11-01 00:50:00" in first
    assert "promoted to production" in canary and "10.0%" in canary
    assert "human:bo" in prod2 and "pr#3" in prod2
    # The rolled-back period is marked with its reason and the rollback event; only it.
    assert [("rolled-back" in r) for r in timeline] == [False, False, True, False]
    assert "rolled back" in prod2 and "score_mean 0.70 &lt; 0.80" in timeline[2]
    assert f"#e-{ids['rollback']}" in timeline[2]
    assert "restored by a rollback" in restored and "now" in restored
    assert f'href="/log/_all/1#e-{ids["prod-v1"]}"' in timeline[0]
    # Stages now: v1 holds production again, canary and shadow are empty.
    now = {re.search(r'data-stage="(\w+)"', r).group(1): text(r) for r in rows(html, "stages")}
    assert now["production"].startswith("production v1") and "nothing holds it" in now["canary"]
    # The chart: a bar per period, one trace per version, the rolled-back bar outlined.
    fig = figure(html, "timeline")
    traces = {t["name"]: t for t in fig["data"]}
    assert set(traces) == {"v1", "v2"} and all(t["type"] == "bar" for t in fig["data"])
    assert traces["v1"]["y"] == ["production", "production"]
    assert traces["v2"]["y"] == ["canary", "production"]
    assert traces["v2"]["base"][1].startswith("2026-11-01T00:50:00")
    assert traces["v2"]["x"][1] == pytest.approx(10 * 60 * 1000)  # 00:50 -> 01:00
    assert traces["v2"]["marker"]["line"]["color"][1] == "#c0392b"
    assert traces["v2"]["marker"]["line"]["color"][0] != "#c0392b"
    assert fig["layout"]["xaxis"]["type"] == "date"
    assert 'src="/assets/plotly.min.js"' in html


def test_score_history_names_splits_and_target(log):
    store, ids = log
    html = specialist_page(Source(store, targets=lambda: {NAME: 0.85}))
    history = [text(r) for r in rows(html, "scores")]
    assert len(history) == 2
    v1, v2 = history
    # v1's latest *full* evaluation counts, not the later-looking partial --limit run.
    assert "0.740 dev, n=60" in v1 and "0.810 core" in v1 and "0.720 held-out, n=40" in v1
    assert "0.990" not in v1 and "below" in v1
    assert "0.880 dev, n=60" in v2 and "0.960 core" in v2 and "12 seen in training" in v2
    assert "0.850 met" in v2
    assert f'/specialists/{NAME}/evaluations/{ids["eval-v2"]}' in rows(html, "scores")[1]
    head = text(section(html, "scores").split("<tbody>")[0])
    assert "never trained on" in head and "training may have seen" in head
    fig = figure(html, "scores")
    lines = {t["name"].split(" (")[0]: t for t in fig["data"]}
    assert set(lines) == {"decision metric dev", "core composite", "held-out", "target 0.850"}
    assert lines["decision metric dev"]["y"] == [0.74, 0.88]
    assert lines["core composite"]["y"] == [0.81, 0.96]
    assert lines["held-out"]["y"] == [0.72, 0.86]
    assert lines["target 0.850"]["y"] == [0.85, 0.85]
    assert lines["decision metric dev"]["x"] == ["v1", "v2"]


def test_each_decision_metric_is_its_own_line(tmp_path: Path):
    pygit2.init_repository(str(tmp_path / "repo"))
    store = GitEventStore(tmp_path / "repo", signer=None)
    for i, version in enumerate(("v1", "v2", "v3")):
        append(store, NAME, CandidateRegistered(
            version=version, lineage=lineage(version, None, f"{i}" * 64)), i * 10)
    append(store, NAME, evaluation("v1", 0.8, None, 0.7, "e1").model_copy(
        update={"decision_metric": "unseen", "decision": 0.61, "decision_n": 30}), 1)
    append(store, NAME, evaluation("v2", 0.9, 0.77, 0.75, "e2"), 11)
    html = specialist_page(Source(store))
    lines = {t["name"]: t["y"] for t in figure(html, "scores")["data"]}
    assert lines["decision metric unseen (never trained on)"] == [0.61, None, None]
    assert lines["decision metric dev (never trained on)"] == [None, 0.77, None]
    assert "0.610 unseen, n=30" in text(rows(html, "scores")[0])
    assert "not evaluated" in text(rows(html, "scores")[2])


def test_targets_are_optional_and_a_failing_spec_shows_none(log):
    store, _ = log
    assert 'id="target"' not in specialist_page(Source(store))

    def broken() -> dict[str, float]:
        raise SpecError(["specialists/rtb.yaml:1:1: spec.target: field required"])

    html = specialist_page(Source(store, targets=broken))
    assert 'id="target"' not in html and "target " not in json.dumps(figure(html, "scores"))


def test_dataset_growth_table_and_chart(log):
    store, ids = log
    html = specialist_page(Source(store))
    built = rows(html, "datasets")
    assert len(built) == 2
    first, second = (text(r) for r in built)
    assert "1200" in first and "failure: 320" in first and "generator: 880" in first
    assert "round 1" in first and "exact_duplicate: 17" in first and "leakage" not in first
    assert "1535" in second and "335" in second and "failure: 103" in second
    assert f'/specialists/{NAME}/candidates/v2' in built[1]
    assert f'/specialists/{NAME}/evaluations/{ids["base_eval"]}' in built[0]
    fig = figure(html, "datasets")
    traces = {t["name"]: t for t in fig["data"]}
    assert traces["rows from failure"]["y"] == [320, 103]
    assert traces["rows from generator"]["y"] == [880, 1432]
    assert traces["new rows"]["y"] == [None, 335]
    assert traces["rows from failure"]["x"] == ["1: v1", "2: v2"]
    assert fig["layout"]["barmode"] == "stack"


def test_candidates_evaluations_and_rejections_link(log):
    store, ids = log
    html = specialist_page(Source(store))
    cands = [text(r) for r in rows(html, "candidates")]
    assert cands[0].startswith("v1") and "smollm2-135m" in cands[0] and "production" in cands[0]
    assert cands[1].startswith("v2") and " v1 " in f" {cands[1]} "
    evals = rows(html, "evaluations")
    assert len(evals) == 4  # the baseline model's, v1's partial and full, v2's
    for key in ("base_eval", "eval-v1-partial", "eval-v1", "eval-v2"):
        assert any(f'href="/specialists/{NAME}/evaluations/{ids[key]}"' in r for r in evals)
    assert "smollm2-135m (model)" in text(evals[0])
    assert "partial: first 5 scenarios" in text(evals[1])
    (rejected,) = rows(html, "rejections")
    assert "stage-order" in rejected and "canary first" in rejected
    assert f'#e-{ids["reject"]}' in rejected


def test_candidate_page_lineage_dataset_run_and_stages(log):
    store, ids = log
    html = candidate_page(Source(store), "v2")
    chain = re.search(r'<p class="lineage" id="lineage">(.*?)</p>', html, re.S).group(1)
    assert re.findall(r'data-version="([\w.-]+)"', chain) == ["smollm2-135m", "v1", "v2"]
    assert text(chain) == "smollm2-135m (pretrained) → v1 → v2"
    assert f'href="/specialists/{NAME}/candidates/v1"' in chain
    facts = text(section(html, "facts"))
    for value in ("2" * 64, "sha256:cfg-v2", "run-v2", "gpu-7", "61.5 s", "w-v2.dir",
                  "suite-1"):
        assert value in facts
    assert {"trl 1.16.0", "peft 0.21.2"} <= {text(r) for r in rows(html, "trainer-versions")}
    (dataset,) = rows(html, "datasets")
    assert "1535" in text(dataset) and "335" in text(dataset) and "failure: 103" in text(dataset)
    assert "3 core scenarios" in text(dataset)
    training = [text(r) for r in rows(html, "training")]
    assert len(training) == 2 and "TrainingStarted" in training[0]
    assert "profile cpu-tiny" in training[0] and "learning_rate 0.003" in training[0]
    assert "61.5 s" in training[1]
    (ev,) = rows(html, "evaluations")
    assert f'/specialists/{NAME}/evaluations/{ids["eval-v2"]}' in ev and "0.880 dev" in text(ev)
    stages = rows(html, "stages")
    assert [re.search(r'data-stage="(\w+)"', r).group(1) for r in stages] == [
        "canary", "production"]
    assert "rolled-back" in stages[1] and "score_mean 0.70" in stages[1]
    # v1: the pretrained model it came from, the version trained from it, its two evals.
    v1 = candidate_page(Source(store), "v1")
    assert text(re.search(r'id="lineage">(.*?)</p>', v1, re.S).group(1)) == \
        "smollm2-135m (pretrained) → v1"
    assert "Trained from it:" in v1 and len(rows(v1, "evaluations")) == 2
    assert "holds <b>production</b> now" in v1


def test_static_report_links_are_relative(log):
    store, ids = log
    source = Source(store)
    html = specialist_page(source, static=True)
    assert 'href="rtb/candidates/v1.html"' in html
    assert f'href="rtb/evaluations/{ids["eval-v2"]}.html"' in html
    assert f'href="../log/_all/1.html#e-{ids["rollback"]}"' in html
    assert 'src="../assets/plotly.min.js"' in html
    assert 'href="/' not in html and 'src="/' not in html
    cand = candidate_page(source, "v2", static=True)
    assert 'href="../../rtb.html"' in cand and 'href="v1.html"' in cand
    assert f'href="../evaluations/{ids["eval-v2"]}.html"' in cand
    assert f'href="../../../log/_all/1.html#e-{ids["v2"]}"' in cand
    assert 'href="/' not in cand


def test_unknown_specialist_or_version_is_not_found(log):
    store, _ = log
    with pytest.raises(NotFound, match="no specialist 'nope'"):
        specialist_page(Source(store), name="nope")
    with pytest.raises(NotFound, match="no candidate 'v9'"):
        candidate_page(Source(store), "v9")


def test_the_dashboard_serves_both_pages_and_follows_the_log(log):
    store, _ = log
    client = TestClient(build_app(Source(store)))
    page = client.get(f"/specialists/{NAME}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert len(rows(page.text, "timeline")) == 4 and figure(page.text, "timeline")["data"]
    cand = client.get(f"/specialists/{NAME}/candidates/v2")
    assert cand.status_code == 200 and "run-v2" in cand.text
    assert client.get("/specialists/nope").status_code == 404
    assert client.get(f"/specialists/{NAME}/candidates/v9").status_code == 404
    assert client.get("/specialists/nope/candidates/v1").status_code == 404
    # A new version registered after the page was read: the next read shows it.
    append(store, NAME, CandidateRegistered(version="v3", lineage=lineage("v3", "v2", "9" * 64)),
           70)
    again = client.get(f"/specialists/{NAME}").text
    assert [re.search(r'data-version="(\w+)"', r).group(1)
            for r in rows(again, "candidates")] == ["v1", "v2", "v3"]
    assert "not evaluated" in text(rows(again, "scores")[2])
    chain = client.get(f"/specialists/{NAME}/candidates/v3").text
    assert text(re.search(r'id="lineage">(.*?)</p>', chain, re.S).group(1)) == \
        "smollm2-135m (pretrained) → v1 → v2 → v3"


def test_hostile_text_is_escaped_and_a_long_name_renders(tmp_path: Path):
    pygit2.init_repository(str(tmp_path / "repo"))
    store = GitEventStore(tmp_path / "repo", signer=None)
    name = "a" * 61 + "-b"  # 63 characters: the longest stream name
    story(store, name, reason=HOSTILE)
    append(store, name, PromotionRejected(version="v2", stage="canary", gate=HOSTILE,
                                          reason=HOSTILE), 80)
    append(store, name, Promoted(version="v2", stage="shadow"), 81, actor="agent:<b>x</b>",
           cause="pr#<i>9</i>")
    source = Source(store)
    client = TestClient(build_app(source))
    for path in (f"/specialists/{name}", f"/specialists/{name}/candidates/v2"):
        page = client.get(path)
        assert page.status_code == 200, page.text
        assert HOSTILE not in page.text and "<b>x</b>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    html = client.get(f"/specialists/{name}").text
    assert "agent:&lt;b&gt;x&lt;/b&gt;" in html and "pr#&lt;i&gt;9&lt;/i&gt;" in html
    # In the chart data too: the hover text carries the reason as entities (plotly.js
    # reads a few tags in its text), in a JSON block where nothing closes the script.
    hover = json.dumps(figure(html, "timeline"))
    assert "rolled back: &lt;script&gt;alert(1)&lt;/script&gt;" in hover
    assert "agent:&lt;b&gt;x&lt;/b&gt;" in hover
    assert "<" not in re.sub(r"<br>|</?extra>", "", hover)  # only the hover's own tags
    assert f'href="/specialists/{name}/candidates/v1"' in html


def test_an_empty_specialist_renders_without_charts(tmp_path: Path):
    pygit2.init_repository(str(tmp_path / "repo"))
    store = GitEventStore(tmp_path / "repo", signer=None)
    append(store, NAME, MetricsObserved(version="v0", stage="shadow", window_start=at(0),
                                        window_end=at(1), requests=0), 1)
    html = specialist_page(Source(store))
    assert "No version has held a stage yet." in html and "No candidate version yet." in html
    assert "No dataset built yet." in html and 'data-chart=' not in html


def test_the_facade_wires_the_specialists_targets(demo_repo: Path):
    from modelsmith.app import Modelsmith

    store = GitEventStore(demo_repo, signer=None)
    append(store, "rtb-quality", CandidateRegistered(
        version="v1", lineage=lineage("v1", None, "1" * 64)), 1)
    append(store, "rtb-quality", EvalCompleted(
        version="v1", model="v1", suite="rtb-quality", suite_hash="h", run_id="e1",
        composite=0.5, decision_metric="dev", decision=0.4), 2)
    source = Modelsmith(demo_repo).dashboard()
    assert source.targets() == {"rtb-quality": 0.9}
    html = specialist_page(source, name="rtb-quality")
    assert '<span id="target">0.900</span>' in html and "below" in text(rows(html, "scores")[0])


def test_every_static_link_lands_on_a_file_the_report_writes(log):
    store, _ = log
    source = Source(store)
    files = {"assets/" + n for n in assets()}
    for page in pages():
        files |= {View(page.path(p)).file(page.path(p)) for p in page.instances(source)}
    checked = 0
    for page in pages():
        if page.name not in ("specialist", "candidate"):
            continue
        for params in page.instances(source):
            path = page.path(params)
            view = View(path, static=True)
            html = page.render(source, view, params)
            here = posixpath.dirname(view.file(path))
            for link in re.findall(r'(?:href|src)="([^"]+)"', html):
                if link.startswith("data:"):  # the icon: none (no request for one)
                    continue
                target = posixpath.normpath(posixpath.join(here, link.split("#")[0]))
                assert target in files, f"{path}: {link} -> {target}"
                checked += 1
    assert checked > 50
