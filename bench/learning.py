"""Does the pipeline learn, and how fast? eval -> train -> eval on a scratch fork.

    python bench/learning.py                       # smollm2-135m, its profile (cpu-lora)
    python bench/learning.py --model tiny-test --profile cpu-tiny-learn
    python bench/learning.py --iterate 6 --model tiny-test --profile cpu-tiny-demo
    python bench/learning.py --iterate 6 --repo tests/fixtures/invoices --specialist invoices \
        --model tiny-test --profile cpu-tiny-json

Runs the real CLI, as a user would, in a fresh fork of the embedded defaults:

1. `modelsmith eval` of the base model (zero-shot);
2. `modelsmith train` with the specialist's method (sft+grpo) -> v1;
3. `modelsmith eval --model v1`;
4. the SFT-only control: `modelsmith train --method sft --steps <the warm start's steps>`
   -> v2 and its evaluation (skip with --no-control): GRPO's own contribution is
   v1 - v2 on the held-out split.

Prints the wall time of each step, the held-out majority-class rate, zero-shot / control /
trained held-out accuracy with 95% CIs and composites, and the learning curve (SFT loss and
GRPO reward every few steps, from TrainingCompleted's evidence). The first three steps are
the acceptance run: their total is the "eval -> train -> eval" time.

With ``--iterate N`` it runs `modelsmith iterate` instead and prints, per iteration, the
decision metric (dev, else unseen composite: never trained on), the composite, held-out,
the decision-metric-minus-held-out gap (how far the number the loop steers by is from the
promotion gate's evidence: near 0 when the loop is honest), and the dataset's new rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIALIST = "rtb-quality"  # --specialist changes it


def modelsmith(fork: Path, *args: str) -> tuple[dict, float]:
    """Run the CLI with --json; (its output, wall seconds). Progress streams to stderr."""
    cmd = [sys.executable, "-m", "modelsmith", "-C", str(fork), *args, "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"{' '.join(args)} failed (exit {done.returncode})")
    return json.loads(done.stdout), elapsed


def evaluate(fork: Path, model: str, threads: int) -> tuple[dict, float]:
    out, seconds = modelsmith(fork, "eval", SPECIALIST, "--model", model, "--threads",
                              str(threads), "--batch-size", "32", "--min-composite", "0")
    return out["report"], seconds


def curve(fork: Path, version: str, every: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "engine"))
    from modelsmith.events.gitstore import GitEventStore

    store = GitEventStore(fork)
    events = list(store.read(SPECIALIST))
    registered = next(e for e in events if e.type == "CandidateRegistered"
                      and e.data["version"] == version)
    run_id = registered.data["lineage"]["run_id"]
    completed = next(e for e in events if e.type == "TrainingCompleted"
                     and e.data["run_id"] == run_id)
    log = store.evidence(completed.id)["training_log.jsonl"].decode()
    lines = []
    for entry in map(json.loads, log.splitlines()):
        if "train_runtime" in entry or (entry["step"] % every and entry["step"] != 1):
            continue
        value = ("loss", entry.get("loss")) if entry["phase"] == "sft" else \
            ("reward", entry.get("reward"))
        if value[1] is not None:
            lines.append(f"{entry['phase']:>4} step {entry['step']:>3}: {value[0]} "
                         f"{value[1]:.3f}")
    return lines


def iterate(fork: Path, model: str, profile: str, iterations: int, threads: int) -> None:
    """The loop, and its honesty per iteration: decision metric minus held-out."""
    cmd = [sys.executable, "-m", "modelsmith", "-C", str(fork), "iterate", SPECIALIST,
           "--model", model, "--profile", profile, "--max-iterations", str(iterations),
           "--threads", str(threads), "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    records = [e for e in events if e.get("event") == "iteration" and e.get("candidate")]
    result = next((e for e in events if e.get("event") == "result"), {})
    print("| iteration | candidate | decision (split, n) | composite | held-out | "
          "decision - held-out | rows (new) | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        decision, held = r.get("decision"), r.get("heldout")
        gap = f"{decision - held:+.3f}" if decision is not None and held is not None else "-"
        shown = f"{decision:.3f} ({r['decision_metric']}, {r['decision_n']})" \
            if decision is not None else "-"
        print(f"| {r['iteration']} | {r['candidate']} | {shown} | {r['composite']:.3f} | "
              f"{'-' if held is None else f'{held:.3f}'} | {gap} | {r.get('dataset_rows')} "
              f"({r.get('new_rows')}) | {r.get('duration_s') or 0:.0f} |")
    gaps = [abs(r["decision"] - r["heldout"]) for r in records
            if r.get("decision") is not None and r.get("heldout") is not None]
    print(f"\n{result.get('reason', 'no result')}: {result.get('message', done.returncode)}")
    if gaps:
        print(f"largest |decision - held-out| {max(gaps):.3f} over {len(gaps)} iterations; "
              f"loop {seconds:.0f}s ({seconds / 60:.1f} min)")


def row(name: str, report: dict) -> str:
    low, high = report["heldout_ci"] or (float("nan"), float("nan"))
    return (f"| {name} | {report['heldout']:.3f} | [{low:.3f}, {high:.3f}] | "
            f"{report['composite']:.3f} | {report['core']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Base model (default: the specialist's)")
    parser.add_argument("--profile", default=None, help="Profile (default: the specialist's)")
    parser.add_argument("--threads", type=int, default=2, help="Eval threads (default 2)")
    parser.add_argument("--no-control", action="store_true", help="Skip the SFT-only control")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch fork")
    parser.add_argument("--iterate", type=int, default=0, metavar="N",
                        help="Run the iterate loop for N iterations instead")
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="The repository to fork (default: this one's defaults)")
    parser.add_argument("--specialist", default=SPECIALIST)
    args = parser.parse_args()
    globals()["SPECIALIST"] = args.specialist
    sys.path.insert(0, str(ROOT / "engine"))
    from modelsmith.app.scaffold import prepare_fork
    from modelsmith.specs import load_repository

    fork = Path(tempfile.mkdtemp(prefix="modelsmith-learning-"))
    prepare_fork(args.repo.resolve(), fork)
    repo = load_repository(fork)
    spec = repo.specialists[SPECIALIST]
    model = args.model or spec.spec.base
    profile_name = args.profile or spec.spec.training.profile
    profile = repo.clusters.profiles[profile_name]
    heldout = repo.suite_for(spec).heldout
    majority = max(Counter(str(s.expected) for s in heldout).values()) / len(heldout)
    os.environ.setdefault("MODELSMITH_THREADS", str(args.threads))
    print(f"fork {fork}; {model}, profile {profile_name}; held-out n={len(heldout)}, "
          f"majority class {majority:.3f}", flush=True)
    if args.iterate:
        iterate(fork, model, profile_name, args.iterate, args.threads)
        if not args.keep:
            shutil.rmtree(fork, ignore_errors=True)
        return

    total = time.perf_counter()
    zero, t_zero = evaluate(fork, model, args.threads)
    trained, t_train = modelsmith(fork, "train", SPECIALIST, "--model", model,
                                  "--profile", profile_name)
    after, t_after = evaluate(fork, trained["version"], args.threads)
    pipeline = time.perf_counter() - total
    lines = ["| model | held-out | 95% CI | composite | core |", "|---|---:|---|---:|---:|",
             f"| majority class | {majority:.3f} | | | |", row(f"{model} zero-shot", zero)]
    control = None
    if not args.no_control:
        warm = profile.sft_steps or max(1, profile.max_steps // 4)
        control_run, t_control = modelsmith(fork, "train", SPECIALIST, "--model", model,
                                            "--profile", profile_name, "--method", "sft",
                                            "--steps", str(warm))
        control, t_control_eval = evaluate(fork, control_run["version"], args.threads)
        lines.append(row(f"SFT-only control ({warm} steps)", control))
    lines.append(row(f"{trained['version']} sft+grpo", after))
    print("\n".join(lines))
    print(f"\ntimes: eval {t_zero:.0f}s + train {t_train:.0f}s + eval {t_after:.0f}s = "
          f"{pipeline:.0f}s ({pipeline / 60:.1f} min)")
    if control is not None:
        print(f"SFT-only control: train {t_control:.0f}s, eval {t_control_eval:.0f}s; "
              f"GRPO's own contribution on held-out: {after['heldout'] - control['heldout']:+.3f}")
    metrics = trained["metrics"]
    print(f"GRPO reward {metrics.get('reward_start', float('nan')):.3f} -> "
          f"{metrics.get('reward_end', float('nan')):.3f}")
    steps = profile.max_steps + (profile.sft_steps or 0)
    print("\nlearning curve:\n  " + "\n  ".join(curve(fork, trained["version"],
                                                     max(1, steps // 20))))
    if not args.keep:
        shutil.rmtree(fork, ignore_errors=True)


if __name__ == "__main__":
    main()
