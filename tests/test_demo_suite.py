"""The demo suite is generated from its written policy, reproducibly."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import REPO_ROOT
from modelsmith.specs import load_repository

SUITE_DIR = REPO_ROOT / "evals" / "rtb-quality"


def _generator():
    spec = importlib.util.spec_from_file_location("rtb_generate", SUITE_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_committed_scenarios_are_what_the_seeded_script_writes(tmp_path):
    out = tmp_path / "scenarios.jsonl"
    _generator().main(out)
    assert out.read_bytes() == (SUITE_DIR / "scenarios.jsonl").read_bytes()


def test_every_label_follows_the_written_policy():
    gen = _generator()
    rows = [json.loads(line) for line in (SUITE_DIR / "scenarios.jsonl").open()]
    for row in rows:
        assert row["expected"] == gen.policy_label(gen.parse(row["input"])), row["id"]
    core = [r for r in rows if r["split"] == "core"]
    heldout = [r for r in rows if r["split"] == "heldout"]
    assert len(core) >= 300 and len(heldout) >= 100
    with_variants = [r for r in core if len(r.get("variants", [])) >= 2]
    assert len(with_variants) >= 0.3 * len(core)
    share = sum(r["expected"] == "REJECT" for r in core) / len(core)
    assert 0.35 < share < 0.6  # neither label is a free win
    for tag in ("blocked-domain", "low-ctr", "boundary", "clean"):
        assert any(tag in r["tags"] for r in core), tag


def test_the_policy_is_described_and_learnt_not_prompted():
    """The specialist describes the policy; its prompt is the bare bid, measured to train
    about 3x faster on a CPU than one restating the policy (the model learns the rule)."""
    repo = load_repository(REPO_ROOT)
    spec = repo.specialists["rtb-quality"].spec
    gen = _generator()
    assert f"{gen.CTR_THRESHOLD}%" in spec.description
    assert "blocked publisher domains" in spec.description
    assert spec.task.prompt_template == "Bid: {input}\nVerdict:"
    assert not any(domain in spec.task.prompt_template for domain in gen.BLOCKED)


def test_near_makes_labelled_neighbours():
    gen = _generator()
    row = json.loads((SUITE_DIR / "scenarios.jsonl").open().readline())
    near = gen.near(row, n=6, seed=1)
    assert len(near) == 6 and near == gen.near(row, n=6, seed=1)
    for new in near:
        assert new["expected"] == gen.policy_label(gen.parse(new["input"]))
        assert new["id"].startswith(row["id"] + "-near")
