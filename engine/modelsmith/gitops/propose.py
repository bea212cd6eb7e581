"""``modelsmith propose``: ask for a release change with its evidence attached.

The description a reviewer reads carries what the decision rests on, each with its event
id (``modelsmith log``, ``modelsmith verify`` check them): the candidate's lineage, its
evaluations on the current suite, and every gate as ``plan`` would decide it now. With
the URL the static report (``modelsmith report``) is published at, it links to the
specialist's, the candidate's and each evaluation's page there
(:mod:`modelsmith.events.pages`: the report's file layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelsmith.events.pages import candidate_link, evaluation_link, specialist_link

from .forge import Forge, Proposal
from .plan import AFTER_MERGE, ApprovalFn, EvidenceFn, HeldoutFn, desired_state, gates_asking


def evidence(repo: Any, fleet: Any, specialist: str, stage: str, version: str, *,
             heldout: HeldoutFn = lambda *_: None,
             approval: ApprovalFn = lambda *_: None,
             sound: EvidenceFn = lambda *_: None,
             holds: Mapping[str, tuple[str, ...]] | None = None,
             report_url: str | None = None) -> tuple[str, bool]:
    """The proposal's description (Markdown) and whether every gate but the approval
    passes today (``holds``: the review holds, :func:`modelsmith.gitops.review.review`;
    ``report_url``: where the static report is published, linked to when given)."""
    want = desired_state(repo, holds)[specialist]
    state = fleet.specialists.get(specialist)
    lines = [f"Promote **{specialist} {version}** to **{stage}**.", ""]
    candidate = state.candidates.get(version) if state else None
    if candidate is None:
        lines.append(f"{version} is not a registered candidate.")
        if report_url:
            lines += ["", "### Report",
                      f"- specialist: [{specialist}]({specialist_link(report_url, specialist)})"]
        return "\n".join(lines), False
    gates = gates_asking(specialist, want, state, stage, version, heldout, approval, sound)
    lineage = candidate.lineage.model_dump()
    chain, at = [version], candidate
    while at.lineage.parent in state.candidates and at.lineage.parent not in chain:
        chain.append(at.lineage.parent)
        at = state.candidates[at.lineage.parent]
    lines += ["### Lineage", f"- registered by event `{candidate.event_id}`",
              f"- trained along: {' ← '.join([*chain, at.lineage.base_model])} (the "
              "pretrained base last)"]
    lines += [f"- {key}: `{lineage[key]}`" for key in
              ("base_model", "parent", "dataset_hash", "weights_hash", "run_id",
               "eval_event") if lineage.get(key)]
    lines += ["", "### Evaluations",
              "The decision metric is the dev composite, else the composite over core "
              "scenarios the candidate never trained on; the composite includes scenarios "
              "its training rows came from or restate.", "",
              "| event | suite | decision metric | composite | held-out |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| `{e.event_id}` | `{e.suite_hash[:12]}` | {_decision_cell(e)} | "
              f"{e.composite:.3f} | {'-' if e.heldout is None else f'{e.heldout:.3f}'} |"
              for e in candidate.evals]
    lines += ["", "### Gates (from the event log, as `modelsmith plan` decides them)"]
    lines += [f"- {'✅' if g.passed else '❌'} **{g.name}**: {g.detail}" for g in gates]
    waiting = [g for g in gates if not g.passed and g.name in AFTER_MERGE]
    blocking = [g for g in gates if not g.passed and g.name not in AFTER_MERGE]
    if blocking:
        lines += ["", "**Not ready**: " + ", ".join(g.name for g in blocking) + " fail on the "
                  "evidence logged so far; merged now, `modelsmith reconcile` rejects it."]
    elif waiting:
        lines += ["", "Every gate decidable from evaluations passes. **Still to come**: "
                  + "; ".join(f"{g.name} ({_after_merge(g)})" for g in waiting) + "."]
    else:
        lines += ["", "Every gate passes: merged, `modelsmith reconcile` promotes it."]
    if report_url:
        lines += ["", "### Report",
                  f"- specialist: [{specialist}]({specialist_link(report_url, specialist)})",
                  f"- candidate: [{version}]({candidate_link(report_url, specialist, version)})"]
        lines += [f"- evaluation [`{e.event_id[:12]}`]"
                  f"({evaluation_link(report_url, specialist, e.event_id)})"
                  for e in candidate.evals]
    lines += ["", "Check the evidence: `modelsmith verify`, `modelsmith log "
              f"{specialist}`, `modelsmith plan`."]
    ready = all(g.passed for g in gates if g.name != "approval")
    return "\n".join(lines), ready


def _after_merge(gate: Any) -> str:
    """What passes a gate that waits for live traffic or a person."""
    if gate.name == "approval":
        return "the merge of this change, approved as the stage requires"
    if gate.name == "review":
        return f"an approved change to what it names: {gate.detail}"
    return f"live traffic once merged and reconciled: {gate.detail}"


def _decision_cell(record: Any) -> str:
    if record.decision_metric is None or record.decision is None:
        return "-"
    return f"{record.decision:.3f} ({record.decision_metric})"


def propose(forge: Forge, repo: Any, fleet: Any, specialist: str, stage: str,
            version: str | None, *, traffic: float | None = None,
            heldout: HeldoutFn = lambda *_: None,
            sound: EvidenceFn = lambda *_: None,
            holds: Mapping[str, tuple[str, ...]] | None = None,
            rolled_back: Any = None,
            report_url: str | None = None) -> tuple[Proposal, str, bool]:
    """Open the proposal on ``forge``; returns it, its description and whether the gates
    (approval aside) pass today. With ``rolled_back`` (the ``RolledBack`` event) the change
    records a rollback that already happened: ``release`` is made to match the log. With
    ``report_url`` the description links to the published report's pages."""
    if rolled_back is not None:
        data = rolled_back.data
        to = version or "nothing"
        title = f"Roll back {specialist} {stage} to {to}"
        body = (f"`{stage}` was rolled back from **{data['from_version']}** to **{to}** "
                f"(event `{rolled_back.id}`): {data['reason']}.\n\nThis change makes "
                "`release` match the event log, so reconcile does not promote "
                f"{data['from_version']} again.")
        if report_url:
            body += (f"\n\nReport: [{specialist}]({specialist_link(report_url, specialist)})"
                     ", its stage timeline and evaluations.")
        proposal = forge.propose(specialist, stage, version, title=title,
                                           body=body, traffic=traffic)
        return proposal, body, True
    if version is None:
        raise ValueError("only a rollback proposes an empty stage")
    if traffic is None and stage == "canary" and specialist in repo.specialists:
        # The canary's share, unless the change names one: the policy's for the stage.
        policy = repo.policy_for(repo.specialists[specialist]).spec
        traffic = next((s.traffic for s in policy.stages if s.name == stage), None)
    body, ready = evidence(repo, fleet, specialist, stage, version, heldout=heldout,
                           sound=sound, holds=holds, report_url=report_url)
    title = f"Promote {specialist} {version} to {stage}"
    proposal = forge.propose(specialist, stage, version, title=title, body=body,
                                       traffic=traffic)
    return proposal, body, ready
