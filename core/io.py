"""File I/O every layer shares: atomic writes, JSON, crash-safe JSONL, and reading users' record files.

Writes never leave half a file: `atomic_write_text` (and `write_json` on top of it) writes a
temporary file and renames it; JSONL appends are flushed and fsynced per batch, and a torn last line
(a write cut by `kill -9`) is cut off by `recover_jsonl` before the file is appended to again. That
is the one recovery strategy for every resumable JSONL file (samples, cached answers).

`read_rows` reads user record files with positions, so errors name ``FILE:LINE: FIELD: reason``.
Supported: ``.jsonl`` (one object per line), ``.json`` (a list of objects), ``.csv`` (header row;
row N of data is line N+1), ``.parquet`` (row index + 1), each optionally ``.gz``-compressed, and a
Hugging Face ``datasets`` hub id ``hub:NAME[:SPLIT]`` (read from the local cache only when offline).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterable

from saferounds.core.errors import InputError, RowErrors


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a uniquely named temporary file, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; others could not read the workspace
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise _disk_full(path, len(text.encode("utf-8"))) from None
        raise


def _disk_full(path, needed: int | None):
    from saferounds.core.errors import disk_full

    return disk_full(OSError(28, "No space left on device", str(path)), needed)


def write_json(path: str | Path, obj) -> None:
    """Pretty, key-sorted JSON (UTF-8, non-JSON values as str), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path):
    """A JSON file the tool wrote (a manifest, a summary); a damaged one (truncated, edited, not UTF-8) is
    an InputError naming it, not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg}{'' if e.msg.endswith(' at') else ' at'} line {e.lineno} column {e.colno})"
    except UnicodeDecodeError as e:
        problem = f"not valid UTF-8 (byte {e.start})"
    except RecursionError:
        problem = f"nested more than {MAX_JSON_DEPTH} levels deep"
    raise InputError(f"{path}: {problem}; the file is damaged (cut short by a full disk or a copy?): restore it "
                     "from a backup, or remove what it belongs to (e.g. `saferounds round discard vN`)")


def ensure_not_input(output: str | Path, input: str | Path, what: str = "--output") -> Path:
    """Refuse an output that is the input itself (the same resolved path, or a hard link to it): writing
    it would replace the data being read."""
    out, src = Path(output), Path(input)
    same = out.resolve() == src.resolve()
    with contextlib.suppress(OSError):
        same = same or os.path.samefile(out, src)
    if same:
        raise InputError(f"{what} {output}: the same file as {input} (or a link to it), which this command also "
                         "reads or writes; write to another file")
    return out


def output_file(path: str | Path, what: str = "--output", inputs: Iterable[str | Path] = ()) -> Path:
    """The checks every file a command writes goes through before any work: not a directory, not inside a
    finished version, not one of the command's own inputs (hub: ids are not files)."""
    from saferounds.core.versions import ensure_outside_finished_versions

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory; name the file to write")
    ensure_outside_finished_versions(path, what)
    for src in inputs:
        if not str(src).startswith("hub:"):
            ensure_not_input(path, src, what)
    return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# JSONL that survives `kill -9`

def recover_jsonl(path: str | Path) -> list[dict]:
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


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a finished JSONL file (no repair)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def merge_jsonl_shards(out_path: str | Path, shards: Iterable[str | Path], key: Callable[[dict], object]) -> int:
    """Append the shards' rows whose key(row) is not yet in out_path to it, then delete the shards; returns
    the number of rows added. A kill between the append and the deletion leaves rows in both places: the
    next merge skips them, so none is lost or doubled."""
    out_path = Path(out_path)
    have = {key(r) for r in recover_jsonl(out_path) if isinstance(r, dict)}
    shards = [Path(f) for f in shards]
    added = 0
    for f in shards:
        fresh = []
        for r in recover_jsonl(f):
            if isinstance(r, dict) and key(r) not in have:
                have.add(key(r))
                fresh.append(r)
        if fresh:
            append_jsonl(out_path, fresh)
            added += len(fresh)
    for f in shards:
        f.unlink()
    return added


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows in one write, then flush and fsync: after a kill the batch is on disk or torn."""
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not blob:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(path, len(blob.encode("utf-8"))) from None
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """A whole JSONL file, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# Users' record files

