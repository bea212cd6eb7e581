"""Event envelope and every event type of the log (DESIGN.md §4).

An event is ``{id, type, stream, seq, at, actor, cause, schema, data, evidence}``.
``data`` holds the payload of one :class:`EventData` subclass, registered under its type
name and schema version so that old events stay readable when a payload evolves.
``evidence`` maps evidence file names to their git blob hashes; the bytes ride beside the
event (in the git store: in the event commit's tree).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from modelsmith.errors import ModelsmithError
from modelsmith.stages import STAGES as STAGES  # re-exported: events.STAGES
from modelsmith.stages import StageName

STREAM_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
EVIDENCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FLEET_STREAM = "fleet"

Stage = StageName
FailureClass = Literal["oom", "host_unreachable", "hang", "corrupt_checkpoint", "no_signal", "unknown"]  # noqa: E501


class InvalidEventError(ModelsmithError, ValueError):
    """An event (or its payload) does not match its type's schema."""


def git_blob_hash(data: bytes) -> str:
    """The id git gives a blob with these bytes, so both stores record the same digest."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- payloads


class EventData(BaseModel):
    """Base of every payload: a registered type name and schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    type_name: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def summary(self) -> str:
        """One human line for ``git log``; subclasses add what matters most."""
        return ""


EVENT_TYPES: dict[tuple[str, int], type[EventData]] = {}
LATEST_SCHEMA: dict[str, int] = {}


def register(cls: type[EventData]) -> type[EventData]:
    """Register a payload class under its class name (or ``type_name``) and schema version."""
    name = cls.type_name or cls.__name__
    cls.type_name = name
    EVENT_TYPES[(name, cls.schema_version)] = cls
    LATEST_SCHEMA[name] = max(LATEST_SCHEMA.get(name, 0), cls.schema_version)
    return cls


def payload_class(type_name: str, schema: int) -> type[EventData]:
    try:
        return EVENT_TYPES[(type_name, schema)]
    except KeyError:
        known = ", ".join(sorted(LATEST_SCHEMA))
        raise InvalidEventError(
            f"unknown event type {type_name!r} schema {schema} (known types: {known})"
        ) from None


class Lineage(BaseModel):
    """Where a candidate version came from: enough to rebuild it."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    base_model: str
    base_hash: str | None = None  # sha256 of the base weights folder trained from
    parent: str | None = None
    eval_event: str | None = None  # the evaluation whose failures became the dataset
    dataset_hash: str | None = None
    suite_hash: str | None = None
    config_hash: str | None = None
    trainer_versions: dict[str, str] = Field(default_factory=dict)
    run_id: str | None = None
    host: str | None = None
    duration_s: float | None = None
    weights_hash: str | None = None
    # Core scenarios the candidate's datasets came from or restate, along its whole chain:
    # its evaluations count them out of the unseen composite.
    seen: list[str] = Field(default_factory=list)


class Approval(BaseModel):
    """The human gate a promotion passed: a merged PR or a local merge commit."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    forge: str
    ref: str
    merged_by: str | None = None
    approvers: list[str] = Field(default_factory=list)


@register
class EvalStarted(EventData):
    version: str | None = None
    model: str
    suite: str
    suite_hash: str
    run_id: str
    backend: str | None = None

    def summary(self) -> str:
        return f"{self.version or self.model} on {self.suite}"


@register
class EvalCompleted(EventData):
    version: str | None = None
    model: str
    suite: str
    suite_hash: str
    run_id: str
    composite: float
    core: float | None = None
    robustness: float | None = None
    micro: float | None = None
    heldout: float | None = None
    ci: tuple[float, float] | None = None
    heldout_ci: tuple[float, float] | None = None
    pass_rate: float | None = None
    slices: dict[str, float] = Field(default_factory=dict)
    scenarios: int = 0
    failed: int = 0
    limit: int | None = None  # a partial run (first N scenarios): gates ignore it
    backend: str | None = None
    commit: str | None = None  # the repository commit the suite was read at
    duration_s: float | None = None
    warnings: list[str] = Field(default_factory=list)  # e.g. the reward-hacking watch
    # Beside the composite, what the candidate never trained on (DESIGN.md §5):
    unseen: float | None = None  # the composite over core scenarios outside its lineage
    unseen_ci: tuple[float, float] | None = None
    unseen_n: int = 0
    seen: int = 0  # core scenarios its lineage trained on (left out of unseen)
    dev: float | None = None  # the composite over the dev split
    dev_ci: tuple[float, float] | None = None
    dev_n: int = 0
    heldout_n: int = 0
    # The number the loop steers by and the composite gate counts: dev when the suite has
    # it, else unseen with at least the policy's minimum n; None when neither qualifies.
    decision_metric: Literal["dev", "unseen"] | None = None
    decision: float | None = None
    decision_n: int = 0
    # What was measured: the content hash of the weights that ran (a candidate's; DVC's
    # hash, as its lineage records it). A gate counts an evaluation of a version only when
    # this is the version's registered weights hash, and each run id once.
    weights_hash: str | None = None

    def summary(self) -> str:
        flag = f" ({len(self.warnings)} warning)" if self.warnings else ""
        shown = f" {self.decision_metric}={self.decision:.4f}" \
            if self.decision_metric and self.decision is not None else ""
        return f"{self.version or self.model} composite={self.composite:.4f}{shown}{flag}"


