"""``modelsmith doctor``: is this fork ready to run the loop? One line per check, pass or
fail, and for every failure the fix.

Checks, in order: the declarative files; the event log; the review holds (guarded changes
without an approved merge); every host of the pool and the
eval host (probed in parallel); the DVC remote (reachable and writable, without changing
anything); the ML stack; a smoke generation with the base model; a 10-scenario evaluation
(not recorded). A check that cannot run because an earlier one failed is skipped with the
reason. Nothing is written to the repository or the log.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ML_PACKAGES = ("torch", "transformers", "trl", "peft")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    fix: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed(name: str, fn: Callable[[], tuple[bool, str, str]]) -> Check:
    started = time.perf_counter()
    try:
        ok, detail, fix = fn()
    except Exception as exc:  # a check reports, it never crashes the doctor
        ok, detail, fix = False, f"{type(exc).__name__}: {exc}", "see the message above"
    return Check(name, ok, detail, fix if not ok else "", time.perf_counter() - started)


def run_checks(root: Path, *, model: str | None = None, with_model: bool = True,
               specialist: str | None = None) -> Iterator[Check]:
    """Yield the checks one by one as they finish (long ones last)."""
    from modelsmith.specs import load_repository, validate_repository

    issues = validate_repository(root)
    yield Check("specs", not issues,
                "every declarative file is valid" if not issues else
                f"{len(issues)} problems, first: {issues[0]}",
                "run `modelsmith validate` and fix each line it names")
    if issues:
        for name in ("event log", "review", "hosts", "dvc remote", "ml stack", "generation",
                     "eval"):
            yield Check(name, None, "skipped: the specs are invalid")
        return
    repo = load_repository(root)
    yield _timed("event log", lambda: _event_log(root))
    yield _timed("review", lambda: _review(root, repo))
    yield from _host_checks(repo)
    yield _timed("dvc remote", lambda: _dvc_remote(root))
    missing = [name for name in ML_PACKAGES if importlib.util.find_spec(name) is None]
    yield Check("ml stack", not missing,
                "torch, transformers, trl and peft import" if not missing else
                f"missing: {', '.join(missing)}", "pip install -e '.[train]'")
    if not with_model or missing:
        why = "skipped: --no-model" if not with_model else "skipped: the ML stack is missing"
        yield Check("generation", None, why)
        yield Check("eval", None, why)
        return
    yield from _model_checks(repo, root, specialist or sorted(repo.specialists)[0], model)


def _review(root: Path, repo: Any) -> tuple[bool, str, str]:
    """Whether a guarded change without an approved merge holds any promotion."""
    from .facade import Modelsmith

    found = Modelsmith(root).review(repo)
    holds = [(name, hold) for name, held in sorted(found.holds.items()) for hold in held]
    if not holds:
        return True, "every guarded change came in with an approved merge", ""
    name, first = holds[0]
    return (False, f"{len(holds)} held promotion(s), first: {name}: {first.entry} changed by "
                   f"{first.commit[:12]} without an approved merge",
            "land an approved change to each file `modelsmith plan` lists under 'Held for "
            "review', or, in a fork of a repository with history, set the policy's "
            "review.since to the commit the fork starts from (in an approved change)")


def _event_log(root: Path) -> tuple[bool, str, str]:
    from .facade import Modelsmith

    report = Modelsmith(root).verify()  # as `modelsmith verify`: signatures, anchors
    tip = f"tip {str(report.tip)[:12]}" if report.tip else "empty so far"
    detail = (f"{report.events} events, {tip}" if report.ok
              else f"{len(report.problems)} problems: {report.problems[0]}")
    return report.ok, detail, "run `modelsmith verify` and restore the named commit from a clone"


def _model_checks(repo: Any, root: Path, name: str, model: str | None) -> Iterator[Check]:
    """A smoke generation, then a 10-scenario evaluation (not recorded) on one backend."""
    spec = repo.specialists[name]
    ref = model or spec.spec.base
    backend_box: list[Any] = []

    def generation() -> tuple[bool, str, str]:
        from modelsmith.inference import GenerationRequest, make_backend

        backend = make_backend(ref, repo.clusters, repo_root=root, progress=lambda _m: None)
        backend_box.append(backend)
        suite = repo.suite_for(spec)
        prompt = spec.spec.task.render(suite.core[0].input)
        out = backend.generate([GenerationRequest(prompt=prompt, max_new_tokens=4)])[0]
        return (out.error is None, f"{ref} answered {out.text!r} in {out.latency_ms:.0f} ms",
                f"check the model profile {ref!r} in config/clusters.json")

    def evaluation() -> tuple[bool, str, str]:
        from modelsmith.evaluation.runner import EvalSettings
        from modelsmith.evaluation.service import evaluate

        outcome = evaluate(repo, name, backend_box[0], model_ref=ref, store=None,
                           settings=EvalSettings(limit=10))
        report = outcome.report
        return (True, f"{name} on {ref}, 10 scenarios per split: composite "
                      f"{report.composite:.3f} in {outcome.duration_s:.1f}s", "")

    try:
        smoke = _timed("generation", generation)
        yield smoke
        if smoke.ok:
            yield _timed("eval", evaluation)
        else:
            yield Check("eval", None, "skipped: the model does not generate")
    finally:
        for backend in backend_box:
            backend.close()


def _host_checks(repo: Any) -> Iterator[Check]:
    from modelsmith.fleet.probe import probe_all

    clusters = repo.clusters
    names = list(dict.fromkeys([*clusters.defaults.training_hosts, clusters.defaults.eval_host]))
    started = time.perf_counter()
    results = probe_all(clusters.hosts, names, clusters.thresholds.probe_timeout_s)
    seconds = time.perf_counter() - started
    for result in results:
        host = clusters.hosts[result.host]
        if result.up:
            detail = (f"{host.kind} up: {result.cpus} CPUs, {result.mem_free_mb} MB free, "
                      f"load {result.load:.2f}, {result.gpus} GPUs"
                      if host.kind != "ray" else "ray cluster answers")
            yield Check(f"host {result.host}", True, detail, seconds=seconds)
        else:
            fix = {"ssh": f"check `ssh {host.address}` works without a password "
                          "($MODELSMITH_SSH_CONFIG or ~/.ssh/config)",
                   "ray": f"start the cluster or fix its address ({host.address})",
                   }.get(host.kind, "check this machine")
            yield Check(f"host {result.host}", False, f"{host.kind} down: {result.reason}",
                        fix, seconds)


def _dvc_remote(root: Path) -> tuple[bool, str, str]:
    """The remote named in .dvc/config, else the embedded default: reachable and writable
    (a local folder) or at least configured (a URL; pushing proves it)."""
    from modelsmith.artifacts.dvc import REMOTE_ENV, ArtifactStore, default_remote

    configured = ArtifactStore(root).remote_url() if (root / ".dvc").is_dir() else None
    target = configured or default_remote(root)
    if "://" in target and not target.startswith("file://"):
        return True, f"remote {target} (not probed: `dvc push` proves it)", ""
    folder = Path(target.removeprefix("file://")).expanduser()
    if not folder.is_absolute():
        folder = (root / ".dvc" / folder).resolve()
    probe = folder if folder.exists() else next(
        (p for p in folder.parents if p.exists()), Path("/"))
    writable = os.access(probe, os.W_OK)
    where = "configured in .dvc/config" if configured else f"default (${REMOTE_ENV} to move it)"
    return (writable, f"{folder} ({where}){'' if folder.exists() else ', created on first push'}",
            f"make {probe} writable or set ${REMOTE_ENV} / `dvc remote modify` to another")
