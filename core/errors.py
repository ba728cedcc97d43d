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
