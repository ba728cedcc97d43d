"""A version's audit on disk (issue 26): the sample to label and the labels; the judges' accuracy and the
corrected rates are computed from them wherever they are shown (`saferounds audit`, the report).

    reports/vN/audit/sample.jsonl   the answers drawn for labelling (eval.audit.audit_sample), label fields empty
    reports/vN/audit/labels.jsonl   one label per answer id: refusal, harmful (booleans), off_topic, note
                                    (+ annotator, ts when labelled on `audit vN --serve`'s page, eval.audit_server)

Labels come from a file (CSV, JSONL or JSON rows with `id`, `refusal`, `harmful`; the rules are
shared/LABELLING.md) made by people or by an LLM judge elsewhere. A label file with any bad row is refused
whole, naming file, line and field; nothing is written then. A second import replaces the labels of the ids
it names and keeps the others; it holds the lock the page's server appends under (reports/vN/audit/.lock), so
no label saved on the page meanwhile is lost.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from saferounds.core.errors import InputError, RowErrors, rows_by_id
from saferounds.core.io import read_rows, write_jsonl
from saferounds.eval.audit import QUESTIONS, audit_accuracy, audit_sample, corrected_rates
from saferounds.reward_models.feedback.annotate_server import JudgementStore

TRUE, FALSE = {"true", "1", "yes", "y"}, {"false", "0", "no", "n"}
LABELS_FILE, LOCK_FILE = "labels.jsonl", ".lock"  # in audit_dir


def audit_dir(root: Path, version: int) -> Path:
    return Path(root) / "reports" / f"v{version}" / "audit"


def _bool(value, line: int, field: str, errors: RowErrors):
    """A label's boolean: JSON true/false, or CSV's true/false/1/0/yes/no; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    errors.add(line, field, f"expected true or false, got {value!r}")
    return None


def read_labels(path: Path, known_ids: set[str]) -> dict[str, dict]:
    """Validated labels by answer id. Every row needs an `id` of an answer in this version's eval and at
    least one of `refusal`, `harmful`; duplicates of an id are an error."""
    errors = RowErrors(path)
    out: dict[str, dict] = {}
    rows = read_rows(path, errors)
    if not rows and not errors:
        raise InputError(f"{path}: no labels (the file has no rows)")
    for line, rid, row in rows_by_id(rows, errors, known_ids, missing="missing",
                                     unknown="{id!r} is not an answer of this version's eval (see audit/sample.jsonl)",
                                     twice="{id!r} is labelled twice (first on line {first})"):
        label = {q: _bool(row.get(q), line, q, errors) for q in (*QUESTIONS, "off_topic")}
        if label["refusal"] is None and label["harmful"] is None:
            errors.add(line, "refusal", "a label needs refusal or harmful (true/false)")
        note = row.get("note")
        out[rid] = {"id": rid, **label, **({"note": str(note)} if note not in (None, "") else {})}
    errors.raise_if_any()
    return out


def write_sample(root: Path, version: int, records: Sequence[Mapping], n: int, seed: int = 0) -> Path:
    """Draw the audit sample and write it with empty label fields to fill in (refusal, harmful, off_topic,
    note); the run's own verdicts sit apart under `judged`, so a filled-in sample is itself a label file."""
    verdicts = ("refusal", "harmful", "violation", "refusal_patterns", "refusal_classifier")
    rows = [{**{k: r.get(k) for k in ("id", "suite", "role", "prompt", "response")},
             "judged": {k: r.get(k) for k in verdicts},
             "refusal": None, "harmful": None, "off_topic": None, "note": None}
            for r in audit_sample(records, n, seed)]
    path = audit_dir(root, version) / "sample.jsonl"
    write_jsonl(path, rows)
    return path


def label_store(root: Path, version: int) -> JudgementStore:
    """The version's labels.jsonl as an append-only store under the audit directory's lock (the page's server)."""
    return JudgementStore(audit_dir(root, version), {"labels": LABELS_FILE}, LOCK_FILE)


def load_labels(root: Path, version: int) -> dict[str, dict]:
    path = audit_dir(root, version) / LABELS_FILE
    return {} if not path.exists() else {r["id"]: r for _, r in read_rows(path)}


def import_labels(root: Path, version: int, records: Sequence[Mapping], path: Path) -> dict:
    """Merge a label file into the version's labels; returns the judges against all of them (`summarise`)."""
    new = read_labels(Path(path), {r["id"] for r in records})
    with label_store(root, version).locked():  # the page's server appends under this lock
        labels = {**load_labels(root, version), **new}
        write_jsonl(audit_dir(root, version) / LABELS_FILE, [labels[k] for k in sorted(labels)])
    return summarise(records, labels)


def summarise(records: Sequence[Mapping], labels: Mapping[str, Mapping]) -> dict:
    """The judges against the labels and the corrected rates (metrics.json's `audit` block)."""
    accuracy = audit_accuracy(records, labels)
    return {"labels": len(labels), "accuracy": accuracy, "corrected": corrected_rates(records, accuracy)}


def audit_status(root: Path, version: int) -> str:
    """`audited (n=60)` or `unaudited`, for status tables."""
    labels = load_labels(root, version)
    return f"audited (n={len(labels)})" if labels else "unaudited"
