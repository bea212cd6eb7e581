"""Label answers at one forward pass (``inference.labels``): the trie walk on its own, then
the transformers backend on the demo suite's label specialist (rtb-quality), where every
scenario greedy generation answers with a valid label must get that same label from label
scoring; the eval and the service ask for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsmith.evaluation.criteria import extract_label
from modelsmith.evaluation.runner import EvalSettings, run_suite
from modelsmith.inference.base import Generation, GenerationRequest
from modelsmith.inference.labels import LabelTrie, label_forms, walk
from modelsmith.specs import load_clusters, load_repository

REPO_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------- the walk alone

# Four labels, three sharing the first token (7), two sharing two (7, 8); "AB" completes at
# a node that "ABD" continues.
SEQUENCES = [("AB", (7, 8)), ("ABD", (7, 8, 9)), ("AC", (7, 5)), ("E", (4,))]


def logits(table: dict[tuple[int, ...], dict[int, float]], trie: LabelTrie):
    """``best`` and ``score`` for :func:`walk` from a table of logits per path (tokens not
    listed score -10; the argmax is the top of the listed ones)."""
    def row(node: int) -> dict[int, float]:
        return table[trie.path[node]]

    return (lambda node: max(row(node), key=row(node).get),
            lambda node, token: row(node).get(token, -10.0))


def choose(table):
    trie = LabelTrie.build(SEQUENCES)
    return walk(trie, *logits(table, trie))


def test_the_walk_follows_the_model_while_it_writes_a_label():
    # greedy writes 7 8 then something that continues no label: "AB", as greedy would
    got = choose({(): {7: 3.0, 4: 1.0}, (7,): {8: 2.0, 5: 1.0}, (7, 8): {0: 5.0, 9: 1.0}})
    assert (got.label, got.tokens, got.forced) == ("AB", (7, 8), False)
    # greedy continues the completed "AB" into "ABD"
    got = choose({(): {7: 3.0}, (7,): {8: 2.0}, (7, 8): {9: 5.0, 0: 1.0}})
    assert (got.label, got.tokens, got.forced) == ("ABD", (7, 8, 9), False)
    # a one-token label needs no logits after it
    got = choose({(): {4: 3.0, 7: 1.0}})
    assert (got.label, got.tokens, got.forced) == ("E", (4,), False)


def test_the_walk_picks_the_best_label_where_the_model_leaves_them():
    # the model's first choice (0) starts no label: the best first token that does is 7
    got = choose({(): {0: 9.0, 7: 2.0, 4: 1.0}, (7,): {5: 3.0, 8: 1.0}})
    assert (got.label, got.forced) == ("AC", True)
    # off the labels half-way (after 7, a token no label continues): the better of 8 and 5
    got = choose({(): {7: 3.0}, (7,): {0: 9.0, 8: 1.0, 5: 2.0}})
    assert (got.label, got.forced) == ("AC", True)
    # a tie goes to the model's own argmax
    got = choose({(): {4: 3.0, 7: 3.0}, (7,): {8: 1.0, 5: 1.0}, (7, 8): {0: 1.0}})
    assert got.label == "E" and not got.forced


def test_the_trie_keeps_the_first_label_of_a_shared_form_and_covers_every_choice():
    trie = LabelTrie.build([*SEQUENCES, ("other", (7, 8)), ("", ())])
    ends = {trie.path[n]: trie.label[n] for n in range(len(trie.label)) if trie.label[n]}
    assert ends == {(7, 8): "AB", (7, 8, 9): "ABD", (7, 5): "AC", (4,): "E"}
    # Rows under 7: the logits after 7 and after 7 8 are where choices are made; under 4,
    # none (a one-token label).
    assert trie.rows(7) == [(7, 8)] and trie.rows(4) == []


def test_label_forms_cover_spacing_and_case_and_keep_each_label_as_written():
    forms = label_forms(["ACCEPT", "Reject"])
    assert forms[:4] == [(" ACCEPT", "ACCEPT"), ("ACCEPT", "ACCEPT"), (" Reject", "Reject"),
                         ("Reject", "Reject")]
    assert dict(forms) == {
        " ACCEPT": "ACCEPT", "ACCEPT": "ACCEPT", " accept": "ACCEPT", "accept": "ACCEPT",
        " Accept": "ACCEPT", "Accept": "ACCEPT", " Reject": "Reject", "Reject": "Reject",
        " REJECT": "Reject", "REJECT": "Reject", " reject": "Reject", "reject": "Reject"}
    # Labels that differ only in case: each keeps its own spelling.
    assert dict(label_forms(["yes", "YES"]))["YES"] == "YES"


# ------------------------------------------------------------- the backend, demo suite


def demo():
    repo = load_repository(REPO_ROOT)
    specialist = repo.specialists["rtb-quality"]
    return repo, specialist, repo.suite_for(specialist)


def label_of(text: str, labels: tuple[str, ...]) -> str | None:
    """The label ``text`` answers as the eval reads it (first word, case-blind), or None."""
    got = extract_label(text).casefold()
    return next((label for label in labels if label.casefold() == got), None)


def agreement(backend, prompts: list[str], labels: tuple[str, ...], system: str | None = None,
              max_new_tokens: int = 4) -> tuple[int, int, list[Generation]]:
    """(scenarios where greedy generation wrote a valid label, how many of those label
    scoring answered alike, the label-scored generations); every answer is a label."""
    greedy = backend.generate([GenerationRequest(prompt=p, system=system,
                                                 max_new_tokens=max_new_tokens)
                               for p in prompts])
    scored = backend.generate([GenerationRequest(prompt=p, system=system, labels=labels,
                                                 max_new_tokens=max_new_tokens)
                               for p in prompts])
    valid = agree = 0
    for plain, answer in zip(greedy, scored, strict=True):
        assert answer.text in labels and answer.meta["constrained"] == "labels"
        assert 1 <= answer.completion_tokens <= max_new_tokens
        wrote = label_of(plain.text, labels)
        if wrote is not None:
            valid += 1
            agree += wrote == answer.text
            assert not answer.meta["forced"], (plain.text, answer)
    return valid, agree, scored


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    from modelsmith.artifacts import resolve_model

    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    return resolve_model("tiny-test", clusters, cache_dir=tmp_path_factory.mktemp("cache"),
                         progress=lambda _m: None)


@pytest.fixture(scope="module")
def taught(tiny_model) -> Iterator:
    """The tiny model, taught in a few seconds to answer the demo suite's bids with its
    labels written without a space (several tokens each: A|CC|EPT, REJ|ECT, sharing the first
    token with other forms), so that greedy generation writes labels -- mostly."""
    import torch

    from modelsmith.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model, threads=1, batch_size=8)
    _, specialist, suite = demo()
    task, tokenizer, model = specialist.spec.task, backend.tokenizer, backend.model
    rows = [(tokenizer(task.render(s.input))["input_ids"],
             tokenizer(s.expected, add_special_tokens=False)["input_ids"]
             + [tokenizer.eos_token_id]) for s in suite.core[40:200]]
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = [rows[(step * 16 + i) % len(rows)] for i in range(16)]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), backend.pad_id)
        target = torch.full((len(batch), width), -100)
        for r, (p, a) in enumerate(batch):
            ids[r, :len(p) + len(a)] = torch.tensor(p + a)
            target[r, len(p):len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, labels=target).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    yield backend
    backend.close()


def test_label_scoring_answers_as_greedy_generation_on_the_demo_suite(taught):
    _, specialist, suite = demo()
    task = specialist.spec.task
    labels = tuple(task.output.labels)
    scenarios = suite.core[:40]  # not among the ones it was taught on
    prompts = [task.render(s.input) for s in scenarios]
    valid, agree, scored = agreement(taught, prompts, labels)
    print(f"tiny model, taught: greedy wrote a valid label on {valid}/{len(prompts)}; "
          f"label scoring agreed on {agree}/{valid}; "
          f"forced on {sum(g.meta['forced'] for g in scored)}")
    assert agree == valid
    assert valid >= len(prompts) // 2  # the comparison is not vacuous
    assert {g.completion_tokens for g in scored} >= {2, 3}  # REJ|ECT and A|CC|EPT
    # Batched answers equal answers given one at a time.
    alone = [taught.generate([GenerationRequest(prompt=p, labels=labels)])[0].text
             for p in prompts[:6]]
    assert alone == [g.text for g in scored[:6]]


def test_an_untaught_model_still_answers_a_label_and_says_it_was_forced(tiny_model):
    from modelsmith.inference.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model, threads=1, batch_size=4)
    try:
        _, specialist, suite = demo()
        task = specialist.spec.task
        labels = tuple(task.output.labels)
        prompts = [task.render(s.input) for s in suite.core[:6]]
        valid, agree, scored = agreement(backend, prompts, labels)
        assert agree == valid
        assert any(g.meta["forced"] for g in scored)  # it writes "::::" after "Verdict:"
    finally:
        backend.close()


def test_label_requests_mix_with_others_and_fall_back_where_scoring_does_not_apply(taught):
    _, specialist, _ = demo()
    prompt = specialist.spec.task.render("domain=news.example ctr=1.0% floor=$3.43")
    labels = ("ACCEPT", "REJECT")
    plain = GenerationRequest(prompt=prompt, max_new_tokens=4)
    requests = [
        GenerationRequest(prompt=prompt, labels=labels),
        plain,
        # sampled: generated, labels or not
        GenerationRequest(prompt=prompt, labels=labels, temperature=1.0, seed=3),
        # no form of these labels fits in one token: generated
        GenerationRequest(prompt=prompt, labels=("ACCEPT-NOW", "REJECT-NOW"), max_new_tokens=1),
    ]
    out = taught.generate(requests)
    assert out[0].meta["constrained"] == "labels" and out[0].text in labels
    assert "constrained" not in out[1].meta
    assert out[1].text == taught.generate([plain])[0].text
    assert "constrained" not in out[2].meta
    assert "constrained" not in out[3].meta and out[3].completion_tokens == 1


# ----------------------------------------------------------- the eval and the service ask


class Recording:
    """A backend that answers every request with the first label and keeps the requests."""

    name, model_ref = "recording", "recording"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def generate(self, requests, progress=None):
        self.requests.extend(requests)
        return [Generation(" ACCEPT", 1, 1.0) for _ in requests]

    def count_tokens(self, text):
        return len(text.split())

    def close(self):
        pass


def test_the_eval_asks_for_the_specialists_labels():
    _, specialist, suite = demo()
    backend = Recording()
    run_suite(specialist, suite, backend, EvalSettings(limit=2, latency_probes=0))
    assert backend.requests
    assert {r.labels for r in backend.requests} == {("ACCEPT", "REJECT")}


class Generating:
    """The same backend, asked to generate: the requests' labels dropped."""

    name, model_ref = "generating", "generating"

    def __init__(self, backend) -> None:
        self.backend = backend

    def generate(self, requests, progress=None):
        return self.backend.generate([dataclasses.replace(r, labels=()) for r in requests],
                                     progress)

    def count_tokens(self, text):
        return self.backend.count_tokens(text)


