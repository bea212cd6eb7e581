"""Checks across files: names are unique per kind and every reference names something defined.

A specialist names a model profile and a hyper-parameter profile (clusters.json), an eval
suite and a promotion policy; its suite's expected answers must be among its labels; the
routing table routes to specialists, and none of its rules may be shadowed by an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable

from .clusters import ClustersConfig
from .context import LoadContext
from .documents import ParsedDocument
from .models import LabelOutput, RoutingTable, Specialist
from .routing import shadowed
from .suites import LoadedSuite
from .validation import format_field_path
from .yamlio import path_line_col


def unique_names(
    ctx: LoadContext, docs: list[ParsedDocument], kind: str
) -> dict[str, ParsedDocument]:
    """Declared name -> first document of ``kind`` with it; later ones are issues."""
    by_name: dict[str, ParsedDocument] = {}
    for doc in docs:
        if doc.kind != kind or doc.name is None:
            continue
        first = by_name.get(doc.name)
        if first is not None:
            line, col = path_line_col(doc.tree, "metadata", "name")
            first_line, _ = path_line_col(first.tree, "metadata", "name")
            ctx.add(
                doc.file,
                line,
                col,
                "metadata.name",
                f"duplicate {kind} '{doc.name}' (also defined at {first.file}:{first_line})",
            )
            continue
        by_name[doc.name] = doc
    return by_name


def check_references(
    ctx: LoadContext,
    specialists: dict[str, ParsedDocument],
    suite_docs: dict[str, ParsedDocument],
    suites: dict[str, LoadedSuite],
    policies: dict[str, ParsedDocument],
    routing: ParsedDocument | None,
    clusters: ClustersConfig | None,
) -> None:
    """Report every broken reference between the documents that loaded (see the module
    docstring)."""
    for doc in specialists.values():
        if isinstance(doc.model, Specialist):
            _check_specialist(ctx, doc, doc.model, suite_docs, suites, policies, clusters)
    if routing is not None and isinstance(routing.model, RoutingTable):
        _check_routing(ctx, routing, routing.model, specialists)


def _check_ref(
    ctx: LoadContext,
    doc: ParsedDocument,
    path: tuple[str | int, ...],
    value: str,
    known: Iterable[str],
    what: str,
    kind: str,
) -> None:
    """``value`` (at ``path`` in ``doc``) must be one of ``known``; an unknown name is not
    reported when some document of ``kind`` could not be read (it is probably that one)."""
    names = sorted(known)
    if value in names or kind in ctx.incomplete:
        return
    line, col = path_line_col(doc.tree, *path)
    listing = ", ".join(names) if names else "none defined"
    ctx.add(
        doc.file, line, col, format_field_path(path), f"unknown {what} '{value}' (known: {listing})"
    )


def _check_specialist(
    ctx: LoadContext,
    doc: ParsedDocument,
    specialist: Specialist,
    suite_docs: dict[str, ParsedDocument],
    suites: dict[str, LoadedSuite],
    policies: dict[str, ParsedDocument],
    clusters: ClustersConfig | None,
) -> None:
    spec = specialist.spec
    if clusters is not None:
        _check_ref(ctx, doc, ("spec", "base"), spec.base, clusters.models, "model profile", "")
        _check_ref(
            ctx,
            doc,
            ("spec", "training", "profile"),
            spec.training.profile,
            clusters.profiles,
            "hyper-parameter profile",
            "",
        )
    _check_ref(ctx, doc, ("spec", "evals"), spec.evals, suite_docs, "eval suite", "EvalSuite")
    _check_ref(
        ctx,
        doc,
        ("spec", "policy"),
        spec.policy,
        policies,
        "promotion policy",
        "PromotionPolicy",
    )
    loaded = suites.get(spec.evals)
    if loaded is not None and isinstance(spec.task.output, LabelOutput):
        _check_expected_labels(ctx, doc.name, spec.task.output.labels, loaded)


def _check_expected_labels(
    ctx: LoadContext, specialist: str | None, labels: list[str], loaded: LoadedSuite
) -> None:
    """A label specialist's suite may only expect one of its labels."""
    for scenario in loaded.scenarios:
        if not isinstance(scenario.expected, str) or scenario.expected not in labels:
            file, line = loaded.scenario_sources[scenario.id]
            ctx.add(
                file,
                line,
                None,
                "expected",
                f"expected {scenario.expected!r} is not a label of specialist "
                f"'{specialist}' ({', '.join(labels)})",
            )


def _check_routing(
    ctx: LoadContext,
    routing: ParsedDocument,
    table: RoutingTable,
    specialists: dict[str, ParsedDocument],
) -> None:
    rules = table.spec.rules
    for index, rule in enumerate(rules):
        _check_ref(
            ctx,
            routing,
            ("spec", "rules", index, "route"),
            rule.route,
            specialists,
            "specialist",
            "Specialist",
        )
    for later, earlier in shadowed(rules):
        line, col = path_line_col(routing.tree, "spec", "rules", later)
        ctx.add(
            routing.file,
            line,
            col,
            f"spec.rules[{later}]",
            f"rule '{rules[later].name}' can never match: rule "
            f"'{rules[earlier].name}' before it matches every request it would",
        )
    if table.spec.default is not None:
        _check_ref(
            ctx,
            routing,
            ("spec", "default"),
            table.spec.default,
            specialists,
            "specialist",
            "Specialist",
        )