@register
class FailuresExtracted(EventData):
    eval_event: str
    version: str | None = None
    scenario_ids: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.scenario_ids)} failures"


@register
class DatasetBuilt(EventData):
    dataset_hash: str
    rows: int
    sources: dict[str, int] = Field(default_factory=dict)
    removed: dict[str, int] = Field(default_factory=dict)
    balance: dict[str, int] = Field(default_factory=dict)
    path: str | None = None
    eval_event: str | None = None  # the EvalCompleted whose runs it was built from
    seed: int | None = None  # augmentation seed: with the event, enough to rebuild it
    teacher: str | None = None  # the model that rephrased inputs (not reproducible)
    # The generation round (seeds the generator): 1 + the versions along the chain of the
    # model it trains from.
    iteration: int | None = None
    new_rows: int | None = None  # rows not in the previous dataset of its chain
    # Contamination accounting: the core scenarios its rows came from (their own inputs,
    # variants, rephrasings) or restate (the leakage matcher), and of those the restated.
    scenarios: list[str] = Field(default_factory=list)
    restated: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        new = f", {self.new_rows} new" if self.new_rows is not None else ""
        return f"{self.rows} rows{new} {self.dataset_hash[:12]}"


@register
class TrainingStarted(EventData):
    run_id: str
    method: str
    profile: str
    host: str
    parent: str | None = None
    dataset_hash: str | None = None
    base: str | None = None  # the model reference trained from (profile, folder, version)
    hyperparams: dict[str, Any] = Field(default_factory=dict)  # the profile as run

    def summary(self) -> str:
        return f"{self.method} on {self.host}"


@register
class TrainingFailed(EventData):
    run_id: str
    host: str
    failure_class: FailureClass
    action: str
    attempt: int = 1
    log_tail: str = ""

    def summary(self) -> str:
        return f"{self.failure_class} -> {self.action}"


@register
class TrainingCompleted(EventData):
    run_id: str
    method: str
    host: str
    duration_s: float
    metrics: dict[str, float] = Field(default_factory=dict)
    checkpoint_hash: str | None = None
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        return f"{self.method} in {self.duration_s:.0f}s"


@register
class CandidateRegistered(EventData):
    version: str
    lineage: Lineage

    def summary(self) -> str:
        return self.version


@register
class OverfittingDetected(EventData):
    """A candidate whose decision metric trails its core composite by more than the
    policy's margin (or falls while core rises): it is never proposed."""

    version: str | None = None
    eval_event: str
    metric: str  # dev | unseen
    decision: float | None = None
    composite: float
    margin: float
    reason: str

    def summary(self) -> str:
        return f"{self.version or '-'}: {self.reason}"


@register
class PromotionProposed(EventData):
    version: str
    stage: Stage
    evidence: list[str] = Field(default_factory=list)
    pr: str | None = None
    reason: str = ""

    def summary(self) -> str:
        return f"{self.version} -> {self.stage}"


@register
class PromotionRejected(EventData):
    version: str
    stage: Stage
    gate: str
    reason: str
    numbers: dict[str, float | int | str | None] = Field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.version} -> {self.stage}: {self.gate}"


