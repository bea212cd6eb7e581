"""A suite's generator: a function in the suite folder that makes labelled scenarios.

``spec.generator`` names it as ``file.py:function``; it is called as
``(scenario: dict, n: int, seed: int) -> list[scenario dict]`` for a failed scenario, with a
seed for that scenario and iteration (so it should return new records for a new seed). Each
record needs ``input`` and its own ``expected`` answer, and may carry its own ``rubric`` (a
list of criteria, as in a scenario row; else the suite's default rubric scores it --
never the failed scenario's). It is the team's own code,
so every way it can fail (not found, outside the folder, fails to import, raises, returns
something else) is a :class:`~modelsmith.training.dataset.DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelsmith.specs import LoadedSuite, Scenario

from .dataset import DataError

Generator = Callable[..., Any]
"""A suite's generator: ``(scenario: dict, n: int, seed: int) -> list[scenario dict]``."""


def load_generator(suite: LoadedSuite) -> Generator | None:
    """The suite's ``spec.generator`` (``file.py:function`` inside the suite folder), or
    None when the suite declares none. Raises :class:`DataError` naming the file."""
    declared = suite.suite.spec.generator
    if declared is None:
        return None
    file_name, _, function = declared.rpartition(":")
    directory = Path(suite.directory)
    path = directory / file_name
    shown = f"{directory.parent.name}/{directory.name}/{file_name}"  # evals/<suite>/<file>
    _check_generator_file(path, directory, shown, declared)
    module = _import_module(path, suite.name, shown)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise DataError(f"{shown}: defines no function {function!r} (spec.generator: {declared})")
    return fn


def _check_generator_file(path: Path, directory: Path, shown: str, declared: str) -> None:
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{shown}: cannot resolve the generator file: {exc}") from exc
    if not inside:
        raise DataError(f"{shown}: the generator file must be inside the suite folder")
    if not path.is_file():
        raise DataError(f"{shown}: generator file not found (spec.generator: {declared})")


def _import_module(path: Path, suite_name: str, shown: str) -> Any:
    """The generator file imported under a name unique to its path."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    safe = re.sub(r"\W", "_", suite_name)
    name = f"_modelsmith_generator_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"{shown}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses (and pickling) look their module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise DataError(f"{shown}: the generator module failed to load: "
                        f"{type(exc).__name__}: {exc}") from exc
    return module


def _describe(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    where = Path(code.co_filename).name if code is not None else type(fn).__name__
    return f"{where}:{getattr(fn, '__name__', 'generator')}"


def generate(generator: Generator, scenario: Scenario, n: int, seed: int) -> list[dict]:
    """``n`` scenario dicts from ``generator`` for ``scenario``, each checked to have a
    non-empty ``input`` and an ``expected`` value."""
    where = _describe(generator)
    row = scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
    try:
        made = generator(row, n, seed)
    except Exception as exc:
        raise DataError(f"{where}: failed for scenario {scenario.id!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(made, Sequence) or isinstance(made, str | bytes):
        raise DataError(f"{where}: must return a list of scenario dicts, got "
                        f"{type(made).__name__} for scenario {scenario.id!r}")
    out = []
    for index, item in enumerate(made):
        text = item.get("input") if isinstance(item, Mapping) else None
        if not isinstance(text, str) or not text.strip() or item.get("expected") is None:
            raise DataError(f"{where}: item {index} for scenario {scenario.id!r} needs a "
                            f"non-empty 'input' and an 'expected' value: {str(item)[:80]}")
        rubric = item.get("rubric")
        if rubric is not None and (not isinstance(rubric, list) or not rubric
                                   or not all(isinstance(c, Mapping) for c in rubric)):
            raise DataError(f"{where}: item {index} for scenario {scenario.id!r}: 'rubric' "
                            "must be a non-empty list of criteria (mappings with a 'kind')")
        for key in ("expected", "rubric"):
            try:
                json.dumps(item.get(key), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}: item {index} for scenario {scenario.id!r}: "
                                f"{key!r} is not JSON ({exc}); a training row must be "
                                "written as JSON") from None
        out.append(dict(item))
    return out
