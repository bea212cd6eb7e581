"""LoRA adapter folders: a version kept as a PEFT adapter of its specialist's base model.

A version trained with a profile that has ``lora`` is a folder as PEFT's ``save_pretrained``
writes it (``adapter_config.json`` + ``adapter_model.safetensors``) with the tokenizer, plus
``modelsmith-adapter.json``, which names the base it is an adapter of: the model profile,
the digest of that profile's source (the one in its cache folder's name) and the folder it
was trained on. ``adapter_config.json``'s ``base_model_name_or_path`` is that folder, a path
local to the machine that trained it: the profile is what another machine resolves.

Every version of a specialist is an adapter of the same base: a version trained from an
adapter continues training that adapter on the base, never on a merged parent.

:func:`materialise` turns a version into a plain Hugging Face folder (an adapter merged into
its base): what ``modelsmith package`` ships. Importing this module imports no ML library.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelsmith.errors import InferenceError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Which base a LoRA folder is an adapter of (written beside PEFT's files).
ADAPTER_MANIFEST = "modelsmith-adapter.json"


@dataclass(frozen=True)
class AdapterBase:
    """The base model a LoRA folder is an adapter of."""

    profile: str | None  # the model profile (config/clusters.json ``models``), when known
    source_hash: str | None  # the digest of that profile's source, as its cache folder has
    path: str | None  # the folder it was trained on (local to the machine that trained it)

    def describe(self) -> str:
        if self.profile:
            return f"model profile '{self.profile}' ({self.source_hash or 'no source hash'})"
        return f"the folder {self.path}"


def is_adapter(folder: Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (``adapter_config.json``), not full weights."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def is_weights_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a model: full weights (``config.json``) or an adapter."""
    folder = Path(folder)
    return (folder / "config.json").is_file() or is_adapter(folder)


def write_adapter_base(folder: Path, base: AdapterBase) -> None:
    """Record in ``folder`` (an adapter) which base it is an adapter of."""
    (Path(folder) / ADAPTER_MANIFEST).write_text(
        json.dumps(asdict(base), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def adapter_base(folder: Path) -> AdapterBase:
    """The base ``folder`` (an adapter) is an adapter of: its ``modelsmith-adapter.json``,
    else the ``base_model_name_or_path`` of its ``adapter_config.json`` (an adapter made
    elsewhere)."""
    folder = Path(folder)
    manifest = folder / ADAPTER_MANIFEST
    try:
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return AdapterBase(profile=data.get("profile"), source_hash=data.get("source_hash"),
                               path=data.get("path"))
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError) as exc:
        raise InferenceError(f"{folder}: cannot read which base this adapter is of: {exc}") \
            from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise InferenceError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path: missing "
                             f"(and no {ADAPTER_MANIFEST}): which base is this an adapter of?")
    return AdapterBase(profile=None, source_hash=None, path=base)


def materialise(folder: Path, out: Path, clusters: Any = None,
                repo_root: Path | None = None) -> Path:
    """``folder`` as a plain Hugging Face folder in ``out`` (which must not exist): a LoRA
    adapter merged into its base (PEFT's ``merge_and_unload``) and saved with the
    adapter's tokenizer; full weights copied as they are. ``clusters`` resolve the base
    profile an adapter names. Hidden files (markers) are left out. torch, transformers and
    peft are imported only for an adapter."""
    folder, out = Path(folder), Path(out)
    if not is_adapter(folder):
        shutil.copytree(folder, out, ignore=shutil.ignore_patterns(".*"))
        return out
    from .models import _import_ml, resolve_model

    torch, transformers = _import_ml()
    from peft import PeftModel

    resolved = resolve_model(str(folder), clusters, repo_root=repo_root)
    base = transformers.AutoModelForCausalLM.from_pretrained(resolved.source,
                                                             dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
