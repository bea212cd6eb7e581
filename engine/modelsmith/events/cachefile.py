"""Machine-local caches under ``.git/modelsmith/``: written atomically, on a best-effort
basis. A cache that cannot be written (a read-only checkout) costs only time: the next read
rebuilds what it would have held."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_cache(path: Path, write: Callable[[IO[bytes]], None]) -> bool:
    """Write ``path`` through ``write`` into a temporary file beside it, then rename it into
    place (readers see the old file or the new one, never half of one); False when it could
    not be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
        return True
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
