"""Evaluation throughput: batched generation against one request at a time, and greedy
generation against label scoring, same model, same process.

Generates greedy completions for N bid-screening prompts (the rtb-quality task's shape) with
the transformers backend, first in batches (left padding), then one prompt per call, and
prints scenarios/s for both and their ratio. Both runs must produce the same texts. Then it
answers the same prompts by label scoring (the requests carry rtb-quality's labels: one
prompt pass and the label tokens, ``inference.labels``), in the same batches, and prints
scenarios/s against batched generation, their ratio, and the agreement: of the prompts
where greedy generation wrote a valid label, on how many label scoring chose the same one.
``--shots K`` puts K solved core bids before each prompt (a few-shot prompt, so that an
untrained model writes labels at all).

    python bench/eval_throughput.py                       # smollm2-135m, 64 prompts, 1 thread
    python bench/eval_throughput.py --model tiny-test --n 256
    python bench/eval_throughput.py --threads 2 --batch-size 16
    python bench/eval_throughput.py --dtype bfloat16 --prompts short
    python bench/eval_throughput.py --shots 6             # SmolLM2 writes labels, few-shot
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

from modelsmith.inference import GenerationRequest, InferenceError, make_backend
from modelsmith.specs import load_clusters

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["news.example", "sports.example", "weather.example", "recipes.example",
           "travel.example", "finance.example", "casino-ads.example", "clickfarm.example",
           "malware-cdn.example", "fake-news.example", "games.example", "music.example"]
FORMATS = ["banner", "video", "native"]


def bid_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Bid: domain={rng.choice(DOMAINS)} ctr={rng.uniform(0.05, 4.0):.1f}% "
        f"floor=${rng.uniform(0.1, 3.0):.2f} format={rng.choice(FORMATS)}\nVerdict:"
        for _ in range(n)
    ]


def suite_prompts(n: int) -> list[str]:
    """The first ``n`` core scenarios of the demo suite, rendered as `eval` renders them."""
    repo, spec = demo()
    return [spec.spec.task.render(s.input) for s in repo.suite_for(spec).core[:n]]


def demo() -> tuple[Any, Any]:
    from modelsmith.specs import load_repository

    repo = load_repository(REPO_ROOT)
    return repo, repo.specialists["rtb-quality"]


def few_shot(shots: int) -> str | None:
    """The last ``shots`` core scenarios of the demo suite, each prompt with its label."""
    if shots <= 0:
        return None
    repo, spec = demo()
    task = spec.spec.task
    solved = repo.suite_for(spec).core[-shots:]
    return "\n\n".join(f"{task.render(s.input)} {s.expected}" for s in solved) + "\n"


def label_agreement(greedy: list[Any], scored: list[Any],
                    labels: tuple[str, ...]) -> tuple[int, int, int]:
    """(greedy answers that are a valid label as the eval reads them, label-scored answers
    equal to those, label-scored answers that overrode the model's argmax)."""
    from modelsmith.evaluation.criteria import extract_label

    by_fold = {label.casefold(): label for label in labels}
    valid = agree = 0
    for plain, answer in zip(greedy, scored, strict=True):
        wrote = by_fold.get(extract_label(plain.text).casefold())
        if wrote is not None:
            valid += 1
            agree += wrote == answer.text
    return valid, agree, sum(bool(g.meta.get("forced")) for g in scored)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model profile, folder or hub id")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "clusters.json")
    parser.add_argument("--n", type=int, default=64, help="prompts (scenarios)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--prompts", choices=["suite", "short"], default="suite",
                        help="suite: the rtb-quality task prompt (policy + bid), as `eval` "
                             "sends it; short: the bid line alone")
    parser.add_argument("--shots", type=int, default=0,
                        help="solved core bids before each prompt (few-shot)")
    args = parser.parse_args(argv)

    try:
        clusters = load_clusters(args.config, REPO_ROOT)
        started = time.perf_counter()
        backend = make_backend(args.model, clusters, threads=args.threads,
                               batch_size=args.batch_size, repo_root=REPO_ROOT,
                               dtype=args.dtype)
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - started
    prompts = suite_prompts(args.n) if args.prompts == "suite" else bid_prompts(args.n)
    system = few_shot(args.shots)
    requests = [GenerationRequest(prompt=p, system=system, max_new_tokens=args.max_new_tokens)
                for p in prompts]
    labels = tuple(demo()[1].spec.task.output.labels)
    labelled = [dataclasses.replace(r, labels=labels) for r in requests]
    tokens = sum(backend.count_tokens((system or "") + p) for p in prompts) / len(prompts)
    print(f"model {args.model} ({backend.model_ref}) loaded in {load_s:.1f} s; "
          f"{args.n} {args.prompts} prompts of {tokens:.0f} tokens on average, "
          f"{args.max_new_tokens} new tokens, greedy, {args.dtype}, {args.threads} thread(s)"
          + (f", {args.shots} shots" if args.shots else ""))

    backend.generate(requests[:2])  # warm-up (first-call allocations)
    started = time.perf_counter()
    batched = backend.generate(requests)
    batched_s = time.perf_counter() - started

    backend.generate(labelled[:2])  # warm-up
    started = time.perf_counter()
    scored = backend.generate(labelled)
    scored_s = time.perf_counter() - started

    started = time.perf_counter()
    single = [backend.generate([r])[0] for r in requests]
    single_s = time.perf_counter() - started
    backend.close()

    same = sum(a.text == b.text for a, b in zip(batched, single, strict=True))
    batched_rate, single_rate = args.n / batched_s, args.n / single_s
    print(f"batched (batch {args.batch_size}): {batched_rate:8.2f} scenarios/s "
          f"({batched_s:.2f} s)")
    print(f"one at a time:       {single_rate:8.2f} scenarios/s ({single_s:.2f} s)")
    print(f"ratio batched / one at a time: {batched_rate / single_rate:.1f}x")
    print(f"identical outputs: {same}/{args.n}; sample: {batched[0].text!r}")
    scored_rate = args.n / scored_s
    valid, agree, forced = label_agreement(batched, scored, labels)
    print(f"label scoring (batch {args.batch_size}): {scored_rate:8.2f} scenarios/s "
          f"({scored_s:.2f} s)")
    print(f"ratio label scoring / batched generation: {scored_rate / batched_rate:.1f}x")
    print(f"agreement: greedy wrote a valid label on {valid}/{args.n}, label scoring chose "
          f"the same on {agree}/{valid}; forced (the model's argmax left the labels) on "
          f"{forced}/{args.n}; sample: {scored[0].text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
