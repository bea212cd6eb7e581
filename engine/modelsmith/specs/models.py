"""Pydantic models of the declarative YAML kinds and of scenario rows.

The models check what one document can check on its own (ranges, formats, internal
consistency); references between files are checked by :mod:`modelsmith.specs.references`.
"""

from __future__ import annotations

import math
import re
from functools import cached_property
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeInt,
    field_validator,
    model_validator,
)

from modelsmith.stages import STAGES, StageName

from .base import (
    GENERATOR_PATTERN,
    Document,
    Fraction,
    Name,
    NonEmptyStr,
    PositiveInt,
    ScenarioId,
    SpecModel,
    Version,
    spec_error,
    unique_violations,
)
from .regex import SpecRegex, compile_regex
from .review import DEFAULT_REVIEW_PATHS, GuardError, compile_guard
from .rubric import Criterion, MicroBenchmark

# --------------------------------------------------------------------------- Specialist


class LabelOutput(SpecModel):
    """The model answers with exactly one of ``labels``."""

    kind: Literal["label"]
    labels: list[NonEmptyStr] = Field(min_length=2)

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if dupes := unique_violations(labels):
            raise ValueError(f"duplicate label '{labels[dupes[0]]}'")
        return labels


class TextOutput(SpecModel):
    """Free text."""

    kind: Literal["text"]


class JsonOutput(SpecModel):
    """A JSON document, optionally conforming to ``schema``."""

    kind: Literal["json"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")


OutputContract = Annotated[LabelOutput | TextOutput | JsonOutput, Field(discriminator="kind")]


class TaskSpec(SpecModel):
    system_prompt: str | None = None
    prompt_template: str = Field(description="Prompt sent to the model; '{input}' is replaced.")
    output: OutputContract

    @field_validator("prompt_template")
    @classmethod
    def _has_input(cls, template: str) -> str:
        if "{input}" not in template:
            raise ValueError("must contain the placeholder '{input}'")
        return template

    def render(self, text: str) -> str:
        """The prompt for one input (plain replacement: other braces are literal)."""
        return self.prompt_template.replace("{input}", text)


class TrainingSpec(SpecModel):
    method: Literal["grpo", "sft", "sft+grpo"] = "grpo"
    profile: Name = Field(description="A hyper-parameter profile in config/clusters.json.")


class TargetSpec(SpecModel):
    composite: float = Field(gt=0, le=1, description="Composite score the specialist must reach.")
    sustained: PositiveInt = Field(
        3, le=1000, description="Consecutive trained versions along a candidate's lineage, "
                                "one evaluation each, at or above the target.")


class SpecialistSpec(SpecModel):
    description: str = ""
    base: Name = Field(description="A model profile in config/clusters.json 'models'.")
    task: TaskSpec
    evals: Name = Field(description="The EvalSuite that measures this specialist.")
    training: TrainingSpec
    target: TargetSpec
    policy: Name = Field("default", description="The PromotionPolicy that governs releases.")


class CanaryRelease(SpecModel):
    version: Version
    traffic: float = Field(gt=0, lt=1, description="Share of production traffic, 0 < t < 1.")


class Release(SpecModel):
    """Desired stage assignment; the block a promotion pull request edits."""

    production: Version | None = None
    canary: CanaryRelease | None = None
    shadow: Version | None = None

    @model_validator(mode="after")
    def _one_stage_per_version(self) -> Release:
        held: dict[str, str] = {}
        for stage, version, at in (
            ("production", self.production, ("production",)),
            ("canary", self.canary.version if self.canary else None, ("canary", "version")),
            ("shadow", self.shadow, ("shadow",)),
        ):
            if version is None:
                continue
            if version in held:
                raise spec_error(
                    f"version {version} is already in {held[version]}; "
                    "a version may hold only one stage",
                    *at,
                )
            held[version] = stage
        return self

    def stages(self) -> dict[str, str | None]:
        """Stage name -> version (``None`` when the stage is empty)."""
        return {
            "production": self.production,
            "canary": self.canary.version if self.canary else None,
            "shadow": self.shadow,
        }


class Specialist(Document):
    """``specialists/<name>.yaml``."""

    kind: Literal["Specialist"]
    spec: SpecialistSpec
    release: Release = Field(default_factory=Release)


# --------------------------------------------------------------------------- EvalSuite


def check_relative_path(value: str) -> str:
    """A path inside the suite folder: relative, POSIX, without '..'."""
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"'{value}' is an absolute path; give a path inside the suite folder")
    if "\\" in value:
        raise ValueError(f"'{value}': use '/' as the path separator")
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"'{value}' contains '..'; paths must stay inside the suite folder")
    if "\x00" in value:
        raise ValueError("path contains a NUL character")
    return value


