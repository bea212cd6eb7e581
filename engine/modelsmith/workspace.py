"""A team's repository as the engine sees it: the desired state in files, the actual state
in the event log. This is where the CLI's defaults are wired; services take the pieces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.projection import FleetState
    from modelsmith.specs import Repository


class WorkspaceError(Exception):
    """The folder cannot serve as a Modelsmith repository (with a hint how to fix it)."""


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

    def fleet_status(self) -> dict[str, Any]:
        """One row per specialist with events: what `status` shows."""
        from modelsmith.events.projection import fleet_status

        return fleet_status(self.store, self.cache_dir)

    def specs(self) -> Repository:
        from modelsmith.specs import load_repository

        return load_repository(self.root)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
