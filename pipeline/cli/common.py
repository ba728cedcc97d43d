"""Shared pieces of the command line: the workspace option, output helpers, the workspace lock."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from saferounds.core.errors import DivergedError, InputError, as_disk_full, no_space
from saferounds.core.versions import ensure_outside_finished_versions
from saferounds.pipeline.workspace import Workspace

console = Console()
err_console = Console(stderr=True)

WorkspaceOpt = Annotated[Path, typer.Option("-w", "--workspace", help="Workspace directory.",
                                            show_default="current directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def open_workspace(path: Path | None) -> Workspace:
    return Workspace(path or Path.cwd())


@contextlib.contextmanager
def locked(ws: Workspace):
    """Hold the workspace lock for a command that writes; report a stale lock taken over."""
    with ws.lock() as lock:
        if lock.stale_from:
            err_console.print(f"[yellow]note:[/] took over a stale lock left by {lock.stale_from}")
        for n in ws.finish_interrupted_discards():
            err_console.print(f"[yellow]note:[/] finished the interrupted discard of v{n}")
        try:
            yield ws
        except DivergedError as e:  # the advice names the version the failure left unfinished
            n = _diverged_version(ws)
            raise e if n is None else e.in_version(n)
        except Exception as e:  # a full disk that names no file: name the workspace, not the current directory
            full = as_disk_full(e, ws.root) if no_space(e) else e
            if full is e:
                raise
            raise full from None


def _diverged_version(ws: Workspace) -> int | None:
    """The unfinished version whose stage failed by diverging just now (Workspace.record_failure)."""
    for n in reversed(ws.partial_versions()):
        with contextlib.suppress(InputError, OSError):
            if any(str(s.get("error") or "").startswith("DivergedError") for s in ws.manifest(n)["stages"].values()
                   if s.get("status") == "failed"):
                return n
    return None


def output_dir(ws: Workspace, path: Path) -> Path:
    """An --out directory: anywhere but inside versions/ (finished versions are never modified, and a
    version under construction belongs to its round)."""
    ensure_outside_finished_versions(path, "--out")
    path = Path(path).resolve()
    if path == ws.versions_dir or ws.versions_dir in path.parents:
        raise InputError(f"--out {path}: inside {ws.versions_dir}, which only rounds write; choose another "
                         "directory (e.g. WORKSPACE/reports/...)")
    return path


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def serve_page(server, *notes: str) -> None:
    """A labelling page's server (annotate serve, audit --serve): its URL as the first line of stdout (scripts
    read it), its warning and `notes` (rich markup) on stderr, then requests until Ctrl+C."""
    from rich.markup import escape

    print(server.url, flush=True)
    if server.warning():
        err_console.print(f"[yellow]warning:[/] {escape(server.warning())}", soft_wrap=True)
    for note in notes:
        err_console.print(note, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
