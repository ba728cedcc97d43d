"""Where the public datasets lie: a directory laid out like ../shared/data (see its README.md and SOURCE.md
files), and reading a public file whose columns must be there."""

from __future__ import annotations

from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.core.io import read_json, read_rows

SOURCE_FILES = {"hh_helpful": "hh-rlhf/helpful-base/test.jsonl.gz",
                "hh_helpful_online": "hh-rlhf/helpful-online/test.jsonl.gz",
                "hh_helpful_rejection_sampled": "hh-rlhf/helpful-rejection-sampled/test.jsonl.gz",
                "hh_harmless": "hh-rlhf/harmless-base/test.jsonl.gz",
                "do_not_answer": "do-not-answer/data_en.csv",
                "xstest": "xstest/xstest_prompts.csv"}


def default_data_dir() -> Path:
    """``../shared/data`` beside the project root."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def xstest_completions_path(data_dir: Path, model: str) -> Path:
    """XSTest's human-labelled answers of one model (``final_label``)."""
    return Path(data_dir) / "xstest" / "model_completions" / f"xstest_v2_completions_{model}.csv"


def dna_path(data_dir: Path) -> Path:
    """Do-Not-Answer's data_en.csv: its questions with six models' labelled answers."""
    return Path(data_dir) / SOURCE_FILES["do_not_answer"]


def source_paths(data_root: str | Path) -> dict[str, Path]:
    """The files of SOURCE_FILES under `data_root`; InputError naming every missing one."""
    root = Path(data_root)
    paths = {k: root / v for k, v in SOURCE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"{data_root}: public data missing: {', '.join(missing)} (expected the layout of "
                         "../shared/data: hh-rlhf/, do-not-answer/, xstest/)")
    return paths


def provenance(data_root: str | Path, key: str) -> dict:
    """Where a file of `data_root` came from when data.hub wrote it (its SOURCES.json): the hub dataset id,
    split, data files, revision and commit; {} for a directory laid out by hand (../shared/data)."""
    record = Path(data_root) / "SOURCES.json"
    if not record.is_file():
        return {}
    entry = read_json(record).get(key) or {}
    return {k: entry[k] for k in ("dataset", "split", "data_files", "revision", "commit") if k in entry}


def rows_with(path, columns) -> list[tuple[int, dict]]:
    """A public file's (line, row) pairs; InputError naming the columns its rows lack."""
    rows = read_rows(path)
    missing = [c for c in columns if rows and c not in rows[0][1]]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise InputError(f"{path}:1: missing column(s) {', '.join(missing[:4])}{more}")
    return rows
