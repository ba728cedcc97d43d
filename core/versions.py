"""Version names: `vN` on disk and in manifests, `v2` or `2` on the command line."""
from __future__ import annotations

import re
from pathlib import Path

from saferounds.core.errors import InputError

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


def finished_version_of(path: str | Path) -> Path | None:
    """The finished version directory (versions/vN or reward_models/KIND/vN with its manifest.json) that
    `path` lies in or is, or None. Symlinks are resolved, so a link into a version counts as inside it."""
    p = Path(path).expanduser().resolve()
    for d in (p, *p.parents):
        if _DIR.fullmatch(d.name) and (d.parent.name == "versions" or d.parent.parent.name == "reward_models") \
                and (d / "manifest.json").is_file():
            return d
    return None


def ensure_outside_finished_versions(path: str | Path, what: str) -> Path:
    """The one check every output path goes through: finished versions are never written into."""
    inside = finished_version_of(path)
    if inside is not None:
        raise InputError(f"{what} {path}: inside the finished version {inside}, which is never modified; "
                         "write somewhere else (e.g. WORKSPACE/reports/...)")
    return Path(path)
