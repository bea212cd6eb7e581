"""Resumable training: intermediate checkpoints that are sealed, checked, and discarded
when they cannot be trusted.

With ``checkpoint_steps`` in the profile a run saves a checkpoint (model, optimiser,
scheduler and RNG state, as the Hugging Face trainer writes them) every N steps under
``<checkpoints>/<phase>/checkpoint-<step>/``, and the finished SFT warm start of
``sft+grpo`` under ``<checkpoints>/sft-model/``. Each is *sealed* once complete: a manifest
with the SHA-256 of every file, written last. A run started again on the same folder
resumes from the newest checkpoint whose files still hash to its manifest; one without a
manifest (saving was cut short) or with a mismatch (a file truncated or changed on disk) is
discarded, and the one before it is used -- "discard the checkpoint and go back one".
No torch here: hashing and bookkeeping only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

MANIFEST = "modelsmith-manifest.json"
SFT_MODEL = "sft-model"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: Path) -> None:
    """Write ``folder``'s manifest (every file's size and SHA-256), atomically, last."""
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in _files(folder)}
    temp = folder / f".{MANIFEST}.tmp"
    temp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, folder / MANIFEST)


def problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be trusted, or None when every file matches its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest: saving it was cut short"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    for name, expected in sorted(manifest.items()):
        path = folder / name
        if name not in present:
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, not {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not hash to its manifest"
    return None


def checkpoints(phase_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders of one phase, newest first."""
    if not phase_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in phase_dir.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _trusted(folder: Path, say: Callable[[str], None], what: str) -> bool:
    """Whether ``folder`` is intact; if not it is discarded (and said)."""
    why = problem(folder)
    if why is None:
        return True
    say(f"discarding {what}{folder}: {why}")
    shutil.rmtree(folder, ignore_errors=True)
    return False


def newest_intact(phase_dir: Path, say: Callable[[str], None] = lambda _m: None) -> Path | None:
    """The newest trustworthy checkpoint of a phase; the untrustworthy newer ones are
    discarded on the way (and said)."""
    return next((folder for folder in checkpoints(phase_dir)
                 if _trusted(folder, say, "checkpoint ")), None)


def intact_model(folder: Path, say: Callable[[str], None] = lambda _m: None) -> bool:
    """Whether a sealed model folder (the SFT warm start) can be used; discarded if not."""
    return folder.exists() and _trusted(folder, say, "")


def discard_newest(root: Path) -> Path | None:
    """Remove the newest checkpoint under ``root`` (GRPO's before SFT's, then the SFT
    model): what a job that failed loading it goes back from. None when there is none."""
    for phase in ("grpo", "sft"):
        found = checkpoints(root / phase)
        if found:
            shutil.rmtree(found[0], ignore_errors=True)
            return found[0]
    if (root / SFT_MODEL).exists():
        shutil.rmtree(root / SFT_MODEL, ignore_errors=True)
        return root / SFT_MODEL
    return None
