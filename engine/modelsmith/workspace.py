"""A team's repository as the engine sees it: the desired state in files, the actual state
in the event log. This is where the CLI's defaults are wired; services take the pieces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.errors import WorkspaceError as WorkspaceError

if TYPE_CHECKING:
    from modelsmith.artifacts.registry import CandidateModel, ModelRegistry
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.projection import FleetState
    from modelsmith.specs import Repository


_EMPTY_ROW: dict[str, Any] = {
    "production": None, "canary": None, "shadow": None, "candidates": 0,
    "latest_candidate": None, "events": 0,
}


@dataclass
class Workspace:
    root: Path
    _store: GitEventStore | None = None

    @classmethod
    def find(cls, start: str | Path = ".") -> Workspace:
        """The repository containing ``start`` (its work tree root), or ``start`` itself."""
        import pygit2

        start = Path(start).resolve()
        if not start.exists():
            raise WorkspaceError(f"{start} does not exist")
        found = pygit2.discover_repository(str(start))
        if found is None:
            return cls(start)
        repo = pygit2.Repository(found)
        return cls(Path(repo.workdir).resolve() if repo.workdir else start)

    @property
    def store(self) -> GitEventStore:
        if self._store is None:
            import pygit2

            from modelsmith.events.gitstore import GitEventStore

            if pygit2.discover_repository(str(self.root)) is None:
                raise WorkspaceError(
                    f"{self.root} is not a git repository: the event log lives on its "
                    "branch modelsmith/events (run `git init` first)"
                )
            self._store = GitEventStore(self.root)
        return self._store

    @property
    def cache_dir(self) -> Path:
        """Projection caches: under the git directory, per events ref, never committed."""
        store = self.store
        return store.cache_dir / "projections" / store.ref.replace("/", "_")

    def fleet(self) -> FleetState:
        """The log folded to fleet state, cached by tip."""
        from modelsmith.events.projection import fold

        return fold(self.store, self.cache_dir / "fleet.pickle")

    def registry(self, repo: Repository, say: Any = lambda _m: None) -> ModelRegistry:
        """The team's models: base profiles and the log's candidates (weights pulled from
        the DVC remote when the work tree lacks them)."""
        from modelsmith.artifacts.registry import ModelRegistry

        def pull(path: Path) -> None:
            from modelsmith.artifacts.dvc import ArtifactStore

            say(f"pulling {path.name}'s weights from the DVC remote ...")
            ArtifactStore(self.root).pull([path])

        def candidates(specialist: str) -> dict[str, Any]:
            state = self.fleet().specialists.get(specialist)
            return state.candidates if state else {}

        return ModelRegistry(self.root, repo.clusters, candidates, pull)

    def candidate(self, repo: Repository, specialist: str, version: str,
                  say: Any = lambda _m: None) -> CandidateModel:
        """A registered candidate's weights and the base profile it is prompted as."""
        return self.registry(repo, say).candidate(specialist, version)

    def weights_path(self, repo: Repository, specialist: str, ref: str,
                     say: Any = lambda _m: None) -> Path:
        """The local weights folder of ``ref`` (a version, a profile or a folder)."""
        return self.registry(repo, say).weights_path(specialist, ref)

    def fleet_status(self) -> dict[str, Any]:
        """One row per specialist with events: what `status` shows."""
        from modelsmith.events.projection import fleet_status

        return fleet_status(self.store, self.cache_dir)

    def overview(self) -> dict[str, Any]:
        """What `status` shows: each specialist's actual stages (from the log) beside the
        desired ``release`` (from its YAML, when the specs load cleanly)."""
        fleet = self.fleet_status()
        desired, note = self._desired_releases()
        actual = {row["name"]: row for row in fleet["specialists"]}
        rows = []
        for name in sorted(set(actual) | set(desired)):
            row = dict(actual.get(name) or _EMPTY_ROW, name=name)
            row["desired"] = desired.get(name)
            rows.append(row)
        return {"tip": fleet["tip"], "events": fleet["events"], "specialists": rows,
                "specs_error": note}

    def overview_at(self, when: str) -> dict[str, Any]:
        """The fleet as it was at ``when``: an ISO date or time (UTC when no zone is
        given), or a git revision (a commit of the work tree or of the event log) whose
        commit time is taken. Only events recorded by then are folded."""
        from modelsmith.events.projection import FleetState

        cutoff, position = self._instant(when)
        state = FleetState()
        for event in self.store.read():
            if (event.position or 0) <= position if position is not None \
                    else event.at <= cutoff:
                state.apply(event)
        summary = state.to_dict()
        return {"at": cutoff.isoformat(), "events": summary["events"],
                "specialists": summary["specialists"]}

    def _instant(self, when: str) -> tuple[Any, int | None]:
        """(time, log position): a commit of the event log is a position in it; any other
        revision counts up to the end of its commit's second."""
        from datetime import UTC, datetime, timedelta

        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            moment = None
        if moment is not None:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None
        import pygit2

        from modelsmith.events.gitstore import EVENTS_REF

        repo = self.store.repo  # the work tree's repository, which holds the log
        try:
            commit = repo.revparse_single(when).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise WorkspaceError(f"--at {when!r} is neither a date/time (2026-11-20 or "
                                 "2026-11-20T14:05:00) nor a git revision here") from None
        moment = datetime.fromtimestamp(commit.commit_time, UTC)
        log = repo.references.get(EVENTS_REF)
        if log is not None and (log.target == commit.id
                                or repo.descendant_of(log.target, commit.id)):
            position = sum(1 for _ in repo.walk(commit.id, pygit2.GIT_SORT_TOPOLOGICAL))
            return moment, position
        return moment + timedelta(seconds=1), None

    def _desired_releases(self) -> tuple[dict[str, dict[str, str | None]], str | None]:
        if not (self.root / "specialists").is_dir():
            return {}, None
        from modelsmith.specs import SpecError

        try:
            repo = self.specs()
        except SpecError as exc:
            return {}, (f"specs have {len(exc.issues)} errors (run `modelsmith validate`); "
                        "desired releases not shown")
        out = {}
        for name, spec in repo.specialists.items():
            rel = spec.release
            out[name] = {
                "production": rel.production,
                "canary": rel.canary.version if rel.canary else None,
                "shadow": rel.shadow,
            }
        return out, None

    def specs(self) -> Repository:
        from modelsmith.specs import load_repository

        return load_repository(self.root)

    def head_commit(self) -> str | None:
        """The commit the work tree is at (recorded as an event's cause), if any."""
        import pygit2

        found = pygit2.discover_repository(str(self.root))
        if found is None:
            return None
        repo = pygit2.Repository(found)
        return None if repo.head_is_unborn else str(repo.head.target)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
