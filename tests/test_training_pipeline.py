"""eval -> train -> candidate -> eval on the tiny model, through the CLI, in a real git repo
with real DVC: every step is an event, and the lineage names every input by hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelsmith.artifacts.dvc import ArtifactStore
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(train_repo):
    return train_repo


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
    # Progress on stderr, one line per step: phase, step of total, metric, pace, time left.
    assert "sft 2/2 · loss" in result.stderr and "grpo 4/4 · loss" in result.stderr
    assert "s/step" in result.stderr and "left" in result.stderr

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
    from modelsmith.app import Modelsmith
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.artifacts.registry import candidate_model
    from modelsmith.specs import load_repository

    weights = env / "models/rtb-quality/v1"
    assert resolve_model(str(weights), None).chat_template is True
    candidates = Modelsmith.open(env).fleet().specialists["rtb-quality"].candidates
    models = load_repository(env).clusters.models
    model = candidate_model(models, env, "rtb-quality", "v1", candidates, print)
    profile = model.base
    assert model.path == weights
    assert profile.chat_template is False

    from modelsmith.artifacts.models import model_fingerprint

    base = resolve_model("tiny-test", load_repository(env).clusters)
    assert lineage["base_hash"] == model_fingerprint(base.path)
    assert lineage["eval_event"] == events["EvalCompleted"].id
    text = run(env, "lineage", "rtb-quality", "v1").output
    for value in (lineage["base_hash"], built["dataset_hash"], lineage["weights_hash"],
                  lineage["suite_hash"], lineage["config_hash"], lineage["eval_event"]):
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


def test_dvc_repro_rebuilds_a_candidate_from_its_lineage(env, monkeypatch):
    """dvc.yaml's data -> train -> eval stages rebuild v1 from the events alone: the same
    dataset (hash checked), the same weights (same machine, seed and threads: bit-identical)
    and its evaluation as DVC metrics."""
    import subprocess
    import sys

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, env / name)
    assert run(env, "eval", "rtb-quality", "--model", "tiny-test", "--min-composite", "0"
               ).exit_code == 0
    assert run(env, "train", "rtb-quality", "--model", "tiny-test", "--profile", "cpu-tiny"
               ).exit_code == 0
    lineage = next(e for e in GitEventStore(env).read("rtb-quality")
                   if e.type == "CandidateRegistered").data["lineage"]
    named = run(env, "repro", "set", "rtb-quality", "v1")
    assert named.exit_code == 0, named.output

    # `dvc repro` as a user runs it; the stages call the `modelsmith` beside this Python.
    bin_dir = Path(sys.executable).parent
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "dvc"), "repro", "eval"], cwd=env, env=environ,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in ("data", "train", "eval"):
        assert f"Running stage '{stage}@rtb-quality'" in done.stdout
    assert "bit-identical to v1" in done.stdout + done.stderr
    status = subprocess.run([str(bin_dir / "dvc"), "status", "eval"], cwd=env, env=environ,
                            capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
    out = env / "rebuild" / "rtb-quality" / "v1"
    data = (out / "dataset.jsonl").read_bytes()
    assert hashlib.sha256(data).hexdigest() == lineage["dataset_hash"]
    assert ArtifactStore(env).content_hash(out / "model") == lineage["weights_hash"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["composite"] <= 1.0 and metrics["heldout"] is not None
    # Nothing was appended to the log by the rebuild.
    assert [e.type for e in GitEventStore(env).read("rtb-quality")][-1] == "CandidateRegistered"

    # A version the log does not know, a dataset that is not the one v1 trained on, a file
    # that is not a dataset: each a clear error naming what is wrong, and no traceback.
    bad = run(env, "repro", "data", "rtb-quality", "v9", "--out", str(env / "x.jsonl"))
    assert bad.exit_code == 1 and "no candidate v9" in bad.output
    rows = data.decode().splitlines()
    (env / "fewer.jsonl").write_text("\n".join(rows[1:]) + "\n")
    (env / "junk.jsonl").write_text(rows[0] + "\n{not json\n")
    for name, message in (("fewer.jsonl", "is not the dataset v1 was trained on"),
                          ("junk.jsonl", "junk.jsonl:2: not a training row")):
        bad = run(env, "repro", "train", "rtb-quality", "v1", "--dataset", str(env / name),
                  "--out", str(env / "m"))
        assert bad.exit_code == 1 and message in bad.output, bad.output
        assert "Traceback" not in bad.output and not (env / "m").exists()
