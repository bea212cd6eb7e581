"""Versions as LoRA adapters on one base, against each version merged into its own model.

Makes three LoRA adapters of a base (random A and nonzero random B, rank and targets as the
``cpu-lora`` profile: no training needed to measure memory and speed), merges each into a
model folder of its own, then measures in a fresh subprocess per setup (so each resident
set is its own):

- ``one``: one merged model (the memory of a single version: the baseline);
- ``merged``: the three merged models, each answering its own version's requests in its own
  batches (what serving did before: one model and one batcher per version);
- ``adapters``: one base with the three adapters attached, answering the same requests in
  mixed batches (rows of all three versions in one ``generate()`` call).

The three subprocesses load at once and then take turns, one timed round each, so a change
in the machine's load hits every setup alike. Each reports its median round and its best:
on a shared machine other work only ever adds time, so the best round is the closest to
the cost of the code itself (as ``timeit`` reports), and the median says how noisy the
machine was. The ratio is given for both, and for the rounds side by side (each round of
the adapters against the merged models' round just before it, the median of those).

It prints each setup's resident memory (RSS after loading and answering, and its peak) and
requests/s, the ratios, whether the two three-version setups gave the same greedy answers,
and the machine's load average (the machine may be shared). Goal: three versions in at most
1.2x one model's memory at 90% or more of the merged models' throughput.

    python bench/adapters.py                        # smollm2-135m, 96 requests, 1 thread
    python bench/adapters.py --model tiny-test --n 48
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))

from eval_throughput import bid_prompts  # noqa: E402

VERSIONS = ("v1", "v2", "v3")


def rss_mb() -> tuple[float, float]:
    """This process's resident set and its peak (VmRSS, VmHWM), in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def make_adapters(base: Path, out: Path, r: int, alpha: int, seed: int = 0) -> dict[str, Path]:
    """Three adapters of ``base`` with random, nonzero A and B (each changes the answers)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from modelsmith.artifacts.adapters import write_adapter_base
    from modelsmith.artifacts.models import cached_base

    folders = {}
    for index, version in enumerate(VERSIONS):
        model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
        generator = torch.Generator().manual_seed(seed + index)
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        folder = out / version
        lora.save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(base).save_pretrained(folder)
        write_adapter_base(folder, cached_base(base))
        folders[version] = folder
    return folders


def requests_of(n: int, max_new_tokens: int) -> list[tuple[str, str]]:
    """``n`` (version, prompt) pairs, the versions in turn (as a canary split mixes them)."""
    return [(VERSIONS[i % len(VERSIONS)], prompt)
            for i, prompt in enumerate(bid_prompts(n, seed=1))]


def run_setup(setup: str, work: Path, args: argparse.Namespace) -> dict:
    """One setup, measured in this process (a fresh subprocess)."""
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.inference import GenerationRequest
    from modelsmith.inference.adapters import MultiAdapterBackend
    from modelsmith.inference.transformers_backend import TransformersBackend
    from modelsmith.specs import load_clusters

    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json", REPO_ROOT)
    plan = requests_of(args.n, args.max_new_tokens)
    options = {"threads": args.threads, "batch_size": args.batch_size}
    base = resolve_model(args.model, clusters)
    started = time.perf_counter()
    if setup == "adapters":
        backend = MultiAdapterBackend(base, **options)
        for version in VERSIONS:
            backend.attach(version, work / "adapters" / version)
        backends = {None: backend}
    else:
        versions = VERSIONS[:1] if setup == "one" else VERSIONS
        # Prompted as the base profile is, as the service prompts a version.
        backends = {v: TransformersBackend(dataclasses.replace(
                        resolve_model(str(work / "merged" / v), clusters),
                        chat_template=base.chat_template), **options) for v in versions}
    load_s = time.perf_counter() - started
    calls = {}  # backend key -> its requests, in plan order
    for index, (version, prompt) in enumerate(plan):
        if setup == "one" and version != VERSIONS[0]:
            continue
        key = None if setup == "adapters" else version
        adapter = version if setup == "adapters" else None
        calls.setdefault(key, []).append(
            (index, GenerationRequest(prompt, max_new_tokens=args.max_new_tokens,
                                      adapter=adapter)))
    for key, rows in calls.items():  # warm-up: first-call allocations
        backends[key].generate([r for _, r in rows[:2]])
    texts: dict[int, str] = {}
    rounds = []
    print(json.dumps({"ready": setup}), flush=True)
    for _ in range(args.rounds):  # one round when the parent says: the setups take turns
        sys.stdin.readline()
        started = time.perf_counter()
        for key, rows in calls.items():
            for (index, _), generation in zip(
                    rows, backends[key].generate([r for _, r in rows]), strict=True):
                texts[index] = generation.text
        rounds.append(time.perf_counter() - started)
        print(json.dumps({"round": rounds[-1]}), flush=True)
    seconds = sorted(rounds)[len(rounds) // 2]
    rss, peak = rss_mb()
    return {"setup": setup, "load_s": load_s, "seconds": seconds, "requests": len(texts),
            "rate": len(texts) / seconds, "best": len(texts) / min(rounds),
            "rounds": rounds, "rss_mb": rss, "peak_mb": peak,
            "texts": [texts[i] for i in sorted(texts)]}


def prepare(work: Path, args: argparse.Namespace) -> str:
    """The adapters and their merged models in ``work``; what the adapters are."""
    from modelsmith.artifacts.adapters import materialise
    from modelsmith.artifacts.models import resolve_model
    from modelsmith.specs import load_clusters

    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json", REPO_ROOT)
    base = resolve_model(args.model, clusters).path
    lora = clusters.profiles["cpu-lora"].lora
    folders = make_adapters(base, work / "adapters", lora.r, lora.alpha)
    for version, folder in folders.items():
        materialise(folder, work / "merged" / version, clusters, REPO_ROOT)
    size = (folders[VERSIONS[0]] / "adapter_model.safetensors").stat().st_size / 1e6
    full = (work / "merged" / VERSIONS[0] / "model.safetensors").stat().st_size / 1e6
    return (f"r={lora.r}, alpha={lora.alpha:g}, all linear layers, as the cpu-lora profile: "
            f"{size:.1f} MB each against {full:.0f} MB of merged weights")


def measure(work: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Each setup in its own subprocess, all loaded at once, timed in turns (one round of
    each, then the next): a change in the machine's load hits every setup alike."""
    setups = ("one", "merged", "adapters")
    children = {setup: subprocess.Popen(
        [sys.executable, __file__, "--setup", setup, "--work", str(work), "--model",
         args.model, "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
         "--batch-size", str(args.batch_size), "--threads", str(args.threads),
         "--rounds", str(args.rounds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for setup in setups}

    def answer(setup: str) -> dict:
        line = children[setup].stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit(f"the {setup} setup failed (exit {children[setup].wait()})")
        return json.loads(line)

    for setup in setups:
        answer(setup)  # loaded and warmed up
    for _ in range(args.rounds):
        for setup in setups:
            children[setup].stdin.write("go\n")  # type: ignore[union-attr]
            children[setup].stdin.flush()  # type: ignore[union-attr]
            answer(setup)
    results = {setup: answer(setup) for setup in setups}
    for child in children.values():
        child.wait()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="the base: a model profile")
    parser.add_argument("--n", type=int, default=96, help="requests, the versions in turn")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=9,
                        help="timed rounds per setup, in turns (median and best reported)")
    parser.add_argument("--setup", choices=["one", "merged", "adapters"],
                        help=argparse.SUPPRESS)  # a child process: measure one setup
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup:
        print(json.dumps(run_setup(args.setup, args.work, args)))
        return 0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        made = prepare(work, args)
        print(f"base {args.model}: 3 adapters ({made}) and 3 merged models made in "
              f"{time.perf_counter() - started:.0f} s")
        results = measure(work, args)
    load_after = os.getloadavg()
    one, merged, adapters = results["one"], results["merged"], results["adapters"]
    print(f"{args.n} requests (versions in turn), {args.max_new_tokens} new tokens, greedy, "
          f"batch {args.batch_size}, {args.threads} thread(s), {args.rounds} rounds each")
    for row in (one, merged, adapters):
        print(f"  {row['setup']:9s} RSS {row['rss_mb']:7.0f} MB (peak {row['peak_mb']:7.0f}) "
              f"{row['rate']:6.2f} requests/s median, {row['best']:6.2f} best "
              f"({row['requests']} in {row['seconds']:.1f} s, loaded in {row['load_s']:.1f} s)")
    same = sum(a == b for a, b in zip(merged["texts"], adapters["texts"], strict=True))
    print(f"memory: 3 merged / one model {merged['rss_mb'] / one['rss_mb']:.2f}x; "
          f"1 base + 3 adapters / one model {adapters['rss_mb'] / one['rss_mb']:.2f}x; "
          f"adapters / merged {adapters['rss_mb'] / merged['rss_mb']:.2f}x")
    paired = sorted(m / a for m, a in zip(merged["rounds"], adapters["rounds"], strict=True))
    print(f"throughput: adapters (mixed batches) / merged (a batch per version) "
          f"{adapters['rate'] / merged['rate']:.2f}x median, "
          f"{adapters['best'] / merged['best']:.2f}x best, "
          f"{paired[len(paired) // 2]:.2f}x round by round (from {paired[0]:.2f}x to "
          f"{paired[-1]:.2f}x)")
    print(f"noise: one merged model's requests/s against the three's (about the same work per "
          f"request) {one['rate'] / merged['rate']:.2f}x median, "
          f"{one['best'] / merged['best']:.2f}x best")
    print(f"identical greedy answers, adapters vs merged: {same}/{len(merged['texts'])}")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{x:.1f}' for x in load_before)};"
          f" after {', '.join(f'{x:.1f}' for x in load_after)} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