RelPath = Annotated[str, AfterValidator(check_relative_path)]


class CompositeWeights(SpecModel):
    """How the composite score mixes core, robustness (variants) and micro-benchmarks."""

    core: float = Field(0.7, ge=0)
    robustness: float = Field(0.2, ge=0)
    micro: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> CompositeWeights:
        total = self.core + self.robustness + self.micro
        if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-6):
            raise spec_error(f"weights must sum to 1 (they sum to {total:g})")
        return self


class SuiteTraining(SpecModel):
    """Where training rows may come from (DESIGN.md §5, measurement rules)."""

    use_eval_inputs: bool = Field(
        False,
        description=(
            "Train on the suite's own core inputs and variants (failed ones, and passing "
            "ones replayed). Those scenarios then stop counting as unseen, so the unseen "
            "composite shrinks; without a dev split the loop may run out of scenarios to "
            "decide on."
        ),
    )
    rows_per_failure: PositiveInt = Field(
        4,
        description=(
            "New rows per failed scenario from each source: generator records, nearest "
            "pool rows (split: train), teacher rephrasings."
        ),
    )


class SuiteSpec(SpecModel):
    description: str = ""
    scenarios: list[RelPath] = Field(
        min_length=1, description="Scenario files (JSONL) relative to the suite folder."
    )
    pass_threshold: Fraction = 1.0
    rubric: list[Criterion] = Field(min_length=1, description="Default rubric of every scenario.")
    micro: list[MicroBenchmark] = Field(default_factory=list)
    weights: CompositeWeights = Field(default_factory=CompositeWeights)
    generator: Annotated[str, Field(pattern=GENERATOR_PATTERN)] | None = Field(
        None, description="Optional 'file.py:function' that generates scenarios."
    )
    training: SuiteTraining = Field(default_factory=SuiteTraining)

    @field_validator("scenarios")
    @classmethod
    def _unique(cls, paths: list[str]) -> list[str]:
        if dupes := unique_violations(paths):
            raise spec_error(f"'{paths[dupes[0]]}' is listed twice", dupes[0])
        return paths

    @field_validator("generator")
    @classmethod
    def _generator_path(cls, generator: str | None) -> str | None:
        if generator is not None:
            check_relative_path(generator.rpartition(":")[0])
        return generator


class EvalSuite(Document):
    """``evals/<name>/suite.yaml``."""

    kind: Literal["EvalSuite"]
    spec: SuiteSpec


class Scenario(SpecModel):
    """One row of a scenarios JSONL file."""

    id: ScenarioId
    input: NonEmptyStr
    expected: Any = Field(description="Expected output (label, text, JSON value or number).")
    split: Literal["core", "dev", "heldout", "train"] = Field(
        "core",
        description=(
            "core: the composite; dev: what the loop decides on (never trained on); "
            "heldout: the promotion gate's evidence (never steers); train: a labelled "
            "training pool (never evaluated)."
        ),
    )
    tags: list[str] = Field(default_factory=list)
    rubric: list[Criterion] | None = Field(
        None, min_length=1, description="Overrides the suite's default rubric."
    )
    variants: list[NonEmptyStr] = Field(
        default_factory=list, description="Rephrasings of input, scored for robustness."
    )
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        return text


# --------------------------------------------------------------------------- PromotionPolicy

