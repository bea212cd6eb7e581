"""What signing costs: appends with and without an SSH signature per event commit, and
verify's signature check cold (one ``ssh-keygen -Y find-principals`` and one ``-Y verify``
per commit) and warm (verdicts cached by commit under the git directory).

    python bench/signed_events.py              # 10-event batches, 200 events
    python bench/signed_events.py --events 1000 --batch 10
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.signing import (
    ALLOWED_SIGNERS_PATH,
    SignaturePolicy,
    Signer,
    WriterRule,
)
from modelsmith.events.types import Event, MetricsObserved


def events(n: int) -> list[Event]:
    at = datetime(2026, 11, 20, tzinfo=UTC)
    return [Event.new(MetricsObserved(version="v1", stage="shadow", window_start=at,
                                      window_end=at, requests=i + 1,
                                      metrics={"score_mean": 0.9}), actor="bench")
            for i in range(n)]


def repository(folder: Path, key: Path | None) -> GitEventStore:
    repo = pygit2.init_repository(str(folder))
    if key is not None:
        (folder / ".modelsmith").mkdir()
        pub = Path(str(key) + ".pub").read_text().strip()
        (folder / ALLOWED_SIGNERS_PATH).write_text(f'bench namespaces="git" {pub}\n')
        repo.index.add(ALLOWED_SIGNERS_PATH)
        repo.index.write()
        who = pygit2.Signature("bench", "bench@localhost")
        repo.create_commit("HEAD", who, who, "signers", repo.index.write_tree(), [])
    return GitEventStore(repo, snapshot_every=0,
                         signer=Signer(key) if key is not None else None)


def append_rate(store: GitEventStore, total: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, total, batch):
        store.append("s", events(batch), i)
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = root / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        plain = append_rate(repository(root / "plain", None), args.events, args.batch)
        store = repository(root / "signed", key)
        signed = append_rate(store, args.events, args.batch)
        print(f"appends, batches of {args.batch}: unsigned {plain:,.0f}/s, signed "
              f"{signed:,.0f}/s ({1000 / signed:.1f} ms per signed event, "
              f"{args.batch * 1000 / signed:.0f} ms per batch)")
        policy = SignaturePolicy.of({"s": WriterRule(True)})
        for label in ("cold", "warm"):
            start = time.perf_counter()
            report = GitEventStore(root / "signed").verify(policy)
            took = time.perf_counter() - start
            assert report.ok and report.signed == args.events, report.problems
            print(f"verify {label}: {args.events} signed events in {took:.2f} s "
                  f"({args.events / took:,.0f} events/s)")


if __name__ == "__main__":
    main()
