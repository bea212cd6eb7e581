"""``plan(desired, actual, policies) -> [Action]``: what reconciling would do, and why.

A pure function. *Desired* is each specialist's ``release`` block (its YAML at the
commit being planned) with its target; *actual* is the fleet state the event log folds to
(:mod:`modelsmith.events.projection`); *policies* are the promotion policies. Two lookups
are passed in rather than fetched, so the function stays pure and testable: the paired
held-out comparison of two recorded evaluations (it reads their evidence) and the human
approval a step carries (the forge). Gates are decided from the log's evidence only --
never from files a pull request carries.

Per specialist and stage (in the policy's order, shadow -> canary -> production):

- desired == actual: nothing, unless the rollback rule is breached by the live version's
  observed metrics -> ``rollback`` to the version that held the stage before;
- desired is empty, actual holds a version -> ``demote``;
- desired names another version -> every gate is checked and reported with its numbers:
  ``promote`` when all pass; ``evaluate`` when the version has no evaluation on the current
  suite (the suite changed, or it was never evaluated); otherwise ``reject`` -- unless the
  log already holds that very rejection, so planning twice records it once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelsmith.events.projection import Assignment, FleetState, SpecialistState

ActionKind = Literal["promote", "demote", "rollback", "reject", "evaluate"]


@dataclass(frozen=True)
class Gate:
    name: str  # composite | heldout | suite | order | traffic | floors | approval | version
    passed: bool
    detail: str
    numbers: dict[str, float | int | str | None] = field(default_factory=dict)
    # The events it was decided from (evaluations, the promotion a stage was held by).
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "numbers": self.numbers, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    specialist: str
    stage: str
    version: str | None  # what the stage gets (None: emptied)
    previous: str | None  # what it holds now
    reason: str
    gates: tuple[Gate, ...] = ()
    traffic: float | None = None
    approval: Approval | None = None
    # ``evaluate``: the versions to evaluate on the current suite (the candidate and those
    # before it along its lineage that the composite gate counts).
    needs: tuple[str, ...] = ()
    # ``promote``: a first version's bootstrap step ({rule, evidence, requests}; Promoted).
    bootstrap: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "specialist": self.specialist, "stage": self.stage,
                "version": self.version, "previous": self.previous, "reason": self.reason,
                "traffic": self.traffic, "needs": list(self.needs),
                "bootstrap": None if self.bootstrap is None else dict(self.bootstrap),
                "approval": None if self.approval is None else vars(self.approval),
                "gates": [g.to_dict() for g in self.gates]}


@dataclass(frozen=True)
class Approval:
    """A human gate passed: who merged the change that asks for the step, who approved."""

    forge: str
    ref: str  # PR number or merge commit
    merged_by: str | None
    approvers: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # CODEOWNERS of the file, when the policy names nobody


@dataclass(frozen=True)
class HeldoutResult:
    diff: float  # candidate - baseline, mean per paired held-out scenario
    low: float
    high: float
    n: int
    candidate: float
    baseline: float


@dataclass(frozen=True)
class Desired:
    """One specialist's desired state: its release block and target."""

    release: Mapping[str, str | None]  # stage -> version
    traffic: Mapping[str, float]  # stage -> share (canary)
    target: float
    suite_hash: str
    policy: Any  # modelsmith.specs.models.PolicySpec
    sustained: int = 3  # the specialist's target.sustained (the policy's, when it sets one)
    # Guarded changes that came in without an approved merge (gitops.review): while any
    # stands, the review gate holds every promotion of the specialist.
    holds: tuple[str, ...] = ()


HeldoutFn = Callable[[str, str, str], HeldoutResult | None]  # specialist, cand, baseline eval
ApprovalFn = Callable[[str, str, str], Approval | None]  # specialist, stage, version
#: (specialist, evaluation event id) -> why its evidence does not bear out its numbers.
EvidenceFn = Callable[[str, str], str | None]
#: (specialist, event id) -> why its event's signature may not be trusted: unsigned where
#: the policy requires signatures, a bad signature, a signer not allowed for its type.
SignedFn = Callable[[str, str], str | None]


