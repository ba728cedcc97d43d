"""Version names: `vN` on disk and in manifests, `v2` or `2` on the command line."""
from __future__ import annotations

import re
from pathlib import Path

from core.errors import InputError

_NAME = re.compile(r"v?(\d+)")
_DIR = re.compile(r"v(\d+)")          # a finished version (versions/vN, reward_models/KIND/vN)
_PARTIAL_DIR = re.compile(r"\.v(\d+)\.partial")  # one under construction


def version_number(text: str) -> int:
    """N of "vN" or "N"; -1 for anything else (sorts first, never a real version)."""
    m = _NAME.fullmatch(str(text).strip())
    return int(m.group(1)) if m else -1


def parse_version(text: str) -> int:
    """N of a version the user named ("v2" or "2"), or InputError."""
    n = version_number(text)
    if n < 0:
        raise InputError(f"version: expected a version like v2, got {text!r}")
    return n


def dir_version(path: str | Path) -> int | None:
    """N of a finished version directory named vN, else None."""
    m = _DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def partial_dir_version(path: str | Path) -> int | None:
    """N of a version directory under construction, named .vN.partial, else None."""
    m = _PARTIAL_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None
