"""Shared building blocks of the spec models: the strict base model, constrained string types
and the document envelope (apiVersion, kind, metadata)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

API_VERSION = "modelsmith/v1"
SUPPORTED_API_VERSIONS: tuple[str, ...] = (API_VERSION,)

# Patterns are anchored for pydantic's Rust engine; Python callers must use re.fullmatch
# (Python's "$" also matches before a trailing newline).
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION_PATTERN = r"^v[1-9][0-9]*$"
SCENARIO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
GENERATOR_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py:[A-Za-z_][A-Za-z0-9_]*$"

#: pattern -> (what the value is, how to write one); pydantic only says "should match
#: pattern '...'", which tells a user little.
PATTERN_HINTS: dict[str, tuple[str, str]] = {
    NAME_PATTERN: (
        "name",
        "use lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters",
    ),
    VERSION_PATTERN: ("version", "a version is 'v' followed by a number: v1, v2, v10"),
    SCENARIO_ID_PATTERN: (
        "id",
        "use letters, digits, '_', '.' and '-', starting with a letter or digit, "
        "at most 128 characters",
    ),
    GENERATOR_PATTERN: ("generator", "expected 'file.py:function' relative to the suite folder"),
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
ScenarioId = Annotated[str, StringConstraints(pattern=SCENARIO_ID_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# pydantic's PositiveInt reports "must be > 0"; ">= 1" reads better for counts.
PositiveInt = Annotated[int, Field(ge=1)]
#: A random seed: what numpy, random and torch all accept.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Random seed, 0 to 2**32 - 1.")]


def spec_error(message: str, *at: str | int) -> PydanticCustomError:
    """A validation error for a model validator, pointing ``at`` a field below the model.

    Pydantic places model-validator errors at the model itself; the ``at`` path travels in
    the error context so the position mapper can point at the offending field instead.
    """
    return PydanticCustomError("spec", "{message}", {"message": message, "at": at})


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors (typos must not pass silently)."""

    # allow_inf_nan: every float of a spec is finite (.inf, .nan and 1e999 are errors; an
    # infinite weight would turn scores into NaN).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Metadata(SpecModel):
    name: Name = Field(description="Unique name of the object within its kind.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Document(SpecModel):
    """The envelope shared by every YAML kind."""

    api_version: Literal["modelsmith/v1"] = Field(alias="apiVersion")
    kind: str  # narrowed to a Literal by each kind
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


def unique_violations(values: list[Any]) -> list[int]:
    """Indexes of values that repeat an earlier one."""
    seen: set[Any] = set()
    dupes = []
    for index, value in enumerate(values):
        if value in seen:
            dupes.append(index)
        seen.add(value)
    return dupes
