"""One import namespace: the project installs `saferounds` and nothing else at the top of site-packages
(issue 25). The package list in pyproject.toml must name every folder with an __init__.py, and a wheel
built from the tree holds only `saferounds/` (plus its dist-info)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("core", "data", "eval", "pipeline", "reward_models", "sampling")


def test_pyproject_lists_every_package_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"saferounds." + ".".join(p.parent.relative_to(ROOT).parts)
             for top in TOP if (ROOT / top).is_dir() for p in (ROOT / top).rglob("__init__.py")}
    assert listed == found


def test_code_imports_only_the_namespace():
    """No module imports a package by its bare folder name (`from pipeline.x import y`): installed, only
    `saferounds.pipeline` exists."""
    import ast
    bare = []
    for top in TOP + ("tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else []:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in TOP]
    assert bare == []


def test_wheel_installs_only_saferounds(tmp_path):
    """`python -m build --wheel` on a copy of the tree: the wheel's top-level names are `saferounds` and its
    dist-info."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", "demo-*", ".bench*", "runs"))
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("saferounds-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"saferounds", "saferounds-0.1.0.dist-info"}
    assert "saferounds/pipeline/presets/tiny.yaml" in names and "saferounds/reward_models/feedback/annotate_page.html" in names
    assert not any(n.startswith("saferounds/tests/") or n.startswith("saferounds/bench/") for n in names)
