"""The deterministic router: first match wins, every condition kind, the default or a
rejection, ``explain``, rules no request can reach (validation), and ``modelsmith route``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from modelsmith.cli import cli
from modelsmith.serving.router import NoRoute, Request, Router, shadowed
from modelsmith.specs import SpecError, load_repository
from modelsmith.specs.models import RoutingSpec

TABLE = RoutingSpec.model_validate({"rules": [
    {"name": "by-task", "when": {"task": "triage"}, "route": "triage"},
    {"name": "vip", "when": {"meta": {"tier": "gold"}, "keywords": {"any": ["refund"]}},
     "route": "billing-vip"},
    {"name": "refunds", "when": {"keywords": {"any": ["refund", "chargeback"]}},
     "route": "billing"},
    {"name": "legal", "when": {"keywords": {"all": ["contract", "clause"]}}, "route": "legal"},
    {"name": "bids", "when": {"regex": r"(?i)\bctr=", "length": {"max": 100}},
     "route": "rtb"},
    {"name": "short", "when": {"length": {"max": 5}}, "route": "smalltalk"},
], "default": "general"})


@pytest.fixture
def router():
    return Router(TABLE.rules, TABLE.default)


@pytest.mark.parametrize(("text", "meta", "task", "expected"), [
    ("anything", {}, "triage", ("triage", "by-task")),
    ("I want a REFUND now", {"tier": "gold"}, None, ("billing-vip", "vip")),
    ("I want a refund now", {"tier": "silver"}, None, ("billing", "refunds")),
    ("chargeback filed", {}, None, ("billing", "refunds")),
    ("refunding is not a keyword", {}, None, ("general", None)),  # whole words only
    ("the Clause of the contract", {}, None, ("legal", "legal")),
    ("a contract only", {}, None, ("general", None)),
    ("domain=x ctr=0.4%", {}, None, ("rtb", "bids")),
    ("ctr=" + "x" * 200, {}, None, ("general", None)),  # too long for the bids rule
    ("hi", {}, None, ("smalltalk", "short")),
])
def test_first_matching_rule_wins(router, text, meta, task, expected):
    decision = router.route(Request(text, meta, task))
    assert (decision.specialist, decision.rule) == expected
    assert router.route(Request(text, meta, task)) == decision  # deterministic


def test_no_default_rejects_and_explain_says_why(router):
    strict = Router(TABLE.rules, None)
    with pytest.raises(NoRoute):
        strict.route(Request("nothing matches this text at all"))
    steps = router.explain(Request("I want a refund", {"tier": "silver"}))
    assert steps == [
        ("by-task", "triage", "task is None, not 'triage'"),
        ("vip", "billing-vip", "meta tier='silver', not 'gold'"),
        ("refunds", "billing", None),
    ]


def test_rules_no_request_can_reach_are_found():
    rules = RoutingSpec.model_validate({"rules": [
        {"name": "refunds", "when": {"keywords": {"any": ["refund", "chargeback"]}},
         "route": "a"},
        {"name": "refund-gold", "when": {"keywords": {"all": ["refund"]},
                                         "meta": {"tier": "gold"}}, "route": "b"},
        {"name": "chargebacks", "when": {"keywords": {"any": ["chargeback"]}}, "route": "c"},
        {"name": "long", "when": {"length": {"min": 10}}, "route": "d"},
        {"name": "longer", "when": {"length": {"min": 20, "max": 50}}, "route": "e"},
        {"name": "shorter", "when": {"length": {"max": 9}}, "route": "f"},
    ]}).rules
    assert shadowed(rules) == [(1, 0), (2, 0), (4, 3)]


def test_validation_names_a_shadowed_rule_with_its_line(demo_files):
    path = demo_files / "policies" / "routing.yaml"
    path.write_text(path.read_text().replace(
        "  default: rtb-quality",
        "    - name: rtb-again\n      when:\n        keywords:\n          any: [bid]\n"
        "      route: rtb-quality\n  default: rtb-quality"))
    with pytest.raises(SpecError) as failed:
        load_repository(demo_files)
    (issue,) = failed.value.issues
    assert issue.file.endswith("routing.yaml") and issue.line == 24
    assert issue.message == ("rule 'rtb-again' can never match: rule 'rtb-keywords' before "
                             "it matches every request it would")


def test_modelsmith_route_explains(demo_repo):
    result = CliRunner().invoke(cli, ["-C", str(demo_repo), "route",
                                      "domain=news.example ctr=0.7% floor=$1.20", "--explain"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "     rtb-task (rtb-quality): task is None, not 'rtb-quality'",
        "  -> rtb-bids (rtb-quality): matched",
        "rtb-quality (rule rtb-bids)"]
    agents = json.loads(CliRunner().invoke(cli, ["-C", str(demo_repo), "route", "bid request",
                                                 "--meta", "tier=gold", "--json"]).output)
    assert (agents["specialist"], agents["rule"]) == ("rtb-quality", "rtb-keywords")
    bad = CliRunner().invoke(cli, ["-C", str(demo_repo), "route", "x", "--meta", "novalue"])
    assert bad.exit_code == 2 and "is not KEY=VALUE" in bad.output


@pytest.mark.parametrize(("pattern", "literal"), [
    (r"\bref-5-\d+\b", "ref-5-"), (r"domain=\S+ ctr=", "domain="), (r"abc|abd", "ab"),
    (r"a(bc)?de", "de"), (r"(?i)\bdomain=", None), (r"a|b", None), (r"\d+", None)])
def test_a_regex_rule_is_prefiltered_by_the_text_it_requires(pattern, literal):
    import re

    from modelsmith.serving.router import required_literal

    assert required_literal(re.compile(pattern)) == literal
    rules = RoutingSpec.model_validate({"rules": [
        {"name": "r", "when": {"regex": pattern}, "route": "x"}], "default": "d"}).rules
    router = Router(rules, "d")
    for text in ("ref-5-12", "domain=a ctr=1", "abd", "ade", "xyz", "DOMAIN=b", "42", "b"):
        expected = "x" if re.search(pattern, text) else "d"
        assert router.route(Request(text)).specialist == expected, text
