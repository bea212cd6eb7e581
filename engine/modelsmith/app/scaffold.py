"""The demo: a fork of the embedded defaults in a scratch git repository.

The demo never writes to the repository it is run from: it copies the declarative files
(specialists/, evals/, policies/, config/, dvc.yaml, params.yaml) into a new folder, adds a
``.gitignore`` for machine-local state, makes that a git repository with one commit, and
works there, so its event log is its own. The fork's ``dvc.yaml`` is the root one, which
depends only on those files (the engine's own stage lives in ``engine/dvc.yaml``, never
copied).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pygit2

from modelsmith.errors import WorkspaceError

DEMO_PARTS = ("specialists", "evals", "policies", "config", "dvc.yaml", "params.yaml")


def _holds_defaults(folder: Path) -> bool:
    return (folder / "specialists").is_dir() and (folder / "config" / "clusters.json").is_file()


def embedded_defaults(start: Path) -> Path:
    """The declarative files to fork: the Modelsmith repository at or above ``start``, else
    the copy installed with the package (``modelsmith/defaults``)."""
    for folder in (start, *start.parents):
        if _holds_defaults(folder):
            return folder
    packaged = Path(__file__).resolve().parents[1] / "defaults"
    if _holds_defaults(packaged):
        return packaged
    raise WorkspaceError(
        f"no Modelsmith repository (specialists/ and config/clusters.json) at or above {start}, "
        "and this installation carries no defaults (reinstall modelsmith)"
    )


GITIGNORE = """# machine-local state of the iterate loop, caches, environments
.iterate/
.venv/
__pycache__/
"""


def prepare_fork(source: Path, dest: Path) -> pygit2.Repository:
    """Copy the declarative files of ``source`` into ``dest`` with a ``.gitignore`` and
    commit them."""
    if dest.exists() and any(dest.iterdir()):
        raise WorkspaceError(f"{dest} exists and is not empty; pick another --dir")
    dest.mkdir(parents=True, exist_ok=True)
    for part in DEMO_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, dest / part)
    (dest / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    repo = pygit2.init_repository(str(dest), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("modelsmith demo", "demo@modelsmith.invalid")
    repo.create_commit("HEAD", sig, sig, "Fork of the Modelsmith defaults\n",
                       repo.index.write_tree(), [])
    return repo


def scaffold(source: Path, dest: Path, engine: str | None = None) -> pygit2.Repository:
    """A new repository in the shape a team forks: the declarative files of ``source``
    (an example specialist, its suite, the policies, config/clusters.json, the DVC
    pipeline), the GitHub workflows (CI with the plan comment; the reconciler) with the
    engine they install pinned in ``.github/modelsmith-engine`` (``engine``, a checked
    reference, or none yet), a ``.gitignore`` and an initialised DVC, committed on
    ``main``."""
    from importlib import resources

    from modelsmith.artifacts.dvc import ArtifactStore

    from .engine_pin import write

    repo = prepare_fork(source, dest)
    write(dest, engine)
    workflows = dest / ".github" / "workflows"
    workflows.mkdir(parents=True)
    templates = resources.files("modelsmith.gitops") / "templates"
    for name in ("ci.yml", "reconcile.yml"):
        (workflows / name).write_text(templates.joinpath(name).read_text(encoding="utf-8"),
                                      encoding="utf-8")
    ArtifactStore(dest).ensure_initialised()
    repo.index.read()
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("modelsmith init", "init@modelsmith.invalid")
    repo.create_commit("HEAD", sig, sig, "Modelsmith repository: workflows, DVC\n",
                       repo.index.write_tree(), [repo.head.target])
    return repo
