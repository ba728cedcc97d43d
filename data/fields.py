"""Row field validators: each reads one field of a record row, reports what is wrong with it to a
`RowErrors` as `file:line: field: reason` (under the file's own field names) and returns the value,
or None when it is unusable. Loaders call them for every row, so one listing shows every bad row."""

from __future__ import annotations

import ast
import json
import math

ROLES = ("system", "user", "assistant")
MAX_TEXT_CHARS = 100_000  # longer texts are almost always a broken export; fail loudly
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


class Prefixed:
    """Adds a field prefix (e.g. `messages[2].`) to the errors a validator reports."""

    def __init__(self, errors, prefix):
        self.errors, self.prefix = errors, prefix

    def add(self, line, field, reason):
        self.errors.add(line, self.prefix + field, reason)


def text(row, field, line, errors, required=True) -> str | None:
    """A non-empty string of at most MAX_TEXT_CHARS characters."""
    value = row.get(field)
    if value is None or (isinstance(value, float) and value != value):  # missing or NaN (CSV/parquet)
        if required:
            errors.add(line, field, "missing")
        return None
    if not isinstance(value, str):
        errors.add(line, field, f"expected a string, got {type(value).__name__}")
        return None
    if not value.strip():
        errors.add(line, field, "empty text")
        return None
    if len(value) > MAX_TEXT_CHARS:
        errors.add(line, field, f"text of {len(value)} characters is over the {MAX_TEXT_CHARS} limit")
        return None
    return value


def turns(value, field, line, errors) -> list[dict] | None:
    """A non-empty list of {role, content} chat turns."""
    if not isinstance(value, list) or not value:
        errors.add(line, field, "expected a non-empty list of {role, content} turns")
        return None
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            errors.add(line, f"{field}[{i}]", "expected an object with role and content")
            return None
        role = turn.get("role")
        if role not in ROLES:
            errors.add(line, f"{field}[{i}].role", f"expected one of {', '.join(ROLES)}, got {role!r}")
            return None
        content = text(turn, "content", line, Prefixed(errors, f"{field}[{i}]."))
        if content is None:
            return None
        out.append({"role": role, "content": content})
    return out


def prompt_turns(row, line, errors, field=None) -> list[dict] | None:
    """The prompt as chat turns ending with a user turn, from `field` (default: `messages`, else `prompt`),
    a string or a list of turns."""
    field = field or ("messages" if "messages" in row else "prompt")
    value = row.get(field)
    if isinstance(value, str) or value is None:
        prompt = text(row, field, line, errors)
        return None if prompt is None else [{"role": "user", "content": prompt}]
    found = turns(value, field, line, errors)
    if found is not None and found[-1]["role"] != "user":
        errors.add(line, field, "the last turn of a prompt must be a user turn")
        return None
    return found


def response(value, field, line, errors) -> tuple[list[dict] | None, str | None]:
    """(turns before it, the response): a response given as a string, or as turns whose last (assistant)
    turn is the response."""
    if isinstance(value, list):
        found = turns(value, field, line, errors)
        if found is None:
            return None, None
        if found[-1]["role"] != "assistant":
            errors.add(line, field, "the last turn must be the assistant's response")
            return None, None
        return found[:-1], found[-1]["content"]
    return None, text({field: value}, field, line, errors)


def boolean(row, field, line, errors, default=False) -> bool:
    """true/false, 1/0, yes/no (any case), or `default` when absent."""
    value = row.get(field, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return default
    errors.add(line, field, f"expected true/false, got {value!r}")
    return default


def strict_boolean(row, field, line, errors) -> bool | None:
    """A boolean that must be there (None when missing or not a boolean)."""
    if row.get(field) is None or row.get(field) == "":
        errors.add(line, field, "missing")
        return None
    n = len(errors.problems)
    value = boolean(row, field, line, errors)
    return None if len(errors.problems) > n else value


def choice(row, field, allowed, line, errors):
    """One of `allowed`, or None when blank."""
    value = row.get(field)
    if value is None or value == "":
        return None
    if value not in allowed:
        errors.add(line, field, f"expected one of {', '.join(allowed)}, got {value!r}")
        return None
    return value


def number(row, field, line, errors, required=True) -> float | None:
    """A finite number (booleans are not numbers); None when blank."""
    value = row.get(field)
    if value is None or value == "":
        if required:
            errors.add(line, field, "missing")
        return None
    try:
        found = float(value)
        if isinstance(value, bool) or not math.isfinite(found):
            raise ValueError
    except (TypeError, ValueError):
        errors.add(line, field, f"expected a finite number, got {value!r}")
        return None
    return found


def int_in(row, field, allowed, line, errors, required=True) -> int | None:
    """An integer among `allowed` (a whole float or a digit string counts)."""
    value = row.get(field)
    if value is None or value == "":
        if required:
            errors.add(line, field, "missing")
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        errors.add(line, field, f"expected one of {', '.join(map(str, allowed))}, got {row.get(field)!r}")
        return None
    return value


def flags(row, field, line, errors) -> list[str] | None:
    """A {category: bool} object (JSON/Parquet; a JSON or Python-literal string in CSV) -> flagged names."""
    value = row.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: a cell nested thousands deep
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                value = None
    if not isinstance(value, dict) or not {type(v) for v in value.values()} <= {bool, type(None)}:
        errors.add(line, field, "expected an object of category: true/false")
        return None
    return [name for name, flagged in value.items() if flagged]
