"""Scenarios for the rtb-quality suite, generated from the written policy with a fixed seed.

The policy (described in specialists/rtb-quality.yaml; the model learns it from the data):

    REJECT a bid request when its publisher domain is on the blocklist
    (casino-ads.example, clickfarm.example, malware-cdn.example, fake-news.example)
    or its predicted click-through rate is below 0.5%. ACCEPT every other request.
    Floor price, ad format, device and geo do not change the verdict.

Run `python evals/rtb-quality/generate.py` to rewrite scenarios.jsonl; the output is
byte-for-byte reproducible. `near(scenario, n, seed)` is the suite's generator: it makes
new labelled scenarios close to a given one (used to augment training data).
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

BLOCKED = ("casino-ads.example", "clickfarm.example", "malware-cdn.example", "fake-news.example")
ALLOWED = (
    "news.example", "sports.example", "recipes.example", "weather.example",
    "travel.example", "finance.example", "games.example", "music.example",
)
FORMATS = ("banner", "video", "native")
DEVICES = ("mobile", "desktop", "tablet", "ctv")
GEOS = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
CTR_THRESHOLD = 0.5  # percent
SEED = 20261126
CORE, HELDOUT, DEV = 320, 100, 100
VARIANT_SHARE = 0.4  # share of core scenarios that carry rephrasings


@dataclass(frozen=True)
class Bid:
    domain: str
    ctr: float  # percent, one decimal
    floor: float  # dollars
    format: str
    device: str
    geo: str


def policy_label(bid: Bid) -> str:
    """The written policy, as code: the one place labels come from."""
    if bid.domain in BLOCKED or bid.ctr < CTR_THRESHOLD:
        return "REJECT"
    return "ACCEPT"


def reasons(bid: Bid) -> list[str]:
    tags = []
    if bid.domain in BLOCKED:
        tags.append("blocked-domain")
    if bid.ctr < CTR_THRESHOLD:
        tags.append("low-ctr")
    if abs(bid.ctr - CTR_THRESHOLD) <= 0.15:
        tags.append("boundary")
    return tags or ["clean"]


def render(bid: Bid, style: int = 0) -> str:
    """The request as text. Style 0 is the canonical form; others are rephrasings."""
    if style == 0:
        return (f"domain={bid.domain} ctr={bid.ctr:.1f}% floor=${bid.floor:.2f} "
                f"format={bid.format} device={bid.device} geo={bid.geo}")
    if style == 1:  # same fields, another order
        return (f"geo={bid.geo} format={bid.format} floor=${bid.floor:.2f} "
                f"domain={bid.domain} device={bid.device} ctr={bid.ctr:.1f}%")
    if style == 2:  # prose
        return (f"A {bid.format} ad on {bid.domain} ({bid.device}, {bid.geo}) with predicted "
                f"CTR {bid.ctr:.1f}% and floor ${bid.floor:.2f}")
    return json.dumps({"domain": bid.domain, "ctr": f"{bid.ctr:.1f}%", "floor": bid.floor,
                       "format": bid.format, "device": bid.device, "geo": bid.geo})


_CANONICAL = re.compile(
    r"domain=(?P<domain>\S+) ctr=(?P<ctr>[\d.]+)% floor=\$(?P<floor>[\d.]+) "
    r"format=(?P<format>\S+) device=(?P<device>\S+) geo=(?P<geo>\S+)"
)


def parse(text: str) -> Bid:
    """Read a canonical-form request back (for `near` and for checking labels)."""
    m = _CANONICAL.fullmatch(text)
    if m is None:
        raise ValueError(f"not a canonical bid request: {text!r}")
    return Bid(m["domain"], float(m["ctr"]), float(m["floor"]), m["format"], m["device"],
               m["geo"])


def random_bid(rng: random.Random) -> Bid:
    # About 45% REJECT: a fifth of requests come from blocked domains, a quarter of the
    # rest have a low CTR; a band around the threshold keeps the boundary honest.
    domain = rng.choice(BLOCKED) if rng.random() < 0.2 else rng.choice(ALLOWED)
    roll = rng.random()
    if roll < 0.25:
        ctr = rng.choice([x / 10 for x in range(1, 5)])  # 0.1 .. 0.4
    elif roll < 0.4:
        ctr = rng.choice([0.4, 0.5, 0.6])
    else:
        ctr = rng.choice([x / 10 for x in range(5, 60)])  # 0.5 .. 5.9
    return Bid(domain, round(ctr, 1), round(rng.uniform(0.05, 4.0), 2), rng.choice(FORMATS),
               rng.choice(DEVICES), rng.choice(GEOS))


def scenario(sid: str, bid: Bid, split: str, variants: list[str]) -> dict:
    row = {"id": sid, "input": render(bid), "expected": policy_label(bid), "split": split,
           "tags": reasons(bid)}
    if variants:
        row["variants"] = variants
    return row


def make_suite(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []

    def fresh() -> Bid:
        while True:
            bid = random_bid(rng)
            texts = {render(bid, s).lower() for s in range(4)}
            if not texts & seen:
                seen.update(texts)
                return bid

    for i in range(1, CORE + 1):
        bid = fresh()
        variants = []
        if rng.random() < VARIANT_SHARE:
            variants = [render(bid, s) for s in rng.sample([1, 2, 3], 2)]
        rows.append(scenario(f"rtb-{i:04d}", bid, "core", variants))
    for i in range(1, HELDOUT + 1):
        rows.append(scenario(f"rtb-h{i:03d}", fresh(), "heldout", []))
    # Dev: what the iterate loop decides on (never training data, like held-out), so the
    # number it steers by is one no candidate trained on.
    for i in range(1, DEV + 1):
        bid = fresh()
        variants = [render(bid, s) for s in rng.sample([1, 2, 3], 2)] \
            if rng.random() < VARIANT_SHARE else []
        rows.append(scenario(f"rtb-d{i:03d}", bid, "dev", variants))
    return rows


def near(row: dict, n: int = 4, seed: int = 0) -> list[dict]:
    """New labelled bid requests close to ``row``: one field changed to another value at a
    time, labels from the policy (so a changed domain or CTR may flip the label, which is
    the point). The loop passes a seed per failed scenario and iteration, so each iteration
    brings other neighbours."""
    rng = random.Random(f"{seed}:{row['id']}")
    base = parse(row["input"])
    out = []
    for k in range(n):
        field = rng.choice(["domain", "ctr", "floor", "format", "device", "geo"])
        if field == "domain":
            bid = replace(base, domain=_other(rng, BLOCKED + ALLOWED, base.domain))
        elif field == "ctr":
            steps = [-0.3, -0.1, 0.1, 0.3] if base.ctr > 0.35 else [0.1, 0.2, 0.3]
            bid = replace(base, ctr=round(base.ctr + rng.choice(steps), 1))
        elif field == "floor":
            bid = replace(base, floor=_other(rng, [round(rng.uniform(0.05, 4.0), 2)
                                                   for _ in range(2)], base.floor))
        else:
            pool = {"format": FORMATS, "device": DEVICES, "geo": GEOS}[field]
            bid = replace(base, **{field: _other(rng, pool, getattr(base, field))})
        out.append(scenario(f"{row['id']}-near{k + 1}", bid, "core", []))
    return out


def _other(rng: random.Random, values, current):
    """A value of ``values`` other than ``current``."""
    return rng.choice([v for v in values if v != current])


def main(path: Path = Path(__file__).with_name("scenarios.jsonl")) -> None:
    rows = make_suite()
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    core = [r for r in rows if r["split"] == "core"]
    reject = sum(r["expected"] == "REJECT" for r in core)
    print(f"wrote {len(rows)} scenarios to {path} ({len(core)} core, {reject} REJECT, "
          f"{sum('variants' in r for r in core)} with variants; {HELDOUT} held-out, "
          f"{DEV} dev)", file=sys.stderr)


if __name__ == "__main__":
    main()
