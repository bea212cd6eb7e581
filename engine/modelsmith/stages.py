"""The release stages, in promotion order: the one list every layer uses."""

from __future__ import annotations

from typing import Literal, get_args

#: A stage a version can hold; a version enters at shadow and leaves production last.
StageName = Literal["shadow", "canary", "production"]
STAGES: tuple[StageName, ...] = get_args(StageName)
