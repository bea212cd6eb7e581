"""Text as it is generated: what a backend hands a request's listener, piece by piece.

A backend that decodes token by token calls :meth:`TextStream.update` with a row's whole
decoded text after every step; the stream passes on only its growth, holding back what may
still change: a trailing replacement character (half of a multi-byte character), trailing
whitespace (a tokenizer's clean-up may drop a space before punctuation), and a tail that
could still grow into one of the request's stop strings. Once a stop string appears, the
text before it is final and nothing after it is passed on. :meth:`TextStream.close` passes
on the rest and returns the answer's text, always the concatenation of what the listener
got -- so nothing streamed is later taken back.

A listener that raises (its caller went away) is dropped; the generation goes on.
Importing this module imports no ML library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import Generation

#: Called with each new piece of a request's text.
Listener = Callable[[str], None]


def hold_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could still begin one of ``stops``."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """One request's text on its way to ``listener``."""

    def __init__(self, listener: Listener | None, stops: Sequence[str] = ()) -> None:
        self.listener = listener
        self.stops = tuple(s for s in stops if s)
        self.sent = ""
        #: a stop string was seen: the text is final
        self.stopped = False

    def _send(self, piece: str) -> None:
        if not piece:
            return
        self.sent += piece
        if self.listener is None:
            return
        try:
            self.listener(piece)
        except Exception:  # the caller went away: the generation goes on without it
            self.listener = None

    def update(self, text: str) -> None:
        """``text``: everything decoded so far (stop strings not yet trimmed)."""
        if self.stopped:
            return
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            safe, self.stopped = text[:min(cuts)], True
        else:
            safe = text.rstrip("\ufffd").rstrip()
            safe = safe[:len(safe) - hold_back(safe, self.stops)]
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self._send(safe[len(self.sent):])

    def close(self, final: str) -> str:
        """Pass on the rest of ``final`` (the answer's text, stop strings trimmed); the text
        the listener got in all, which is ``final`` unless the decoder revised text that
        was already passed on (then what was passed on stands, and ``final``'s tail past
        it follows)."""
        self._send(final[len(self.sent):])
        return self.sent


def emit_whole(listeners: Sequence[Listener | None] | None,
               generations: Sequence[Generation]) -> None:
    """For a backend that cannot stream: each listener gets its whole text at the end."""
    for listener, generation in zip(listeners or (), generations, strict=False):
        if listener is not None and generation.text:
            TextStream(listener).close(generation.text)
