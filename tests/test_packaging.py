"""The wheel carries the embedded defaults: ``modelsmith init`` works from an installed
package, far from any checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_defaults_and_init_works_from_it(tmp_path):
    pytest.importorskip("setuptools")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    # The wheel is named after the distribution (pyproject's name, normalised: PEP 427).
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    (wheel,) = (tmp_path / "dist").glob(f"{re.sub(r'[-_.]+', '_', name)}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for name in ("specialists/rtb-quality.yaml", "evals/rtb-quality/suite.yaml",
                 "evals/rtb-quality/scenarios.jsonl", "policies/routing.yaml",
                 "policies/promotion.yaml", "config/clusters.json", "dvc.yaml",
                 "params.yaml"):
        assert f"modelsmith/defaults/{name}" in names, name
    assert "modelsmith/gitops/templates/reconcile.yml" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    def modelsmith(*args):
        return subprocess.run([sys.executable, "-m", "modelsmith", *args], cwd=elsewhere,
                              env=env, capture_output=True, text=True, timeout=120)

    where = subprocess.run([sys.executable, "-c", "import modelsmith; print(modelsmith.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(tmp_path / "site")), where  # the wheel's copy
    made = modelsmith("init", "team")
    assert made.returncode == 0, made.stderr
    checked = modelsmith("-C", "team", "validate")
    assert checked.returncode == 0 and "1 specialist" in checked.stdout, checked
    assert (elsewhere / "team" / ".github" / "workflows" / "reconcile.yml").is_file()
    assert not list((elsewhere / "team").rglob("__pycache__"))