#: Metrics observed on live traffic (``modelsmith serve``'s windows), usable as stage floors
#: and rollback triggers: mean feedback score, answers honouring the output contract, and for
#: requests that carry a reference the rubric's pass rate and mean score (the eval's scorer).
OBSERVED_METRICS: tuple[str, ...] = ("score_mean", "format_rate", "pass_rate", "rubric_score")
STAGE_ORDER: tuple[str, ...] = STAGES


class CompositeGate(SpecModel):
    sustained: PositiveInt | None = Field(
        None, le=1000,
        description="Consecutive trained versions along the candidate's lineage, one "
                    "evaluation each, at or above the specialist's target (default: the "
                    "specialist's target.sustained).")


class HeldoutGate(SpecModel):
    max_regression: Fraction = Field(
        0.02, description="Held-out score may trail production by at most this much."
    )
    floor: Fraction | None = Field(
        None,
        description=(
            "With nothing in production, the held-out score must reach this "
            "(default: the specialist's target composite)."
        ),
    )


class DecisionGate(SpecModel):
    """The number the loop steers by and the composite gate counts: never trained on."""

    min_unseen: PositiveInt = Field(
        30,
        description=(
            "Without a dev split, the unseen composite counts only over at least this many "
            "core scenarios the candidate never trained on."
        ),
    )
    overfit_margin: Fraction = Field(
        0.05,
        description=(
            "A candidate whose decision metric trails its core composite by more than this "
            "is overfitting and is never proposed."
        ),
    )


class Gates(SpecModel):
    composite: CompositeGate = Field(default_factory=CompositeGate)
    heldout: HeldoutGate = Field(default_factory=HeldoutGate)
    decision: DecisionGate = Field(default_factory=DecisionGate)
    suite_unchanged: bool = Field(
        True, description="The suite hash must match the one the gate evaluations used."
    )


def _check_metrics(floors: dict[str, float]) -> dict[str, float]:
    for metric in floors:
        if metric not in OBSERVED_METRICS:
            raise spec_error(
                f"unknown metric '{metric}' (known: {', '.join(OBSERVED_METRICS)})", metric
            )
    return floors


class Stage(SpecModel):
    name: StageName
    min_requests: NonNegativeInt = Field(0, description="Requests observed before moving on.")
    traffic: float | None = Field(None, gt=0, lt=1, description="Canary share of traffic.")
    floors: dict[str, Fraction] = Field(
        default_factory=dict, description="Metric -> minimum observed value."
    )
    approval: bool = Field(False, description="A human must approve (merge) this step.")
    approvers: list[NonEmptyStr] = Field(default_factory=list)
    min_approvals: PositiveInt = 1

    @field_validator("floors")
    @classmethod
    def _known_metrics(cls, floors: dict[str, float]) -> dict[str, float]:
        return _check_metrics(floors)

    @model_validator(mode="after")
    def _consistent(self) -> Stage:
        if self.traffic is not None and self.name != "canary":
            raise spec_error("traffic applies only to the canary stage", "traffic")
        if self.approvers and self.min_approvals > len(self.approvers):
            raise spec_error(
                f"needs {self.min_approvals} approvals but lists only "
                f"{len(self.approvers)} approvers",
                "min_approvals",
            )
        return self


class Rollback(SpecModel):
    metric: str = "score_mean"
    threshold: Fraction = Field(description="Roll back when the metric falls below this.")
    window: PositiveInt = Field(200, description="Requests the metric is computed over.")
    automatic: bool = True

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in OBSERVED_METRICS:
            raise ValueError(f"unknown metric '{metric}' (known: {', '.join(OBSERVED_METRICS)})")
        return metric


