"""Evaluation: rubric criteria, scenario runner, composite score, paired comparison.

The rubric scorer here is the one implementation used for evaluation, as the training
reward, and for live monitoring. Names are imported on first use, so importing the package
(or its error type) stays cheap; nothing here imports an ML library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CRITERIA": "criteria",
    "ScoringContext": "criteria",
    "run_criterion": "criteria",
    "EvalReport": "composite",
    "compare_runs": "composite",
    "compute_report": "composite",
    "CriterionResult": "results",
    "EvalError": "results",
    "ScenarioRun": "results",
    "ScenarioScore": "results",
    "reference_answer": "references",
    "reference_problems": "references",
    "format_ok": "scoring",
    "rubric_for": "scoring",
    "score_output": "scoring",
    "PairedComparison": "stats",
    "bootstrap_ci": "stats",
    "paired_bootstrap": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelsmith.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelsmith.evaluation.{module}"), name)
