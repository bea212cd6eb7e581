"""A teacher model over an OpenAI-compatible endpoint rephrases failed inputs, keeping the
label: rewrites that change a value are dropped, the rest become rows that pass the same
validation; the dataset records its teacher and is rebuilt from its versioned file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.training.teacher import keeps_values, parse_rewrites
from openai_fake import FakeOpenAI, completion

BID = "domain=casino-ads.example ctr=1.0% floor=$3.43 format=video device=desktop geo=BR"


def test_rewrites_keep_every_value_or_are_dropped():
    reply = "\n".join([
        "1. A video ad on casino-ads.example (desktop, BR), CTR 1.0%, floor $3.43",
        "2) geo=BR domain=casino-ads.example ctr=1.2% floor=$3.43",  # ctr changed
        "- floor $3.43 on news.example, ctr 1%, video, desktop, BR",  # domain changed
        "* " + BID,  # the input itself
        "",
        "floor $3.43 · ctr 1% · casino-ads.example · video · desktop · BR",
        "A video ad on casino-ads.example (desktop, BR), CTR 1.0%, floor $3.43",  # repeat
        "ctr 1.0%, $3.43, casino-ads.example, video, desktop, BR, again",
    ])
    assert parse_rewrites(BID, reply, 5) == [
        "A video ad on casino-ads.example (desktop, BR), CTR 1.0%, floor $3.43",
        "floor $3.43 · ctr 1% · casino-ads.example · video · desktop · BR",
        "ctr 1.0%, $3.43, casino-ads.example, video, desktop, BR, again",
    ]
    assert len(parse_rewrites(BID, reply, 2)) == 2
    assert not keeps_values(BID, BID.upper().lower())
    assert not keeps_values(BID, BID.replace("$3.43", "$3.44"))
    assert not keeps_values(BID, BID.replace("1.0%", "1.0% 2"))  # an added number


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-teacher")
    yield server
    server.close()


def rephrase(body: dict) -> tuple[int, dict, dict]:
    """A scripted teacher: two faithful rewrites and one that changes the ctr."""
    text = body["messages"][-1]["content"].rsplit("Input: ", 1)[1]
    fields = dict(part.split("=", 1) for part in text.split())
    faithful = [
        f"A {fields['format']} ad on {fields['domain']} ({fields['device']}, {fields['geo']}) "
        f"with predicted CTR {fields['ctr']} and floor {fields['floor']}",
        f"bid from {fields['domain']}: ctr {fields['ctr']}, floor {fields['floor']}, "
        f"{fields['format']} on {fields['device']} in {fields['geo']}",
    ]
    changed = re.sub(r"ctr=\d+\.\d", "ctr=9.9", text)
    lines = [f"1. {faithful[0]}", f"2. {changed}", f"3. {faithful[1]}"]
    return 200, completion("\n".join(lines), tokens=40), {}


def test_train_with_a_teacher_records_it_and_rebuilds_from_the_versioned_file(
    train_repo, fake, tmp_path
):
    fake.responder = rephrase
    runner = CliRunner(env={"COLUMNS": "200"})

    def run(*args):
        return runner.invoke(cli, ["-C", str(train_repo), *args])

    assert run("eval", "rtb-quality", "--model", "tiny-test", "--limit", "8",
               "--min-composite", "0").exit_code == 0
    # --limit evaluations are partial: training wants a full one unless named.
    evaluation = next(e for e in GitEventStore(train_repo).read("rtb-quality")
                      if e.type == "EvalCompleted")
    result = run("train", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny",
                 "--from-eval", evaluation.id, "--teacher", "openai:teacher-model", "--json")
    assert result.exit_code == 0, result.output
    events = {e.type: e.data for e in GitEventStore(train_repo).read("rtb-quality")}
    built, failed = events["DatasetBuilt"], events["FailuresExtracted"]["scenario_ids"]
    assert built["teacher"] == "openai:teacher-model"
    # Each failed input: 4 asked, 2 faithful; one of those is the suite's own prose variant
    # word for word (an exact duplicate), so at least one per input survives validation.
    teacher_rows = built["sources"]["teacher"]
    assert len(failed) <= teacher_rows <= 2 * len(failed)
    assert f"{2 * len(failed)} of {4 * len(failed)} rewrites kept" in result.stderr
    # One request per failed input, sent to the model named after openai:.
    assert len(fake.calls) == len(failed) > 0
    assert {body["model"] for _, body in fake.calls} == {"teacher-model"}
    rows = [json.loads(line) for line in (train_repo / built["path"]).read_text().splitlines()]
    taught = [r for r in rows if r["source"] == "teacher"]
    assert len(taught) == teacher_rows and all("9.9" not in r["input"] for r in taught)

    # The dataset is not reproducible from the log: `repro data` uses the versioned file,
    # pulled from the DVC remote when the work tree lacks it.
    (train_repo / built["path"]).unlink()
    out = tmp_path / "rebuilt.jsonl"
    again = run("repro", "data", "rtb-quality", "v1", "--out", str(out), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["identical"] is True
    assert out.read_text().splitlines() == [json.dumps(r, sort_keys=True, separators=(",", ":"),
                                                       ensure_ascii=False) for r in rows]