class Review(SpecModel):
    """The human gate on changes to what judges a model (see :mod:`.review`)."""

    paths: list[NonEmptyStr] = Field(
        default_factory=lambda: list(DEFAULT_REVIEW_PATHS),
        description=(
            "Changes that need an approved merge: path globs relative to the repository "
            "root ('evals/**'), optionally '#' and a dotted key of a YAML or JSON file "
            "('specialists/**#spec.task'). A commit on the main branch that changed one "
            "without an approved merge holds the promotions of the specialists it concerns "
            "until an approved change to it lands. policies/** and a specialist's "
            "spec.policy are always guarded."
        ),
    )
    min_approvals: PositiveInt = Field(1, description="Approvals such a change needs.")
    approvers: list[NonEmptyStr] = Field(
        default_factory=list,
        description="Whose approvals count (default: the changed file's CODEOWNERS, else "
                    "anyone's).")
    since: str | None = Field(
        None, pattern=r"^[0-9a-f]{7,40}$",
        description="A commit of the main branch: changes up to and including it are not "
                    "judged (review starts after it). Default: every commit but the first.")

    @field_validator("paths")
    @classmethod
    def _patterns(cls, paths: list[str]) -> list[str]:
        for index, pattern in enumerate(paths):
            try:
                compile_guard(pattern)
            except GuardError as exc:
                raise spec_error(str(exc), index) from None
        return paths

    @model_validator(mode="after")
    def _enough(self) -> Review:
        if self.approvers and self.min_approvals > len(self.approvers):
            raise spec_error(f"needs {self.min_approvals} approvals but lists only "
                             f"{len(self.approvers)} approvers", "min_approvals")
        return self


#: The event types a policy's ``signatures.writers`` may name (the registered payload
#: types of :mod:`modelsmith.events.types`, which this layer cannot import: a test keeps
#: the two equal), and ``*`` for every type not named.
EVENT_TYPE_NAMES: tuple[str, ...] = (
    "EvalStarted", "EvalCompleted", "FailuresExtracted", "DatasetBuilt", "TrainingStarted",
    "TrainingFailed", "TrainingCompleted", "CandidateRegistered", "OverfittingDetected",
    "PromotionProposed", "PromotionRejected", "Promoted", "MetricsObserved", "RolledBack",
    "IterationCompleted",
)
_PRINCIPAL = re.compile(r"^[A-Za-z0-9_.@+-][A-Za-z0-9_.@+*?-]*$")


class Signatures(SpecModel):
    """Who may write the event log (see :mod:`modelsmith.events.signing`)."""

    required: bool = Field(
        False, description="Whether this policy's specialists' events must be signed by a "
                           "key in .modelsmith/allowed_signers on main: verify fails and the "
                           "gates ignore an unsigned or wrongly signed event. Default: no (an "
                           "unsigned log still runs; verify counts unsigned events).")
    writers: dict[str, list[NonEmptyStr]] = Field(
        default_factory=dict,
        description="Event type -> the principals (names in .modelsmith/allowed_signers) "
                    "that may sign it; '*' for every type not named. Empty: any listed "
                    "signer may write any type.")

    @field_validator("writers")
    @classmethod
    def _types(cls, writers: dict[str, list[str]]) -> dict[str, list[str]]:
        for kind, names in writers.items():
            if kind != "*" and kind not in EVENT_TYPE_NAMES:
                close = [n for n in EVENT_TYPE_NAMES if n.lower() == kind.lower()]
                hint = (f" (did you mean {close[0]}?)" if close
                        else f"; event types are {', '.join(EVENT_TYPE_NAMES)} and '*'")
                raise spec_error(f"unknown event type {kind!r}{hint}", kind)
            for index, name in enumerate(names):
                if not _PRINCIPAL.match(name):
                    raise spec_error(f"{name!r} is not a principal of an allowed-signers "
                                     "file (no spaces, commas or quotes)", kind, index)
        return writers


#: How a specialist's first version gets the evidence its first promotion needs, when no
#: version holds production or canary (there is no live traffic to mirror).
BootstrapMode = Literal["replay", "approval", "off"]