def _trusted(*_: Any) -> str | None:
    return None


@dataclass(frozen=True)
class SignedEvidence:
    """An :data:`EvidenceFn` that carries the signature check along (:func:`signed_of`), so
    every caller handing ``evidence`` to the gates hands them the signatures too."""

    evidence: EvidenceFn
    signed: SignedFn

    def __call__(self, specialist: str, event_id: str) -> str | None:
        return self.signed(specialist, event_id) or self.evidence(specialist, event_id)


def signed_of(evidence: EvidenceFn) -> SignedFn:
    """The signature check ``evidence`` carries (none: every event is trusted)."""
    return getattr(evidence, "signed", None) or _trusted


def plan(desired: Mapping[str, Desired], actual: FleetState, *,
         heldout: HeldoutFn = lambda *_: None,
         approval: ApprovalFn = lambda *_: None,
         evidence: EvidenceFn = lambda *_: None) -> list[Action]:
    """The actions that make ``actual`` match ``desired`` (see the module docstring)."""
    actions: list[Action] = []
    for name in sorted(desired):
        want = desired[name]
        state = actual.specialists.get(name) or SpecialistState(name)
        for stage in want.policy.stages:
            action = _plan_stage(name, want, state, stage, heldout, approval, evidence)
            if action is not None:
                actions.append(action)
    return actions


def _plan_stage(name: str, want: Desired, state: SpecialistState, stage: Any,
                heldout: HeldoutFn, approval: ApprovalFn,
                evidence: EvidenceFn = lambda *_: None) -> Action | None:
    target = want.release.get(stage.name)
    held = state.holder(stage.name)
    current = held.version if held else None
    if target == current:
        return _rollback(name, want, state, stage, held) if held else None
    if target is None:
        assert current is not None
        if current in want.release.values():
            return None  # it moves to the stage that wants it (a version holds one stage)
        return Action("demote", name, stage.name, None, current,
                      f"release.{stage.name} is empty; {current} leaves {stage.name}")
    if _rollback_stands(state, stage.name, target):
        return None  # release still names what was rolled back: the rollback PR fixes it
    gates = gates_for(name, want, state, stage, target, heldout, approval, evidence)
    traffic = want.traffic.get(stage.name)
    failed = [g for g in gates if not g.passed]
    if not failed:
        ok = next((g for g in gates if g.name == "approval"), None)
        boot = bootstrap_step(want, state, stage, target)
        return Action("promote", name, stage.name, target, current,
                      f"{target} -> {stage.name}: every gate passes"
                      + (f" (bootstrap: {boot['evidence']})" if boot else ""), tuple(gates),
                      traffic, approval(name, stage.name, target) if ok else None,
                      bootstrap=boot)
    unevaluated = counted_evaluations(want, state, target, signed_of(evidence)).unevaluated \
        if target in state.candidates else ()
    if unevaluated and any(g.name in ("suite", "composite") and not g.passed for g in gates):
        return Action("evaluate", name, stage.name, target, current,
                      f"{', '.join(unevaluated)} {'has' if len(unevaluated) == 1 else 'have'} "
                      f"no evaluation on the current suite ({want.suite_hash[:12]}), which "
                      f"the composite gate counts for {target}: evaluate, then plan again",
                      tuple(gates), needs=unevaluated)
    first = failed[0]
    if _already_rejected(state, target, stage.name, first):
        return None
    return Action("reject", name, stage.name, target, current,
                  f"{target} -> {stage.name} rejected by the {first.name} gate: {first.detail}",
                  tuple(gates), traffic)


def _rollback_stands(state: SpecialistState, stage: str, version: str) -> bool:
    """Whether ``version`` was rolled back from ``stage`` (on a metrics breach or by hand;
    a demotion is not a rollback) with no evaluation of it since: new evidence lifts it."""
    ended = [a for a in state.history if a.version == version and a.stage == stage
             and a.rolled_back_for and a.until is not None]
    if not ended:
        return False
    since = ended[-1].until
    candidate = state.candidates.get(version)
    return not (candidate and any(e.at > since for e in candidate.evals))


