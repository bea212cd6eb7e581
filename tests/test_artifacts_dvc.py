"""DVC-versioned datasets and weights: real DVC, real git repositories, a local remote."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from modelsmith.artifacts.dvc import ArtifactError, ArtifactStore, default_remote

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "data/rtb-quality/3f2a9c.jsonl"
WEIGHTS = "models/rtb-quality/v3"


@pytest.fixture(autouse=True)
def isolated_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DVC's and Modelsmith's machine-wide folders inside tmp_path; the cwd elsewhere."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "dvc-global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "dvc-system"))
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELSMITH_DVC_REMOTE", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # every call must work with the cwd outside the work tree
    return elsewhere


@pytest.fixture
def work_tree(tmp_path: Path) -> Path:
    root = tmp_path / "team"
    pygit2.init_repository(str(root))
    return root


@pytest.fixture
def store(work_tree: Path, tmp_path: Path) -> ArtifactStore:
    artifacts = ArtifactStore(work_tree)
    artifacts.ensure_initialised(remote=str(tmp_path / "remote"))
    return artifacts


def write_dataset(root: Path) -> Path:
    path = root / DATASET
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"prompt": "Bid: ctr=0.4%", "answer": "REJECT"}\n', encoding="utf-8")
    return path


def write_weights(root: Path) -> Path:
    folder = root / WEIGHTS
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "config.json").write_text('{"hidden_size": 8}', encoding="utf-8")
    (folder / "tokenizer" / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def staged(root: Path) -> set[str]:
    index = pygit2.Repository(str(root)).index
    index.read()
    return {entry.path for entry in index}


def test_init_is_idempotent_and_configures_a_default_remote_outside_the_tree(
    work_tree: Path, tmp_path: Path
) -> None:
    store = ArtifactStore(work_tree)
    store.ensure_initialised()

    assert (work_tree / ".dvc").is_dir()
    expected = default_remote(work_tree)
    assert Path(expected).is_relative_to(tmp_path / "cache" / "dvc-remote")
    assert Path(expected).is_dir()
    assert store.remote_url() == expected
    assert "analytics = False" in (work_tree / ".dvc" / "config").read_text()
    # The machine-specific default lives in config.local, which git ignores.
    assert expected in (work_tree / ".dvc" / "config.local").read_text()
    assert {".dvc/config", ".dvc/.gitignore", ".dvcignore"} <= staged(work_tree)
    assert ".dvc/config.local" not in staged(work_tree)

    config_files = {p: p.read_bytes() for p in (work_tree / ".dvc").glob("config*")}
    index_before = (work_tree / ".git" / "index").read_bytes()
    store.ensure_initialised()
    assert {p: p.read_bytes() for p in config_files} == config_files
    assert (work_tree / ".git" / "index").read_bytes() == index_before


def test_a_dvc_someone_else_initialised_keeps_its_committed_config(
    work_tree: Path,
) -> None:
    from dvc.repo import Repo

    Repo.init(str(work_tree)).close()
    config = (work_tree / ".dvc" / "config").read_bytes()
    index_before = (work_tree / ".git" / "index").read_bytes() \
        if (work_tree / ".git" / "index").exists() else None
    ArtifactStore(work_tree).ensure_initialised()
    assert (work_tree / ".dvc" / "config").read_bytes() == config
    assert "analytics = False" in (work_tree / ".dvc" / "config.local").read_text()
    index_after = (work_tree / ".git" / "index").read_bytes() \
        if (work_tree / ".git" / "index").exists() else None
    assert index_after == index_before


def test_remote_from_env_then_explicit_url_replaces_it(
    work_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSMITH_DVC_REMOTE", str(tmp_path / "env-remote"))
    store = ArtifactStore(work_tree)
    store.ensure_initialised()
    assert store.remote_url() == str(tmp_path / "env-remote")

    store.ensure_initialised(remote="s3://team-bucket/modelsmith")
    assert store.remote_url() == "s3://team-bucket/modelsmith"
    assert "s3://team-bucket/modelsmith" in (work_tree / ".dvc" / "config").read_text()

    with pytest.raises(ArtifactError, match="inside the work tree"):
        store.ensure_initialised(remote=str(work_tree / ".modelsmith" / "dvc-remote"))


def test_init_needs_a_git_work_tree(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ArtifactError, match="git init"):
        ArtifactStore(plain).ensure_initialised()
    with pytest.raises(ArtifactError, match="ensure_initialised"):
        ArtifactStore(plain).status()


def test_track_a_dataset_and_a_weights_folder(store: ArtifactStore) -> None:
    root = store.root
    dataset = write_dataset(root)
    weights = write_weights(root)

    data = store.track(DATASET, message="failures of eval 12, augmented")
    model = store.track(weights)

    assert data.path == Path(DATASET)
    assert data.dvc_file == Path(DATASET + ".dvc")
    assert data.md5 == hashlib.md5(dataset.read_bytes()).hexdigest()
    assert data.size == dataset.stat().st_size
    assert data.nfiles is None
    assert "desc: failures of eval 12, augmented" in (root / data.dvc_file).read_text()

    assert model.md5.endswith(".dir")
    assert model.nfiles == 3
    assert model.size == sum(len(b) for b in snapshot(weights).values())
    assert f"md5: {model.md5}" in (root / model.dvc_file).read_text()

    for artifact in (data, model):
        assert store.hash_of(artifact.path) == artifact.md5
        assert store.verify(artifact.path)
    # Tracking unchanged content again records the same hash.
    assert store.track(WEIGHTS).md5 == model.md5
    assert store.track(dataset).md5 == data.md5

    # The git side is staged for the caller to commit; the content itself is git-ignored.
    index = staged(root)
    for artifact in (data, model):
        assert {p.as_posix() for p in artifact.git_paths} <= index
        assert artifact.path.as_posix() not in index
    assert "/v3" in (weights.parent / ".gitignore").read_text()


def test_pull_restores_exact_bytes_after_cache_and_folder_are_deleted(
    store: ArtifactStore, capfd: pytest.CaptureFixture[str]
) -> None:
    root = store.root
    weights = write_weights(root)
    write_dataset(root)
    original = snapshot(weights)
    model = store.track(WEIGHTS)
    data = store.track(DATASET)
    assert set(store.status()) == {WEIGHTS, DATASET, *(f"{WEIGHTS}/{p}" for p in original)}
    assert set(store.status().values()) == {"not pushed"}

    assert store.push() > 0
    assert store.status() == {}

    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(weights)
    (root / DATASET).unlink()
    assert store.status(remote=False) == {WEIGHTS: "not in cache", DATASET: "not in cache"}
    assert not store.verify(WEIGHTS)

    assert store.pull() > 0
    assert snapshot(weights) == original
    assert store.hash_of(WEIGHTS) == model.md5
    assert store.hash_of(DATASET) == data.md5
    assert store.verify(WEIGHTS)
    assert store.verify(DATASET)
    assert store.status() == {}
    # DVC's info lines and progress bars never reach the console.
    assert capfd.readouterr() == ("", "")


def test_pull_of_one_path_only(store: ArtifactStore) -> None:
    write_weights(store.root)
    write_dataset(store.root)
    store.track(WEIGHTS)
    store.track(DATASET)
    store.push([WEIGHTS, DATASET])
    shutil.rmtree(store.root / ".dvc" / "cache")
    shutil.rmtree(store.root / WEIGHTS)
    (store.root / DATASET).unlink()

    store.pull([DATASET])
    assert store.verify(DATASET)
    assert not (store.root / WEIGHTS).exists()


def test_a_modified_file_fails_verify_and_status_until_checked_out(store: ArtifactStore) -> None:
    weights = write_weights(store.root)
    store.track(WEIGHTS)
    store.push()

    (weights / "model.safetensors").write_bytes(b"tampered")
    assert not store.verify(WEIGHTS)
    assert store.status() == {WEIGHTS: "modified"}
    with pytest.raises(ArtifactError, match="force=True"):
        store.checkout([WEIGHTS])

    assert store.checkout([WEIGHTS], force=True) == [WEIGHTS]
    assert store.verify(WEIGHTS)
    assert store.status() == {}


def test_paths_outside_the_work_tree_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    for path in (outside, Path("..") / "outside.jsonl", store.root):
        with pytest.raises(ArtifactError, match="not inside the work tree"):
            store.track(path)
    with pytest.raises(ArtifactError, match="cannot track"):
        store.track(".dvc/config")
    with pytest.raises(ArtifactError, match="no such file"):
        store.track("data/missing.jsonl")
    with pytest.raises(ArtifactError, match="not tracked by DVC"):
        store.hash_of("data/missing.jsonl")


def test_dvc_failures_become_artifact_errors(store: ArtifactStore) -> None:
    write_dataset(store.root)
    store.track(DATASET)
    (store.root / ".dvc" / "config.local").write_text("")
    (store.root / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    with pytest.raises(ArtifactError, match="no DVC remote is configured"):
        store.push()

    committed = store.root / "notes.txt"
    committed.write_text("in git already\n")
    repo = pygit2.Repository(str(store.root))
    repo.index.add("notes.txt")
    repo.index.write()
    tree = repo.index.write_tree()
    signature = pygit2.Signature("t", "t@example.com")
    repo.create_commit("HEAD", signature, signature, "notes", tree, [])
    with pytest.raises(ArtifactError, match=r"dvc add failed: .*tracked by .*Git"):
        store.track("notes.txt")


def test_importing_artifacts_imports_no_dvc() -> None:
    code = (
        "import sys, modelsmith.artifacts, modelsmith.artifacts.dvc\n"
        "loaded = sorted(m for m in sys.modules if m == 'dvc' or m.startswith('dvc.'))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "engine")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
