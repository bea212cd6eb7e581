"""Load one declarative file (or one suite folder) on its own, without cross-file checks.

Each loader raises :class:`SpecError` listing every issue of that file; loading a whole
repository, with its references checked, is :func:`~modelsmith.specs.repository.load_repository`.
"""

from __future__ import annotations

from pathlib import Path

from .clusters import ClustersConfig
from .context import LoadContext
from .documents import check_file_name, read_clusters, yaml_documents
from .errors import SpecError, SpecIssue
from .models import PromotionPolicy, RoutingTable, Specialist
from .suites import LoadedSuite, load_suite_dir


def _single(ctx: LoadContext) -> None:
    if ctx.issues:
        raise SpecError(sorted(ctx.issues, key=SpecIssue.sort_key))


def load_specialist_file(path: Path, root: Path | None = None) -> Specialist:
    """Load one ``specialists/<name>.yaml`` (no cross-file checks)."""
    path = Path(path)
    ctx = LoadContext(root)
    docs, _ = yaml_documents(ctx, path, ("Specialist",), single=True, folder="specialists")
    for doc in docs:
        check_file_name(ctx, doc, "Specialist", path.stem, "file")
    _single(ctx)
    if not docs or not isinstance(docs[0].model, Specialist):
        raise SpecError([SpecIssue(ctx.rel(path), None, None, None, "no Specialist loaded")])
    return docs[0].model


def load_suite(directory: Path, root: Path | None = None) -> LoadedSuite:
    """Load one ``evals/<name>/`` folder with its scenarios (no cross-file checks)."""
    directory = Path(directory)
    ctx = LoadContext(root)
    _, loaded = load_suite_dir(ctx, directory)
    _single(ctx)
    if loaded is None:
        raise SpecError([SpecIssue(ctx.rel(directory), None, None, None, "no suite loaded")])
    return loaded


def load_policy_file(path: Path, root: Path | None = None) -> list[PromotionPolicy | RoutingTable]:
    """Load every document of one ``policies/*.yaml`` file."""
    ctx = LoadContext(root)
    docs, _ = yaml_documents(
        ctx, Path(path), ("PromotionPolicy", "RoutingTable"), single=False, folder="policies"
    )
    _single(ctx)
    return [doc.model for doc in docs if isinstance(doc.model, PromotionPolicy | RoutingTable)]


def load_clusters(path: Path, root: Path | None = None) -> ClustersConfig:
    """Load ``config/clusters.json``."""
    ctx = LoadContext(root)
    clusters = read_clusters(ctx, Path(path))
    _single(ctx)
    assert clusters is not None
    return clusters
