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


def rows_by_id(rows, errors: RowErrors, known, *, missing: str, unknown: str, twice: str, field: str = "id"):
    """Yield (line, id, row) for each row whose ``field`` is present, in ``known`` and not seen before; every
    other row goes to ``errors`` with the message given (``unknown`` and ``twice`` are formatted with
    ``{id!r}``, ``twice`` also with ``{first}``, the line the id was first seen on)."""
    first: dict[str, int] = {}
    for line, row in rows:
        rid = str(row.get(field, "")).strip()
        if not rid:
            errors.add(line, field, missing)
        elif rid not in known:
            errors.add(line, field, unknown.format(id=rid))
        elif rid in first:
            errors.add(line, field, twice.format(id=rid, first=first[rid]))
        else:
            first[rid] = line
            yield line, rid, row


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient, weight or score. The CLI exits 1 with this one line;
    the version stays partial (resume after fixing the cause, or discard it)."""

    def __init__(self, stage: str, step: int | None, what: str, version: int | None = None):
        self.stage, self.step, self.what = stage, step, what
        super().__init__(self._text(version))

    def in_version(self, n: int) -> "DivergedError":
        """The same error, its advice naming the unfinished version vN it left."""
        self.args = (self._text(n),)
        return self

    def _text(self, version: int | None) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        head = f"{self.stage}: diverged{at}: {self.what} is not finite (NaN or Inf); "
        if version is None:
            return head + "lower the learning rate or fix the data, then run the command again"
        # a version resumes only with the saferounds.yaml it started with: a new learning rate means a new start
        return head + (f"lower the learning rate in saferounds.yaml, then `saferounds round discard v{version}` "
                       "and run the same command again (it starts the version over: an unfinished version "
                       "resumes only with the saferounds.yaml it started with); if the data was at fault, fix "
                       "it and run the same command again to resume")


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


def no_space(e: BaseException | None) -> bool:
    """True when `e`, or an exception it was raised from, is a full disk (however a library wrapped it)."""
    while e is not None:
        if (isinstance(e, OSError) and e.errno == 28) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def as_disk_full(e: BaseException, where: str | Path | None = None) -> DiskFullError:
    """The DiskFullError for a full-disk exception `e` (see no_space): the file it names when one in its
    chain does, else `where` (the workspace being written), else the current directory."""
    chain = e
    while chain is not None:
        if isinstance(chain, DiskFullError):
            return chain
        if isinstance(chain, OSError) and chain.errno == 28 and chain.filename:
            return disk_full(chain)
        chain = chain.__cause__ or chain.__context__
    return disk_full(OSError(28, "No space left on device", str(where) if where else None))


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


READ_ONLY = (30, 13, 1)  # EROFS, EACCES, EPERM


def not_writable(path: str | Path, e: OSError | None = None, purpose: str = "saferounds writes there") -> InputError | None:
    """The InputError for a write refused at `path` (a read-only filesystem, no permission): from the
    OSError `e` of a failed write, or, without one, by asking before any write (statvfs, access);
    None when the path can be written. `purpose` says what writes there."""
    import os

    if e is not None:
        if e.errno not in READ_ONLY:
            return None
        why = "is on a read-only filesystem" if e.errno == 30 else "is not writable by this user"
    else:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if not read_only and os.access(probe, os.W_OK):
            return None
        why = "is on a read-only filesystem" if read_only else "is not writable by this user"
    return InputError(f"{path}: {why}; {purpose}. Remount it read-write (or fix its "
                      "permissions), or copy the workspace somewhere writable")