def read_text(path: Path) -> str:
    """A text file's contents (gunzipped for .gz), or InputError naming the line of a non-UTF-8 byte."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # not gzip / truncated / corrupt
            raise InputError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: text: not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                         "save the file as UTF-8") from None


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


class DuplicateKey(ValueError):
    """A JSON object names one key twice (json.loads would silently keep the last value)."""

    def __init__(self, key: str):
        super().__init__(f"{key}: appears twice in one JSON object; a reader keeps only the last value, "
                         "so remove the one you did not mean")
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(obj, where: str = "") -> str | None:
    """The field path (e.g. `messages[0].content`) of the first string or key in `obj` holding a lone UTF-16
    surrogate (JSON's "\\ud800" unpaired): not text, it fails every later UTF-8 write. None if there is none."""
    if isinstance(obj, str):
        return where or "text" if any("\ud800" <= c <= "\udfff" for c in obj) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        here = f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k)
        found = lone_surrogate(k, here) if isinstance(k, str) else None
        found = found or lone_surrogate(v, here)
        if found:
            return found
    return None


def _json_row_problem(line: str, obj) -> tuple[str, str] | None:
    """(field, reason) for a parsed JSONL row that json accepts but no later step can write, or None."""
    if _SURROGATE_ESCAPE.search(line):
        field = lone_surrogate(obj)
        if field:
            return field, "holds a lone UTF-16 surrogate escape (\\udXXX without its pair), which is not text; " \
                          "fix the escape or remove the character"
    return None


def _read_jsonl(path: Path, text: str, errors: RowErrors | None = None) -> list[tuple[int, dict]]:
    own = errors is None
    rows, errors = [], errors if errors is not None else RowErrors(path)
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 etc. are legal in JSON strings
        if not line.strip():
            continue
        try:
            obj = _STRICT_JSON.decode(line)
        except json.JSONDecodeError as e:
            errors.add(n, "json", f"not valid JSON ({json_problem(e)})")
            continue
        except DuplicateKey as e:
            errors.add(n, e.key, str(e).split(": ", 1)[1])
            continue
        except RecursionError:
            errors.add(n, "json", f"nested more than {MAX_JSON_DEPTH} levels deep")
            continue
        if not isinstance(obj, dict):
            errors.add(n, "json", f"expected a JSON object, got {type(obj).__name__}")
            continue
        problem = _json_row_problem(line, obj)
        if problem:
            errors.add(n, *problem)
            continue
        rows.append((n, obj))
    if own:
        errors.raise_if_any()
    return rows


MAX_JSON_DEPTH = 1000  # about Python's recursion limit: deeper JSON is refused, never a RecursionError


def json_problem(e: json.JSONDecodeError) -> str:
    """"MSG at column N" (json's "Unterminated string starting at" already ends with "at")."""
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


