"""A candidate version: its lineage (the chain base -> parent -> version, as ``modelsmith
lineage`` builds it), the dataset it was trained on (the ``DatasetBuilt`` with its hash:
sources and counts), the training run (config hash, run id, host, duration, trainer
versions, the hyper-parameters as run), its weights hash, its evaluations and the stages it
held."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelsmith.events.projection import SpecialistState
from modelsmith.events.types import TrainingCompleted, TrainingFailed, TrainingStarted

from ..render import View, render
from ..source import Source
from . import NotFound, Page
from .specialist import datasets, evaluation_row, log_link, payloads, periods, specialist


def chain(state: SpecialistState, version: str) -> list[str]:
    """``version``, the version it was trained from, ..., the pretrained model it all
    started from (the façade's ``lineage()`` chain, newest first)."""
    out, at = [version], state.candidates[version]
    while at.lineage.base_model in state.candidates and at.lineage.base_model not in out:
        out.append(at.lineage.base_model)
        at = state.candidates[at.lineage.base_model]
    out.append(at.lineage.base_model)
    return out


def render_candidate(source: Source, view: View, params: Mapping[str, str]) -> str:
    state = specialist(source, params["name"])
    cand = state.candidates.get(params["version"])
    if cand is None:
        raise NotFound(f"no candidate {params['version']!r} of {params['name']!r} in the log")
    events = payloads(source, state.name)
    lineage = cand.lineage
    built = [d for d in datasets(state, events)
             if lineage.dataset_hash and d["dataset_hash"] == lineage.dataset_hash]
    training: list[dict[str, Any]] = []
    if lineage.run_id:
        for event, payload in events.values():
            if isinstance(payload, TrainingStarted | TrainingCompleted | TrainingFailed) \
                    and payload.run_id == lineage.run_id:
                training.append({"event": event, "payload": payload})
    started = next((t["payload"] for t in training
                    if isinstance(t["payload"], TrainingStarted)), None)
    source_eval = events.get(lineage.eval_event or "", (None, None))[0]
    children = [c.version for c in state.candidates.values()
                if c.version != cand.version and cand.version in
                (c.lineage.base_model, c.lineage.parent)]
    return render(
        "candidate.html", view, source, name=state.name, state=state, cand=cand,
        lineage=lineage, chain=list(reversed(chain(state, cand.version))),
        datasets=built,
        training=training, started=started, children=children,
        eval_linked=source_eval is not None and source_eval.type == "EvalCompleted",
        evaluations=[evaluation_row(e, events) for e in cand.evals],
        stages=periods(state, events, cand.version),
        holds=[s for s, a in state.stages.items() if a.version == cand.version],
        log_link=lambda event_id: log_link(view, source, event_id))


PAGE = Page("candidate", "/specialists/{name}/candidates/{version}", render_candidate,
            lambda source: [{"name": s.name, "version": v}
                            for s in source.state().specialists.values()
                            for v in s.candidates])
