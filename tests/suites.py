"""Suites for the honest-numbers tests, written into a copy of the demo fork: the demo's
bid requests and written policy (``evals/rtb-quality/generate.py``), other splits."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

SUITE = Path("evals") / "rtb-quality"


def policy(repo: Path):
    """The demo suite's ``generate.py`` as a module (its Bid, render and policy_label)."""
    spec = importlib.util.spec_from_file_location("_rtb_policy", repo / SUITE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rewrite_suite(repo: Path, *, core: int = 60, dev: int = 40, heldout: int = 40,
                  pool: int = 0, rows_per_failure: int = 4, random_labels: bool = False,
                  use_eval_inputs: bool = False, generator: bool = False, target: float = 0.8,
                  sustained: int = 1, seed: int = 7) -> None:
    """Replace the demo suite's scenarios: fresh bids in each split (labels by the policy,
    or random ones: a suite nothing can learn), ``pool`` of them as ``split: train``."""
    g = policy(repo)
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh():
        while True:
            bid = g.random_bid(rng)
            texts = {g.render(bid, style).lower() for style in range(4)}
            if not texts & seen:
                seen.update(texts)
                return bid

    rows = []
    for split, n, prefix in (("core", core, "c"), ("dev", dev, "d"), ("heldout", heldout, "h"),
                             ("train", pool, "p")):
        for i in range(n):
            bid = fresh()
            label = rng.choice(["ACCEPT", "REJECT"]) if random_labels else g.policy_label(bid)
            rows.append({"id": f"{prefix}{i:04d}", "input": g.render(bid), "expected": label,
                         "split": split})
    (repo / SUITE / "scenarios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = (repo / SUITE / "suite.yaml").read_text()
    if not generator:
        suite = suite.replace("  generator: generate.py:near\n", "")
    suite += (f"  training:\n    rows_per_failure: {rows_per_failure}\n"
              f"    use_eval_inputs: {'true' if use_eval_inputs else 'false'}\n")
    (repo / SUITE / "suite.yaml").write_text(suite)
    specialist = repo / "specialists" / "rtb-quality.yaml"
    specialist.write_text(specialist.read_text()
                          .replace("composite: 0.9", f"composite: {target}")
                          .replace("sustained: 3", f"sustained: {sustained}"))
