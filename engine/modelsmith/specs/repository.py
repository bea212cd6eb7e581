"""The desired state: every declarative file of a repository, loaded and checked together.

Loading never stops at the first problem: each file is parsed and validated on its own, then
references between files are checked, and every issue found is reported together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .clusters import ClustersConfig
from .context import LoadContext
from .documents import ParsedDocument, check_file_name, read_clusters, yaml_documents
from .errors import SpecError, SpecIssue
from .models import PromotionPolicy, RoutingTable, Specialist
from .references import check_references, unique_names
from .suites import SUITE_FILE, LoadedSuite, load_suite_dir
from .yamlio import node_line_col

CLUSTERS_PATH = "config/clusters.json"


@dataclass
class Repository:
    """The desired state, fully validated."""

    root: Path
    specialists: dict[str, Specialist]
    suites: dict[str, LoadedSuite]
    policies: dict[str, PromotionPolicy]
    routing: RoutingTable | None
    clusters: ClustersConfig
    #: (kind, name) -> file the object was read from
    sources: dict[tuple[str, str], Path] = field(default_factory=dict)

    def suite_for(self, specialist: Specialist) -> LoadedSuite:
        return self.suites[specialist.spec.evals]

    def policy_for(self, specialist: Specialist) -> PromotionPolicy:
        return self.policies[specialist.spec.policy]


def load_repository(root: Path) -> Repository:
    """Load every declarative file under ``root``; raises :class:`SpecError` listing every
    issue found."""
    repo, issues = _load(Path(root))
    if repo is None:
        raise SpecError(issues)
    return repo


def validate_repository(root: Path) -> list[SpecIssue]:
    """Every issue in the repository at ``root``, sorted by file and line; ``[]`` when clean.

    Never raises for bad content.
    """
    return _load(Path(root))[1]


@dataclass
class _Declared:
    """The documents of a repository by kind, each name once (as references see them)."""

    specialists: dict[str, ParsedDocument]
    suite_docs: dict[str, ParsedDocument]
    suites: dict[str, LoadedSuite]
    policies: dict[str, ParsedDocument]
    routing: ParsedDocument | None


def _load(root: Path) -> tuple[Repository | None, list[SpecIssue]]:
    root = Path(root)
    ctx = LoadContext(root)
    if not root.is_dir():
        return None, [SpecIssue(str(root), None, None, None, "not a directory")]

    clusters: ClustersConfig | None = None
    with ctx.guard(CLUSTERS_PATH):
        clusters = read_clusters(ctx, root / CLUSTERS_PATH)
    declared = _declare(ctx, root)
    with ctx.guard("."):
        check_references(
            ctx,
            declared.specialists,
            declared.suite_docs,
            declared.suites,
            declared.policies,
            declared.routing,
            clusters,
        )

    issues = sorted(ctx.issues, key=SpecIssue.sort_key)
    if issues or clusters is None:
        return None, issues
    return _repository(root, declared, clusters), []


def _declare(ctx: LoadContext, root: Path) -> _Declared:
    """Load the specialists, suites and policies folders; duplicate names are issues."""
    specialist_docs = _load_specialists(ctx, root)
    suite_docs, suites = _load_suites(ctx, root)
    policy_docs = _load_policies(ctx, root)
    return _Declared(
        specialists=unique_names(ctx, specialist_docs, "Specialist"),
        suite_docs=unique_names(ctx, suite_docs, "EvalSuite"),
        suites=suites,
        policies=unique_names(ctx, policy_docs, "PromotionPolicy"),
        routing=_routing_table(ctx, policy_docs),
    )


def _list_files(directory: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Candidate files of a folder, sorted, hidden ones skipped. Symlinks and special files
    are included so that the reader can refuse them with a clear message."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in suffixes:
            continue
        if path.is_dir():
            continue
        yield path


def _load_specialists(ctx: LoadContext, root: Path) -> list[ParsedDocument]:
    docs: list[ParsedDocument] = []
    for path in _list_files(root / "specialists", (".yaml", ".yml")):
        found: list[ParsedDocument] = []
        with ctx.guard(ctx.rel(path)):
            found, _ = yaml_documents(
                ctx, path, ("Specialist",), single=True, folder="specialists"
            )
            for doc in found:
                check_file_name(ctx, doc, "Specialist", path.stem, "file")
        docs.extend(found)
        if not any(doc.kind == "Specialist" for doc in found):
            # The file is named after its specialist: let references to it resolve.
            docs.append(ParsedDocument(ctx.rel(path), path, None, "Specialist", path.stem, None))
    return docs


def _suite_dirs(root: Path) -> Iterator[Path]:
    evals = root / "evals"
    if not evals.is_dir():
        return
    for entry in sorted(evals.iterdir()):
        if not entry.name.startswith(".") and entry.is_dir():
            yield entry


def _load_suites(
    ctx: LoadContext, root: Path
) -> tuple[list[ParsedDocument], dict[str, LoadedSuite]]:
    """Every suite folder's document and, by name, the suites that loaded (first wins)."""
    docs: list[ParsedDocument] = []
    loaded_suites: dict[str, LoadedSuite] = {}
    for directory in _suite_dirs(root):
        doc, loaded = None, None
        with ctx.guard(ctx.rel(directory / SUITE_FILE)):
            doc, loaded = load_suite_dir(ctx, directory)
        if doc is not None:
            docs.append(doc)
        if loaded is not None and loaded.name not in loaded_suites:
            loaded_suites[loaded.name] = loaded
    return docs, loaded_suites


def _load_policies(ctx: LoadContext, root: Path) -> list[ParsedDocument]:
    docs: list[ParsedDocument] = []
    for path in _list_files(root / "policies", (".yaml", ".yml")):
        found: list[ParsedDocument] = []
        with ctx.guard(ctx.rel(path)):
            found, _ = yaml_documents(
                ctx, path, ("PromotionPolicy", "RoutingTable"), single=False, folder="policies"
            )
        docs.extend(found)
        if not found or any(not doc.kind or doc.name is None for doc in found):
            ctx.incomplete.update(("PromotionPolicy", "RoutingTable"))
    return docs


def _routing_table(ctx: LoadContext, policy_docs: list[ParsedDocument]) -> ParsedDocument | None:
    """The repository's one RoutingTable, if any; every further one is an issue."""
    routing_docs = [d for d in policy_docs if d.kind == "RoutingTable"]
    for extra in routing_docs[1:]:
        line, col = node_line_col(extra.tree)
        first = routing_docs[0]
        ctx.add(
            extra.file,
            line,
            col,
            None,
            f"only one RoutingTable is allowed (another is '{first.name}' in {first.file})",
        )
    return routing_docs[0] if routing_docs else None


def _repository(root: Path, declared: _Declared, clusters: ClustersConfig) -> Repository:
    """The validated models of a repository that loaded without issues."""
    specialists, policies, routing = declared.specialists, declared.policies, declared.routing
    sources: dict[tuple[str, str], Path] = {}
    for doc in [*specialists.values(), *declared.suite_docs.values(), *policies.values()]:
        sources[(doc.kind, doc.name or "")] = doc.path
    if routing is not None:
        sources[("RoutingTable", routing.name or "")] = routing.path
    return Repository(
        root=root,
        specialists={n: d.model for n, d in specialists.items() if isinstance(d.model, Specialist)},
        suites=declared.suites,
        policies={n: d.model for n, d in policies.items() if isinstance(d.model, PromotionPolicy)},
        routing=routing.model if routing and isinstance(routing.model, RoutingTable) else None,
        clusters=clusters,
        sources=sources,
    )
