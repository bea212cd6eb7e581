"""eval -> train -> candidate -> eval on the tiny model, through the CLI, in a real git repo
with real DVC: every step is an event, and the lineage names every input by hash."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from modelsmith.artifacts.dvc import ArtifactStore
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore


@pytest.fixture
def env(demo_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    return demo_repo


def run(repo, *args):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-C", str(repo), *args])
    return result


def test_train_registers_a_candidate_with_hashed_lineage(env):
    assert run(env, "train", "rtb-quality", "--model", "tiny-test").exit_code == 1  # no eval
    assert run(env, "eval", "rtb-quality", "--model", "tiny-test", "--min-composite", "0"
               ).exit_code == 0
    result = run(env, "train", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny",
                 "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["version"] == "v1" and out["weights"] == "models/rtb-quality/v1"

    store = GitEventStore(env)
    types = [e.type for e in store.read("rtb-quality")]
    assert types == ["EvalStarted", "EvalCompleted", "FailuresExtracted", "DatasetBuilt",
                     "TrainingStarted", "TrainingCompleted", "CandidateRegistered"]
    events = {e.type: e for e in store.read("rtb-quality")}
    built, done = events["DatasetBuilt"].data, events["TrainingCompleted"].data
    lineage = events["CandidateRegistered"].data["lineage"]

    # The dataset file is the hashed one, and DVC tracks it and the weights.
    data_file = env / built["path"]
    assert hashlib.sha256(data_file.read_bytes()).hexdigest() == built["dataset_hash"]
    assert lineage["dataset_hash"] == built["dataset_hash"]
    artifacts = ArtifactStore(env)
    assert lineage["weights_hash"] == done["checkpoint_hash"] == artifacts.hash_of(
        env / "models/rtb-quality/v1")
    assert lineage["suite_hash"] == events["EvalCompleted"].data["suite_hash"]
    assert lineage["config_hash"].startswith("sha256:") and lineage["base_model"] == "tiny-test"
    assert {"torch", "transformers", "trl"} <= set(lineage["trainer_versions"])
    assert artifacts.status() == {}
    assert built["removed"]["leakage"] == 0 and built["rows"] > 0

    # A candidate is prompted as its base profile was trained (plain text for tiny-test),
    # even though its saved tokenizer carries a chat template.
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.specs import load_repository
    from modelsmith.training.service import candidate_model
    from modelsmith.workspace import Workspace

    weights = env / "models/rtb-quality/v1"
    assert resolve_model(str(weights), None).chat_template is True
    candidates = Workspace.find(env).fleet().specialists["rtb-quality"].candidates
    model = candidate_model(load_repository(env), "rtb-quality", "v1", candidates, print)
    profile = model.base
    assert model.path == weights
    assert profile.chat_template is False

    text = run(env, "lineage", "rtb-quality", "v1").output
    for value in (built["dataset_hash"], lineage["weights_hash"], lineage["suite_hash"],
                  lineage["config_hash"]):
        assert value in text

    # The candidate evaluates by version; its weights come back from the DVC remote.
    shutil.rmtree(env / "models/rtb-quality/v1")
    shutil.rmtree(env / ".dvc/cache")
    again = run(env, "eval", "rtb-quality", "--model", "v1", "--limit", "3",
                "--min-composite", "0", "--json")
    assert again.exit_code == 0, again.output
    assert artifacts.verify(env / "models/rtb-quality/v1")
    last = list(store.read("rtb-quality"))[-1]
    assert last.type == "EvalCompleted" and last.data["version"] == "v1"
    second = run(env, "train", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny",
                 "--json")
    assert json.loads(second.stdout)["version"] == "v2"
