"""The evaluation report of a pull request: what its change to a suite, a task prompt or a
policy does to the models that serve.

``modelsmith pr-report --base REF`` finds the specialists the change between ``REF`` and
the work tree touches (their suite's files, the specialist file's ``task``, ``evals`` or
``policy``, the policy governing them), takes the versions holding production, canary and
shadow from the event log (the base model when nothing is deployed yet), and evaluates each
on the work tree's suite and on ``REF``'s (its declarative files written out of git into a
temporary folder), then pairs the two per-scenario results on the scenarios they share
(the paired bootstrap ``modelsmith compare`` uses) and lists the scenarios added, removed
and changed. Nothing is appended to the event log: a report is not evidence (a gate counts
only what ``modelsmith eval`` records on the merged suite).

The Markdown starts with :data:`MARKER`, the line CI finds its one comment by.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelsmith.artifacts.adapters import is_weights_folder
from modelsmith.errors import EXIT_FAILED, EXIT_INVALID, ModelsmithError

if TYPE_CHECKING:
    import pygit2

    from modelsmith.evaluation.stats import PairedComparison
    from modelsmith.specs import Repository

    from .facade import Modelsmith

#: The first line of the Markdown: CI updates the comment that starts with it.
MARKER = "<!-- modelsmith-eval-report -->"
#: The files a Modelsmith repository declares its desired state in (written out of REF).
DECLARATIVE = ("specialists", "evals", "policies", "config")
STAGES = ("production", "canary", "shadow")
SPLITS = ("core", "dev", "heldout")

Say = Callable[[str], None]


class ReportError(ModelsmithError):
    """The report cannot be made (a bad REF, weights that cannot be had)."""

    exit_code = EXIT_FAILED


class BadBaseError(ReportError):
    exit_code = EXIT_INVALID


@dataclass
class SuiteSide:
    """One side of the comparison: a suite as one revision declares it, and a model's
    evaluation on it (with that revision's task prompt)."""

    suite: str
    suite_hash: str
    report: Any = None  # EvalReport
    runs: list[Any] = field(default_factory=list)  # ScenarioRun

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "suite_hash": self.suite_hash,
                "report": self.report.to_dict() if self.report is not None else None}


@dataclass
class ModelReport:
    """One model (a deployed version, or the base model) on both suites."""

    model: str
    stages: list[str]  # the stages it holds; ["base"] when nothing is deployed
    head: SuiteSide
    base: SuiteSide | None  # None: the specialist or its suite is new in the change
    paired: dict[str, PairedComparison] = field(default_factory=dict)  # split -> comparison
    deltas: list[dict[str, Any]] = field(default_factory=list)  # shared core scenarios moved

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "stages": self.stages, "head": self.head.to_dict(),
                "base": self.base.to_dict() if self.base else None,
                "paired": {k: v.to_dict() for k, v in self.paired.items()},
                "deltas": self.deltas}


@dataclass
class SpecialistReport:
    name: str
    why: list[str]  # the changed paths that touch it, each with what it is
    suite_head: str | None
    suite_base: str | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    models: list[ModelReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"specialist": self.name, "why": self.why, "suite_head": self.suite_head,
                "suite_base": self.suite_base,
                "scenarios": {"added": self.added, "removed": self.removed,
                              "changed": self.changed},
                "models": [m.to_dict() for m in self.models], "notes": self.notes}


@dataclass
class PullRequestReport:
    base_ref: str
    base_commit: str
    head_commit: str | None
    changed: list[str]
    specialists: list[SpecialistReport]
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"base": {"ref": self.base_ref, "commit": self.base_commit},
                "head": {"commit": self.head_commit, "work_tree": True},
                "changed": self.changed, "limit": self.limit, "recorded": False,
                "specialists": [s.to_dict() for s in self.specialists]}

    def to_markdown(self) -> str:
        return render_markdown(self)


# -- the change -----------------------------------------------------------------------


