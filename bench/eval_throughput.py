"""Evaluation throughput: batched generation against one request at a time, same model.

Generates greedy completions for N bid-screening prompts (the rtb-quality task's shape) with
the transformers backend, first in batches (left padding), then one prompt per call, and
prints scenarios/s for both and their ratio. Both runs must produce the same texts.

    python bench/eval_throughput.py                       # smollm2-135m, 64 prompts, 1 thread
    python bench/eval_throughput.py --model tiny-test --n 256
    python bench/eval_throughput.py --threads 2 --batch-size 16
    python bench/eval_throughput.py --dtype bfloat16 --prompts short
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

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
    from modelsmith.specs import load_repository

    repo = load_repository(REPO_ROOT)
    spec = repo.specialists["rtb-quality"]
    return [spec.spec.task.render(s.input) for s in repo.suite_for(spec).core[:n]]


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
    requests = [GenerationRequest(prompt=p, max_new_tokens=args.max_new_tokens)
                for p in prompts]
    tokens = sum(backend.count_tokens(p) for p in prompts) / len(prompts)
    print(f"model {args.model} ({backend.model_ref}) loaded in {load_s:.1f} s; "
          f"{args.n} {args.prompts} prompts of {tokens:.0f} tokens on average, "
          f"{args.max_new_tokens} new tokens, greedy, {args.dtype}, {args.threads} thread(s)")

    backend.generate(requests[:2])  # warm-up (first-call allocations)
    started = time.perf_counter()
    batched = backend.generate(requests)
    batched_s = time.perf_counter() - started

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