@pytest.mark.parametrize("model", ["taught", "untaught"])
def test_an_eval_by_label_scoring_scores_what_greedy_generation_scores(model, taught,
                                                                       tiny_model):
    """Per scenario, variants included: the same score and pass, whether the label was
    the model's own (taught) or forced (untaught: a forced label scores as no answer)."""
    from modelsmith.inference.transformers_backend import TransformersBackend

    backend = taught if model == "taught" else TransformersBackend(tiny_model, threads=1)
    _, specialist, suite = demo()
    settings = EvalSettings(limit=12, latency_probes=0)
    scored = run_suite(specialist, suite, backend, settings)
    generated = run_suite(specialist, suite, Generating(backend), settings)
    assert [(r.id, r.variant, r.score, r.passed, r.format_ok) for r in scored] == \
        [(r.id, r.variant, r.score, r.passed, r.format_ok) for r in generated]
    passed = sum(r.passed for r in scored)
    assert passed > len(scored) // 2 if model == "taught" else passed == 0
    if model == "untaught":
        assert all(o in ("ACCEPT", "REJECT") for r in scored for o in r.outputs)
        assert all(c.reason.startswith("forced ") for r in scored for c in r.criteria)
        backend.close()


def test_the_service_asks_for_the_specialists_labels(demo_repo, tmp_path, monkeypatch):
    from modelsmith.events.types import Promoted
    from test_serving_server import fleet, service_of

    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    fleet(demo_repo, [Promoted(version="v1", stage="production")])
    backend = Recording()
    service = service_of(demo_repo, backend_factory=lambda _specialist, _version: backend)
    try:
        answer = service.complete({"model": "rtb-quality", "messages": [
            {"role": "user", "content": "domain=news.example ctr=1.0% floor=$3.43"}]})
    finally:
        service.close()
    assert answer["choices"][0]["message"]["content"].strip() == "ACCEPT"
    assert [r.labels for r in backend.requests] == [("ACCEPT", "REJECT")]


