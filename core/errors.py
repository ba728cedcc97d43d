"""The error every layer raises on bad user input, and the collector that lists every bad row at once.

Every problem reads ``FILE:LINE: FIELD: reason`` (or names a config key), so a user can jump straight
to it; the CLI maps `InputError` to exit code 2.
"""
from __future__ import annotations

from pathlib import Path

MAX_LISTED_ERRORS = 20


class InputError(Exception):
    """Bad user input: a file, a row, a field or a config key. The CLI exits 2 on it."""


class RowErrors:
    """Collects every bad row of one file, then raises them together (listing at most 20)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.problems: list[str] = []

    def add(self, line: int | None, field: str, reason: str) -> None:
        where = f"{self.path}:{line}" if line is not None else self.path
        self.problems.append(f"{where}: {field}: {reason}")

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:MAX_LISTED_ERRORS]
        more = len(self.problems) - len(shown)
        tail = [f"... and {more} more problem(s) in {self.path}"] if more > 0 else []
        raise InputError("\n".join(shown + tail))


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient, weight or score. The CLI exits 1 with this one line;
    the version stays partial (resume after fixing the cause, or discard it)."""

    def __init__(self, stage: str, step: int | None, what: str):
        self.stage, self.step, self.what = stage, step, what
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"{stage}: diverged{at}: {what} is not finite (NaN or Inf); lower the learning rate "
                         "or check the data, then rerun to resume or `saferounds round discard` the version")


class DiskFullError(OSError):
    """No space left on the device while writing `path`. The CLI exits 1 with this one line."""

    def __init__(self, path, needed: int | None = None, free: int | None = None):
        self.path, self.needed, self.free = str(path), needed, free
        need = f"needs about {_size(needed)}" if needed else "needs more space"
        have = f", {_size(free)} free" if free is not None else ""
        super().__init__(28, f"no space left on device writing {self.path}: it {need}{have}; free some space "
                             "and run the same command again to resume")

    def __str__(self) -> str:
        return self.strerror


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full(e: OSError, needed: int | None = None) -> DiskFullError:
    """A DiskFullError for an ENOSPC OSError: the path it names (or the current directory), the bytes the
    write needed when known, and the free space left on that filesystem."""
    import os
    import shutil

    if isinstance(e, DiskFullError):
        return e
    path = e.filename or os.getcwd()
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return DiskFullError(path, needed if needed is not None else getattr(e, "needed", None), free)
