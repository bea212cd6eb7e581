"""Router decisions per second: the compiled router against a naive loop that evaluates the
YAML rules as data for every request, for tables of 10, 100 and 1,000 rules.

The tables mix the condition kinds as a team would write them: mostly keyword rules, some
metadata, task, regex and length rules; the requests are short texts from the same
vocabulary, some with metadata or a task label, most matching a rule far down the table
or none. Both must make the same decisions; the ratio is compiled / naive.

Then the regex engines: routing and rubric regexes run on RE2 (linear time), not Python's
backtracking ``re``. For everyday patterns the table prints searches per second of each (RE2
pays a per-call toll in its binding); for a catastrophic pattern, ``(a+)+$``, the time of one
search of an adversarial text as it grows: ``re`` doubles per character, RE2 is linear.

    python bench/router.py
    python bench/router.py --requests 20000 --sizes 100
    python bench/router.py --sizes          # regex engines only
"""

from __future__ import annotations

import argparse
import random
import re
import time

from modelsmith.serving.router import Request, Router
from modelsmith.specs.models import RoutingSpec
from modelsmith.specs.regex import compile_regex

VOCAB = [f"w{i}" for i in range(3000)]


def table(n: int, rng: random.Random) -> RoutingSpec:
    rules = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.6:
            when = {"keywords": {"any": rng.sample(VOCAB, 3)}}
        elif kind < 0.8:
            when = {"keywords": {"all": rng.sample(VOCAB, 2)}}
        elif kind < 0.9:
            when = {"meta": {"tenant": f"t{i}"}}
        elif kind < 0.95:
            when = {"task": f"task{i}"}
        elif kind < 0.98:
            when = {"regex": rf"\bref-{i}-\d+\b"}
        else:
            when = {"length": {"min": 5000 + i}}
        rules.append({"name": f"r{i}", "when": when, "route": f"s{i % 7}"})
    return RoutingSpec.model_validate({"rules": rules, "default": "general"})


def naive(spec_data: dict, request: Request) -> tuple[str, str | None]:
    """What a router without compilation does: walk the YAML rules, re-derive each check."""
    for rule in spec_data["rules"]:
        when = rule["when"]
        ok = True
        if "task" in when and request.task != when["task"]:
            ok = False
        if ok and "meta" in when:
            ok = all(request.meta.get(k) == v for k, v in when["meta"].items())
        if ok and "length" in when:
            n = len(request.text)
            lo, hi = when["length"].get("min"), when["length"].get("max")
            ok = (lo is None or n >= lo) and (hi is None or n <= hi)
        if ok and "keywords" in when:
            words = set(re.findall(r"\w+", request.text.lower()))
            kw = when["keywords"]
            ok = all(w.lower() in words for w in kw.get("all") or []) and (
                not kw.get("any") or any(w.lower() in words for w in kw["any"]))
        if ok and "regex" in when:
            ok = re.search(when["regex"], request.text) is not None
        if ok:
            return rule["route"], rule["name"]
    return spec_data["default"], None


def requests(n: int, rng: random.Random) -> list[Request]:
    out = []
    for _ in range(n):
        text = " ".join(rng.choices(VOCAB, k=rng.randint(5, 30)))
        meta = {"tenant": f"t{rng.randint(0, 2000)}"} if rng.random() < 0.3 else {}
        task = f"task{rng.randint(0, 2000)}" if rng.random() < 0.1 else None
        out.append(Request(text, meta, task))
    return out


def rate(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


EVERYDAY = [r"(?i)\bdomain=\S+.*\bctr=", r"\bref-\d+-\d+\b", r"^INV-[0-9]{4}$", r"[A-Z]{3} \d+"]


def engines(n: int, rng: random.Random) -> None:
    texts = [" ".join(rng.choices(VOCAB, k=rng.randint(5, 30))) + " domain=a.com ctr=0.1"
             for _ in range(n)]
    print(f"\n{'pattern':<28} {'re/s':>12} {'re2/s':>12} {'re2/re':>7}")
    for pattern in EVERYDAY:
        ours, theirs = compile_regex(pattern), re.compile(pattern)
        assert [ours.search(t) for t in texts] == [bool(theirs.search(t)) for t in texts]
        fast = rate(theirs.search, texts)
        linear = rate(ours.search, texts)
        print(f"{pattern:<28} {fast:>12,.0f} {linear:>12,.0f} {linear / fast:>6.2f}x")
    print(f"\n{'(a+)+$ on':<16} {'re s':>10} {'re2 s':>10} {'re/re2':>9}")
    pattern = r"(a+)+$"
    ours, theirs = compile_regex(pattern), re.compile(pattern)
    for size in (16, 18, 20, 22, 10_000):
        text = "a" * size + "!"
        started = time.perf_counter()
        assert not ours.search(text)
        linear = time.perf_counter() - started
        if size > 24:  # re would take longer than the age of the universe
            print(f"{size + 1:>6} chars     {'-':>10} {linear:>10.6f} {'-':>9}")
            continue
        started = time.perf_counter()
        assert theirs.search(text) is None
        slow = time.perf_counter() - started
        print(f"{size + 1:>6} chars     {slow:>10.4f} {linear:>10.6f} {slow / linear:>8,.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"{'rules':>6} {'compiled/s':>12} {'naive/s':>10} {'ratio':>7}")
    for size in args.sizes:
        spec = table(size, rng)
        data = spec.model_dump(exclude_none=True)
        router = Router(spec.rules, spec.default)
        batch = requests(args.requests, rng)
        decided = [(d.specialist, d.rule) for d in map(router.route, batch)]
        assert decided == [naive(data, r) for r in batch], "the two routers disagree"
        naive_batch = batch[: max(1000, args.requests // max(1, size // 10))]
        compiled = rate(router.route, batch)
        slow = rate(lambda r, data=data: naive(data, r), naive_batch)
        print(f"{size:>6} {compiled:>12,.0f} {slow:>10,.0f} {compiled / slow:>6.1f}x")
    engines(min(args.requests, 20000), rng)


if __name__ == "__main__":
    main()
