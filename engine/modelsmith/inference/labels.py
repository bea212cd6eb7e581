"""Label answers at one forward pass: constrained greedy decoding over a request's labels.

A greedy request with ``labels`` is answered by scoring the labels instead of generating:

1. every label is tokenized the ways a model may write it after the prompt (the *forms*:
   with and without a leading space, as written, UPPER, lower and Capitalised — the eval's
   label parser ignores case and surrounding whitespace), in context: the tokens the form
   adds after the prompt's last word (a chat template's assistant prefix included);
   forms longer than ``max_new_tokens`` are left out, as greedy decoding could not write them;
2. one forward pass over the (batched, left-padded) prompts fills the KV cache and gives the
   logits of the first label token;
3. the first token is chosen from those logits; one batched forward pass over the tokens
   of the forms that begin with it, on that cache, gives the logits after every prefix a
   choice is left at (a form's last token needs no pass; a one-token form no second pass);
4. the :class:`LabelTrie` of the forms is walked greedily (:func:`walk`): at each node the
   child token with the highest logit; at a node that completes a label the walk stops
   unless the model's own argmax is one of the children.

The walk takes the model's argmax wherever it continues a form, so whenever greedy
generation writes a label in one of these forms (and ends it: EOS, a space, punctuation,
anything that continues no form) the answer is that same label. Where greedy decoding would
leave every form, the walk picks the best-scoring continuation instead and the generation's
``meta["forced"]`` says so. Every answer is a label, in the spelling the request lists it;
``completion_tokens`` counts the tokens of the form chosen. Stop strings do not apply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .base import Generation, GenerationRequest, InferenceError

if TYPE_CHECKING:
    from .transformers_backend import TransformersBackend

#: At most this much of a prompt's end is tokenized with a label form after it.
TAIL_CHARS = 64
_LAST_WORD = re.compile(r"\s*\S*\Z")


def scored(request: GenerationRequest) -> bool:
    """Whether ``request`` is answered by label scoring: it lists labels and is greedy."""
    return bool(request.labels) and request.temperature <= 0


def label_forms(labels: Iterable[str]) -> list[tuple[str, str]]:
    """``(form, label)`` pairs: each label as a model may write it, the label as written
    first (so a form two labels share goes to the one spelled that way)."""
    labels = list(labels)
    casings: tuple[Callable[[str], str], ...] = (
        lambda s: s, str.upper, str.lower, str.capitalize)
    forms: dict[str, str] = {}
    for case in casings:
        for label in labels:
            for space in (" ", ""):
                forms.setdefault(space + case(label), label)
    return list(forms.items())


@dataclass
class LabelTrie:
    """Token sequences of label forms as a trie. Node 0 is the root (the prompt's end)."""

    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    label: list[str | None] = field(default_factory=lambda: [None])
    #: the tokens from the root to each node
    path: list[tuple[int, ...]] = field(default_factory=lambda: [()])

    @classmethod
    def build(cls, sequences: Iterable[tuple[str, Sequence[int]]]) -> LabelTrie:
        """The trie of ``(label, tokens)`` pairs; the first label for a sequence keeps it."""
        trie = cls()
        for label, tokens in sequences:
            if not tokens:
                continue
            node = 0
            for token in tokens:
                child = trie.children[node].get(token)
                if child is None:
                    child = len(trie.children)
                    trie.children[node][token] = child
                    trie.children.append({})
                    trie.label.append(None)
                    trie.path.append((*trie.path[node], token))
                node = child
            if trie.label[node] is None:
                trie.label[node] = label
        return trie

    def rows(self, first: int) -> list[tuple[int, ...]]:
        """Token rows whose logits cover every node below the root's child ``first`` that a
        choice is made at: the paths to those of them no deeper one extends."""
        open_nodes = [n for n in range(1, len(self.children))
                      if self.children[n] and self.path[n][0] == first]
        deepest = [n for n in open_nodes
                   if not any(self.children[c] for c in self.children[n].values())]
        return [self.path[n] for n in deepest]


@dataclass(frozen=True)
class Choice:
    """The label the walk ended at, the tokens of the form it took, and whether it had to
    override the model's own argmax on the way."""

    label: str
    tokens: tuple[int, ...]
    forced: bool


def walk(trie: LabelTrie, best: Callable[[int], int],
         score: Callable[[int, int], float]) -> Choice:
    """Greedy decoding restricted to ``trie``: ``best(node)`` is the model's argmax token
    after ``node``, ``score(node, token)`` that token's logit there. At a node completing a
    label the walk ends unless ``best`` continues some longer form; elsewhere it takes the
    highest-scoring child (:func:`pick`)."""
    node, forced = 0, False
    while True:
        children = trie.children[node]
        top = best(node) if children else None
        done = trie.label[node]
        if done is not None and (not children or top not in children):
            return Choice(done, trie.path[node], forced)
        token = pick(children, top, lambda t, node=node: score(node, t))
        forced = forced or token != top
        node = children[token]


def pick(children: Iterable[int], top: int | None, score: Callable[[int], float]) -> int:
    """The child token with the highest score; the model's argmax ``top`` on a tie."""
    return max(children, key=lambda t: (score(t), t == top))


def label_sequences(tokenizer: Any, labels: Sequence[str], prompt: str,
                    max_tokens: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Each form of ``labels`` as the tokens it adds after ``prompt`` (the rendered prompt
    text; its own tokens where it would change the prompt's), at most ``max_tokens`` of
    them. Only the prompt's tail (:func:`prompt_tail`) is tokenized with it."""
    tail = prompt_tail(prompt)
    base = tokenizer(tail, add_special_tokens=False)["input_ids"]
    forms = label_forms(labels)
    joined = tokenizer([tail + form for form, _ in forms], add_special_tokens=False)["input_ids"]
    out = []
    for (form, label), ids in zip(forms, joined, strict=True):
        if ids[:len(base)] == base:
            tokens = tuple(ids[len(base):])
        else:  # the form merged into the prompt's last token: write it on its own
            tokens = tuple(tokenizer(form, add_special_tokens=False)["input_ids"])
        if 0 < len(tokens) <= max_tokens:
            out.append((label, tokens))
    return tuple(out)


def prompt_tail(prompt: str) -> str:
    """The end of ``prompt`` a label written after it can merge with: its last word with
    the whitespace before it (tokenizers split words there), at most ``TAIL_CHARS``."""
    match = _LAST_WORD.search(prompt[-TAIL_CHARS:])
    return match.group(0) if match and match.group(0) else prompt[-TAIL_CHARS:]


BatchFn = Callable[[list[GenerationRequest], list[list[int]], int], list[Generation]]


def answer_batch(backend: TransformersBackend, requests: list[GenerationRequest],
                 encoded: list[list[int]], max_new_tokens: int,
                 generate: BatchFn,
                 scoring: Callable[[], AbstractContextManager[Any]] = nullcontext,
                 ) -> list[Generation]:
    """Answer a batch of label requests by scoring (see the module docs). A row none of
    whose forms fits ``max_new_tokens`` is generated with ``generate`` instead. The
    scoring passes run inside ``scoring()`` (a multi-adapter backend pins the adapter
    that answers there)."""
    # Per batch: prompts that end alike (a task's template) share their forms and trie.
    forms: dict[tuple[tuple[str, ...], str], tuple[tuple[str, tuple[int, ...]], ...]] = {}
    tries: dict[tuple[tuple[str, tuple[int, ...]], ...], LabelTrie] = {}
    row_tries: list[LabelTrie | None] = []
    for request in requests:
        tail = prompt_tail(backend._prompt(request))
        key = (tuple(request.labels), tail)
        if key not in forms:
            forms[key] = label_sequences(backend.tokenizer, request.labels, tail,
                                         max_new_tokens)
        sequences = forms[key]
        if sequences and sequences not in tries:
            tries[sequences] = LabelTrie.build(sequences)
        row_tries.append(tries[sequences] if sequences else None)
    out: list[Generation | None] = [None] * len(requests)
    rest = [i for i, trie in enumerate(row_tries) if trie is None]
    if rest:
        for i, generation in zip(rest, generate([requests[i] for i in rest],
                                                [encoded[i] for i in rest], max_new_tokens),
                                 strict=True):
            out[i] = generation
    chosen = [(i, trie) for i, trie in enumerate(row_tries) if trie is not None]
    if chosen:
        started = time.perf_counter()
        try:
            with torch.inference_mode(), scoring():
                choices = _score(backend, [trie for _, trie in chosen],
                                 [encoded[i] for i, _ in chosen])
        except RuntimeError as exc:
            raise InferenceError(
                f"label scoring failed on a batch of {len(chosen)}: {exc} "
                "(out of memory? lower the batch size)"
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        for (i, _), choice in zip(chosen, choices, strict=True):
            out[i] = Generation(
                text=choice.label,
                completion_tokens=len(choice.tokens),
                latency_ms=latency_ms,
                meta={"constrained": "labels", "forced": choice.forced,
                      "batch_size": len(requests), "prompt_tokens": len(encoded[i])},
            )
    return [g for g in out if g is not None]


@dataclass(frozen=True)
class _Logits:
    """What one prompt's walk reads: the logits after its prompt and after label tokens."""

    root: torch.Tensor  # (vocab,)
    after: torch.Tensor | None  # (rows, width, vocab), all prompts' label rows
    spots: dict[int, tuple[int, int]]  # node -> (row, position) in ``after``

    def at(self, node: int) -> torch.Tensor:
        if node == 0:
            return self.root
        row, position = self.spots[node]
        return self.after[row, position]  # type: ignore[index]

    def choice(self, trie: LabelTrie) -> Choice:
        return walk(trie, lambda node: int(self.at(node).argmax()),
                    lambda node, token: float(self.at(node)[token]))


def _score(backend: TransformersBackend, tries: list[LabelTrie],
           encoded: list[list[int]]) -> list[Choice]:
    """The two forward passes and one walk per prompt."""
    model, device = backend.model, backend.device
    input_ids, attention = backend._pad_left(encoded)
    # Positions as generate() numbers them under left padding, so the logits are its own.
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    first = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                  position_ids=positions.to(device), use_cache=True, logits_to_keep=1)
    root = first.logits[:, -1, :].float().cpu()
    owners: list[int] = []  # per label row: its prompt
    rows: list[tuple[int, ...]] = []
    spots: list[dict[int, tuple[int, int]]] = []
    for index, trie in enumerate(tries):
        # The first token is chosen now: only the forms that begin with it are scored.
        first_token = pick(trie.children[0], int(root[index].argmax()),
                           lambda t, index=index: float(root[index, t]))
        spot: dict[int, tuple[int, int]] = {}
        for tokens in trie.rows(first_token):
            node = 0
            for position, token in enumerate(tokens):
                node = trie.children[node][token]
                spot.setdefault(node, (len(rows), position))
            owners.append(index)
            rows.append(tokens)
        spots.append(spot)
    after = _continue(backend, first, attention, encoded, owners, rows) if rows else None
    return [_Logits(root[index], after, spots[index]).choice(trie)
            for index, trie in enumerate(tries)]


def _continue(backend: TransformersBackend, first: Any, attention: torch.Tensor,
              encoded: list[list[int]], owners: list[int],
              rows: list[tuple[int, ...]]) -> torch.Tensor:
    """Logits after each label token of ``rows``, each row on its prompt's cached keys and
    values (one batched pass)."""
    device = backend.device
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), backend.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        tokens[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    owner = torch.tensor(owners, dtype=torch.long)
    lengths = torch.tensor([len(encoded[o]) for o in owners], dtype=torch.long)
    positions = lengths[:, None] + torch.arange(width)[None, :]
    # transformers 5 renamed past_key_values to cache (argument and output alike)
    name = "cache" if getattr(first, "cache", None) is not None else "past_key_values"
    cache = getattr(first, name)
    cache.batch_select_indices(owner.to(device))  # each row on its own prompt's cache
    out = backend.model(input_ids=tokens.to(device),
                        attention_mask=torch.cat([attention[owner], mask], dim=1).to(device),
                        position_ids=positions.to(device), use_cache=True, **{name: cache})
    return out.logits.float().cpu()