# ------------------------------------------------------------------ SmolLM2 (slow)


@pytest.mark.slow
def test_label_scoring_answers_as_greedy_generation_with_smollm2(request):
    """SmolLM2-135M on the demo suite: untaught, the bare prompt gets no label from greedy
    generation (counted); with six solved bids before it (a few-shot prompt), greedy writes
    labels and label scoring must agree on every one. Run with ``-m slow`` (minutes)."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("loads SmolLM2 and answers 2 x 96 prompts: run with -m slow")
    from modelsmith.artifacts import resolve_model
    from modelsmith.inference.transformers_backend import TransformersBackend

    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    backend = TransformersBackend(resolve_model("smollm2-135m", clusters), threads=1,
                                  batch_size=16)
    try:
        _, specialist, suite = demo()
        task = specialist.spec.task
        labels = tuple(task.output.labels)
        prompts = [task.render(s.input) for s in suite.core[:48]]
        bare_valid, bare_agree, _ = agreement(backend, prompts, labels)
        shots = "\n\n".join(f"{task.render(s.input)} {s.expected}" for s in suite.core[-6:])
        valid, agree, scored = agreement(backend, prompts, labels, system=shots + "\n")
        print(f"SmolLM2 bare prompt: greedy valid {bare_valid}/{len(prompts)}, agreed "
              f"{bare_agree}; few-shot: greedy valid {valid}/{len(prompts)}, agreed {agree}, "
              f"forced {sum(g.meta['forced'] for g in scored)}")
        assert bare_agree == bare_valid and agree == valid
        assert valid >= len(prompts) // 2
    finally:
        backend.close()
