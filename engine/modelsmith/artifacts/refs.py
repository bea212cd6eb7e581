"""Model references: what a user names a model by, parsed in one place.

``v3`` (a registered candidate version), ``openai:NAME`` (a model on an OpenAI-compatible
endpoint), a model profile of config/clusters.json, a local folder, or a hub id
(``owner/name``). :class:`ModelRef` says which; the resolver
(:func:`~modelsmith.artifacts.models.resolve_model`) and the registry act on it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelsmith.errors import InferenceError

#: A registered candidate version: ``v`` and a number from 1.
VERSION_RE = re.compile(r"^v[1-9][0-9]*$")
#: The prefix of a model served by an OpenAI-compatible endpoint.
ENDPOINT_PREFIX = "openai:"

#: A hub id: ``owner/name``.
HUB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
#: What a path on the command line starts with (never a hub id).
PATH_PREFIXES = ("/", "./", "../", "~")

RefKind = Literal["version", "endpoint", "profile", "folder", "hub", "unknown"]


@dataclass(frozen=True)
class ModelRef:
    """A model reference as written, and what kind of thing it names."""

    text: str
    kind: RefKind

    @classmethod
    def parse(cls, text: str, profiles: Collection[str] = ()) -> ModelRef:
        """What ``text`` names. ``profiles`` are the model profiles' names: a profile wins
        over a folder of the same name, a folder over a version or a hub id."""
        text = text.strip()
        if not text:
            raise InferenceError("empty model reference: name a model profile, a folder or "
                                 "a hub id")
        if text.startswith(ENDPOINT_PREFIX):
            return cls(text, "endpoint")
        if text in profiles:
            return cls(text, "profile")
        if Path(text).expanduser().is_dir():
            return cls(text, "folder")
        if VERSION_RE.match(text):
            return cls(text, "version")
        if not text.startswith(PATH_PREFIXES) and HUB_ID_PATTERN.fullmatch(text):
            return cls(text, "hub")
        return cls(text, "unknown")


def is_version(text: str) -> bool:
    """Whether ``text`` names a registered candidate version (``vN``)."""
    return VERSION_RE.match(text) is not None
