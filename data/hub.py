"""The public sets from the Hugging Face hub, written once into a cache in the ../shared/data layout.

With no `--data-root`, the smollm2 preset, `demo --model smollm2` and `judges train` read HH-RLHF,
Do-Not-Answer and XSTest through `datasets` from their hub ids (HUB_SETS) and write each as the file
data.sources names (hh-rlhf/helpful-base/test.jsonl.gz, do-not-answer/data_en.csv,
xstest/xstest_prompts.csv, xstest/model_completions/...). Everything downstream then reads that
directory exactly as it reads `--data-root DIR`, so the split by prompt hash (data/public.py) is the same
code on the same rows either way. SOURCES.json in the cache records, per file: the dataset id, the split
and data files taken, the revision asked for, the commit it resolved to, the row count and the file's
sha256; data/public.py copies it into the workspace's data/SOURCES.json.

What is downloaded (the test splits only; about 6.4 MB in all):
  Anthropic/hh-rlhf       helpful-base, helpful-online, helpful-rejection-sampled, harmless-base:
                          test.jsonl.gz each (8552 pairs, 4.0 MB)
  LibrAI/do-not-answer    split train (939 questions, 6 models' answers with human labels; 1.7 MB parquet)
  Paul/XSTest             xstest_prompts.csv (450 prompts, 39 kB; the authors' own file)
  natolambert/xstest-v2-copy  splits llama2orig, llama2new, mistralinstruct (labelled answers for the
                          judges; 0.6 MB parquet)

Tests point the same code at local directories shaped like those repositories (`mirror`, or
SAFEROUNDS_HUB_MIRROR=DIR holding DIR/<owner>/<name>/...), never at the network.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import NamedTuple

from saferounds.core.errors import InputError
from saferounds.core.io import offline_unless_reachable, read_json, sha256_file, write_json
from saferounds.data.sources import SOURCE_FILES, xstest_completions_path


class HubSet(NamedTuple):
    """One file of the ../shared/data layout and where it comes from on the hub."""
    dataset: str                 # hub id (owner/name)
    split: str                   # the split read
    data_files: str | None = None  # a file inside the repository (None: the repository's own config)
    revision: str | None = None  # branch, tag or commit; None = the default branch


_HH = "Anthropic/hh-rlhf"
HUB_SETS: dict[str, HubSet] = {  # data.sources.SOURCE_FILES key -> hub source
    "hh_helpful": HubSet(_HH, "train", "helpful-base/test.jsonl.gz"),
    "hh_helpful_online": HubSet(_HH, "train", "helpful-online/test.jsonl.gz"),
    "hh_helpful_rejection_sampled": HubSet(_HH, "train", "helpful-rejection-sampled/test.jsonl.gz"),
    "hh_harmless": HubSet(_HH, "train", "harmless-base/test.jsonl.gz"),
    "do_not_answer": HubSet("LibrAI/do-not-answer", "train"),
    "xstest": HubSet("Paul/XSTest", "train", "xstest_prompts.csv"),
}
COMPLETION_MODELS = ("llama2orig", "llama2new", "mistralinstruct")  # eval.classifier_data.XSTEST_FILES
COMPLETIONS: dict[str, HubSet] = {f"xstest_{m}": HubSet("natolambert/xstest-v2-copy", m) for m in COMPLETION_MODELS}
HH_FIELDS = ("chosen", "rejected")
MIRROR_ENV = "SAFEROUNDS_HUB_MIRROR"


def hub_cache_dir() -> Path:
    """$SAFEROUNDS_HOME/data/hub, else ~/.cache/saferounds/data/hub."""
    home = os.environ.get("SAFEROUNDS_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "saferounds") / "data" / "hub"


def target_path(root: Path, key: str) -> Path:
    """Where the file of `key` lies in the ../shared/data layout."""
    if key.startswith("xstest_") and key[len("xstest_"):] in COMPLETION_MODELS:
        return xstest_completions_path(root, key[len("xstest_"):])
    return Path(root) / SOURCE_FILES[key]


def public_data_root(data_root: str | Path | None = None, *, cache: str | Path | None = None,
                     mirror: str | Path | None = None, completions: bool = True) -> Path:
    """`data_root` when given (offline machines); else the hub's sets, downloaded once into `cache`."""
    if data_root is not None:
        return Path(data_root)
    return download_public_data(cache or hub_cache_dir(), mirror=mirror, completions=completions)


