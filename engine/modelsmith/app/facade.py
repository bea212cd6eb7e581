"""The application façade: one object per team repository, one method per use case.

``Modelsmith.open(path)`` wires the embedded defaults around a team's repository: the
specs in its files, the event log on its branch ``modelsmith/events``, DVC for data and
weights, the model registry, the forge its proposals go to, the inference backends and the
host pool. The CLI parses, calls one method here and renders; a team scripts against the
same methods::

    from modelsmith import Modelsmith

    app = Modelsmith.open(".")
    run = app.evaluate("rtb-quality", model="tiny-test", limit=8, record=False)
    print(run.report.composite, app.status()["specialists"])

Nothing below this module receives it: services get the parts they use (a store, a
registry, a backend factory...), typed. Imports of heavy parts happen inside the methods
that need them, so opening a repository and reading its status stays light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modelsmith.errors import WorkspaceError

if TYPE_CHECKING:
    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.artifacts.registry import CandidateModel, ModelRegistry
    from modelsmith.evaluation.service import Comparison, EvalOutcome
    from modelsmith.events.gitstore import GitEventStore
    from modelsmith.events.projection import Assignment, FleetState
    from modelsmith.events.types import Event
    from modelsmith.events.verify import VerifyReport
    from modelsmith.gitops.forge import Forge, Proposal
    from modelsmith.gitops.plan import Action, Gate
    from modelsmith.gitops.reconcile import ReconcileResult
    from modelsmith.gitops.sync import CatchUp, SyncResult
    from modelsmith.inference.base import Backend
    from modelsmith.iterate.loop import LoopOptions, LoopParts, LoopResult
    from modelsmith.iterate.state import IterateState
    from modelsmith.serving.replay import ReplaySummary
    from modelsmith.serving.service import Service
    from modelsmith.specs import Repository
    from modelsmith.training.service import TrainOutcome

Say = Callable[[str], None]
#: ``progress(title)``: a context that yields the ``(done, total)`` callback of one run.
ProgressFactory = Callable[[str], AbstractContextManager[Callable[[int, int], None]]]
BackendFactory = Callable[..., "Backend"]

_EMPTY_ROW: dict[str, Any] = {
    "production": None, "canary": None, "shadow": None, "candidates": 0,
    "latest_candidate": None, "events": 0,
}


def _quiet(_message: str) -> None:
    """The default ``say``: progress messages go nowhere."""


def _watch(progress: ProgressFactory | None,
           title: str) -> AbstractContextManager[Callable[[int, int], None] | None]:
    return progress(title) if progress is not None else nullcontext()


@dataclass
class Evaluation:
    """What ``evaluate`` measured: the outcome (report, event, warnings), the model as named,
    and the target it is held to."""

    outcome: EvalOutcome
    model: str
    target: float

    @property
    def report(self) -> Any:
        return self.outcome.report

    @property
    def meets(self) -> bool:
        return self.report.meets(self.target)


@dataclass
class Rollback:
    event: Event
    proposal: str | None  # where the matching release change was proposed
    warnings: list[str] = field(default_factory=list)


@dataclass
class Reconciliation:
    """One reconcile: the decisions that stand, what waits, the rollback proposals, the
    sync with the remote (``push``) and anything the user should read."""

    result: ReconcileResult
    proposals: dict[str, str | None]
    synced: SyncResult | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "proposals": self.proposals,
                "sync": None if self.synced is None else self.synced.to_dict()}


def _report_url() -> str | None:
    """Where the static report is published (``MODELSMITH_REPORT_URL``), if anywhere."""
    return os.environ.get("MODELSMITH_REPORT_URL", "").strip() or None


def _gate_dict(gate: Gate) -> dict[str, Any]:
    return gate.to_dict()


@dataclass
class OpenProposal:
    """A proposal waiting for review, with the gates ``plan`` would apply to it once it is
    merged (from the event log as it stands); ``note`` says why there are none."""

    proposal: Proposal
    gates: tuple[Gate, ...] = ()
    note: str | None = None
    previous: str | None = None  # what the stage holds now, in the log

    @property
    def ready(self) -> bool:
        """Whether every gate but the approval (which the merge brings) passes today."""
        return bool(self.gates) and all(g.passed for g in self.gates if g.name != "approval")

    def to_dict(self) -> dict[str, Any]:
        return {**self.proposal.to_dict(), "previous": self.previous, "ready": self.ready,
                "note": self.note, "gates": [_gate_dict(g) for g in self.gates]}


@dataclass
class PlanReport:
    """``plan``: the actions reconciling would take, the proposals waiting for review, and
    anything the user should read (a forge that could not be listed)."""

    tip: str | None
    actions: list[Action]
    proposals: list[OpenProposal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # specialist -> the guarded changes holding its promotions (gitops.review.Hold)
    holds: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tip": self.tip, "actions": [a.to_dict() for a in self.actions],
                "proposals": [p.to_dict() for p in self.proposals],
                "holds": self.holds, "warnings": self.warnings}


@dataclass
class Training:
    outcome: TrainOutcome
    teacher: str | None = None  # what the teacher's rewrites came to, when one was asked


class Modelsmith:
    """A team's repository as the engine sees it: desired state in files, actual state in
    the event log, and the parts every use case is wired from.

    ``store``, ``artifacts`` and ``backends`` may be given (tests, other deployments);
    otherwise the embedded defaults are built on first use: the git event store of
    ``root``, DVC in ``root``, and the inference factory.

    The first use of the embedded store brings in ``origin``'s log (``fetch``: whether to
    fetch it first; ``MODELSMITH_NO_FETCH=1`` says no too), so a clone continues the shared
    log: what happened is in ``log_sync``, and each line worth telling goes to ``say``.
    """

    def __init__(self, root: Path, *, store: GitEventStore | None = None,
                 artifacts: ArtifactStore | None = None,
                 backends: BackendFactory | None = None,
                 forges: Callable[[Repository], Forge] | None = None,
                 fetch: bool = True, say: Say = _quiet) -> None:
        self.root = Path(root)
        self._store = store
        self._artifacts = artifacts
        self._backends = backends
        self._forges = forges
        self._fetch = fetch
        self._say = say
        #: What bringing in origin's log found (None until the store is first used).
        self.log_sync: CatchUp | None = None

    # -- wiring -----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path = ".", *, fetch: bool = True,
             say: Say = _quiet) -> Modelsmith:
        """The repository containing ``path`` (its work tree root), or ``path`` itself."""
        import pygit2

        start = Path(path).resolve()
        if not start.exists():
            raise WorkspaceError(f"{start} does not exist")
        found = pygit2.discover_repository(str(start))
        if found is None:
            return cls(start, fetch=fetch, say=say)
        repo = pygit2.Repository(found)
        return cls(Path(repo.workdir).resolve() if repo.workdir else start, fetch=fetch,
                   say=say)

    def __enter__(self) -> Modelsmith:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> GitEventStore:
        """The event log: the branch ``modelsmith/events`` of the repository."""
        if self._store is None:
            import pygit2

            from modelsmith.events.gitstore import GitEventStore

            if pygit2.discover_repository(str(self.root)) is None:
                raise WorkspaceError(
                    f"{self.root} is not a git repository: the event log lives on its "
                    "branch modelsmith/events (run `git init` first)"
                )
            self._catch_up()
            self._store = GitEventStore(self.root)
        return self._store

    def _catch_up(self, remote: str = "origin") -> None:
        """Bring in ``remote``'s log before reading or appending ours (``catch_up``): a
        clone continues the shared log, one behind fast-forwards; never fatal."""
        if self.log_sync is not None:
            return
        from modelsmith.gitops.sync import CatchUp, catch_up, fetch_disabled

        try:
            self.log_sync = catch_up(self.root, remote,
                                     fetch=self._fetch and not fetch_disabled())
        except Exception as exc:  # a broken remote must not stop a command that reads
            self.log_sync = CatchUp("same", offline=str(exc), notes=[
                f"warning: could not bring in {remote}'s event log ({exc}); working from "
                "the local copy"])
        for note in self.log_sync.notes:
            self._say(note)

    @property
    def artifacts(self) -> ArtifactStore:
        """DVC in the work tree: datasets and weights."""
        if self._artifacts is None:
            from modelsmith.artifacts.dvc import ArtifactStore

            self._artifacts = ArtifactStore(self.root)
        return self._artifacts

    @property
    def backends(self) -> BackendFactory:
        """Builds an inference backend from a model reference (``make_backend``)."""
        if self._backends is None:
            from modelsmith.inference import make_backend

            self._backends = make_backend
        return self._backends

    @property
    def cache_dir(self) -> Path:
        """Projection caches: under the git directory, per events ref, never committed."""
        store = self.store
        return store.cache_dir / "projections" / store.ref.replace("/", "_")

    @property
    def fold_cache(self) -> Path:
        return self.cache_dir / "fleet.pickle"

    def specs(self) -> Repository:
        """The declarative files, loaded and validated (raises ``SpecError``)."""
        from modelsmith.specs import load_repository

        return load_repository(self.root)

    def fleet(self) -> FleetState:
        """The log folded to fleet state, cached by tip."""
        from modelsmith.events.projection import fold

        return fold(self.store, self.fold_cache)

    def registry(self, repo: Repository | None = None, say: Say = _quiet) -> ModelRegistry:
        """The team's models: base profiles and the log's candidates (weights pulled from
        the DVC remote when the work tree lacks them)."""
        from modelsmith.artifacts.registry import ModelRegistry

        def pull(path: Path) -> None:
            say(f"pulling {path.name}'s weights from the DVC remote ...")
            self.artifacts.pull([path])

        def candidates(specialist: str) -> dict[str, Any]:
            state = self.fleet().specialists.get(specialist)
            return state.candidates if state else {}

        clusters = (repo or self.specs()).clusters
        return ModelRegistry(self.root, clusters, candidates, pull)

    def candidate(self, repo: Repository, specialist: str, version: str,
                  say: Say = _quiet) -> CandidateModel:
        """A registered candidate's weights and the base profile it is prompted as."""
        return self.registry(repo, say).candidate(specialist, version)

    def head_commit(self) -> str | None:
        """The commit the work tree is at (recorded as an event's cause), if any."""
        import pygit2

        found = pygit2.discover_repository(str(self.root))
        if found is None:
            return None
        repo = pygit2.Repository(found)
        return None if repo.head_is_unborn else str(repo.head.target)

    def forge(self, repo: Repository) -> Forge:
        """Where release changes are proposed and approvals read: GitHub when
        ``MODELSMITH_FORGE=github``, else local git (``forge_for``)."""
        if self._forges is None:
            from modelsmith.gitops.forge import forge_for

            self._forges = forge_for
        return self._forges(repo)

    def review(self, repo: Repository | None = None) -> Any:
        """The review holds of every specialist: guarded changes (the policy's
        ``review.paths``) that came in without an approved merge
        (:func:`modelsmith.gitops.review.review`)."""
        from modelsmith.gitops.forge import ForgeError
        from modelsmith.gitops.review import review

        repo = repo or self.specs()
        try:
            approval = self.forge(repo).change_approval
        except ForgeError:
            approval = None
        return review(self.root, repo, approval)

    def _desired(self, repo: Repository) -> dict[str, Any]:
        """Each specialist's desired state, with its review holds."""
        from modelsmith.gitops.plan import desired_state

        return desired_state(repo, self.review(repo).details())

    def _approvals(self, repo: Repository) -> Any:
        """The approvals of the repository's forge (none outside a git repository)."""
        from modelsmith.gitops.forge import ForgeError

        try:
            return self.forge(repo).approval
        except ForgeError:
            return lambda *_: None

    def _specialist(self, repo: Repository, name: str) -> Any:
        from modelsmith.evaluation.service import specialist_or_error

        return specialist_or_error(repo, name)

    # -- specs ------------------------------------------------------------------------

    @staticmethod
    def validate(root: Path) -> dict[str, int]:
        """Load every declarative file under ``root`` and check that every scenario's
        reference answer scores 1.0 under its rubric; what it holds, by kind (raises
        ``SpecError`` listing every problem)."""
        from modelsmith.evaluation.references import reference_problems
        from modelsmith.specs import SpecError, load_repository

        repo = load_repository(root)
        problems = reference_problems(repo)
        if problems:
            raise SpecError(problems)
        return {
            "specialists": len(repo.specialists),
            "suites": len(repo.suites),
            "scenarios": sum(len(s.scenarios) for s in repo.suites.values()),
            "policies": len(repo.policies),
            "routing_rules": len(repo.routing.spec.rules) if repo.routing else 0,
            "hosts": len(repo.clusters.hosts),
            "models": len(repo.clusters.models),
        }

    @staticmethod
    def schemas(out: Path | None = None) -> Any:
        """JSON Schema of every declarative kind, or the files written into ``out``."""
        from modelsmith.specs import json_schemas, write_schemas

        return json_schemas() if out is None else write_schemas(out)

    @staticmethod
    def init(dest: Path, engine: str | None = None) -> str | None:
        """Scaffold a new Modelsmith repository in ``dest`` from the embedded defaults; its
        workflows install ``engine`` (checked to be pinned) or, by default, the engine
        running now when its git URL and commit are known. Returns the pinned reference
        (None: the repository must name one in ``.github/modelsmith-engine``)."""
        from .engine_pin import check, this_engine
        from .scaffold import embedded_defaults, scaffold

        pinned = check(engine) if engine is not None else this_engine()
        scaffold(embedded_defaults(Path(__file__).resolve().parents[1]), dest, pinned)
        return pinned

    @staticmethod
    def defaults(start: Path) -> Path:
        """The declarative files to fork: the Modelsmith repository at or above ``start``,
        else the copy installed with the package."""
        from .scaffold import embedded_defaults

        return embedded_defaults(start)

    @staticmethod
    def fork(source: Path, dest: Path) -> Modelsmith:
        """A scratch fork of ``source``'s declarative files in ``dest``, committed."""
        from .scaffold import prepare_fork

        prepare_fork(source, dest)
        return Modelsmith(dest)

    # -- the log ----------------------------------------------------------------------

    def status(self, at: str | None = None) -> dict[str, Any]:
        """Each specialist's actual stages (from the log) beside the desired ``release``
        (from its YAML, when the specs load cleanly); with ``at``, the fleet as it was then."""
        if at is not None:
            return self._status_at(at)
        from modelsmith.events.projection import fleet_status

        fleet = fleet_status(self.store, self.cache_dir)
        desired, note = self._desired_releases()
        actual = {row["name"]: row for row in fleet["specialists"]}
        rows = []
        for name in sorted(set(actual) | set(desired)):
            row = dict(actual.get(name) or _EMPTY_ROW, name=name)
            row["desired"] = desired.get(name)
            rows.append(row)
        synced = self.log_sync
        return {"tip": fleet["tip"], "events": fleet["events"], "specialists": rows,
                "specs_error": note,
                # What bringing in origin's log found: created, fast-forwarded, diverged...
                "origin": None if synced is None or synced.state == "no-remote"
                else synced.to_dict()}

    def _status_at(self, when: str) -> dict[str, Any]:
        """The fleet at ``when`` (a time or a git revision): only events recorded by then
        are folded."""
        from modelsmith.events.projection import fold_until

        cutoff, position = self.store.instant(when)
        summary = fold_until(self.store.read(), cutoff, position).to_dict()
        return {"at": cutoff.isoformat(), "events": summary["events"],
                "specialists": summary["specialists"]}

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

    def log(self, specialist: str | None = None, *, limit: int = 50,
            types: Iterable[str] = ()) -> list[Event]:
        """The last ``limit`` events, oldest first (all streams, or one specialist's)."""
        from collections import deque

        wanted = set(types)
        events = self.store.read(specialist) if specialist else self.store.read()
        if wanted:
            events = (e for e in events if e.type in wanted)
        return list(deque(events, maxlen=limit))

    def history(self, specialist: str) -> list[Assignment]:
        """Who held each stage of ``specialist``, and when."""
        state = self.fleet().specialists.get(specialist)
        return state.history if state else []

    def lineage(self, specialist: str, version: str) -> dict[str, Any]:
        """Where a candidate version came from: every input by hash, its evaluations and
        the stages it held."""
        from modelsmith.artifacts.registry import UnknownCandidate

        state = self.fleet().specialists.get(specialist)
        cand = state.candidates.get(version) if state else None
        if state is None or cand is None:
            known = ", ".join(state.candidates) if state and state.candidates else "none"
            raise UnknownCandidate(f"{specialist} has no candidate {version} "
                                   f"(candidates: {known})")
        evals = [{"event_id": r.event_id, "at": r.at.isoformat(), "model": r.model,
                  "suite_hash": r.suite_hash, "composite": r.composite, "heldout": r.heldout,
                  "decision_metric": r.decision_metric, "decision": r.decision}
                 for r in cand.evals]
        stages = [a.to_dict() for a in state.history if a.version == version]
        # The chain back to the pretrained model: the version, its parent, ..., the base.
        chain, at = [version], cand
        while at is not None and at.lineage.base_model in state.candidates \
                and at.lineage.base_model not in chain:
            chain.append(at.lineage.base_model)
            at = state.candidates[at.lineage.base_model]
        if at is not None:
            chain.append(at.lineage.base_model)
        return {"specialist": specialist, "version": version,
                "registered_at": cand.registered_at.isoformat(), "event_id": cand.event_id,
                "lineage": cand.lineage.model_dump(), "chain": chain, "base": chain[-1],
                "evaluations": evals, "stages": stages}

    def verify(self) -> VerifyReport:
        """Walk the event log: linear, seqs contiguous, ids unique, every event valid, and
        signed as the policies' ``signatures`` blocks require."""
        from modelsmith.errors import ModelsmithError

        try:
            policy = self.signature_policy(self.specs())
        except ModelsmithError as exc:  # the log is still checked, signatures required nowhere
            report = self.store.verify()
            report.warnings.append(f"signature rules not read (the specs do not load: "
                                   f"{str(exc).splitlines()[0]})")
            return report
        return self.store.verify(policy)

    def signature_policy(self, repo: Repository) -> Any:
        """Each specialist's writer rule (its policy's ``signatures`` block), and the
        fleet-wide one (:class:`modelsmith.events.signing.SignaturePolicy`)."""
        from modelsmith.events.signing import SignaturePolicy, WriterRule

        return SignaturePolicy.of({name: WriterRule.of(repo.policy_for(spec).spec.signatures)
                                   for name, spec in repo.specialists.items()})

    def _evidence(self, store: Any, repo: Repository) -> Any:
        """The gates' evidence check, with the signature check the policies ask for."""
        from modelsmith.gitops.plan import logged_evidence, logged_signatures

        return logged_evidence(store, repo,
                               logged_signatures(store, self.signature_policy(repo)))

    # -- evaluation -------------------------------------------------------------------

    def evaluate(self, specialist: str, model: str | None = None, *,
                 backend: str | None = None, limit: int | None = None, repeats: int = 1,
                 reducer: str = "mean", temperature: float = 0.0,
                 threads: int | None = None, batch_size: int = 16, dtype: str = "float32",
                 min_composite: float | None = None, record: bool = True,
                 progress: ProgressFactory | None = None,
                 say: Say = _quiet) -> Evaluation:
        """Evaluate ``model`` (default: the specialist's base) on its suite; with
        ``record``, append EvalStarted/EvalCompleted. The target is ``min_composite`` or
        the specialist's. ``progress(title)`` watches the generation once the model is
        loaded."""
        from modelsmith.artifacts.refs import is_version
        from modelsmith.evaluation.judge import BackendJudge
        from modelsmith.evaluation.runner import EvalSettings
        from modelsmith.evaluation.service import evaluate

        repo = self.specs()
        spec = self._specialist(repo, specialist)
        ref = model or spec.spec.base
        version = ref if is_version(ref) else None
        candidate = self.candidate(repo, specialist, version, say) if version else None
        # What the evaluation measured (a gate counts it only for these weights).
        weights = self.artifacts.weights_hash(candidate.path) if candidate and record else None
        settings = EvalSettings(limit=limit, repeats=repeats, reducer=reducer,
                                temperature=temperature)
        say(f"loading {ref} ...")
        loaded = self.backends(str(candidate.path) if candidate else ref, repo.clusters,
                               backend=backend, threads=threads, batch_size=batch_size,
                               repo_root=self.root, dtype=dtype,
                               chat_template=candidate.base.chat_template if candidate
                               else None)
        checks = []
        if version and record:
            from modelsmith.training.watch import reward_hacking_check

            watch = reward_hacking_check(self.store, specialist, version)
            checks = [watch] if watch else []
        # Judge criteria grade with another model, built only if a rubric asks for one.
        judge = BackendJudge(lambda judge_ref: self.backends(judge_ref, repo.clusters,
                                                             repo_root=self.root))
        try:
            with _watch(progress, f"{specialist} on {ref}") as update:
                outcome = evaluate(repo, specialist, loaded, model_ref=ref, version=version,
                                   store=self.store if record else None, settings=settings,
                                   commit=self.head_commit(), progress=update, judge=judge,
                                   checks=checks, weights_hash=weights)
        finally:
            loaded.close()
            judge.close()
        target = min_composite if min_composite is not None else spec.spec.target.composite
        return Evaluation(outcome, ref, target)

    def compare(self, specialist: str, baseline: str, candidate: str, *,
                split: str = "core", resamples: int = 2000) -> Comparison:
        """Paired comparison of two recorded evaluations (event ids or model refs)."""
        from modelsmith.evaluation.service import compare

        return compare(self.store, specialist, baseline, candidate, split=split,
                       n_resamples=resamples)

    # -- training ---------------------------------------------------------------------

    def train(self, specialist: str, *, from_eval: str | None = None,
              method: str | None = None, profile: str | None = None,
              model: str | None = None, steps: int | None = None,
              sft_steps: int | None = None, teacher: str | None = None,
              progress: Callable[[dict], None] | None = None,
              say: Say = _quiet) -> Training:
        """Train a candidate on an evaluation's failures and register it with its lineage."""
        from modelsmith.training.service import train_candidate

        repo = self.specs()
        spec = self._specialist(repo, specialist)
        ref = model or spec.spec.base
        base_path = self.registry(repo, say).weights_path(specialist, ref)
        overrides = {key: value for key, value in (("max_steps", steps),
                                                   ("sft_steps", sft_steps))
                     if value is not None}
        rewriter = None
        if teacher:
            from modelsmith.training.teacher import BackendTeacher

            say(f"loading teacher {teacher} ...")
            rewriter = BackendTeacher(self.backends(teacher, repo.clusters,
                                                    repo_root=self.root))
        try:
            outcome = train_candidate(repo, specialist, store=self.store,
                                      artifacts=self.artifacts, base_path=base_path,
                                      base_ref=ref, from_eval=from_eval, method=method,
                                      profile_name=profile, overrides=overrides,
                                      teacher=rewriter, teacher_ref=teacher,
                                      cause=self.head_commit(), progress=progress, say=say)
        finally:
            if rewriter is not None:
                rewriter.backend.close()
        kept = None
        if rewriter is not None:
            kept = (f"teacher {teacher}: {rewriter.asked - rewriter.dropped} of "
                    f"{rewriter.asked} rewrites kept ({rewriter.dropped} changed a value, "
                    "repeated the input or were missing)")
        return Training(outcome, kept)

    def loop_parts(self, repo: Repository | None = None, say: Say = _quiet) -> LoopParts:
        """What the iterate loop works with, wired from this repository; the loop proposes
        what passes the gates `plan` decides before traffic."""
        from modelsmith.iterate.loop import LoopParts

        repo = repo or self.specs()

        def gates(specialist: str, version: str, stage: str) -> list[Any]:
            from modelsmith.gitops.plan import before_traffic

            return before_traffic(self.gates(specialist, version, stage, repo))

        return LoopParts(root=self.root, repo=repo, store=self.store, fleet=self.fleet,
                         registry=self.registry(repo, say), artifacts=self.artifacts,
                         backends=self.backends, cause=self.head_commit(), gates=gates)

    def gates(self, specialist: str, version: str, stage: str,
              repo: Repository | None = None) -> list[Any]:
        """Every gate of moving ``version`` into ``stage`` as `plan` decides it now, from
        the event log (as if ``release`` asked for it)."""
        from modelsmith.events.projection import SpecialistState
        from modelsmith.gitops.plan import gates_asking

        repo = repo or self.specs()
        state = self.fleet().specialists.get(specialist) or SpecialistState(specialist)
        inputs = self._plan_inputs(repo)
        return gates_asking(specialist, self._desired(repo)[specialist], state, stage, version,
                            inputs["heldout"], inputs["approval"], inputs["evidence"])

    def iterate(self, specialist: str, options: LoopOptions, *,
                emit: Callable[[dict[str, Any]], None] = lambda _e: None,
                progress: Any = None, say: Say = _quiet,
                fail_after: Callable[[str, int], None] | None = None) -> LoopResult:
        """Evaluate -> train on the failures -> re-evaluate until the target holds, the
        budget ends or gains stop; at the target, propose the promotion on the forge. The
        score history plot is written beside the loop's state (``plot_path``)."""
        from modelsmith.iterate.loop import IterateLoop
        from modelsmith.iterate.report import score_svg

        repo = self.specs()
        self._specialist(repo, specialist)

        def open_proposal(version: str, stage: str) -> str | None:
            """The loop's PromotionProposed goes through `propose`: a reviewable change."""
            from modelsmith.gitops.forge import ForgeError

            try:
                proposal, _body, _ready = self.propose(specialist, version, stage)
            except ForgeError as exc:
                say(f"not proposed on a forge: {exc}")
                return None
            return f"{proposal.forge} forge: {proposal.ref}"

        result = IterateLoop(self.loop_parts(repo, say), specialist, options, emit=emit,
                             progress=progress, say=say, fail_after=fail_after,
                             on_proposed=open_proposal).run()
        plot = self.plot_path(specialist)
        plot.write_text(score_svg(result.iterations, result.target,
                                  f"{specialist} · iterate"), encoding="utf-8")
        return result

    def plot_path(self, specialist: str) -> Path:
        from modelsmith.iterate.state import StateFile

        return StateFile(self.root, specialist).folder / "scores.svg"

    def iterate_state(self, specialist: str) -> IterateState | None:
        """Where the loop of ``specialist`` stands (its state.json), or None."""
        from modelsmith.iterate.state import StateFile

        self._specialist(self.specs(), specialist)
        return StateFile(self.root, specialist).load()

    @staticmethod
    def run_job(spec_file: Path, say: Say) -> tuple[Any, dict[str, Any]]:
        """Run a training job spec (what an executor hands a host); its summary."""
        from modelsmith.training.job import TrainJobSpec, run_train_job

        spec = TrainJobSpec.load(spec_file)
        return spec, run_train_job(spec, say=say)

    def repro_set(self, specialist: str, version: str | None) -> dict[str, str]:
        """Name ``version`` of ``specialist`` (None: no version) as what ``dvc repro``
        rebuilds, in params.yaml's ``rebuild``; the map as written. The version must be a
        candidate the log can rebuild."""
        from modelsmith.training.repro import find_candidate, set_rebuild

        self._specialist(self.specs(), specialist)
        if version is not None:
            find_candidate(self.store, specialist, version)
        return set_rebuild(self.root, specialist, version)

    def repro_data(self, specialist: str, version: str, out: Path, say: Say = _quiet) -> Any:
        """Rebuild the dataset ``version`` trained on; fail unless its hash is recorded."""
        from modelsmith.training.repro import rebuild_dataset

        def fetch(path: Path) -> None:
            say(f"pulling {path.name} from the DVC remote ...")
            self.artifacts.pull([path])

        return rebuild_dataset(self.specs(), self.store, specialist, version, out,
                               fetch=fetch)

    def repro_train(self, specialist: str, version: str, dataset: Path, out: Path, *,
                    progress: Callable[[dict], None] | None = None,
                    say: Say = _quiet) -> Any:
        """Train again as ``version`` was trained; compare the weights' hash."""
        import shutil

        from modelsmith.training.repro import retrain

        repo = self.specs()
        registry = self.registry(repo, say)
        if out.exists():
            shutil.rmtree(out)  # DVC removes stage outputs before running; a manual run may not
        return retrain(repo, self.store, specialist, version, dataset, out,
                       base_path=lambda ref: registry.weights_path(specialist, ref),
                       hash_of=self.artifacts.content_hash, progress=progress)

    def repro_eval(self, specialist: str, version: str, model_dir: Path, out: Path, *,
                   threads: int | None = None, batch_size: int = 16,
                   progress: ProgressFactory | None = None,
                   say: Say = _quiet) -> EvalOutcome:
        """Evaluate rebuilt weights as ``version`` is prompted; write the report's numbers
        as DVC metrics in ``out``."""
        from modelsmith.evaluation.service import evaluate
        from modelsmith.training.repro import write_json

        repo = self.specs()
        candidate = self.candidate(repo, specialist, version, say)
        model = self.backends(str(model_dir), repo.clusters, threads=threads,
                              batch_size=batch_size, repo_root=self.root,
                              chat_template=candidate.base.chat_template)
        try:
            with _watch(progress, f"{specialist} on {model_dir}") as update:
                outcome = evaluate(repo, specialist, model, model_ref=str(model_dir),
                                   store=None, progress=update)
        finally:
            model.close()
        report = outcome.report.to_dict()
        # DVC metrics: numbers only, so `dvc metrics diff` compares them.
        low, high = report.get("heldout_ci") or (None, None)
        write_json(out, {key: report.get(key) for key in
                         ("composite", "core", "robustness", "micro", "heldout", "pass_rate")}
                   | {"heldout_ci_low": low, "heldout_ci_high": high})
        return outcome

    # -- gitops -----------------------------------------------------------------------

    def _plan_inputs(self, repo: Repository) -> dict[str, Any]:
        """The lookups every plan decides its gates with: held-out comparisons and evidence
        from the log, approvals from the forge."""
        from modelsmith.gitops.plan import logged_heldout

        return {"heldout": logged_heldout(self.store), "approval": self._approvals(repo),
                "evidence": self._evidence(self.store, repo)}

    def plan(self) -> list[Action]:
        """What reconciling would do, per specialist and stage, with every gate (from the
        event log's evidence only)."""
        from modelsmith.gitops.plan import plan

        repo = self.specs()
        return plan(self._desired(repo), self.fleet(), **self._plan_inputs(repo))

    def plan_report(self) -> PlanReport:
        """:meth:`plan`, and the proposals that wait for review on the forge, each with the
        gates the plan would apply to it once merged."""
        from modelsmith.gitops.plan import desired_state, plan, signed_of, untrusted_holders

        repo = self.specs()
        fleet = self.fleet()
        inputs = self._plan_inputs(repo)
        found = self.review(repo)
        desired = desired_state(repo, found.details())
        report = PlanReport(self.store.tip(), plan(desired, fleet, **inputs))
        report.warnings += found.warnings
        report.warnings += untrusted_holders(fleet, signed_of(inputs["evidence"]))
        report.holds = {name: [h.to_dict() for h in holds]
                        for name, holds in found.holds.items() if holds}
        report.proposals = self._open_proposals(repo, fleet, inputs, report.warnings, desired)
        return report

    def _open_proposals(self, repo: Repository, fleet: FleetState, inputs: dict[str, Any],
                        warnings: list[str],
                        desired: dict[str, Any] | None = None) -> list[OpenProposal]:
        """The forge's open proposals, each with the gates of the step it asks for."""
        from modelsmith.events.projection import SpecialistState
        from modelsmith.gitops.forge import ForgeError
        from modelsmith.gitops.plan import gates_asking

        try:
            waiting = self.forge(repo).open_proposals()
        except ForgeError as exc:
            warnings.append(f"open proposals not listed: {exc}")
            return []
        desired = desired if desired is not None else self._desired(repo)
        found = []
        for proposal in waiting:
            name, stage_name, version = proposal.specialist, proposal.stage, proposal.version
            want = desired.get(name or "")
            stage = next((s for s in want.policy.stages if s.name == stage_name),
                         None) if want is not None else None
            if want is None or stage is None:
                why = (f"no specialist {name!r} in this repository" if want is None
                       else f"{name}'s policy has no stage {stage_name}")
                found.append(OpenProposal(proposal, note=why))
                continue
            state = fleet.specialists.get(name) or SpecialistState(name)
            held = state.holder(stage.name)
            previous = held.version if held is not None else None
            if version is None:
                found.append(OpenProposal(proposal, note=(
                    f"empties {stage.name}: reconcile demotes {previous}" if previous
                    else f"empties {stage.name}, which holds nothing"), previous=previous))
                continue
            if previous == version:
                found.append(OpenProposal(proposal, note=(
                    f"the event log already has {version} in {stage.name}: merging makes "
                    "release match it"), previous=previous))
                continue
            gates = gates_asking(name, want, state, stage.name, version, inputs["heldout"],
                                 inputs["approval"], inputs["evidence"])
            found.append(OpenProposal(proposal, tuple(gates), previous=previous))
        return found

    def sync(self, remote: str = "origin") -> SyncResult:
        """Share the event log with ``remote`` and nothing else: fetch, fast-forward or
        replay the local-only events onto its tip, push (never a force-push). A decision
        that no longer holds on the shared log is dropped (``reconcile`` decides again)."""
        from modelsmith.gitops.sync import CatchUp, sync

        if self.log_sync is None:
            self.log_sync = CatchUp("same")  # sync fetches itself
        _ = self.store  # a clear error outside a git repository
        return sync(self.root, remote)

    def propose(self, specialist: str, version: str, stage: str, *,
                traffic: float | None = None,
                report_url: str | None = None) -> tuple[Any, str, bool]:
        """Open the release change on the forge with its evidence: (proposal, body, whether
        every gate but the approval passes today). The body links to the static report's
        pages at ``report_url`` (default ``MODELSMITH_REPORT_URL``) when there is one."""
        from modelsmith.gitops.plan import logged_heldout
        from modelsmith.gitops.propose import propose

        repo = self.specs()
        self._specialist(repo, specialist)
        return propose(self.forge(repo), repo, self.fleet(), specialist, stage, version,
                       traffic=traffic,
                       heldout=logged_heldout(self.store),
                       sound=self._evidence(self.store, repo),
                       holds=self.review(repo).details(),
                       report_url=report_url or _report_url())

    def _propose_rollback(self, repo: Repository, specialist: str, stage: str,
                          version: str | None, event: Event,
                          warnings: list[str]) -> str | None:
        """Propose the release change that records a rollback; where it is, or None."""
        from modelsmith.gitops.forge import ForgeError
        from modelsmith.gitops.propose import propose

        try:
            proposal, _body, _ready = propose(self.forge(repo), repo, self.fleet(), specialist,
                                              stage, version, rolled_back=event,
                                              report_url=_report_url())
        except ForgeError as exc:
            warnings.append(f"release not proposed: {exc}")
            return None
        return f"{proposal.forge} forge: {proposal.ref}"

    def rollback(self, specialist: str, stage: str = "production", *, to: str | None = None,
                 reason: str = "by hand") -> Rollback:
        """Roll a stage back now (RolledBack) and propose the change that makes
        ``release`` match."""
        from modelsmith.gitops.reconcile import manual_rollback

        event = manual_rollback(self.store, specialist, stage, to=to, reason=reason,
                                cause=self.head_commit(), cache=self.fold_cache)
        warnings: list[str] = []
        where = self._propose_rollback(self.specs(), specialist, stage,
                                       event.data["to_version"], event, warnings)
        return Rollback(event, where, warnings)

    def reconcile(self, *, push: bool = False, remote: str = "origin",
                  evaluate: bool = False,
                  on_evaluate: Callable[[str, str], None] | None = None) -> Reconciliation:
        """Apply the plan: append Promoted, RolledBack and PromotionRejected events. With
        ``evaluate``, the evaluations the plan waits for run first (``on_evaluate(specialist,
        version)`` runs each; default :meth:`evaluate`); with ``push``, decide on the
        shared log and push it."""
        from modelsmith.gitops.plan import logged_heldout
        from modelsmith.gitops.reconcile import reconcile

        repo = self.specs()
        desired = self._desired(repo)
        if self.signature_policy(repo).required and self.store.signer is None:
            from modelsmith.events.signing import KEY_ENV

            raise WorkspaceError(f"a policy requires signed events, and no signing key is "
                                 f"configured: set {KEY_ENV} to the reconciler's key (see "
                                 "README, Signed events)")

        def apply(store: Any) -> ReconcileResult:
            return reconcile(store, desired, cause=self.head_commit(),
                             heldout=logged_heldout(store), approval=self._approvals(repo),
                             evidence=self._evidence(store, repo), cache=self.fold_cache)

        if push:
            from modelsmith.gitops.sync import CatchUp, sync

            first = sync(self.root, remote)  # decide on the shared log, not a stale copy
            if self.log_sync is None:
                self.log_sync = CatchUp("same")  # the sync just fetched: no second fetch
        result = apply(self.store)
        if evaluate and result.pending:
            run = on_evaluate or (lambda name, version: self.evaluate(name, version))
            for specialist, version in sorted({(a.specialist, v) for a in result.pending
                                               for v in (a.needs or (a.version,))}):
                run(specialist, version)
            earlier = result.applied
            result = apply(self.store)
            result.applied = earlier + result.applied
        synced = None
        if push:
            from modelsmith.gitops.sync import keep_what_stands, sync

            synced = sync(self.root, remote, replan=apply)
            keep_what_stands(result, synced)
            synced = synced.after(first)  # what was pushed before deciding counts too
        warnings: list[str] = []
        proposals = {event.id: self._propose_rollback(repo, action.specialist, action.stage,
                                                      action.version, event, warnings)
                     for action, event in result.applied if action.kind == "rollback"}
        return Reconciliation(result, proposals, synced, warnings)

    def watch(self) -> Iterator[str]:
        """Why to reconcile again: the declarative files changed or a commit landed."""
        from modelsmith.gitops.watch import changes

        return changes(self.root)

    # -- serving ----------------------------------------------------------------------

    def router(self) -> Any:
        """The deterministic router compiled from policies/routing.yaml."""
        from modelsmith.serving.router import Router

        return Router.from_table(self.specs().routing)

    def package(self, specialist: str, version: str, out: Path) -> dict[str, Any]:
        """Write ``version`` as a serving artifact in ``out``; its manifest."""
        from modelsmith.serving.package import package

        repo = self.specs()
        return package(repo, self.fleet, self.registry(repo), self.artifacts, specialist,
                       version, out)

    def service(self, **options: Any) -> Service:
        """The serving service (versions from the log's split, batching, metrics); the
        options are :class:`~modelsmith.serving.service.Service`'s."""
        from modelsmith.serving.service import Service

        repo = self.specs()
        return Service(repo, self.store, self.registry(repo), **options)

    def server(self, host: str, port: int, *, token: str | None = None,
               limits: dict[str, Any] | None = None, **options: Any) -> Any:
        """The OpenAI-compatible HTTP server over :meth:`service`, bound, not yet serving
        (``start`` serves on a thread, ``stop`` drains it); ``limits`` are
        :func:`~modelsmith.serving.http.make_server`'s (``read_timeout``,
        ``max_connections``, ``backlog``, ``max_body``, ``keep_alive``, ``access_log``)."""
        from modelsmith.serving.http import make_server

        return make_server(self.service(**options), host, port, token=token,
                           **(limits or {}))

    def replay(self, source: str | Path | IO[bytes] | None = None, *, url: str,
               suite: str | None = None, split: str = "core", model: str | None = None,
               rate: float | None = None, concurrency: int = 4, limit: int | None = None,
               feedback: str | float = "line", feedback_stage: str | None = None,
               token: str | None = None, timeout_s: float = 120.0, name: str | None = None,
               progress: ProgressFactory | None = None) -> ReplaySummary:
        """Send requests through the ``modelsmith serve`` at ``url``: the JSONL ``source``
        (a path, or a binary stream called ``name``), or the ``split`` of ``suite``'s
        scenarios (that specialist's eval suite). Everything is checked first
        (:class:`~modelsmith.serving.replay.ReplayInputError` lists every problem, nothing
        sent); then ``concurrency`` workers send at most ``rate`` requests/s and the
        feedback ``feedback`` says (``line``, ``none``, ``reference`` or a number),
        only for answers ``feedback_stage`` served if given. The summary, also when the
        server went away mid-run."""
        from modelsmith.errors import ModelsmithError
        from modelsmith.serving import replay as replaying

        if (source is None) == (suite is None):
            raise replaying.ReplayInputError([replaying.ReplayIssue(
                "replay", None, None, "give a request FILE or --suite SPECIALIST (one)")])
        replaying.check_options(concurrency, rate, feedback)
        client = replaying.Client(url, token=token, timeout_s=timeout_s)
        repo = None
        issues: list[Any] = []
        if suite is not None:
            repo = self.specs()
            requests = replaying.suite_requests(repo, suite, split, model=model)
        elif isinstance(source, str | Path):
            label = name or str(source)
            try:
                with open(source, "rb") as stream:
                    requests, issues = replaying.read_requests(stream, label, model=model)
            except OSError as exc:
                raise replaying.ReplayInputError([replaying.ReplayIssue(
                    label, None, None, f"cannot read it: {exc.strerror or exc}")]) from None
        else:
            requests, issues = replaying.read_requests(source, name or "<stdin>",
                                                       model=model)
        if replaying.feedback_mode(feedback) == "reference" and repo is None:
            try:  # the suite's scorer when this is the served repository; else text match
                repo = self.specs()
            except ModelsmithError:
                repo = None
        total = min(len(requests), limit) if limit else len(requests)
        with _watch(progress, f"replaying {total} requests") as update:
            return replaying.replay(requests, client, limit=limit, concurrency=concurrency,
                                    rate=rate, feedback=feedback,
                                    feedback_stage=feedback_stage,
                                    check=replaying.ReferenceCheck(repo), issues=issues,
                                    model=model, progress=update)

    def mcp_server(self) -> tuple[Any, Service]:
        """The stdio MCP server over :meth:`service`, and the service to close after."""
        from modelsmith.serving.mcp_server import build

        service = self.service()
        return build(service, self.fleet), service

    # -- the dashboard and the static report -------------------------------------------

    def dashboard(self, *, report_url: str | None = None) -> Any:
        """What the dashboard's pages read (:class:`modelsmith.ui.source.Source`): the log,
        this repository's status table and its plan with the open proposals."""
        from modelsmith.specs import SpecError
        from modelsmith.ui.source import Source

        def plan() -> dict[str, Any]:
            return self.plan_report().to_dict()

        def targets() -> dict[str, float]:
            try:
                repo = self.specs()
            except SpecError:  # the pages show no target rather than fail
                return {}
            return {name: s.spec.target.composite for name, s in repo.specialists.items()}

        return Source(self.store, cache_dir=self.cache_dir, status=self.status, plan=plan,
                      title=f"Modelsmith · {self.root.resolve().name}",
                      report_url=report_url or _report_url(), targets=targets)

    def ui_server(self, host: str, port: int, *, token: str | None = None,
                  limits: dict[str, Any] | None = None) -> Any:
        """The read-only dashboard over :meth:`dashboard`, on the HTTP server ``serve``
        runs on (the same limits), bound, not yet serving."""
        from modelsmith.serving.http import make_asgi_server
        from modelsmith.ui.site import build_app

        return make_asgi_server(build_app(self.dashboard(), token=token), host, port,
                                **(limits or {}))

    def write_report(self, out: Path, *, say: Say = _quiet) -> Any:
        """The dashboard's pages as a static site in ``out`` (relative links)."""
        from modelsmith.ui.report import write_report

        return write_report(self.dashboard(), out, say=say)

    # -- onboarding -------------------------------------------------------------------

    def doctor(self, *, model: str | None = None, with_model: bool = True,
               specialist: str | None = None) -> Iterator[Any]:
        """Onboarding checks, one at a time as they finish."""
        from .doctor import run_checks

        return run_checks(self.root, model=model, with_model=with_model,
                          specialist=specialist)

    # -- pull request reports -----------------------------------------------------------

    def pr_report(self, base: str, *, limit: int | None = None, backend: str | None = None,
                  threads: int | None = None, batch_size: int = 16, dtype: str = "float32",
                  say: Say = _quiet) -> Any:
        """What the change between ``base`` (a git revision) and the work tree does to
        the deployed versions (or the base model) of every specialist whose suite, task
        prompt or policy it touches: each evaluated on both suites and paired, nothing
        recorded (:mod:`.pr_report`)."""
        from .pr_report import build

        return build(self, base, limit=limit, backend=backend, threads=threads,
                     batch_size=batch_size, dtype=dtype, say=say)
