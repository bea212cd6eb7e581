"""``modelsmith package``: a candidate as a serving artifact any host can load.

The folder holds the weights and the tokenizer (a plain Hugging Face folder, as vLLM or an
OpenAI-compatible server loads it; a LoRA version is merged into its base first,
:func:`~modelsmith.artifacts.adapters.materialise`) and ``modelsmith.json``: the specialist's
prompt contract (template, system prompt, whether a chat template applies, the output
kind and labels, the eval's decoding), the version's lineage, the artifact hash, and the
rollback contract -- the version to fall back to and its artifact hash. The tokenizer's
chat template and ``generation_config.json`` make plain transformers or ``vllm serve``
prompt and decode it as its eval did, and ``README.md`` is its model card
(:mod:`.prompting`). The weights are checked against the
hash their lineage recorded before anything is written: a corrupt checkpoint is never
packaged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.errors import ModelsmithError

if TYPE_CHECKING:
    from modelsmith.artifacts.dvc import ArtifactStore
    from modelsmith.artifacts.registry import ModelRegistry
    from modelsmith.events.projection import FleetState
    from modelsmith.specs import Repository

MANIFEST = "modelsmith.json"


class PackageError(ModelsmithError, RuntimeError):
    """The artifact cannot be made; the message says why."""


def fallback(fleet: FleetState, specialist: str, version: str) -> str | None:
    """The version to fall back to from ``version``: production now, when that is another
    version; else the one that held production before it; else its parent."""
    state = fleet.specialists.get(specialist)
    if state is None:
        return None
    held = state.holder("production")
    if held is not None and held.version != version:
        return held.version
    earlier = [a.version for a in state.history
               if a.stage == "production" and a.version != version]
    if earlier:
        return earlier[-1]
    candidate = state.candidates.get(version)
    return candidate.lineage.parent if candidate else None


def package(repo: Repository, fleet: Callable[[], FleetState], registry: ModelRegistry,
            artifacts: ArtifactStore, specialist: str, version: str,
            out: Path) -> dict[str, Any]:
    """Write the artifact for ``specialist`` ``version`` to ``out``; its manifest. ``fleet``
    folds the event log (candidates, stages); ``artifacts`` hashes the weights."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackageError(f"{out} exists and is not empty; pick another folder")
    spec = repo.specialists.get(specialist)
    if spec is None:
        raise PackageError(f"no specialist {specialist!r} (known: "
                           f"{', '.join(sorted(repo.specialists)) or 'none'})")
    folded = fleet()
    state = folded.specialists.get(specialist)
    candidate = state.candidates.get(version) if state else None
    if candidate is None:
        known = ", ".join(state.candidates) if state else "none"
        raise PackageError(f"{specialist} has no candidate {version} (registered: {known})")
    model = registry.candidate(specialist, version)
    digest = artifacts.content_hash(model.path)
    expected = candidate.lineage.weights_hash
    if expected and digest != expected:
        raise PackageError(f"{model.path} hashes to {digest}, not the {expected} its lineage "
                           "recorded: restore it (`dvc checkout`) before packaging")
    back_to = fallback(folded, specialist, version)
    back = state.candidates.get(back_to) if state and back_to else None
    task = spec.spec.task
    output = task.output
    manifest = {
        "specialist": specialist,
        "version": version,
        "artifact_hash": digest,
        "created_at": datetime.now(UTC).isoformat(),
        "prompt": {"template": task.prompt_template, "system": task.system_prompt,
                   "chat_template": bool(model.base.chat_template),
                   "output": output.model_dump(mode="json")},
        "lineage": candidate.lineage.model_dump(),
        "registered_event": candidate.event_id,
        "rollback": {"version": back_to,
                     "artifact_hash": back.lineage.weights_hash if back else None},
    }
    _write(model.path, manifest, out, registry,
           lambda folder: _prompt_contract(repo, spec, version, candidate, model, manifest,
                                           folder))
    return manifest


def _prompt_contract(repo: Repository, spec: Any, version: str, candidate: Any, model: Any,
                     manifest: dict[str, Any], folder: Path) -> dict[str, str]:
    """The files that make plain transformers / ``vllm serve`` prompt and decode the
    artifact (the plain weights in ``folder``) as its eval did, and its model card
    (:mod:`.prompting`); the decoding goes into the manifest's prompt contract."""
    from .prompting import PromptContractError, model_card, prompt_files

    chat = bool(model.base.chat_template)
    suite = repo.suite_for(spec)
    try:
        files, decoding = prompt_files(folder, spec, suite, chat=chat)
    except PromptContractError as exc:
        raise PackageError(str(exc)) from exc
    manifest["prompt"]["decoding"] = decoding
    files["README.md"] = model_card(spec, version, candidate, manifest, decoding, suite.name,
                                    chat)
    return files


def _write(weights: Path, manifest: dict[str, Any], out: Path, registry: ModelRegistry,
           contract: Callable[[Path], dict[str, str]] | None = None) -> None:
    """The weights (an adapter merged into its base), the files ``contract`` makes for
    them (name -> text, replacing the weights' own) and the manifest into ``out``, staged
    beside it first: ``out`` holds a whole artifact or nothing."""
    from modelsmith.artifacts.adapters import materialise

    staged = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        materialise(weights, staged, registry.clusters, registry.root)
        for name, text in (contract(staged) if contract else {}).items():
            (staged / name).write_text(text, encoding="utf-8")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")
    if out.exists():
        out.rmdir()
    staged.rename(out)
