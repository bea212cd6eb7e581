"""The whole pipeline learns: eval -> train (sft+grpo) -> eval on the tiny model lifts
held-out accuracy well over its SFT warm start alone (the SFT-only control).

Measured on the demo suite (held-out majority class 0.62), training on the rows a model
may see by default (the suite generator's new neighbours of the failed scenarios, no
core input): the 80-step SFT warm start reaches 0.68; 500 GRPO steps on the rubric reward
reach 0.75. On another CPU (AMD EPYC, AVX-512) the same run took another path: its policy
converged onto one answer per prompt at step 482, GRPO stopped early with those weights,
and held-out was 0.73. Only the final result is asserted: the learning curve is not
monotonic.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from modelsmith.cli import cli
from modelsmith.events.gitstore import GitEventStore

PROFILE = "cpu-tiny-learn"


@pytest.fixture
def env(train_repo):
    return train_repo


def run(repo, *args):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-C", str(repo), *args])
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout) if "--json" in args else result


def heldout(repo, version):
    report = run(repo, "eval", "rtb-quality", "--model", version, "--min-composite", "0",
                 "--json")["report"]
    return report["heldout"], report["heldout_ci"], report["composite"]


def test_grpo_lifts_heldout_accuracy_over_its_sft_warm_start(env):
    zero = run(env, "eval", "rtb-quality", "--model", "tiny-test", "--min-composite", "0",
               "--json")["report"]
    trained = run(env, "train", "rtb-quality", "--model", "tiny-test", "--profile", PROFILE,
                  "--method", "sft+grpo", "--json")
    warm_steps = 80
    control = run(env, "train", "rtb-quality", "--model", "tiny-test", "--profile", PROFILE,
                  "--method", "sft", "--steps", str(warm_steps), "--json")
    assert (trained["version"], control["version"]) == ("v1", "v2")

    full, full_ci, full_composite = heldout(env, "v1")
    sft_only, _, sft_composite = heldout(env, "v2")
    metrics = trained["metrics"]
    print(f"zero-shot held-out {zero['heldout']:.3f}; SFT-only control {sft_only:.3f} "
          f"(composite {sft_composite:.3f}); sft+grpo {full:.3f} {full_ci} "
          f"(composite {full_composite:.3f}); GRPO reward {metrics['reward_start']:.3f} -> "
          f"{metrics['reward_end']:.3f}")
    assert full - sft_only >= 0.05 - 1e-9  # 5 held-out scenarios in 100, up to float rounding
    assert metrics["reward_end"] > metrics["reward_start"]

    # The control's config differs only in method and steps, and both say so in the log.
    events = [e for e in GitEventStore(env).read("rtb-quality") if e.type == "TrainingStarted"]
    runs = {e.data["method"]: e.data["hyperparams"] for e in events}
    assert runs["sft"]["max_steps"] == warm_steps == runs["sft+grpo"]["sft_steps"]
    assert {k: v for k, v in runs["sft"].items() if k != "max_steps"} == {
        k: v for k, v in runs["sft+grpo"].items() if k != "max_steps"}


@pytest.mark.slow
def test_smollm2_learns_the_policy_on_a_cpu(request, demo_repo, tmp_path, monkeypatch):
    """The acceptance run (about 13 minutes on 2 cores; `./dev test -m slow`): SmolLM2 with
    the specialist's own method and profile reaches held-out >= 0.90 with a 95% CI above
    the majority class. `python bench/learning.py` prints the same with times and the
    SFT-only control."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("trains SmolLM2-135M for ~11 minutes: run with -m slow")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "remote"))
    monkeypatch.setenv("MODELSMITH_THREADS", "2")
    zero = run(demo_repo, "eval", "rtb-quality", "--batch-size", "32", "--min-composite", "0",
               "--json")["report"]
    trained = run(demo_repo, "train", "rtb-quality", "--json")
    accuracy, (low, high), composite = heldout(demo_repo, trained["version"])
    from modelsmith.specs import load_repository

    held = load_repository(demo_repo).suite_for(
        load_repository(demo_repo).specialists["rtb-quality"]).heldout
    majority = max(sum(s.expected == label for s in held) for label in ("ACCEPT", "REJECT"))
    print(f"zero-shot {zero['heldout']:.3f}; trained {accuracy:.3f} [{low:.3f}, {high:.3f}], "
          f"composite {composite:.3f}; majority {majority / len(held):.3f}")
    assert accuracy >= 0.90 and low > majority / len(held)