def _already_rejected(state: SpecialistState, version: str, stage: str, gate: Gate) -> bool:
    """Whether the log's latest decision on this step is this same rejection (nothing
    happened since that could change it)."""
    for rejection in reversed(state.rejections):
        if rejection["version"] == version and rejection["stage"] == stage:
            return rejection["gate"] == gate.name and rejection["reason"] == gate.detail
    return False


def gates_for(name: str, want: Desired, state: SpecialistState, stage: Any, version: str,
              heldout: HeldoutFn, approval: ApprovalFn,
              evidence: EvidenceFn = lambda *_: None) -> list[Gate]:
    """Every gate of moving ``version`` into ``stage``, each with its numbers."""
    policy = want.policy
    candidate = state.candidates.get(version)
    if candidate is None:
        known = ", ".join(state.candidates) or "none"
        return [Gate("version", False, f"{version} is not a registered candidate of {name} "
                                       f"(registered: {known})")]
    signed = signed_of(evidence)
    if (why := signed(name, candidate.event_id)) is not None:
        return [Gate("version", False, f"{version}'s registration (event "
                                       f"{candidate.event_id[:12]}) is not trusted: {why}",
                     {"event_id": candidate.event_id}, (candidate.event_id,))]
    gates: list[Gate] = [_review_gate(want)]
    current = [e for e in candidate.evals if e.suite_hash == want.suite_hash]
    if policy.gates.suite_unchanged or not candidate.evals:
        gates.append(Gate(
            "suite", bool(current),
            f"{len(current)} of {len(candidate.evals)} evaluations of {version} ran on the "
            f"current suite {want.suite_hash[:12]}",
            {"current": len(current), "evaluations": len(candidate.evals)},
            tuple(e.event_id for e in current)))
    counted = counted_evaluations(want, state, version, signed)
    recent = list(counted.records)
    unsound = next(((e, why) for e in recent if (why := evidence(name, e.event_id))), None)
    if unsound is not None:
        gates.append(Gate("composite", False, f"evaluation {unsound[0].event_id} is not "
                                              f"borne out by its evidence: {unsound[1]}",
                          {"needed": counted.need, "target": want.target},
                          (unsound[0].event_id,)))
    else:
        gates.append(_composite_gate(version, counted, want.target))
    gates.append(_overfitting_gate(version, recent, policy.gates.decision.overfit_margin))
    own = [e for e in recent[:1] if e in candidate.evals]
    gates.append(_heldout_gate(name, want, state, version, own, heldout, signed))
    gates += _stage_order_gates(want, state, stage, version, signed)
    boot = bootstrap_step(want, state, stage, version)
    if stage.approval or (boot is not None and boot["rule"] == "approval"):
        gates.append(_approval_gate(name, stage, version, approval))
    return gates


def gates_asking(name: str, want: Desired, state: SpecialistState, stage_name: str,
                 version: str, heldout: HeldoutFn, approval: ApprovalFn,
                 evidence: EvidenceFn = lambda *_: None) -> list[Gate]:
    """Every gate of moving ``version`` into ``stage_name`` as if ``release`` asked for it
    (a proposal merged: the stage names the version, which leaves any other stage)."""
    from dataclasses import replace

    stage = next(s for s in want.policy.stages if s.name == stage_name)
    release = {s: (None if v == version else v) for s, v in want.release.items()}
    merged = replace(want, release={**release, stage_name: version})
    return gates_for(name, merged, state, stage, version, heldout, approval, evidence)


def _live(state: SpecialistState) -> bool:
    return state.holder("production") is not None or state.holder("canary") is not None


