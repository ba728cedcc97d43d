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
# the per-machine answer cache (eval.answer_cache) off: tests with the same tiny weights must each generate;
# tests of the cache point SAFEROUNDS_CACHE at a directory of their own
os.environ["SAFEROUNDS_CACHE"] = "off"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
MALFORMED = Path(__file__).resolve().parent / "malformed"


@pytest.fixture(scope="session")
def tiny_workspace_template(tmp_path_factory) -> Path:
    """A `saferounds init --preset tiny` workspace (config + smoke-size demo data), built once.

    Read-only: tests that write into a workspace take `tiny_workspace` (a private copy).
    """
    from saferounds.pipeline.presets import init_workspace

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
    """The tiny policy and reward-model backbone (data.tiny.build_tiny), built once (~10 s)."""
    from saferounds.data.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture
def cli_main():
    """`pipeline.cli.main`, called in-process: argv in, exit code out (messages on stdout/stderr)."""
    import saferounds.pipeline.cli as cli

    return cli.main


DEMO_OUTPUT = "demo_output.txt"  # beside the demo workspace: what `saferounds demo` printed


@pytest.fixture(scope="session")
def demo_smoke(tmp_path_factory) -> Path:
    """`saferounds demo --size smoke`, run once per session (~2 min on one core): v0 -> v3.

    Run as a user runs it, the CLI in a subprocess with stdout and stderr on one pipe (not a terminal);
    what it printed is in `demo_smoke.parent / DEMO_OUTPUT`. Read-only for tests (the resume test
    re-runs the demo and checks nothing changes).
    """
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo") / "ws"
    env = {k: v for k, v in os.environ.items() if k != "SAFEROUNDS_QUIET"}  # the default terminal behaviour
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "saferounds.pipeline.cli", "demo", "--size", "smoke", "-w", str(root)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    out = proc.stdout.decode("utf-8", errors="replace")
    (root.parent / DEMO_OUTPUT).write_text(out, encoding="utf-8")
    assert proc.returncode == 0, out[-4000:]
    return root


# --- external tools: skipped where missing, but never silently in CI ---------------------------------

def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool_path(name: str, *paths: str) -> str | None:
    """The program `name` on PATH, else the first of `paths` that exists."""
    return shutil.which(name) or next((p for p in paths if Path(p).exists()), None)


def pytest_runtest_setup(item):
    """@pytest.mark.needs_tool("chromium", "/usr/bin/chromium-browser"): skip without the tool; in CI
    (CI=true) fail instead, so a test CI reports as passed has really run (.ci/run installs the tools)."""
    for mark in item.iter_markers("needs_tool"):
        name, *paths = mark.args
        if tool_path(name, *paths) is None:
            message = f"{name} not installed (needed by {item.nodeid})"
            if _in_ci():
                pytest.fail(f"CI=true but {message}: .ci/run must install it", pytrace=False)
            pytest.skip(message)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """In CI, any other skip for a missing tool or file is printed in a banner, not only in the -ra list."""
    if not _in_ci():
        return
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r for r in skipped if any(w in str(r.longrepr) for w in ("not installed", "absent", "missing"))]
    if missing:
        terminalreporter.write_sep("!", f"{len(missing)} test(s) skipped for something missing on this CI machine",
                                   red=True, bold=True)
        for r in missing:
            reason = r.longrepr[-1] if isinstance(r.longrepr, tuple) else r.longrepr
            terminalreporter.write_line(f"SKIPPED {r.nodeid}: {reason}")
