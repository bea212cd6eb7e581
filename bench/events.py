"""Event log benchmark: the git store against a naive JSONL-file log, in one process.

Measures appends/s (single and batched, on an empty log and on the full log), replay/s
after `git gc`, and cold and warm `status` (the fleet fold) on a synthetic log of N events
over M specialists. The naive log appends one JSON line per event (no compare-and-swap,
no audit trail) and answers `status` by replaying the whole file each time.

Cold status (a fresh clone: no cache) is measured with the log's state snapshots (the
appender writes one every --snapshot-every events) against the full fold of the whole log
(``MODELSMITH_SNAPSHOTS=off``), and against gto's ``show`` on an equivalent registry (one
git tag per registered version and per stage assignment, as gto writes them).

    python bench/events.py                      # 100k events, 1,000 specialists
    python bench/events.py --events 5000 --specialists 50   # a quick look
    python bench/events.py --snapshot-every 0   # appends without snapshots, as before
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2

from modelsmith.events import snapshot
from modelsmith.events.gitstore import GitEventStore
from modelsmith.events.projection import FleetState, fleet_status, fold
from modelsmith.events.types import (
    CandidateRegistered,
    EvalCompleted,
    Event,
    EventData,
    Lineage,
    MetricsObserved,
    Promoted,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_stream(name: str, count: int, rng: random.Random) -> Iterator[EventData]:
    """A plausible specialist history: candidates, evaluations, promotions, metrics."""
    version = 0
    produced = 0
    while produced < count:
        version += 1
        v = f"v{version}"
        steps: list[EventData] = [
            CandidateRegistered(version=v, lineage=Lineage(base_model="smollm2-135m",
                                                           parent=f"v{version - 1}" if version > 1
                                                           else None, dataset_hash="d" * 32)),
            EvalCompleted(version=v, model=v, suite=name, suite_hash="s" * 16, run_id=f"{v}-e",
                          composite=rng.random(), heldout=rng.random()),
            EvalCompleted(version=v, model=v, suite=name, suite_hash="s" * 16, run_id=f"{v}-f",
                          composite=rng.random()),
            Promoted(version=v, stage="canary", traffic=0.1),
            MetricsObserved(version=v, stage="canary", window_start=T0, window_end=T0,
                            requests=rng.randint(50, 500), metrics={"score_mean": rng.random()}),
            Promoted(version=v, stage="production", previous=f"v{version - 1}"),
        ]
        for payload in steps[: count - produced]:
            produced += 1
            yield payload


def make_events(total: int, specialists: int, seed: int = 0) -> list[tuple[str, list[Event]]]:
    """Batches (stream, events), interleaved across streams as a real fleet would be."""
    rng = random.Random(seed)
    per = total // specialists
    names = [f"spec-{i:04d}" for i in range(specialists)]
    streams = {n: list(synthetic_stream(n, per, rng)) for n in names}
    batches: list[tuple[str, list[Event]]] = []
    batch = 10
    for start in range(0, per, batch):
        for n in names:
            chunk = streams[n][start : start + batch]
            at = T0 + timedelta(seconds=start)
            batches.append((n, [Event.new(p, actor="bench", at=at) for p in chunk]))
    return batches


class NaiveJsonlLog:
    """What one writes in an afternoon: a JSONL file, appended to, replayed on every read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self.seqs: dict[str, int] = {}  # kept in memory only: no check against the file

    def append(self, stream: str, events: list[Event]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for e in events:
                seq = self.seqs[stream] = self.seqs.get(stream, 0) + 1
                fh.write(e.recorded(stream, seq, 0).canonical_json() + "\n")

    def read(self) -> Iterator[Event]:
        with open(self.path, encoding="utf-8") as fh:
            for pos, line in enumerate(fh, start=1):
                body = json.loads(line)
                body["position"] = pos
                yield Event.model_validate(body)

    def status(self) -> FleetState:
        state = FleetState()
        for e in self.read():
            state.apply(e)
        return state


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def shadow_events(n: int) -> list[Event]:
    return [Event.new(Promoted(version="v1", stage="shadow"), actor="bench") for _ in range(n)]


def median(fn, runs: int = 5) -> float:
    times = sorted(timed(fn)[0] for _ in range(runs))
    return times[len(times) // 2]


def single_appends(store_append, events: list[Event], stream: str) -> float:
    t = time.perf_counter()
    for e in events:
        store_append(stream, e)
    return len(events) / (time.perf_counter() - t)


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if unit == "ev/s" else f"{value:.3f} s"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu unknown"


def gto_registry(path: Path, batches: list[tuple[str, list[Event]]], specialists: int) -> int:
    """The registry gto would hold for the first ``specialists`` streams of the log: an
    annotated tag per registered version (``name@vX.0.0``) and per stage assignment
    (``name#stage#N``), with gto's own messages; each version on a commit of its own (gto
    allows one version of an artifact per commit)."""
    repo = pygit2.init_repository(str(path))
    sig = pygit2.Signature("bench", "bench@localhost", int(T0.timestamp()), 0)
    tree = repo.TreeBuilder().write()
    head = repo.create_commit("HEAD", sig, sig, "registry", tree, [])
    wanted = {f"spec-{i:04d}" for i in range(specialists)}
    counter: dict[str, int] = {}
    commits: dict[tuple[str, str], pygit2.Oid] = {}
    tags = 0
    for stream, events in batches:
        if stream not in wanted:
            continue
        for e in events:
            version = e.data.get("version")
            semver = f"v{str(version).lstrip('v')}.0.0"
            if e.type == "CandidateRegistered":
                head = repo.create_commit("HEAD", sig, sig, f"{stream} {semver}", tree, [head])
                commits[stream, semver] = head
                name, msg = f"{stream}@{semver}", f"Registering artifact {stream} version {semver}"
            elif e.type == "Promoted":
                n = counter[stream] = counter.get(stream, 0) + 1
                stage = e.data["stage"]
                name = f"{stream}#{stage}#{n}"
                msg = f"Assigning stage {stage} to artifact {stream} version {semver}"
            else:
                continue
            when = pygit2.Signature("bench", "bench@localhost", int(T0.timestamp()) + tags, 0)
            repo.create_tag(name, commits[stream, semver], pygit2.enums.ObjectType.COMMIT,
                            when, msg + "\n")  # gto orders assignments by tag time
            tags += 1
    return tags


def compare_gto(work: Path, args: argparse.Namespace, batches: list, t_snap: float,
                t_cli_cold: float, say) -> None:
    """gto's ``show`` (all artifacts, their versions and stages) on a scaled registry."""
    gto = shutil.which("gto") or str(Path(sys.executable).with_name("gto"))
    if not Path(gto).exists():
        print("gto: not installed (pip install gto), no comparison")
        return
    n = min(args.gto_specialists, args.specialists)
    say(f"gto show on a registry of {n} specialists")
    tags = gto_registry(work / "gto", batches, n)
    cmd = [gto, "show", "--json", "-r", str(work / "gto")]
    try:
        t_gto = median(lambda: subprocess.run(cmd, check=True, capture_output=True,
                                              timeout=600), 3)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"gto show failed on {tags} tags: {exc}")
        return
    scaled = "" if n == args.specialists else (
        f" -- scaled down to {n} of {args.specialists} specialists: gto reads every tag "
        "of the repository on each call")
    print(f"gto show: {n} specialists, {tags} tags: {t_gto:.3f} s{scaled}")
    print(f"  vs cold `modelsmith status` on all {args.specialists} specialists "
          f"{t_cli_cold:.3f} s ({t_gto / t_cli_cold:.2f}x), in process {t_snap:.3f} s "
          f"({t_gto / t_snap:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--specialists", type=int, default=1_000)
    ap.add_argument("--singles", type=int, default=2_000, help="single appends to time")
    ap.add_argument("--keep", action="store_true", help="keep the temporary repository")
    ap.add_argument("--snapshot-every", type=int, default=snapshot.DEFAULT_EVERY,
                    help="events between state snapshots (0: none)")
    ap.add_argument("--gto-specialists", type=int, default=50,
                    help="specialists in the gto registry compared (gto reads every tag)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modelsmith-bench-"))
    say = lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    rows: list[tuple[str, str, float, float, bool]] = []  # metric, unit, naive, ours, higher?
    try:
        repo_path = work / "repo"
        pygit2.init_repository(str(repo_path))
        store = GitEventStore(repo_path, snapshot_every=args.snapshot_every)
        naive = NaiveJsonlLog(work / "events.jsonl")

        say(f"single appends on an empty log ({args.singles})")
        seqs: dict[str, int] = {}

        def ours_single(stream: str, e: Event) -> None:
            seqs[stream] = store.append(stream, [e], seqs.get(stream, 0))[-1].seq

        singles = shadow_events(args.singles)
        ours = single_appends(ours_single, singles, "single")
        base = single_appends(lambda s, e: naive.append(s, [e]), singles, "single")
        rows.append(("appends/s single, empty log", "ev/s", base, ours, True))

        say(f"building {args.events} events over {args.specialists} specialists")
        batches = make_events(args.events, args.specialists)
        n_events = sum(len(b) for _, b in batches)
        t_ours, _ = timed(lambda: [
            seqs.__setitem__(s, store.append(s, b, seqs.get(s, 0))[-1].seq) for s, b in batches
        ])
        t_naive, _ = timed(lambda: [naive.append(s, b) for s, b in batches])
        rows.append(("appends/s batched (10/batch)", "ev/s", n_events / t_naive,
                     n_events / t_ours, True))
        store.close()

        say(f"single appends on the full log ({args.singles})")
        singles = shadow_events(args.singles)
        singles = shadow_events(args.singles)
        ours = single_appends(ours_single, singles, "single")
        base = single_appends(lambda s, e: naive.append(s, [e]), singles, "single")
        rows.append((f"appends/s single, {store.last_seq('single') and len(store._index.commits)}"
                     " events", "ev/s", base, ours, True))
        store.close()
        total = len(store._index.commits)

        say("git gc")
        subprocess.run(["git", "gc", "-q"], cwd=repo_path, check=True)

        say("replay")
        fresh = GitEventStore(repo_path)
        t_ours, replayed = timed(lambda: sum(1 for _ in fresh.read()))
        t_naive, replayed_naive = timed(lambda: sum(1 for _ in naive.read()))
        assert replayed == replayed_naive == total, (replayed, replayed_naive, total)
        rows.append(("replay (after gc)", "ev/s", total / t_naive, total / t_ours, True))

        say("status: cold (no cache), with snapshots and by the full fold; warm (cached)")
        cache = work / "fleet.pickle"
        shutil.rmtree(repo_path / ".git" / "modelsmith", ignore_errors=True)
        os.environ[snapshot.MODE_ENV] = "off"
        t_cold, fleet = timed(fold, GitEventStore(repo_path), None)
        del os.environ[snapshot.MODE_ENV]
        t_naive_status, naive_fleet = timed(naive.status)
        assert fleet.to_dict()["specialists"] == naive_fleet.to_dict()["specialists"]
        rows.append(("status cold (full fold)", "s", t_naive_status, t_cold, False))

        def cold_status() -> dict:
            shutil.rmtree(work / "cold", ignore_errors=True)
            return fleet_status(GitEventStore(repo_path), work / "cold")

        shutil.rmtree(repo_path / ".git" / "modelsmith", ignore_errors=True)
        t_snap_first, quick = timed(cold_status)
        assert quick["specialists"] == fleet.to_dict()["specialists"], "snapshot fold differs"
        t_snap = median(cold_status)
        rows.append(("status cold (snapshots), first", "s", t_naive_status, t_snap_first, False))
        rows.append(("status cold (snapshots)", "s", t_naive_status, t_snap, False))
        t_fold_snap, state = timed(fold, GitEventStore(repo_path), None)
        assert state.to_dict()["specialists"] == fleet.to_dict()["specialists"]
        rows.append(("fold cold (snapshots; plan's state)", "s", t_naive_status, t_fold_snap,
                     False))
        shutil.rmtree(repo_path / ".git" / "modelsmith", ignore_errors=True)
        t_fold = median(lambda: fold(GitEventStore(repo_path), cache))
        rows.append(("full fold, warm cache", "s", t_naive_status, t_fold, False))
        fleet_status(GitEventStore(repo_path), work / "proj")
        t_warm = median(lambda: fleet_status(GitEventStore(repo_path), work / "proj"))
        rows.append(("status warm (in process)", "s", t_naive_status, t_warm, False))

        say("status through the CLI (process start included): cold, then warm")
        env = dict(os.environ)
        cli = [sys.executable, "-m", "modelsmith", "-C", str(repo_path), "status", "--json"]

        def cli_cold() -> None:
            shutil.rmtree(repo_path / ".git" / "modelsmith", ignore_errors=True)
            subprocess.run(cli, check=True, capture_output=True, env=env)

        t_cli_cold = median(cli_cold, 3)
        rows.append(("status cold, `modelsmith status`", "s", t_naive_status, t_cli_cold, False))
        subprocess.run(cli, check=True, capture_output=True, env=env)  # writes the CLI's cache
        t_cli = median(lambda: subprocess.run(cli, check=True, capture_output=True, env=env))
        t_py = min(
            timed(subprocess.run, [sys.executable, "-c", "pass"])[0] for _ in range(3)
        )
        rows.append(("status warm, `modelsmith status`", "s", t_naive_status, t_cli, False))

        print(f"\nevent log: {total} events over {args.specialists + 1} streams "
              f"(python {sys.version.split()[0]}, pygit2 {pygit2.__version__}, "
              f"libgit2 {pygit2.LIBGIT2_VERSION})")
        print(f"{'metric':<36} {'naive JSONL':>14} {'git store':>14} {'ratio':>9}")
        for metric, unit, b, o, higher in rows:
            ratio = (o / b) if higher else (b / o)
            print(f"{metric:<36} {_fmt(b, unit):>14} {_fmt(o, unit):>14} {ratio:>8.2f}x")
        print("ratio > 1 means the git store is better (faster or higher throughput).")
        print(f"python start-up alone: {t_py:.3f} s (part of the CLI figure)")
        print(f"snapshots: one every {args.snapshot_every} events; cold status with them "
              f"{t_snap:.3f} s vs the full fold {t_cold:.3f} s ({t_cold / t_snap:.1f}x); "
              f"machine: {os.cpu_count()} CPUs, {_cpu()}")
        compare_gto(work, args, batches, t_snap, t_cli_cold, say)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