def bootstrap_step(want: Desired, state: SpecialistState, stage: Any,
                   version: str) -> dict[str, Any] | None:
    """Whether moving ``version`` into ``stage`` is a first version's bootstrap step --
    nothing holds production or canary, so the stage before had nothing to mirror -- and,
    by the policy's ``bootstrap`` rule, the evidence that stands in for mirrored traffic:
    replayed requests the version answered there, scored against their references
    (``replay``), or an approved change (``approval``). None otherwise."""
    names = [s.name for s in want.policy.stages]
    index = names.index(stage.name)
    mode = want.policy.bootstrap
    if index == 0 or mode == "off" or _live(state):
        return None
    before = want.policy.stages[index - 1].name
    if mode == "approval":
        return {"rule": "approval", "requests": 0,
                "evidence": f"an approved change asking for {version} in {stage.name} stands "
                            f"in for traffic in {before} (nothing in production to mirror)"}
    observed = state.metrics.get(f"{version}@{before}") or {}
    replayed = int(observed.get("bootstrap", 0))
    if not replayed:
        return None
    return {"rule": "replay", "requests": replayed,
            "evidence": f"{replayed} replayed requests {version} answered in {before} while "
                        "nothing held production or canary, scored against their "
                        "references"}


#: Gates only live traffic or a person can pass: a change proposed before them waits for
#: them (the loop proposes when every other gate passes; the PR body lists these).
AFTER_MERGE = ("traffic", "floors", "approval", "review")


def before_traffic(gates: list[Gate]) -> list[Gate]:
    """The gates decidable from evaluations alone (all but :data:`AFTER_MERGE`)."""
    return [g for g in gates if g.name not in AFTER_MERGE]


@dataclass(frozen=True)
class Counted:
    """What the composite gate counts for a version (DESIGN.md §5, "sustained"): one
    evaluation per version along its lineage -- the version, its parent, its parent's
    parent, up to ``need`` versions --, each that version's latest evaluation on the
    current suite, of the weights its lineage registered, on a run no earlier event of the
    log already counted. Re-evaluating the same weights (greedy decoding repeats itself)
    never adds a count: a streak is of distinct trained versions."""

    need: int
    chain: tuple[str, ...]  # the versions looked at, the candidate first
    records: tuple[Any, ...]  # the counted evaluation of each, consecutive from the candidate
    unevaluated: tuple[str, ...]  # versions of the chain with no evaluation on the suite
    ignored: tuple[str, ...]  # "<event id>: why it does not count"


def counted_evaluations(want: Desired, state: SpecialistState, version: str,
                        signed: SignedFn = _trusted) -> Counted:
    """The evaluations the composite gate counts for ``version`` (see :class:`Counted`);
    ``signed`` says which events' signatures may not be trusted (never counted)."""
    need = want.policy.gates.composite.sustained or want.sustained
    current_only = want.policy.gates.suite_unchanged
    everything = [e for c in state.candidates.values() for e in c.evals] + state.model_evals
    first_run: dict[str, str] = {}
    for record in sorted(everything, key=lambda e: e.seq):
        # A forged evaluation naming a run must not make the real one "already counted".
        if record.run_id and record.run_id not in first_run \
                and signed(state.name, record.event_id) is None:
            first_run[record.run_id] = record.event_id
    chain: list[str] = []
    at: str | None = version
    while at in state.candidates and at not in chain and len(chain) < need:
        chain.append(at)
        at = state.candidates[at].lineage.parent
    records: list[Any] = []
    unevaluated: list[str] = []
    ignored: list[str] = []
    broken = False
    for link in chain:
        candidate = state.candidates[link]
        registered = candidate.lineage.weights_hash
        pick, on_suite = None, False
        for record in reversed(candidate.evals):
            if current_only and record.suite_hash != want.suite_hash:
                continue
            on_suite = True
            why = None
            untrusted = signed(state.name, record.event_id)
            if untrusted is not None:
                why = f"its event is not trusted: {untrusted}"
            elif record.partial:
                why = "a partial run (--limit) counts for nothing"
            elif record.run_id and first_run.get(record.run_id) != record.event_id:
                why = (f"its run {record.run_id} was already counted (event "
                       f"{first_run[record.run_id][:12]})")
            elif registered and record.weights_hash != registered:
                why = (f"it measured weights {(record.weights_hash or 'unrecorded')[:12]}, not "
                       f"the {registered[:12]} {link}'s lineage registered")
            if why is not None:
                ignored.append(f"{record.event_id[:12]} ({link}): {why}")
                continue
            pick = record
            break
        if not on_suite:
            unevaluated.append(link)
        if pick is None:
            broken = True
        elif not broken:
            records.append(pick)
    return Counted(need, tuple(chain), tuple(records), tuple(unevaluated), tuple(ignored))