class PolicySpec(SpecModel):
    gates: Gates = Field(default_factory=Gates)
    stages: list[Stage] = Field(min_length=1)
    rollback: Rollback
    bootstrap: BootstrapMode = Field(
        "replay",
        description=(
            "How a specialist's first version leaves shadow, with nothing in production or "
            "canary to mirror. 'replay': the shadow answers requests that carry a "
            "'reference' (replayed, labelled traffic), scored against it; those answers are "
            "the shadow's observed traffic. 'approval': no bootstrap traffic; the first "
            "canary promotion needs an approved change instead. 'off': neither."
        ),
    )

    review: Review = Field(
        default_factory=Review,
        description="Which changes to suites, policies and specialists need an approved "
                    "merge before the specialists they concern may be promoted.")
    signatures: Signatures = Field(
        default_factory=Signatures,
        description="Whether events must be signed, and which signers may write which event "
                    "types (e.g. only the reconciler's key may append Promoted).")

    @field_validator("stages")
    @classmethod
    def _ordered(cls, stages: list[Stage]) -> list[Stage]:
        names = [stage.name for stage in stages]
        if dupes := unique_violations(names):
            raise spec_error(f"stage '{names[dupes[0]]}' appears twice", dupes[0], "name")
        ranks = [STAGE_ORDER.index(name) for name in names]
        for index in range(1, len(ranks)):
            if ranks[index] < ranks[index - 1]:
                raise spec_error(
                    f"stage '{names[index]}' comes after '{names[index - 1]}'; "
                    "stages run in the order shadow, canary, production",
                    index,
                    "name",
                )
        if "production" not in names:
            raise spec_error("a production stage is required")
        return stages

    def stage(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)


class PromotionPolicy(Document):
    """A document in ``policies/`` (conventionally ``promotion.yaml``)."""

    kind: Literal["PromotionPolicy"]
    spec: PolicySpec


# --------------------------------------------------------------------------- RoutingTable


class KeywordCondition(SpecModel):
    """Whole-word, case-insensitive keyword sets."""

    any: list[NonEmptyStr] = Field(default_factory=list, description="At least one present.")
    all: list[NonEmptyStr] = Field(default_factory=list, description="Every one present.")

    @model_validator(mode="after")
    def _some(self) -> KeywordCondition:
        if not self.any and not self.all:
            raise spec_error("list keywords under 'any' or 'all'")
        return self


class LengthCondition(SpecModel):
    """Bounds on the request length in characters."""

    min: NonNegativeInt | None = None
    max: PositiveInt | None = None

    @model_validator(mode="after")
    def _bounds(self) -> LengthCondition:
        if self.min is None and self.max is None:
            raise spec_error("set min or max (or both)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise spec_error(f"min ({self.min}) is greater than max ({self.max})", "min")
        return self


class RuleCondition(SpecModel):
    """Every condition given must hold; no learned component."""

    meta: dict[str, str] | None = Field(None, description="Request metadata equality.")
    keywords: KeywordCondition | None = None
    regex: str | None = Field(
        None,
        description="A regex searched in the request text (RE2 syntax: linear time, no "
        "lookarounds or backreferences).",
    )
    length: LengthCondition | None = None
    task: NonEmptyStr | None = Field(None, description="Task label given by the caller.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            compile_regex(regex)
        return regex

    @model_validator(mode="after")
    def _some(self) -> RuleCondition:
        if all(
            value is None
            for value in (self.meta, self.keywords, self.regex, self.length, self.task)
        ):
            raise spec_error(
                "a rule needs at least one condition (meta, keywords, regex, length, task)"
            )
        return self

    @cached_property
    def compiled_regex(self) -> SpecRegex | None:
        return compile_regex(self.regex) if self.regex is not None else None


class RoutingRule(SpecModel):
    name: Name
    when: RuleCondition
    route: Name = Field(description="The specialist that serves a matching request.")


class RoutingSpec(SpecModel):
    rules: list[RoutingRule] = Field(default_factory=list, description="First match wins.")
    default: Name | None = Field(
        None, description="Specialist for unmatched requests; null rejects them."
    )

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        names = [rule.name for rule in rules]
        if dupes := unique_violations(names):
            raise spec_error(f"rule name '{names[dupes[0]]}' is used twice", dupes[0], "name")
        return rules


class RoutingTable(Document):
    """A document in ``policies/`` (conventionally ``routing.yaml``); at most one per repo."""

    kind: Literal["RoutingTable"]
    spec: RoutingSpec
