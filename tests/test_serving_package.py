"""``modelsmith package``: the candidate's weights and tokenizer with a manifest holding
the prompt contract, lineage and rollback contract; corrupt weights are refused."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from modelsmith.artifacts.dvc import ArtifactStore
from modelsmith.artifacts.models import resolve_model
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import CandidateRegistered, Event, Lineage, Promoted
from modelsmith.specs import load_repository


def test_a_packaged_candidate_carries_its_contracts(demo_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    ArtifactStore(demo_repo).ensure_initialised()
    repo = load_repository(demo_repo)
    tiny = resolve_model("tiny-test", repo.clusters, progress=lambda _m: None).path
    hashes = {}
    for version in ("v1", "v2"):
        folder = demo_repo / "models" / "rtb-quality" / version
        shutil.copytree(tiny, folder)
        if version == "v2":
            (folder / "generation_config.json").write_text("{}")  # other bytes, other hash
        hashes[version] = ArtifactStore(demo_repo).content_hash(folder)
    events = [CandidateRegistered(version="v1", lineage=Lineage(
                  base_model="tiny-test", weights_hash=hashes["v1"])),
              CandidateRegistered(version="v2", lineage=Lineage(
                  base_model="v1", parent="v1", weights_hash=hashes["v2"])),
              Promoted(version="v1", stage="production")]
    GitEventStore(demo_repo).append("rtb-quality",
                                    [Event.new(p, actor="test") for p in events], 0)
    out = tmp_path / "artifact"
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "package", "rtb-quality", "v2",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("falls back to v1\n")
    manifest = json.loads((out / "modelsmith.json").read_text())
    assert (manifest["version"], manifest["artifact_hash"]) == ("v2", hashes["v2"])
    assert manifest["rollback"] == {"version": "v1", "artifact_hash": hashes["v1"]}
    assert manifest["prompt"]["template"] == "Bid: {input}\nVerdict:"
    assert manifest["prompt"]["output"]["labels"] == ["ACCEPT", "REJECT"]
    assert manifest["prompt"]["chat_template"] is False
    assert manifest["lineage"]["parent"] == "v1"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    # Weights changed on disk since they were registered: refused, nothing written.
    weights = demo_repo / "models" / "rtb-quality" / "v1" / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(100)
    refused = CliRunner().invoke(cli, ["-C", str(demo_repo), "package", "rtb-quality", "v1",
                                       str(tmp_path / "bad")])
    assert refused.exit_code == 1 and "before packaging" in refused.output
    assert not (tmp_path / "bad").exists()
