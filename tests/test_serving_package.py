"""``modelsmith package``: the candidate's weights and tokenizer with a manifest holding
the prompt contract, lineage and rollback contract; corrupt weights are refused."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from modelsmith.artifacts.dvc import ArtifactStore
from modelsmith.artifacts.models import resolve_model
from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Event,
    Lineage,
    Promoted,
)
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


@pytest.mark.parametrize("chat", [False, True], ids=["plain-prompt", "chat-template"])
def test_a_packaged_artifact_prompted_plainly_answers_as_its_eval(demo_repo, tmp_path,
                                                                  monkeypatch, chat):
    """Plain transformers on the artifact (its chat template, its generation config) gets
    the eval backend's prompt ids and answers, with the task's system prompt; the model
    card names the eval's splits."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelsmith.evaluation.runner import EvalSettings, default_max_new_tokens, run_suite
    from modelsmith.inference.base import GenerationRequest
    from modelsmith.inference.factory import make_backend

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    spec_file = demo_repo / "specialists" / "rtb-quality.yaml"
    spec_file.write_text(spec_file.read_text().replace(
        "system_prompt: null", 'system_prompt: "Screen the bid: \\"ACCEPT\\" or REJECT."'))
    clusters_file = demo_repo / "config" / "clusters.json"
    clusters = json.loads(clusters_file.read_text())
    clusters["models"]["tiny-chat"] = {**clusters["models"]["tiny-test"], "chat_template": True}
    # Weights that answer each prompt differently (large random weights, not degenerate).
    clusters["models"]["tiny-noisy"] = {"source": {"kind": "tiny", "seed": 3,
                                                   "init_range": 0.5}}
    clusters_file.write_text(json.dumps(clusters))
    ArtifactStore(demo_repo).ensure_initialised()
    repo = load_repository(demo_repo)
    tiny = resolve_model("tiny-noisy", repo.clusters, progress=lambda _m: None).path
    folder = demo_repo / "models" / "rtb-quality" / "v1"
    shutil.copytree(tiny, folder)
    weights = ArtifactStore(demo_repo).content_hash(folder)
    events = [CandidateRegistered(version="v1", lineage=Lineage(
                  base_model="tiny-chat" if chat else "tiny-test", weights_hash=weights)),
              EvalCompleted(version="v1", model="v1", suite="rtb-quality", suite_hash="s" * 12,
                            run_id="e1", composite=0.61, heldout=0.42, heldout_n=40,
                            decision_metric="dev", decision=0.57, dev_n=30,
                            weights_hash=weights)]
    GitEventStore(demo_repo).append("rtb-quality",
                                    [Event.new(p, actor="test") for p in events], 0)
    out = tmp_path / "artifact"
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "package", "rtb-quality", "v1",
                                      str(out)])
    assert result.exit_code == 0, result.output

    # The eval's answers, from the backend an evaluation of v1 builds (one row a batch: the
    # plain generate below pads nothing either).
    specialist, suite = repo.specialists["rtb-quality"], repo.suites["rtb-quality"]
    task = specialist.spec.task
    backend = make_backend(str(folder), repo.clusters, chat_template=chat, batch_size=1,
                           threads=1)
    runs = run_suite(specialist, suite, backend, EvalSettings(
        limit=3, include_heldout=False, latency_probes=0))
    evaluated = [s.expected for s in [*suite.core, *suite.dev, *suite.heldout]]
    max_new = default_max_new_tokens(task.output, evaluated, backend.count_tokens)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.max_new_tokens == max_new
    assert not model.generation_config.do_sample
    for run in runs[:4]:
        asked = tokenizer.apply_chat_template([{"role": "user", "content": run.input}],
                                              add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
        ids = asked["input_ids"][0].tolist()
        assert ids == backend._encode(GenerationRequest(prompt=task.render(run.input),
                                                        system=task.system_prompt), 0)
        with torch.inference_mode():
            new = model.generate(**asked)[0, len(ids):]
        # The eval's greedy generation (a label task's eval scores labels instead, which
        # answers as greedy generation wherever that writes a label: tests of
        # inference.labels; plain transformers generates).
        [greedy] = backend.generate([GenerationRequest(
            prompt=task.render(run.input), system=task.system_prompt, max_new_tokens=max_new)])
        assert tokenizer.decode(new, skip_special_tokens=True) == greedy.text, run.input
    backend.close()

    manifest = json.loads((out / "modelsmith.json").read_text())
    assert manifest["prompt"]["decoding"]["max_new_tokens"] == max_new
    card = (out / "README.md").read_text()
    assert "exactly one of the labels `ACCEPT`, `REJECT`" in card
    assert "| 0.6100 | 0.4200 | dev | 0.5700 | yes | full |" in card
    assert "held-out" in card and "Base model: `tiny-" in card
    # Evaluated as a model folder, the artifact would be prompted twice (its chat template
    # renders the task prompt, and so does the eval): refused, naming the version instead.
    from modelsmith.errors import InferenceError

    with pytest.raises(InferenceError, match=r"serving artifact .*\(--model vN\)"):
        resolve_model(str(out), repo.clusters)
    assert resolve_model(str(folder), repo.clusters).path == folder