def resolve_base(repo: pygit2.Repository, ref: str) -> pygit2.Commit:
    """The commit ``ref`` names, or a clear error."""
    import pygit2

    try:
        obj = repo.revparse_single(ref)
        commit = obj.peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
        raise BadBaseError(
            f"--base {ref!r} names no commit in {repo.workdir} ({exc}); give a branch, tag "
            "or commit, e.g. origin/main (in CI: git fetch origin main first)") from None
    return commit


def changed_paths(repo: pygit2.Repository, base: pygit2.Commit) -> list[str]:
    """What the change brings, as ``git diff --name-only REF...`` plus the work tree: the
    paths that differ between the merge base of ``base`` and HEAD, and the work tree
    (untracked files included, ignored ones not)."""
    import pygit2

    since = base
    if not repo.head_is_unborn:
        found = repo.merge_base(base.id, repo.head.target)
        if found is not None:
            since = repo[found].peel(pygit2.Commit)
    flags = pygit2.enums.DiffOption.INCLUDE_UNTRACKED | \
        pygit2.enums.DiffOption.RECURSE_UNTRACKED_DIRS
    diff = since.tree.diff_to_workdir(flags=flags)
    paths: set[str] = set()
    for patch in diff:
        delta = patch.delta
        paths.update(p for p in (delta.old_file.path, delta.new_file.path) if p)
    return sorted(paths)