def steering(record: Any) -> float | None:
    """What the composite gate counts of one evaluation: its decision metric (dev, else
    unseen composite: never trained on); the composite for evaluations recorded before
    there was one."""
    if getattr(record, "legacy", False):
        return record.composite
    return record.decision if record.decision_metric is not None else None


def _composite_gate(version: str, counted: Counted, target: float) -> Gate:
    recent, need = list(counted.records), counted.need
    metrics = sorted({"composite" if e.legacy else e.decision_metric or "none"
                      for e in recent})
    named = "/".join(metrics) if metrics else "decision metric"
    which = "" if named in ("composite", "decision metric") else f" ({named} composite)"
    raw = [steering(e) for e in recent]
    numbers: dict[str, Any] = {"needed": need, "evaluations": len(recent), "target": target,
                               "versions": ",".join(counted.chain),
                               "ignored": len(counted.ignored)}
    ignored = (f"; not counted: {'; '.join(counted.ignored)}" if counted.ignored else "")
    if any(s is None for s in raw):
        return Gate("composite", False,
                    f"an evaluation of {version} has no decision metric: too few core "
                    "scenarios it never trained on, and no dev split" + ignored, numbers,
                    tuple(e.event_id for e in recent))
    scores = [s for s in raw if s is not None]
    shown = ", ".join(f"{v} {s:.3f}" for v, s in zip(counted.chain, scores, strict=False))
    numbers["lowest"] = round(min(scores), 4) if scores else None
    passed = len(scores) >= need and all(s >= target - 1e-9 for s in scores)
    if passed:
        detail = (f"{need} consecutive versions along {version}'s lineage at >= {target}"
                  f"{which}: {shown}")
    else:
        short = len(counted.chain) < need
        lacking = [v for v in counted.chain[len(scores):]]
        detail = (f"{sum(s >= target - 1e-9 for s in scores)} of the {need} consecutive "
                  f"versions needed along {version}'s lineage at >= {target}{which}"
                  + (f": {shown}" if shown else "")
                  + (f"; {', '.join(lacking)} not evaluated on the current suite"
                     if lacking else "")
                  + (f"; the lineage has only {len(counted.chain)} trained version(s) "
                     "(one evaluation per version counts: re-evaluating the same weights "
                     "adds nothing)" if short else ""))
    return Gate("composite", passed, detail + ignored, numbers,
                tuple(e.event_id for e in recent))


def _overfitting_gate(version: str, recent: list[Any], margin: float) -> Gate:
    """No counted evaluation may show the decision metric trailing the composite by more
    than the policy's margin (the candidate learnt the evaluation, not the task)."""
    worst = max(((e.composite - e.decision, e) for e in recent
                 if e.decision_metric is not None and e.decision is not None),
                default=None, key=lambda pair: pair[0])
    if worst is None or worst[0] <= margin + 1e-9:
        return Gate("overfitting", True,
                    f"{version}'s decision metric trails its composite by at most {margin}",
                    {"margin": margin, "gap": None if worst is None else round(worst[0], 4)},
                    tuple(e.event_id for e in recent))
    gap, record = worst
    return Gate("overfitting", False,
                f"{version} is overfitting: in evaluation {record.event_id} its "
                f"{record.decision_metric} composite {record.decision:.3f} trails the "
                f"composite {record.composite:.3f} by {gap:.3f} (margin {margin})",
                {"margin": margin, "gap": round(gap, 4)}, (record.event_id,))