def download_public_data(cache: str | Path, *, mirror: str | Path | None = None, completions: bool = True,
                         sets: dict[str, HubSet] | None = None) -> Path:
    """Write every set of HUB_SETS (and COMPLETIONS) missing from `cache` in the ../shared/data layout and
    record them in cache/SOURCES.json; a file already recorded with its sha256 is kept as it is."""
    cache = Path(cache)
    wanted = dict(sets if sets is not None else {**HUB_SETS, **(COMPLETIONS if completions else {})})
    record = read_json(cache / "SOURCES.json") if (cache / "SOURCES.json").is_file() else {}
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    for key, hs in wanted.items():
        path = target_path(cache, key)
        if key in record and path.is_file() and record[key]["sha256"] == sha256_file(path) \
                and record[key]["source"] == _source_key(hs, mirror):
            continue
        rows, commit = load_hub_rows(hs, mirror, cache / ".datasets")
        _write_rows(path, key, rows)
        record[key] = {"dataset": hs.dataset, "split": hs.split, "data_files": hs.data_files,
                       "revision": hs.revision or "main", "commit": commit, "rows": len(rows),
                       "file": str(path.relative_to(cache)), "sha256": sha256_file(path),
                       "source": _source_key(hs, mirror)}
        write_json(cache / "SOURCES.json", record)  # after each file: an interrupted download keeps its part
    return cache


def _source_key(hs: HubSet, mirror) -> str:
    where = str(Path(mirror) / hs.dataset) if mirror else f"hub:{hs.dataset}"
    return f"{where}@{hs.revision or 'main'}:{hs.split}:{hs.data_files or ''}"


def load_hub_rows(hs: HubSet, mirror: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> tuple[list[dict], str | None]:
    """The rows of one hub set and the commit they came from (None for a local mirror); InputError naming
    the dataset id, with the --data-root way out, when it cannot be had. `cache_dir`: datasets' arrow cache."""
    path = str(Path(mirror) / hs.dataset) if mirror else hs.dataset
    try:
        import datasets

        with offline_unless_reachable(local=bool(mirror)):
            builder = datasets.load_dataset_builder(path, data_files=hs.data_files, revision=hs.revision,
                                                    cache_dir=str(cache_dir) if cache_dir else None)
            builder.download_and_prepare()
            ds = builder.as_dataset(split=hs.split)
    except Exception as e:  # datasets raises many types (connection, not found, bad split, gated)
        raise InputError(
            f"{hs.dataset}: cannot load split {hs.split!r}" + (f" of {hs.data_files}" if hs.data_files else "")
            + f" from {'the mirror ' + path if mirror else 'the Hugging Face hub'} ({type(e).__name__}: "
            f"{str(e)[:200]}). Offline, pass --data-root DIR holding hh-rlhf/, do-not-answer/ and xstest/ "
            "(the layout of ../shared/data; see README, 'Public data').") from None
    return [dict(r) for r in ds], None if mirror else getattr(builder, "hash", None)


def _write_rows(path: Path, key: str, rows: list[dict]) -> None:
    """HH as gzipped JSONL of chosen/rejected, the rest as CSV with the hub's columns, written atomically."""
    if not rows:
        raise InputError(f"{path}: the hub set for {key} has no rows")
    if key.startswith("hh_"):
        missing = [f for f in HH_FIELDS if f not in rows[0]]
        if missing:
            raise InputError(f"{key}: the hub rows lack {', '.join(missing)} (columns: {', '.join(rows[0])})")
        text = "".join(json.dumps({f: r[f] for f in HH_FIELDS}, ensure_ascii=False) + "\n" for r in rows)
        data = gzip.compress(text.encode("utf-8"), mtime=0)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)