def write_declarative(repo: pygit2.Repository, commit: pygit2.Commit, dest: Path) -> Path:
    """The declarative files of ``commit`` (specialists/, evals/, policies/, config/)
    written under ``dest``, as git holds them (no checkout, no work tree touched)."""
    import pygit2

    def walk(tree: pygit2.Tree, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for entry in tree:
            target = folder / entry.name
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                walk(obj, target)
            elif isinstance(obj, pygit2.Blob) and entry.filemode != pygit2.enums.FileMode.LINK:
                target.write_bytes(obj.data)

    for part in DECLARATIVE:
        if part in commit.tree:
            obj = repo[commit.tree[part].id]
            if isinstance(obj, pygit2.Tree):
                walk(obj, dest / part)
    return dest


@contextlib.contextmanager
def base_files(repo: pygit2.Repository, commit: pygit2.Commit) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modelsmith-base-") as tmp:
        yield write_declarative(repo, commit, Path(tmp))


def _rel(path: Path, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return PurePosixPath(Path(path).resolve().relative_to(root.resolve())).as_posix()
    return PurePosixPath(path).as_posix()


def _owned(specs: Repository, name: str) -> dict[str, str]:
    """The files that decide how ``name`` is evaluated in ``specs``: path (or folder
    prefix ending in '/') -> what it is."""
    spec = specs.specialists[name]
    root = specs.root
    owned = {_rel(specs.sources[("Specialist", name)], root): "specialist"}
    policy = specs.sources.get(("PromotionPolicy", spec.spec.policy))
    if policy is not None:
        owned[_rel(policy, root)] = f"policy {spec.spec.policy}"
    suite = specs.suites.get(spec.spec.evals)
    if suite is not None:
        owned[_rel(suite.directory, root).rstrip("/") + "/"] = f"suite {suite.name}"
        source = specs.sources.get(("EvalSuite", suite.name))
        if source is not None:
            owned[_rel(source, root)] = f"suite {suite.name}"
        for file, _line in suite.scenario_sources.values():
            owned.setdefault(PurePosixPath(file).as_posix(), f"scenarios of {suite.name}")
    return owned


def _what(path: str, owned: dict[str, str]) -> str | None:
    if path in owned:
        return owned[path]
    return next((what for prefix, what in owned.items()
                 if prefix.endswith("/") and path.startswith(prefix)), None)


def touched(head: Repository, base: Repository | None,
            changed: list[str]) -> dict[str, list[str]]:
    """Specialist -> why the change touches how it is evaluated: a file of its suite, its
    policy, or its specialist file's ``task``, ``evals``, ``policy`` or ``base`` (a
    ``release``-only edit is a promotion: the plan comment covers it)."""
    out: dict[str, list[str]] = {}
    names = set(head.specialists) | set(base.specialists if base else ())
    for name in sorted(names):
        reasons: list[str] = []
        for specs in (head, base):
            if specs is None or name not in specs.specialists:
                continue
            owned = _owned(specs, name)
            for path in changed:
                what = _what(path, owned)
                if what is None or what == "specialist":
                    continue
                line = f"`{path}` ({what})"
                if line not in reasons:
                    reasons.append(line)
        old = base.specialists.get(name) if base else None
        new = head.specialists.get(name)
        if new is None:
            reasons.append("the specialist is removed")
        elif old is None:
            reasons.append(f"`{_rel(head.sources[('Specialist', name)], head.root)}` "
                           "(new specialist)")
        else:
            fields = [f for f in ("task", "evals", "policy", "base")
                      if getattr(old.spec, f) != getattr(new.spec, f)]
            if fields:
                reasons.append(f"`{_rel(head.sources[('Specialist', name)], head.root)}` "
                               f"(spec.{', spec.'.join(fields)})")
        if reasons:
            out[name] = reasons
    return out


def scenario_changes(head: Any, base: Any) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) scenario ids between two loaded suites (``train`` rows
    included: they are part of the suite)."""
    new = {s.id: s.model_dump(mode="json") for s in head.scenarios}
    old = {s.id: s.model_dump(mode="json") for s in base.scenarios}
    return (sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys()),
            sorted(i for i in new.keys() & old.keys() if new[i] != old[i]))


# -- the report -----------------------------------------------------------------------


def deployed(app: Modelsmith, specialist: str) -> list[tuple[str, list[str]]]:
    """(version, stages) of every version holding a stage of ``specialist``, production
    first."""
    state = app.fleet().specialists.get(specialist)
    held: dict[str, list[str]] = {}
    for stage in STAGES:
        holder = state.holder(stage) if state else None
        if holder is not None:
            held.setdefault(holder.version, []).append(stage)
    return list(held.items())


def build(app: Modelsmith, base_ref: str, *, limit: int | None = None,
          backend: str | None = None, threads: int | None = None, batch_size: int = 16,
          dtype: str = "float32", say: Say = lambda _m: None) -> PullRequestReport:
    """The report of the change between ``base_ref`` and ``app``'s work tree."""
    import pygit2

    from modelsmith.specs import SpecError, load_repository

    found = pygit2.discover_repository(str(app.root))
    if found is None:
        raise BadBaseError(f"{app.root} is not a git repository: a pull request report "
                           "compares the work tree with a commit")
    git = pygit2.Repository(found)
    commit = resolve_base(git, base_ref)
    changed = changed_paths(git, commit)
    head = app.specs()
    with base_files(git, commit) as folder:
        try:
            base = load_repository(folder)
        except SpecError as exc:
            raise ReportError(
                f"the declarative files at {base_ref} ({str(commit.id)[:12]}) do not load, so "
                f"there is no suite to compare with:\n{exc}") from None
        touches = touched(head, base, changed)
        reports = []
        for name, why in touches.items():
            say(f"{name}: {'; '.join(why)}")
            reports.append(_specialist(app, head, base, name, why, limit=limit,
                                       backend=backend, threads=threads,
                                       batch_size=batch_size, dtype=dtype, say=say))
    return PullRequestReport(base_ref, str(commit.id), app.head_commit(), changed, reports,
                             limit)


def _specialist(app: Modelsmith, head: Repository, base: Repository, name: str,
                why: list[str], *, say: Say, **options: Any) -> SpecialistReport:
    new, old = head.specialists.get(name), base.specialists.get(name)
    suite_new = head.suite_for(new) if new else None
    suite_old = base.suites.get(old.spec.evals) if old else None
    report = SpecialistReport(name, why, suite_new.name if suite_new else None,
                              suite_old.name if suite_old else None)
    if new is None:
        report.notes.append("removed by this change: nothing to evaluate")
        return report
    if suite_old is not None:
        report.added, report.removed, report.changed = scenario_changes(suite_new, suite_old)
    else:
        report.notes.append("new in this change: no suite on the base to compare with")
    models = deployed(app, name)
    if not models:
        report.notes.append(f"nothing is deployed yet: evaluating the base model "
                            f"`{new.spec.base}`")
        models = [(new.spec.base, ["base"])]
    for model, stages in models:
        say(f"{name}: evaluating {model} ({', '.join(stages)}) ...")
        report.models.append(_evaluate_model(app, head, base if old else None, name, model,
                                             stages, **options))
    return report


def _weights(app: Modelsmith, head: Repository, name: str, version: str) -> Any:
    """A deployed version's weights, pulled from the DVC remote when missing; a clear
    error naming the version and the remote when they cannot be had."""
    try:
        candidate = app.candidate(head, name, version)
    except ModelsmithError as exc:
        raise ReportError(f"no weights for {name} {version} from the {_remote(app)}: "
                          f"{exc}") from None
    except Exception as exc:  # DVC raises its own errors for an unreachable remote
        raise ReportError(f"no weights for {name} {version} from the {_remote(app)}: "
                          f"{type(exc).__name__}: {exc}") from None
    if not is_weights_folder(candidate.path):
        raise ReportError(f"no weights for {name} {version} from the {_remote(app)}: it did "
                          f"not provide {_rel(candidate.path, app.root)} (run `dvc push` "
                          "where it was trained)")
    return candidate


def _remote(app: Modelsmith) -> str:
    try:
        url = app.artifacts.remote_url()
    except Exception:  # no DVC here at all
        url = None
    return f"DVC remote {url}" if url else \
        "DVC remote: none is configured (dvc remote add -d NAME URL)"


def _evaluate_model(app: Modelsmith, head: Repository, base: Repository | None, name: str,
                    model: str, stages: list[str], *, limit: int | None,
                    backend: str | None, threads: int | None, batch_size: int,
                    dtype: str) -> ModelReport:
    from modelsmith.artifacts.refs import is_version
    from modelsmith.evaluation.composite import compare_runs, per_item_scores
    from modelsmith.evaluation.judge import BackendJudge
    from modelsmith.evaluation.runner import EvalSettings
    from modelsmith.evaluation.service import evaluate, seen_by

    version = model if is_version(model) else None
    candidate = _weights(app, head, name, version) if version else None
    seen = seen_by(app.store, name, version) if version else frozenset()
    loaded = app.backends(str(candidate.path) if candidate else model, head.clusters,
                          backend=backend, threads=threads, batch_size=batch_size,
                          repo_root=app.root, dtype=dtype,
                          chat_template=candidate.base.chat_template if candidate else None)
    judge = BackendJudge(lambda ref: app.backends(ref, head.clusters, repo_root=app.root))
    settings = EvalSettings(limit=limit)

    def side(specs: Repository) -> SuiteSide:
        suite = specs.suite_for(specs.specialists[name])
        outcome = evaluate(specs, name, loaded, model_ref=model, version=version, store=None,
                           settings=settings, judge=judge, seen=seen)
        return SuiteSide(suite.name, suite.suite_hash, outcome.report, outcome.runs)

    try:
        new = side(head)
        old = side(base) if base is not None else None
    finally:
        loaded.close()
        judge.close()
    result = ModelReport(model, stages, new, old)
    if old is not None:
        for split in SPLITS:
            with contextlib.suppress(ValueError):  # no scenario of that split shared
                result.paired[split] = compare_runs(old.runs, new.runs, split=split)
        before, after = per_item_scores(old.runs), per_item_scores(new.runs)
        result.deltas = sorted(
            ({"id": i, "base": before[i], "head": after[i],
              "delta": round(after[i] - before[i], 6)}
             for i in before.keys() & after.keys() if after[i] != before[i]),
            key=lambda d: (-abs(d["delta"]), d["id"]))
    return result


# -- Markdown -------------------------------------------------------------------------


def _f(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _ids(ids: list[str], most: int = 10) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def render_markdown(pr: PullRequestReport) -> str:
    lines = [MARKER, "### modelsmith evaluation report", ""]
    head = pr.head_commit[:12] if pr.head_commit else "the work tree"
    lines.append(f"This pull request ({head}, work tree) against `{pr.base_ref}` "
                 f"({pr.base_commit[:12]}). Evaluated without recording: a report, not "
                 "evidence for a gate.")
    if pr.limit:
        lines.append(f"Only the first {pr.limit} scenarios of each split (`--limit`).")
    if not pr.specialists:
        lines += ["", "No suite, task prompt or policy of a specialist changed: nothing to "
                  "evaluate."]
        return "\n".join(lines) + "\n"
    for sp in pr.specialists:
        lines += ["", f"#### {sp.name}", "", "Changed: " + "; ".join(sp.why) + "."]
        if sp.suite_base is not None and sp.suite_head is not None:
            lines.append(
                f"Suite `{sp.suite_base}` on `{pr.base_ref}` -> `{sp.suite_head}` here: "
                f"{len(sp.added)} scenario(s) added{': ' + _ids(sp.added) if sp.added else ''}"
                f", {len(sp.removed)} removed"
                f"{': ' + _ids(sp.removed) if sp.removed else ''}, {len(sp.changed)} changed"
                f"{': ' + _ids(sp.changed) if sp.changed else ''}.")
        lines += [f"> {note}" for note in sp.notes]
        if not sp.models:
            continue
        lines += ["", f"| model | stage | composite on `{pr.base_ref}`'s suite | composite on "
                  "this pull request's suite | held-out (base -> here) |",
                  "|---|---|---:|---:|---|"]
        for m in sp.models:
            old = m.base.report if m.base else None
            new = m.head.report
            lines.append(
                f"| `{m.model}` | {', '.join(m.stages)} | "
                f"{_f(old.composite) if old else 'new'} | {_f(new.composite)} | "
                f"{_f(old.heldout) if old else '-'} -> {_f(new.heldout)} |")
        for m in sp.models:
            lines += ["", f"##### `{m.model}` ({', '.join(m.stages)})", ""]
            if m.paired:
                lines += ["Paired on the scenarios both suites hold (own inputs; base -> "
                          "here):", "",
                          "| split | n | base | here | difference | 95% CI | wins / losses / "
                          "ties | verdict |", "|---|---:|---:|---:|---:|---|---|---|"]
                for split, c in m.paired.items():
                    lines.append(
                        f"| {split} | {c.n} | {c.mean_a:.3f} | {c.mean_b:.3f} | "
                        f"{c.diff:+.3f} | [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}] | "
                        f"{c.wins} / {c.losses} / {c.ties} | {c.verdict} |")
            elif m.base is not None:
                lines.append("The two suites share no scenario: nothing to pair.")
            if m.deltas:
                lines += ["", f"Core scenarios whose score moved ({len(m.deltas)}): " +
                          ", ".join(f"`{d['id']}` {d['base']:.2f} -> {d['head']:.2f}"
                                    for d in m.deltas[:10]) +
                          (" ..." if len(m.deltas) > 10 else "")]
            lines += ["", "<details><summary>This pull request's suite "
                      f"(`{m.head.suite}` {m.head.suite_hash[:12]})</summary>", "",
                      m.head.report.to_markdown(), "", "</details>"]
            if m.base is not None:
                lines += ["", f"<details><summary>`{pr.base_ref}`'s suite "
                          f"(`{m.base.suite}` {m.base.suite_hash[:12]})</summary>", "",
                          m.base.report.to_markdown(), "", "</details>"]
    return "\n".join(lines) + "\n"
