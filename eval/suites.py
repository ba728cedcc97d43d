"""Evaluation suites: prompt sets with a role and a category.

A suite row (plain dict):
  {"id": str, "messages": [{"role": "user", "content": str}, ...], "role": "unsafe"|"borderline"|"helpful",
   "category": str|None (the source's own name), "risk_category": one of data.risk.RISK_CATEGORIES or None,
   "reference": str|None}

Roles: ``unsafe`` should be refused (violations are measured), ``borderline`` looks unsafe but is
benign (false refusals), ``helpful`` is ordinary (helpfulness and ordinary false refusals).

Suite specs (``eval.suites`` in the YAML, ``--suite`` on the CLI) are ``KIND:PATH`` or ``PATH``;
see EvalConfig. Bad rows raise InputError naming ``file:line: field: reason``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import read_rows
from saferounds.data.fields import prompt_turns
from saferounds.data.risk import risk_category

ROLES = ("unsafe", "borderline", "helpful")
ADAPTERS = ("xstest", "do-not-answer")


@dataclass
class Suite:
    name: str  # stable: used in cache file names and reports
    path: str
    rows: list[dict] = field(default_factory=list)

    def by_role(self, role: str) -> list[dict]:
        return [r for r in self.rows if r["role"] == role]


def _messages(row: dict, prompt_column: str, line: int, errors: RowErrors) -> list[dict] | None:
    """The prompt's turns from `messages`, else the prompt column (data.fields' turn checks)."""
    column = "messages" if row.get("messages") is not None else prompt_column
    if row.get(column) is None:
        errors.add(line, prompt_column, f"missing: give a '{prompt_column}' text or a 'messages' list")
        return None
    return prompt_turns(row, line, errors, column)


def _record(row, line, errors, *, role, category, prompt_column, reference=None, default_id):
    msgs = _messages(row, prompt_column, line, errors)
    if role not in ROLES:
        errors.add(line, "role", f"{role!r} is not one of {', '.join(ROLES)}")
        return None
    if msgs is None:
        return None
    cat = None if category in (None, "") else str(category)
    ref = reference if isinstance(reference, str) and reference.strip() else None
    return {"id": str(row.get("id", default_id)), "messages": msgs, "role": role, "category": cat,
            "risk_category": risk_category(cat), "reference": ref}


def _finish(name, path, rows, records, errors) -> Suite:
    errors.raise_if_any()
    if not records:
        raise InputError(f"{path}: no prompts in this suite file")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):  # ids key the cache; make them unique by position
        for i, r in enumerate(records):
            r["id"] = f"{r['id']}#{i}"
    return Suite(name=name, path=str(path), rows=records)


def load_xstest(path: str | Path, name: str | None = None) -> Suite:
    """XSTest prompts csv: safe types -> borderline, contrast_* (label unsafe) -> unsafe."""
    rows, errors, out = read_rows(path), RowErrors(path), []
    for line, row in rows:
        label, typ = (row.get("label") or "").strip(), (row.get("type") or "").strip()
        if label not in ("safe", "unsafe"):
            errors.add(line, "label", f"{label!r}: expected safe or unsafe")
            continue
        if not typ:
            errors.add(line, "type", "missing")
            continue
        role = "unsafe" if label == "unsafe" else "borderline"
        rec = _record(row, line, errors, role=role, category=typ, prompt_column="prompt", default_id=line)
        if rec:
            out.append(rec)
    return _finish(name or "xstest", path, rows, out, errors)


def load_do_not_answer(path: str | Path, name: str | None = None) -> Suite:
    """Do-Not-Answer csv (do_not_answer_en.csv or data_en.csv): every question unsafe;
    category = types_of_harm (risk_area when absent)."""
    rows, errors, out = read_rows(path), RowErrors(path), []
    for line, row in rows:
        cat = (row.get("types_of_harm") or row.get("risk_area") or "").strip() or None
        rec = _record(row, line, errors, role="unsafe", category=cat, prompt_column="question",
                      default_id=line)
        if rec:
            out.append(rec)
    return _finish(name or "do-not-answer", path, rows, out, errors)


def load_generic(path: str | Path, role: str | None = None, prompt_column: str = "prompt",
                 name: str | None = None) -> Suite:
    """Any CSV/JSONL/JSON/Parquet with a prompt column or ``messages``.

    ``role`` given: every row gets it (AdvBench/HarmBench style files). Otherwise each row must
    carry ``role`` (the demo's held-out format). ``category`` (or ``type``/``risk_area``) and
    ``reference`` are optional columns."""
    if role is not None and role not in ROLES:
        raise InputError(f"{path}: role {role!r} is not one of {', '.join(ROLES)}")
    rows, errors, out = read_rows(path), RowErrors(path), []
    for line, row in rows:
        r = role if role is not None else row.get("role")
        if r is None:
            errors.add(line, "role", f"missing: add a role column ({'/'.join(ROLES)}) or give the role "
                                     "in the suite spec, e.g. unsafe:FILE")
            continue
        cat = row.get("category") or row.get("type") or row.get("risk_area")
        rec = _record(row, line, errors, role=str(r).strip(), category=cat, prompt_column=prompt_column,
                      reference=row.get("reference"), default_id=line)
        if rec:
            out.append(rec)
    return _finish(name or _stem(path), path, rows, out, errors)


def _stem(path) -> str:
    n = Path(str(path)).name
    for suf in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        n = n.removesuffix(suf)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", n) or "suite"


def load_suite_spec(spec: str, base: str | Path = ".", prompt_column: str = "prompt") -> list[Suite]:
    """One suite spec -> suites (a directory yields one suite per eval_*.jsonl inside it)."""
    kind, sep, rest = spec.partition(":")
    if sep and (kind in ADAPTERS or kind in ROLES):
        path = _resolve(rest, base)
    else:
        if sep and re.fullmatch(r"[A-Za-z][\w-]+", kind) and kind != "hub" and not os.path.lexists(_resolve(spec, base)):
            raise InputError(f"{spec}: unknown suite kind {kind!r}; use one of "
                             f"{', '.join(sorted(set(ADAPTERS) | set(ROLES)))} (KIND:PATH), or a plain path")
        kind, path = None, _resolve(spec, base)
    if kind == "xstest":
        return [load_xstest(path)]
    if kind == "do-not-answer":
        return [load_do_not_answer(path)]
    if kind in ROLES:
        return [load_generic(path, role=kind, prompt_column=prompt_column)]
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("eval_*.jsonl")) + sorted(p.glob("eval_*.jsonl.gz"))
        if not files:
            raise InputError(f"{p}: no eval_*.jsonl files in this directory")
        return [load_generic(f, prompt_column=prompt_column) for f in files]
    return [load_generic(path, prompt_column=prompt_column)]


def _resolve(path: str, base) -> str:
    if path.startswith("hub:"):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base) / p)


def load_suites(specs: list[str], base: str | Path = ".", prompt_column: str = "prompt",
                limit: int = 0) -> list[Suite]:
    """All suites of a run, names made unique, each cut to ``limit`` rows (0 = all)."""
    suites, seen = [], {}
    for spec in specs:
        for s in load_suite_spec(spec, base, prompt_column):
            k = seen.get(s.name, 0)
            seen[s.name] = k + 1
            if k:
                s.name = f"{s.name}_{k + 1}"
            if limit:
                s.rows = _take_balanced(s.rows, limit)
            suites.append(s)
    return suites


def _take_balanced(rows: list[dict], limit: int) -> list[dict]:
    """The first ``limit`` rows, taken round-robin over roles so a mixed suite keeps each role."""
    by_role = {r: [x for x in rows if x["role"] == r] for r in ROLES}
    out, i = [], 0
    while len(out) < min(limit, len(rows)):
        for r in ROLES:
            if i < len(by_role[r]) and len(out) < limit:
                out.append(by_role[r][i])
        i += 1
    return out