def _heldout_gate(name: str, want: Desired, state: SpecialistState, version: str,
                  recent: list[Any], heldout: HeldoutFn, signed: SignedFn = _trusted) -> Gate:
    allowed = want.policy.gates.heldout.max_regression
    production = state.holder("production")
    if production is None or production.version == version:
        floor = want.policy.gates.heldout.floor
        floor = want.target if floor is None else floor
        scored = [e for e in recent if e.heldout is not None]
        scores = [e.heldout for e in scored]
        if not scores:
            return Gate("heldout", False, f"no evaluation of {version} has a held-out score "
                                          f"to hold against the floor {floor}",
                        {"floor": floor})
        return Gate("heldout", scores[-1] >= floor - 1e-9,
                    f"held-out {scores[-1]:.3f} vs the floor {floor} (nothing in production "
                    "to compare with)", {"floor": floor, "heldout": round(scores[-1], 4)},
                    (scored[-1].event_id,))
    held = state.candidates.get(production.version)
    baseline = next((e for e in reversed(held.evals) if e.suite_hash == want.suite_hash
                     and signed(name, e.event_id) is None), None) if held else None
    if not recent or baseline is None:
        return Gate("heldout", False, f"no evaluations of {version} and production "
                                      f"{production.version} on the current suite to compare",
                    {"max_regression": allowed})
    result = heldout(name, recent[-1].event_id, baseline.event_id)
    if result is None:
        return Gate("heldout", False, f"{version} and production {production.version} share "
                                      "no held-out scenarios", {"max_regression": allowed},
                    (recent[-1].event_id, baseline.event_id))
    numbers = {"diff": round(result.diff, 4), "low": round(result.low, 4),
               "high": round(result.high, 4), "n": result.n, "max_regression": allowed,
               "candidate": round(result.candidate, 4), "baseline": round(result.baseline, 4)}
    detail = (f"held-out {result.candidate:.3f} vs production {production.version} "
              f"{result.baseline:.3f}: {result.diff:+.3f} (95% CI [{result.low:+.3f}, "
              f"{result.high:+.3f}], n={result.n}), may trail by {allowed}")
    return Gate("heldout", result.diff >= -allowed, detail, numbers,
                (recent[-1].event_id, baseline.event_id))


def _stage_order_gates(want: Desired, state: SpecialistState, stage: Any,
                       version: str, signed: SignedFn = _trusted) -> list[Gate]:
    """The version must have held the stage before this one -- by a promotion whose event
    may be trusted --, with that stage's minimum observed traffic and metric floors met."""
    names = [s.name for s in want.policy.stages]
    index = names.index(stage.name)
    if index == 0:
        return [Gate("order", True, f"{stage.name} is the first stage")]
    before = want.policy.stages[index - 1]
    held = [a for a in state.history if a.version == version and a.stage == before.name]
    forged = [(a, why) for a in held if (why := signed(state.name, a.event_id)) is not None]
    held = [a for a in held if a not in [f for f, _ in forged]]
    if not held and forged:
        a, why = forged[0]
        return [Gate("order", False, f"{version} held {before.name} only by event "
                                     f"{a.event_id[:12]}, which is not trusted: {why}",
                     evidence=(a.event_id,))]
    if not held:
        return [Gate("order", False, f"{version} never held {before.name}, the stage before "
                                     f"{stage.name}")]
    gates = [Gate("order", True, f"{version} held {before.name} since "
                                 f"{held[0].since.isoformat()[:19]}",
                  evidence=(held[0].event_id,))]
    if want.policy.bootstrap == "approval" and not _live(state):
        return [*gates, Gate("traffic", True, f"nothing holds production or canary: by the "
                                              "policy's bootstrap rule (approval) an approved "
                                              f"change stands in for traffic in {before.name}",
                             {"requests": 0, "min_requests": before.min_requests})]
    observed = state.metrics.get(f"{version}@{before.name}", {"requests": 0, "last": {}})
    requests = int(observed.get("requests", 0))
    replayed = int(observed.get("bootstrap", 0))
    gates.append(Gate("traffic", requests >= before.min_requests,
                      f"{requests} requests observed in {before.name}"
                      + (f" ({replayed} replayed while bootstrapping: nothing in production "
                         "to mirror)" if replayed else "")
                      + f", needs {before.min_requests}",
                      {"requests": requests, "min_requests": before.min_requests,
                       "bootstrap": replayed}))
    last = observed.get("last") or {}
    for metric, floor in sorted(before.floors.items()):
        value = last.get(metric)
        gates.append(Gate(
            "floors", value is not None and value >= floor,
            f"{metric} {'unobserved' if value is None else f'{value:.3f}'} in {before.name}, "
            f"floor {floor}", {"metric": metric, "value": value, "floor": floor}))
    return gates


