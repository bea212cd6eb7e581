"""What any HTTP front end of the :class:`~.service.Service` checks before the service sees
a request: the bearer token, the declared body length, and the JSON body itself.

Kept apart from the server (:mod:`.http`) so that another front end applies the same rules:
a bad request is a :class:`~.service.ServeError` naming what is wrong (the header, the
field), never an exception from deep inside the service.

- ``Authorization``: the scheme is case-insensitive (RFC 7235), the token is compared in
  constant time.
- ``Content-Length``: digits only, at most ``limit``; a body sent with
  ``Transfer-Encoding`` (chunked) and no length is refused (411), both headers at once too
  (400: the two could disagree about where the body ends).
- The body: UTF-8, a JSON object, no ``NaN``/``Infinity``, arrays and objects nested at
  most :data:`MAX_DEPTH` deep, no lone UTF-16 surrogate (``"\\ud800"``) in any string.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from .service import ServeError

#: Arrays and objects nested deeper than this inside the body are refused.
MAX_DEPTH = 32

_DIGITS = re.compile(r"[0-9]{1,18}")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A lone surrogate can only come from a \u escape: the text itself is valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (always, without a token)."""
    if token is None:
        return True
    parts = (header or "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return False
    given = parts[1].strip()
    try:  # header values arrive decoded as ISO-8859-1: back to the bytes that were sent
        sent = given.encode("latin-1")
    except UnicodeEncodeError:
        sent = given.encode("utf-8", "replace")
    return hmac.compare_digest(sent, token.encode("utf-8"))


def body_length(lengths: Sequence[str], encodings: Sequence[str], limit: int) -> int:
    """The body's length from its ``Content-Length`` header values (every one the request
    sent) and ``Transfer-Encoding`` values, checked against ``limit`` -- before a byte of
    the body is read."""
    if encodings:
        if lengths:
            raise ServeError(400, "the request has both Transfer-Encoding and "
                                  "Content-Length", code="invalid_content_length")
        raise ServeError(411, "send the body with a Content-Length header (chunked "
                              "transfer-encoding is not accepted)", code="length_required")
    if not lengths:
        raise ServeError(411, "the request has a body but no Content-Length header",
                         code="length_required")
    values = {value.strip() for value in lengths}
    if len(values) != 1:
        raise ServeError(400, "the request has conflicting Content-Length headers",
                         code="invalid_content_length")
    (value,) = values
    if not _DIGITS.fullmatch(value):
        raise ServeError(400, f"Content-Length must be a number of bytes, not "
                              f"{value[:40]!r}", code="invalid_content_length")
    length = int(value)
    if length > limit:
        raise ServeError(413, f"the body has {length} bytes; the limit is {limit}",
                         code="body_too_large")
    return length


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object, checked (see the module's rules); a :class:`ServeError`
    (400) naming the field otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServeError(400, f"the body is not UTF-8 (byte {exc.start}: {exc.reason})",
                         code="invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ServeError(400, f"{_deep_field(text)} nests arrays or objects deeper than "
                              f"{MAX_DEPTH} levels", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, NaN, an integer of 5000 digits
        raise ServeError(400, f"the body is not JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ServeError(400, "the body must be a JSON object", code="invalid_json")
    _check(body, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check(body: dict[str, Any], *, strings: bool) -> None:
    """Depth, and (when the text had a surrogate escape) every key and string. Recursive,
    but never deeper than :data:`MAX_DEPTH`."""
    for key, value in body.items():
        if isinstance(value, dict | list) and value and _nests_too_deep(value, 1):
            raise ServeError(400, f"{_name([key])} nests arrays or objects deeper than "
                                  f"{MAX_DEPTH} levels", code="invalid_json")
    if not strings:
        return
    for key, value in body.items():
        where = None
        if not _unicode(key):
            where = f"the key {ascii(key)[:40]}"
        elif (below := _not_unicode(value)) is not None:
            path = [key, *below]  # ends in None: a key of the object it names
            where = _name(path[:-1] if path[-1] is None else path)
        if where is not None:
            raise ServeError(400, f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff): "
                                  "not a Unicode string", code="invalid_unicode")


def _nests_too_deep(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether ``value`` (a container at ``depth``) holds containers deeper than
    :data:`MAX_DEPTH`."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if (kind is list or kind is dict) and (
                depth >= MAX_DEPTH or (item and _nests_too_deep(item, depth + 1))):
            return True
    return False


def _not_unicode(value: Any) -> list[Any] | None:
    """The path to the first string in ``value`` that is not Unicode (a lone surrogate),
    ending in ``None`` when it is a key of the object the path names; else ``None``."""
    if isinstance(value, str):
        return None if _unicode(value) else []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and not _unicode(key):
            return [None]
        below = _not_unicode(item)
        if below is not None:
            return [key, *below]
    return None


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(path: list[Any]) -> str:
    """``'messages[0].content'`` for the path [messages, 0, content]."""
    text = str(path[0])
    for part in path[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"'{text[:200]}'"


def _deep_field(text: str) -> str:
    """Which top-level field of ``text`` nests too deep for the JSON parser (its name, or
    "the body" when that cannot be told)."""
    decoder = json.JSONDecoder()
    at = _WHITESPACE.match(text, 0).end()
    if not text.startswith("{", at):
        return "the body"
    at += 1
    try:
        while True:
            at = _WHITESPACE.match(text, at).end()
            key, at = decoder.raw_decode(text, at)
            at = _WHITESPACE.match(text, at).end()
            if not isinstance(key, str) or not text.startswith(":", at):
                return "the body"
            at = _WHITESPACE.match(text, at + 1).end()
            try:
                _, at = decoder.raw_decode(text, at)
            except RecursionError:
                return f"'{key}'"
            at = _WHITESPACE.match(text, at).end()
            if not text.startswith(",", at):
                return "the body"
            at += 1
    except ValueError:
        return "the body"
