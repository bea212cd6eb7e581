"""The leakage guard: no training row may be a held-out input in any wording.

Near-duplicates among training rows are textual only (padded n-gram Jaccard): deliberate
rephrasings (variants, teacher rows) stay, because they teach robustness. The leakage guard
is stricter, because a held-out input in any wording voids the held-out gate. A row leaks
when, against one held-out input (or held-out variant), it is

- the same normalised text;
- n-gram Jaccard >= threshold; or n-gram containment (shared n-grams over those of the
  shorter text) >= threshold, when the shorter text is a passage of a clearly longer one
  (at most threshold times its n-grams: at equal lengths one changed word still leaves
  ~80% shared);
- a *restatement*: the same numbers (as a multiset), every informative word of one text
  present in the other, in any order, and lengths within a factor of two. Informative
  words are those not in more than half of the suite's scenario texts (field names such as
  ``domain`` or ``ctr`` are structural). This catches reordered fields, added words and
  prose rewordings that keep every value; a bid with any value changed is another bid.
"""

from __future__ import annotations

from collections import Counter

from modelsmith.evaluation.criteria import FLOAT_EPS
from modelsmith.specs import LoadedSuite

from .similarity import GramRanks, TextFeatures, text_features, text_tokens

#: A restatement's texts differ in length by at most this factor.
RESTATE_MIN_LENGTH_RATIO = 0.5
#: Words in more than this share of a suite's scenario texts are structural (field names).
STRUCTURAL_DF = 0.5
#: Below this many scenario texts no word is called structural: too few to tell.
STRUCTURAL_MIN_TEXTS = 20


def structural_words(suite: LoadedSuite) -> frozenset[str]:
    """Words in more than :data:`STRUCTURAL_DF` of the suite's scenario texts."""
    texts = [text for sc in suite.scenarios for text in (sc.input, *sc.variants)]
    if len(texts) < STRUCTURAL_MIN_TEXTS:
        return frozenset()
    df: Counter[str] = Counter()
    for text in texts:
        df.update({t for t in text_tokens(text) if not t[0].isdigit()})
    return frozenset(w for w, c in df.items() if c > STRUCTURAL_DF * len(texts))


def heldout_texts(suite: LoadedSuite, n: int) -> list[tuple[str, TextFeatures]]:
    """``(scenario id, features)`` of every held-out input and held-out variant."""
    return split_texts(suite, ("heldout",), n)


def split_texts(suite: LoadedSuite, splits: tuple[str, ...],
                n: int) -> list[tuple[str, TextFeatures]]:
    """``(scenario id, features)`` of every input and variant of the ``splits``."""
    return [(sc.id, text_features(text, n)) for sc in suite.scenarios if sc.split in splits
            for text in (sc.input, *sc.variants)]


class LeakageIndex:
    """Held-out texts indexed for the three leakage tests (see the module docstring)."""

    def __init__(self, items: list[tuple[str, TextFeatures]], threshold: float,
                 structural: frozenset[str], ranks: GramRanks, word_df: Counter[str]) -> None:
        self.items, self.threshold, self.structural = items, threshold, structural
        self.ranks, self.word_df = ranks, word_df
        self.exact: dict[str, int] = {}
        self.grams: dict[str, list[int]] = {}
        self.prefixes: dict[str, list[int]] = {}
        self.anchors: dict[tuple[tuple[str, ...], str], list[int]] = {}
        self.words: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for i, (_, text) in enumerate(items):
            self.exact.setdefault(text.key, i)
            for g in text.grams:
                self.grams.setdefault(g, []).append(i)
            for g in ranks.prefix(text.grams, threshold):
                self.prefixes.setdefault(g, []).append(i)
            self.anchors.setdefault((text.numbers, self._anchor(text)), []).append(i)
            for w in (*text.words, ""):
                self.words.setdefault((text.numbers, w), []).append(i)

    def _info(self, text: TextFeatures) -> frozenset[str]:
        return (text.words - self.structural) or text.words

    def _anchor(self, text: TextFeatures) -> str:
        info = self._info(text)
        return min(info, key=lambda w: (self.word_df[w], w)) if info else ""

    def _restates(self, a: TextFeatures, b: TextFeatures) -> bool:
        """Whether ``a`` says all that ``b`` says: same numbers, b's informative words."""
        if a.numbers != b.numbers or not (a.numbers or b.words):
            return False
        if min(a.length, b.length) < RESTATE_MIN_LENGTH_RATIO * max(a.length, b.length):
            return False
        return self._info(b) <= a.words

    def match(self, text: TextFeatures) -> tuple[str, str] | None:
        """``(held-out id, how)`` of the first held-out text ``text`` leaks, or None."""
        hit = self.exact.get(text.key)
        if hit is not None:
            return self.items[hit][0], "identical after normalisation"
        candidates: set[int] = set()
        for g in self.ranks.prefix(text.grams, self.threshold):
            candidates.update(self.grams.get(g, ()))
        for g in text.grams:
            candidates.update(self.prefixes.get(g, ()))
        for i in sorted(candidates):
            other = self.items[i][1]
            inter = len(text.grams & other.grams)
            union = len(text.grams) + len(other.grams) - inter
            if inter >= self.threshold * union - FLOAT_EPS:
                return self.items[i][0], f"n-gram Jaccard {inter / union:.2f}"
            smaller, larger = sorted((len(text.grams), len(other.grams)))
            # Only a clearly shorter text is a passage of the other: at equal lengths one
            # changed word still leaves ~80% of the n-grams shared (that is Jaccard's case).
            if (smaller <= self.threshold * larger + FLOAT_EPS
                    and inter >= self.threshold * smaller - FLOAT_EPS):
                return self.items[i][0], f"n-gram containment {inter / smaller:.2f}"
        restated: set[int] = set()
        for w in (*text.words, ""):
            restated.update(self.anchors.get((text.numbers, w), ()))
        restated.update(self.words.get((text.numbers, self._anchor(text)), ()))
        for i in sorted(restated):
            other = self.items[i][1]
            if self._restates(text, other) or self._restates(other, text):
                return self.items[i][0], "restates it (same numbers and informative words)"
        return None