def _review_gate(want: Desired) -> Gate:
    if not want.holds:
        return Gate("review", True, "every change to the files the policy guards came in "
                                    "with an approved merge", {"holds": 0})
    shown = "; ".join(want.holds[:3])
    more = f" (and {len(want.holds) - 3} more)" if len(want.holds) > 3 else ""
    return Gate("review", False, f"held: {shown}{more}", {"holds": len(want.holds)})


def _approval_gate(name: str, stage: Any, version: str, approval: ApprovalFn) -> Gate:
    found = approval(name, stage.name, version)
    if found is None:
        return Gate("approval", False, f"{stage.name} needs a merged, approved change asking "
                                       f"for {version}; none found")
    approvers = set(found.approvers)
    allowed = list(stage.approvers) or list(found.required)  # the policy, else CODEOWNERS
    if allowed:
        approvers &= set(allowed)
    ok = len(approvers) >= stage.min_approvals
    who = ", ".join(sorted(approvers)) or "nobody"
    return Gate("approval", ok,
                f"{found.forge} {found.ref} merged by {found.merged_by or '?'}, approved by "
                f"{who} (needs {stage.min_approvals}"
                + (f" of {', '.join(allowed)}" if allowed else "") + ")",
                {"approvals": len(approvers), "min_approvals": stage.min_approvals})


def previous_holder(state: SpecialistState, stage: str, held: Assignment) -> str | None:
    """The version that held ``stage`` before ``held`` (what a rollback goes back to)."""
    return state.previous_holder(stage, held)


def _rollback(name: str, want: Desired, state: SpecialistState, stage: Any,
              held: Assignment) -> Action | None:
    rule = want.policy.rollback
    if not rule.automatic:
        return None
    observed = state.metrics.get(f"{held.version}@{stage.name}")
    if not observed:
        return None
    value = (observed.get("last") or {}).get(rule.metric)
    requests = int(observed.get("requests", 0))
    if value is None or requests < rule.window or value >= rule.threshold:
        return None
    back_to = previous_holder(state, stage.name, held)
    return Action("rollback", name, stage.name, back_to, held.version,
                  f"{rule.metric} {value:.3f} < {rule.threshold} over {requests} requests of "
                  f"{held.version} in {stage.name}",
                  (Gate("rollback", False, f"{rule.metric} {value:.3f} below {rule.threshold}",
                        {"metric": rule.metric, "value": value, "threshold": rule.threshold,
                         "requests": requests}),))


def desired_state(repo: Any,
                  holds: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Desired]:
    """Each specialist's :class:`Desired` from a loaded repository (its specs), with the
    review ``holds`` of each (:func:`modelsmith.gitops.review.review`)."""
    out = {}
    for name, spec in repo.specialists.items():
        release = spec.release
        canary = release.canary
        out[name] = Desired(
            release={"shadow": release.shadow, "canary": canary.version if canary else None,
                     "production": release.production},
            traffic={"canary": canary.traffic} if canary else {},
            target=spec.spec.target.composite,
            suite_hash=repo.suite_for(spec).suite_hash,
            policy=repo.policy_for(spec).spec, sustained=spec.spec.target.sustained,
            holds=tuple((holds or {}).get(name, ())))
    return out


def logged_heldout(store: Any) -> HeldoutFn:
    """The held-out comparison read from two recorded evaluations' evidence (paired,
    bootstrap CI), for :func:`plan`."""
    def compare_heldout(specialist: str, candidate: str, baseline: str) -> HeldoutResult | None:
        from modelsmith.evaluation.results import EvalError
        from modelsmith.evaluation.service import compare

        try:
            result = compare(store, specialist, baseline, candidate, split="heldout").result
        except EvalError:
            return None
        return HeldoutResult(result.diff, result.ci[0], result.ci[1], result.n,
                             result.mean_b, result.mean_a)

    return compare_heldout


