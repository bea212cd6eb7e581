"""The application façade: the README's Python API example runs as written, and the layer
contract that keeps every import pointing down is enforced."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelsmith import Modelsmith, ModelsmithError
from modelsmith.errors import EXIT_INVALID, WorkspaceError
from modelsmith.specs import SpecError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


def test_the_readme_python_api_example_runs(train_repo, monkeypatch):
    monkeypatch.chdir(train_repo / "specialists")  # "any folder inside the repository"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_example(), "README.md:python-api", "exec"), {})
    printed = out.getvalue()
    assert re.search(r"^composite \d\.\d{3} \(core, n=8\), held-out \d\.\d{3} \(n=8\), "
                     r"target 0\.\d+$", printed, flags=re.M), printed
    assert "rtb-quality production: None desired: {" in printed
    # Nothing was recorded: the example evaluated with record=False.
    assert Modelsmith.open(train_repo).log() == []


def test_open_finds_the_work_tree_root_and_errors_are_typed(demo_repo, tmp_path):
    inner = demo_repo / "evals"
    app = Modelsmith.open(inner)
    assert app.root == demo_repo.resolve()
    assert app.status()["specialists"][0]["desired"] is not None
    with pytest.raises(WorkspaceError, match="does not exist"):
        Modelsmith.open(tmp_path / "nowhere")
    (demo_repo / "specialists" / "rtb-quality.yaml").write_text("kind: [", encoding="utf-8")
    with pytest.raises(SpecError) as error:
        app.specs()
    assert isinstance(error.value, ModelsmithError) and error.value.exit_code == EXIT_INVALID


def test_the_layer_contract_holds_and_catches_an_upward_import(tmp_path):
    """`lint-imports` passes on the engine, and fails once a lower layer imports the
    façade (checked on a copy, so the tree stays as it is)."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the dev extra has it)")
    ok = subprocess.run([str(lint)], cwd=root, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    copy = tmp_path / "copy"
    shutil.copytree(root / "engine", copy / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "defaults"))
    shutil.copy(root / "pyproject.toml", copy / "pyproject.toml")
    victim = copy / "engine" / "modelsmith" / "serving" / "split.py"
    victim.write_text(victim.read_text(encoding="utf-8")
                      + "\nfrom modelsmith.app import Modelsmith  # noqa: E402,F401\n",
                      encoding="utf-8")
    env = {"PYTHONPATH": str(copy / "engine"), "PATH": "/usr/bin:/bin"}
    broken = subprocess.run([str(lint)], cwd=copy, capture_output=True, text=True,
                            timeout=120, env=env)
    assert broken.returncode != 0
    assert "modelsmith.serving.split -> modelsmith.app" in broken.stdout
