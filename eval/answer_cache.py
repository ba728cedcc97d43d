"""Eval answers cached per machine, across workspaces (issue 28: v0's answers; issue 29: `eval --model`).

An entry holds one model's answers to one suite under one set of generation settings, keyed by
  * the model's sha256: its weights, config and tokenizer files (`model_sha256`; hashes remembered by
    path, size and mtime, so an unchanged 500 MB checkpoint is hashed once per machine),
  * the suite's sha256 (its file, else its rows), and
  * the generation settings (eval.generate.generation_settings plus the model's dtype settings).
Inside an entry each answer is keyed by eval.generate.generation_key (prompt messages + settings), so a
suite cut with --limit reads the same entry, and a second run with more suites generates only the new ones.

Where: $SAFEROUNDS_CACHE, else $SAFEROUNDS_HOME/answers, else ~/.cache/saferounds/answers;
SAFEROUNDS_CACHE=off turns it off. Entries are written whole and atomically (core.io.atomic_write_text)
and carry the sha256 of their answers: an entry that does not parse or whose checksum does not match (torn,
edited) is ignored, never trusted, and the next write replaces it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from saferounds.core.io import atomic_write_text, sha256_file, write_json

SCHEMA = "saferounds.answers/1"
# the files of a checkpoint directory that decide its answers (weights, config, tokenizer, chat template)
MODEL_FILES = (".safetensors", ".json", ".model", ".jinja", ".txt", ".gguf")


def cache_root() -> Path | None:
    """$SAFEROUNDS_CACHE ('off': no cache), else $SAFEROUNDS_HOME/answers, else ~/.cache/saferounds/answers."""
    env = os.environ.get("SAFEROUNDS_CACHE")
    if env:
        return None if env.lower() in ("off", "0", "none") else Path(env).expanduser()
    home = os.environ.get("SAFEROUNDS_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "saferounds") / "answers"


def _blob_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _file_sha(path: Path, root: Path | None) -> str:
    """sha256 of a file, remembered in root/hashes.json by (resolved path, size, mtime)."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index = root / "hashes.json" if root else None
    known = {}
    if index is not None and index.is_file():
        try:
            known = json.loads(index.read_text(encoding="utf-8"))
        except ValueError:  # a damaged index only costs hashing again
            known = {}
    if not isinstance(known, dict) or not isinstance(known.get(stamp), str):
        known = known if isinstance(known, dict) else {}
        known[stamp] = sha256_file(path)
        if index is not None:
            write_json(index, known)
    return known[stamp]


def model_files(path: Path) -> list[Path]:
    """The files that make a checkpoint's answers: a .gguf file itself, else the directory's weights, config and
    tokenizer files; a peft adapter's base directory (when local) is included."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(MODEL_FILES)
                   and not p.name.startswith(".") and p.name not in ("manifest.json", "source.json"))
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base and Path(base).is_dir():
            files += model_files(Path(base))
    return files


def model_sha256(path: str | Path, root: Path | None = None) -> str | None:
    """sha256 over the model's files (names and contents); None when nothing local is there (a hub id)."""
    path = Path(path)
    if not path.exists():
        return None
    files = model_files(path)
    if not files:
        return None
    return _blob_sha([[f.name, _file_sha(f, root)] for f in files])


def suite_sha256(suite) -> str:
    """The suite file's sha256, else (a directory, a hub spec) the sha256 of its rows' prompts."""
    p = Path(str(suite.path))
    if p.is_file():
        return sha256_file(p)
    return _blob_sha([[r["id"], r["messages"]] for r in suite.rows])


class SuiteAnswers:
    """One entry: a model's answers to one suite under one set of generation settings."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header

    def read(self) -> dict[str, str]:
        """key -> answer; {} when the entry is missing, torn, from other keys or fails its checksum."""
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(obj, dict) or any(obj.get(k) != v for k, v in self.header.items()):
            return {}
        answers = obj.get("answers")
        if not isinstance(answers, dict) or obj.get("sha256") != _blob_sha(answers) \
                or not all(isinstance(v, str) for v in answers.values()):
            return {}
        return answers

    def add(self, answers: dict[str, str]) -> int:
        """Merge answers into the entry (one atomic write when something is new); returns how many were new."""
        have = self.read()
        new = {k: v for k, v in answers.items() if k not in have}
        if new:
            merged = {**have, **new}
            atomic_write_text(self.path, json.dumps({**self.header, "answers": merged, "sha256": _blob_sha(merged)},
                                                    sort_keys=True, ensure_ascii=False))
        return len(new)


class AnswerCache:
    """The per-machine cache of one model (`for_model`); `suite(suite, settings)` names an entry."""

    def __init__(self, root: Path, model_sha: str, model_settings: dict):
        self.root, self.model_sha, self.model_settings = Path(root), model_sha, dict(model_settings)

    def suite(self, suite, settings: dict) -> SuiteAnswers:
        everything = {**settings, "model": self.model_settings}
        suite_sha = suite_sha256(suite)
        name = f"{suite_sha[:16]}-{_blob_sha(everything)[:16]}.json"
        header = {"schema": SCHEMA, "model_sha256": self.model_sha, "suite_sha256": suite_sha,
                  "settings": everything}
        return SuiteAnswers(self.root / self.model_sha[:32] / name, header)


def model_settings(model_cfg) -> dict:
    """What of the model section changes a generated answer besides the weights (the numbers it computes in).
    `auto` settings are keyed by what they resolve to on this machine (bf16 where the CPU has AMX/AVX512-BF16,
    else fp32), so a cache shared by two kinds of machine never hands one's answers to the other."""
    from saferounds.core.precision import _cpu_bf16, generation_dtype

    out = {k: str(getattr(model_cfg, k, None)) for k in ("dtype", "generation_dtype", "generation_quantize",
                                                         "load_in_4bit", "load_in_8bit")}
    if out["generation_dtype"] == "auto":
        out["generation_dtype"] = f"auto:{str(generation_dtype('auto')).removeprefix('torch.')}"
    if out["generation_quantize"] == "auto":
        out["generation_quantize"] = f"auto:native_bf16={_cpu_bf16()}"
    return out


def for_model(path: str | Path, model_cfg, root: Path | None = None) -> AnswerCache | None:
    """The cache of the checkpoint at `path` (None when off, or when the model is not a local file or folder)."""
    root = root if root is not None else cache_root()
    if root is None:
        return None
    sha = model_sha256(path, root)
    return None if sha is None else AnswerCache(root, sha, model_settings(model_cfg))