def logged_signatures(store: Any, policy: Any) -> SignedFn:
    """For :func:`plan`: why an event's signature may not be trusted under ``policy`` (a
    :class:`modelsmith.events.signing.SignaturePolicy`), from the store's verdicts (cached
    by commit). Nothing is refused unless the event's stream requires signatures."""
    untrusted = getattr(store, "untrusted", None)
    if untrusted is None or policy is None or not policy.required:
        return _trusted

    def signed(specialist: str, event_id: str) -> str | None:
        return untrusted(event_id, policy)

    return signed


def untrusted_holders(actual: FleetState, signed: SignedFn) -> list[str]:
    """A warning for each stage held by a promotion whose event may not be trusted (the
    gates never count it as having held the stage; ``verify`` fails on it)."""
    out = []
    for name, state in sorted(actual.specialists.items()):
        for stage, held in sorted(state.stages.items()):
            why = signed(name, held.event_id)
            if why is not None:
                out.append(f"{name}: the log has {held.version} holding {stage} by event "
                           f"{held.event_id[:12]}, which is not trusted ({why}); the gates "
                           "do not count it, and `modelsmith verify` fails")
    return out


def logged_evidence(store: Any, repo: Any, signed: SignedFn | None = None) -> EvidenceFn:
    """For :func:`plan`: an evaluation counts only when its evidence is intact (each blob
    hashes to the digest its event recorded) and recomputes to the composite it claims;
    with ``signed`` (:func:`logged_signatures`), only when its signature may be trusted
    too (the gates read it from the result, :func:`signed_of`)."""
    if signed is not None:
        return SignedEvidence(logged_evidence(store, repo), signed)
    verdicts: dict[str, str | None] = {}  # an event's evidence never changes

    def check(specialist: str, event_id: str) -> str | None:
        if event_id not in verdicts:
            verdicts[event_id] = examine(specialist, event_id)
        return verdicts[event_id]

    def examine(specialist: str, event_id: str) -> str | None:
        from modelsmith.evaluation.composite import compute_report, decision_of
        from modelsmith.evaluation.results import EvalError
        from modelsmith.evaluation.service import load_runs, seen_by
        from modelsmith.events.types import git_blob_hash

        event = store.get(event_id)
        if event is None:
            return "not in the event log"
        try:
            blobs = store.evidence(event_id)
        except Exception as exc:  # a store that cannot produce it
            return f"evidence unreadable ({exc})"
        for name, digest in event.evidence.items():
            if name not in blobs or git_blob_hash(blobs[name]) != digest:
                return f"{name} does not match the digest its event recorded"
        try:
            runs = load_runs(store, event)
        except (EvalError, ValueError) as exc:
            return str(exc)
        spec = repo.specialists.get(specialist)
        if spec is None:
            return None
        version = event.data.get("version")
        seen = seen_by(store, specialist, version) if version else frozenset()
        report = compute_report(runs, repo.suite_for(spec).suite, n_resamples=200, seen=seen)
        claimed = float(event.data.get("composite") or 0.0)
        actual = float(report.to_dict()["composite"] or 0.0)
        if abs(actual - claimed) > 1e-3:
            return f"its results recompute to composite {actual:.4f}, not {claimed:.4f}"
        # The decision metric is what the composite gate counts: it must recompute too,
        # from the same runs and the seen scenarios the candidate's lineage records.
        gates = repo.policy_for(spec).spec.gates.decision
        metric, value, _ = decision_of(report, gates.min_unseen)
        data = event.data
        said, said_value = data.get("decision_metric"), data.get("decision")
        legacy = said is None and not (data.get("unseen_n") or data.get("dev_n")
                                       or data.get("seen"))
        if legacy and not (seen or report.n_dev):
            return None  # recorded before decision metrics, and nothing says it needs one
        if metric != said or (value is None) != (said_value is None) or (
                value is not None and abs(value - float(said_value)) > 1e-3):
            shown = "none" if value is None else f"{metric} {value:.4f}"
            told = "none" if said_value is None else f"{said} {float(said_value):.4f}"
            return f"its results recompute to decision metric {shown}, not {told}"
        return None

    return check