class Bootstrap(BaseModel):
    """How a specialist's first version left a stage with nothing in production to mirror
    (the policy's ``bootstrap`` rule) and which evidence stood in for mirrored traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    rule: Literal["replay", "approval"]
    evidence: str
    requests: int = Field(0, ge=0)  # replayed answers counted as its observed traffic


@register
class Promoted(EventData):
    version: str
    stage: Stage
    previous: str | None = None
    traffic: float | None = Field(default=None, gt=0, le=1)
    approval: Approval | None = None
    bootstrap: Bootstrap | None = None  # a first version's step out of a stage (see Bootstrap)

    def summary(self) -> str:
        how = f" (bootstrap: {self.bootstrap.rule})" if self.bootstrap else ""
        return f"{self.version} -> {self.stage}{how}"


@register
class MetricsObserved(EventData):
    version: str
    stage: Stage
    window_start: datetime
    window_end: datetime
    requests: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    # Of ``requests``, the answers a shadow gave while bootstrapping (nothing in production
    # or canary; replayed requests with a reference, policy ``bootstrap: replay``): the
    # evidence that stands in for mirrored traffic. Left out of the event when 0.
    bootstrap: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bootstrap_within_requests(self) -> MetricsObserved:
        if self.bootstrap > self.requests:
            raise ValueError(f"bootstrap ({self.bootstrap}) exceeds requests ({self.requests})")
        return self

    @model_serializer(mode="wrap")
    def _without_zero_bootstrap(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.bootstrap and isinstance(data, dict):
            data.pop("bootstrap", None)
        return data

    def summary(self) -> str:
        extra = f" ({self.bootstrap} bootstrap)" if self.bootstrap else ""
        return f"{self.version}@{self.stage} {self.requests} requests{extra}"


@register
class RolledBack(EventData):
    stage: Stage
    from_version: str
    to_version: str | None = None
    reason: str
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None

    def summary(self) -> str:
        return f"{self.stage} {self.from_version} -> {self.to_version or '-'}"


@register
class IterationCompleted(EventData):
    iteration: int = Field(ge=1)
    composite: float | None = None
    version: str | None = None
    decision: str

    def summary(self) -> str:
        return f"iteration {self.iteration}: {self.decision}"


# --------------------------------------------------------------------------- envelope


class Event(BaseModel):
    """The envelope. ``stream`` and ``seq`` are assigned by the store on append."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, defer_build=True
    )

    id: str
    type: str
    stream: str = ""
    seq: int = Field(default=0, ge=0)
    at: datetime
    actor: str = Field(min_length=1, max_length=200)
    cause: str | None = None
    schema_version: int = Field(default=1, alias="schema", ge=1)
    data: dict[str, Any] = Field(default_factory=dict)
    evidence: dict[str, str] = Field(default_factory=dict)
    # Global position in the log (1-based); derived from the log, never serialised.
    position: int = Field(default=0, exclude=True)

    _blobs: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not EVENT_ID_RE.match(v):
            raise ValueError("event id must be 8-64 characters of [A-Za-z0-9_-]")
        return v

    @field_validator("at")
    @classmethod
    def _check_at(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp must carry a time zone")
        return v

    @classmethod
    def new(
        cls,
        payload: EventData,
        *,
        actor: str,
        cause: str | None = None,
        at: datetime | None = None,
        id: str | None = None,
        evidence: dict[str, bytes] | None = None,
    ) -> Event:
        """Wrap a payload; ``id`` is random unless the caller wants replay-safe ids."""
        blobs = dict(evidence or {})
        for name in blobs:
            if not EVIDENCE_NAME_RE.match(name):
                raise InvalidEventError(f"evidence name {name!r} is not a plain file name")
        event = cls(
            id=id or uuid.uuid4().hex,
            type=payload.type_name,
            at=at or now_utc(),
            actor=actor,
            cause=cause,
            schema_version=payload.schema_version,
            data=payload.model_dump(mode="json"),
            evidence={name: git_blob_hash(data) for name, data in sorted(blobs.items())},
        )
        event._blobs = blobs
        return event

    @property
    def blobs(self) -> dict[str, bytes]:
        """Evidence bytes attached in this process (empty for events read back)."""
        return self._blobs

    def payload(self) -> EventData:
        """The typed payload; raises InvalidEventError when ``data`` does not fit its schema."""
        cls = payload_class(self.type, self.schema_version)
        try:
            return cls.model_validate(self.data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "data"
            raise InvalidEventError(
                f"{self.type} (schema {self.schema_version}) data.{where}: {first['msg']}"
            ) from None

    def recorded(self, stream: str, seq: int, position: int) -> Event:
        """A copy as the store records it; evidence bytes stay attached."""
        return self.model_copy(update={"stream": stream, "seq": seq, "position": position})

    def canonical_json(self) -> str:
        """Sorted keys, no spaces: the bytes that get hashed and stored."""
        body = self.model_dump(mode="json", by_alias=True)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def same_content(self, other: Event) -> bool:
        """True when two events with one id say the same thing (for idempotent appends)."""
        return (
            self.type == other.type
            and self.schema_version == other.schema_version
            and self.data == other.data
            and self.evidence == other.evidence
            and self.actor == other.actor
            and self.cause == other.cause
        )

    def summary(self) -> str:
        try:
            detail = self.payload().summary()
        except InvalidEventError:
            detail = "(invalid payload)"
        head = f"{self.type} {self.stream}#{self.seq}"
        return f"{head} {detail}".rstrip()


def validate_stream(stream: str) -> str:
    if not isinstance(stream, str) or not STREAM_RE.match(stream):
        raise InvalidEventError(
            f"stream {stream!r} must be a specialist name (lowercase letters, digits, '-') "
            f"or {FLEET_STREAM!r}"
        )
    return stream