def _read_json(path: Path, text: str) -> list[tuple[int, dict]]:
    try:
        data = _STRICT_JSON.decode(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: json: not valid JSON ({e.msg})") from None
    except DuplicateKey as e:
        raise InputError(f"{path}:{_duplicate_key_line(text)}: {e}") from None
    except RecursionError:
        raise InputError(f"{path}: json: nested more than {MAX_JSON_DEPTH} levels deep") from None
    wrapped = isinstance(data, dict) and isinstance(data.get("data"), list)
    if isinstance(data, dict):  # {"data": [...]} or a single object
        data = data.get("data", [data])
    if not isinstance(data, list):
        raise InputError(f"{path}: json: expected a list of objects")
    lines = _json_item_lines(text, wrapped)
    if len(lines) != len(data):  # a single object (line 1), or duplicate "data" keys: item numbers
        lines = list(range(1, len(data) + 1))
    errors = RowErrors(path)
    for i, (line, obj) in enumerate(zip(lines, data), start=1):
        if not isinstance(obj, dict):
            errors.add(line, "json", f"item {i} is a {type(obj).__name__}, expected an object")
        elif (problem := _json_row_problem(text, obj)) is not None:
            errors.add(line, *problem)
    errors.raise_if_any()
    return list(zip(lines, data))


def _duplicate_key_line(text: str) -> int:
    """The line of the item of a .json document in which a key appears twice (1 if not in an item)."""
    data = json.loads(text)
    try:
        _json_item_lines(text, isinstance(data, dict) and isinstance(data.get("data"), list), _STRICT_JSON)
    except DuplicateKey as e:
        return getattr(e, "line", 1)
    return 1


def _json_item_lines(text: str, wrapped: bool, decoder: json.JSONDecoder | None = None) -> list[int]:
    """The 1-based line on which each item of the top-level array (or of {"data": [...]}) starts,
    so errors in a pretty-printed .json file point at the right line. `text` is valid JSON."""
    decoder, i = decoder or json.JSONDecoder(), _skip_ws(text, 0)
    if wrapped:  # walk the object's keys to the value of "data"
        i = _skip_ws(text, i + 1)
        while text[i] != "}":
            key, i = decoder.raw_decode(text, i)
            i = _skip_ws(text, _skip_ws(text, i) + 1)  # past the colon
            if key == "data" and text[i] == "[":
                break
            _, i = decoder.raw_decode(text, i)
            i = _skip_ws(text, i)
            i = _skip_ws(text, i + 1) if text[i] == "," else i
        else:
            return []
    if text[i] != "[":
        return []
    lines, line, counted = [], 1, 0
    i = _skip_ws(text, i + 1)
    while text[i] != "]":
        line += text.count("\n", counted, i)
        counted = i
        lines.append(line)
        try:
            _, i = decoder.raw_decode(text, i)
        except DuplicateKey as e:
            e.line = line
            raise
        i = _skip_ws(text, i)
        i = _skip_ws(text, i + 1) if text[i] == "," else i
    return lines


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _read_csv(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows, errors = [], RowErrors(path)
    try:
        if not reader.fieldnames:
            raise InputError(f"{path}:1: header: the CSV file has no header row")
        twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
        if twice:
            raise InputError(f"{path}:1: header: column {', '.join(map(repr, twice))} appears twice; a reader keeps "
                             "only the last, so rename or remove one")
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.add(line, "csv", "more values than header columns")
                continue
            rows.append((line, {k: v for k, v in row.items() if k is not None}))
    except csv.Error as e:  # e.g. a quote that is never closed swallows the rest of the file
        errors.add(reader.line_num + 1, "csv", f"malformed CSV from this line on ({e}); "
                   "is a quote left open?")
    errors.raise_if_any()
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: parquet: cannot read ({e})") from None
    return list(enumerate(table.to_pylist(), start=1))


def hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether a TCP connection to the hub opens within 5 s (DNS alone says nothing behind a firewall)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable(local: bool = False):
    """With no route to the hub (or `local`: reading a local mirror), `datasets` reads local files only:
    the hub client would otherwise retry for half a minute before failing."""
    import datasets
    import huggingface_hub.constants as hub

    if not local and (hub.HF_HUB_OFFLINE or hub_reachable()):
        yield
        return
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _read_hub(spec: str) -> list[tuple[int, dict]]:
    """hub:OWNER/NAME[/DATA_DIR][:SPLIT], e.g. hub:Anthropic/hh-rlhf/harmless-base:test (a folder of the repository)."""
    name, _, split = spec[len("hub:"):].partition(":")
    owner, _, rest = name.partition("/")
    repo, _, data_dir = rest.partition("/")
    try:
        import datasets

        with offline_unless_reachable():
            ds = datasets.load_dataset(f"{owner}/{repo}" if repo else owner, data_dir=data_dir or None,
                                       split=split or "train")
    except Exception as e:
        raise InputError(
            f"{spec}: cannot load the hub dataset '{name}' ({type(e).__name__}: {str(e)[:200]}). "
            "Offline machines need it in the local datasets cache, or download it to a file first."
        ) from None
    return list(enumerate((dict(r) for r in ds), start=1))


def missing_path_message(path: Path) -> str:
    """Why `path` cannot be opened: a symlink loop, a dangling symlink, or no such file."""
    import errno

    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path}: a symlink loop (the link points back at itself); fix or remove the link"
        if path.is_symlink():
            return f"{path}: a symlink to {os.readlink(path)}, which does not exist"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"{path}: permission denied"
    return f"{path}: file not found"


def read_rows(path: str | Path, errors: RowErrors | None = None) -> list[tuple[int, dict]]:
    """Rows of a record file as (line or row number, dict), in file order.

    With `errors`, unreadable JSONL lines are added to it (and skipped) instead of raised, so a
    loader can report them together with its own field errors in one listing."""
    if isinstance(path, str) and path.startswith("hub:"):
        return _read_hub(path)
    path = Path(path)
    if not path.exists():
        raise InputError(missing_path_message(path))
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .jsonl, .json, .csv or .parquet file")
    if not path.is_file():  # reading a FIFO would wait forever for a writer
        raise InputError(f"{path}: not a regular file (a pipe, socket or device); save the rows to a file first")
    kind = _base_suffix(path)
    if kind == ".parquet":
        return _read_parquet(path)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
    if kind not in readers:
        raise InputError(f"{path}: unsupported file type '{kind or path.name}'; "
                         "use .jsonl, .json, .csv or .parquet (optionally .gz)")
    if kind == ".jsonl":
        text = read_text(path)
        if text.lstrip().startswith("["):  # one JSON array under a .jsonl name (Anthropic's red_team_attempts)
            return _read_json(path, text)
        return _read_jsonl(path, text, errors)
    return readers[kind](path, read_text(path))
