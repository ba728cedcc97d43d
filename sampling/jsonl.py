"""JSONL files that survive `kill -9`: appends are flushed and fsynced per batch, a torn last line is
cut off on resume, and whole-file rewrites go through a temporary file and os.replace."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def recover_jsonl(path: Path) -> list[dict]:
    """Read the complete records of `path` and truncate a torn last line (a write cut by a kill),
    so that later appends start on a fresh line. A missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    rows = []
    for i, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}); the file is corrupt, delete it to "
                                 "start this step again") from None
    return rows


def read_jsonl(path: Path) -> list[dict]:
    """Read a finished JSONL file (no repair)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows in one write, then flush and fsync: after a kill the batch is on disk or torn."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not blob:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
