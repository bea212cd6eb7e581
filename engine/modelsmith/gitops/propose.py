"""``modelsmith propose``: ask for a release change with its evidence attached.

The description a reviewer reads carries what the decision rests on, each with its event
id (``modelsmith log``, ``modelsmith verify`` check them): the candidate's lineage, its
evaluations on the current suite, and every gate as ``plan`` would decide it now.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .forge import Forge, Proposal
from .plan import ApprovalFn, EvidenceFn, HeldoutFn, desired_state, gates_for


def evidence(repo: Any, fleet: Any, specialist: str, stage: str, version: str, *,
             heldout: HeldoutFn = lambda *_: None,
             approval: ApprovalFn = lambda *_: None,
             sound: EvidenceFn = lambda *_: None) -> tuple[str, bool]:
    """The proposal's description (Markdown) and whether every gate but the approval
    passes today."""
    want = desired_state(repo)[specialist]
    want = replace(want, release={**want.release, stage: version})
    state = fleet.specialists.get(specialist)
    policy_stage = next(s for s in want.policy.stages if s.name == stage)
    lines = [f"Promote **{specialist} {version}** to **{stage}**.", ""]
    candidate = state.candidates.get(version) if state else None
    if candidate is None:
        return "\n".join([*lines, f"{version} is not a registered candidate."]), False
    gates = gates_for(specialist, want, state, policy_stage, version, heldout, approval, sound)
    lineage = candidate.lineage.model_dump()
    lines += ["### Lineage", f"- registered by event `{candidate.event_id}`"]
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
    lines += ["", "Check the evidence: `modelsmith verify`, `modelsmith log "
              f"{specialist}`, `modelsmith plan`."]
    ready = all(g.passed for g in gates if g.name != "approval")
    return "\n".join(lines), ready


def _decision_cell(record: Any) -> str:
    if record.decision_metric is None or record.decision is None:
        return "-"
    return f"{record.decision:.3f} ({record.decision_metric})"


def propose(forge: Forge, repo: Any, fleet: Any, specialist: str, stage: str, version: str,
            *, traffic: float | None = None, heldout: HeldoutFn = lambda *_: None,
            sound: EvidenceFn = lambda *_: None,
            rolled_back: Any = None) -> tuple[Proposal, str, bool]:
    """Open the proposal on ``forge``; returns it, its description and whether the gates
    (approval aside) pass today. With ``rolled_back`` (the ``RolledBack`` event) the change
    records a rollback that already happened: ``release`` is made to match the log."""
    if rolled_back is not None:
        data = rolled_back.data
        title = f"Roll back {specialist} {stage} to {version}"
        body = (f"`{stage}` was rolled back from **{data['from_version']}** to **{version}** "
                f"(event `{rolled_back.id}`): {data['reason']}.\n\nThis change makes "
                "`release` match the event log, so reconcile does not promote "
                f"{data['from_version']} again.")
        proposal = forge.propose(specialist, stage, version, title=title,
                                           body=body, traffic=traffic)
        return proposal, body, True
    body, ready = evidence(repo, fleet, specialist, stage, version, heldout=heldout,
                           sound=sound)
    title = f"Promote {specialist} {version} to {stage}"
    proposal = forge.propose(specialist, stage, version, title=title, body=body,
                                       traffic=traffic)
    return proposal, body, ready
