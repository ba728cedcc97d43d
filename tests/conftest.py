"""Shared test fixtures. Everything here is lazy (built on first use) and cheap.

The machine is shared: every test process runs torch on one thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("SAFEROUNDS_QUIET", "1")  # no Trainer progress bars in test output
# default judges (`saferounds judges train --default`) trained on this machine must not change test results
os.environ["SAFEROUNDS_HOME"] = tempfile.mkdtemp(prefix="saferounds-home-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
MALFORMED = Path(__file__).resolve().parent / "malformed"


@pytest.fixture(scope="session")
def tiny_workspace_template(tmp_path_factory) -> Path:
    """A `saferounds init --preset tiny` workspace (config + smoke-size demo data), built once.

    Read-only: tests that write into a workspace take `tiny_workspace` (a private copy).
    """
    from pipeline.presets import init_workspace

    root = tmp_path_factory.mktemp("tiny_ws") / "ws"
    init_workspace(root, "tiny")
    return root


@pytest.fixture
def tiny_workspace(tiny_workspace_template, tmp_path) -> Path:
    """A private copy of the tiny workspace that a test may modify."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace_template, root)
    return root


@pytest.fixture(scope="session")
def demo_data(tiny_workspace_template) -> Path:
    """The directory of the synthetic demo data files (smoke size), read-only."""
    return tiny_workspace_template / "data"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny policy and reward-model backbone (pipeline.tiny.build_tiny), built once (~10 s)."""
    from pipeline.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture
def cli_main():
    """`pipeline.cli.main`, called in-process: argv in, exit code out (messages on stdout/stderr)."""
    import pipeline.cli as cli

    return cli.main


@pytest.fixture(scope="session")
def demo_smoke(tmp_path_factory) -> Path:
    """`saferounds demo --size smoke`, run once per session (~2 min on one core): v0 -> v3.

    Read-only for tests (the resume test re-runs the demo and checks nothing changes).
    """
    from pipeline.demo import run_demo

    root = tmp_path_factory.mktemp("demo") / "ws"
    run_demo(root, "smoke")
    return root
