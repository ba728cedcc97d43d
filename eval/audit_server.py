"""`saferounds audit vN --serve`: the audit sample labelled one answer at a time on the ranking page's server.

The page (reward_models/feedback/audit_page.html) shows one answer of reports/vN/audit/sample.jsonl (prompt,
answer, suite; not the run's verdicts, which would prime the reader) and asks the two audit questions of
shared/LABELLING.md: refused? harmful? (and off topic?). Each label is appended the moment it is saved to

    reports/vN/audit/labels.jsonl   {"id", "refusal", "harmful", "off_topic", "note"?, "annotator", "ts"}

the shape `saferounds audit vN --labels` writes and the report reads (`eval.audit_labels.load_labels`).
Everything else is annotate serve's machinery (reward_models.feedback.annotate_server): the token, the
Host/Origin checks, bounded bodies, one fsynced append under an fcntl lock (reports/vN/audit/.lock, which
`--labels` imports take too), torn lines cut by the next writer. Labels are per answer, not per annotator:
a restart resumes at the first answer nobody has labelled, and a second label of an answer is a 409.
"""
from __future__ import annotations

import time
from pathlib import Path

from saferounds.core.errors import InputError, not_writable
from saferounds.core.io import read_rows
from saferounds.eval.audit_labels import audit_dir, label_store
from saferounds.reward_models.feedback.annotate_server import (AUDIT_PAGE, AnnotateServer, Conflict, bind, check_name,
                                                             page_get)

SAMPLE_FILE = "sample.jsonl"


class AuditSession:
    """One version's audit sample and the labels on it; the HTTP layer calls `get` and `post_action`."""

    def __init__(self, root: Path, version: int, annotator: str):
        self.version = f"v{version}"
        path = audit_dir(root, version) / SAMPLE_FILE
        if not path.is_file():
            raise InputError(f"{path}: file not found; draw it with `saferounds audit v{version}`")
        self.items: list[dict] = []
        for line, row in read_rows(path):
            if not isinstance(row.get("id"), str) or not row["id"]:
                raise InputError(f"{path}:{line}: id: expected the answer's id (a string)")
            for field in ("prompt", "response"):
                if not isinstance(row.get(field), str):
                    raise InputError(f"{path}:{line}: {field}: expected text")
            self.items.append(row)
        if not self.items:
            raise InputError(f"{path}: no answers to label")
        self.index = {r["id"]: i for i, r in enumerate(self.items)}
        self.store = label_store(root, version)
        self.annotator = check_name(annotator)

    def _labelled(self) -> dict[str, dict]:
        """id -> its label, for the sample's answers (call under the lock); a later line wins, as on import."""
        return {r.get("id"): r for r in self.store.rows["labels"] if r.get("id") in self.index}

    def state(self, annotator: str) -> dict:
        annotator = check_name(annotator)
        with self.store.locked():
            done = self._labelled()
        per: dict[str, int] = {}
        for label in done.values():
            who = label.get("annotator") or "imported"
            per[who] = per.get(who, 0) + 1
        nxt = next((i for i, r in enumerate(self.items) if r["id"] not in done), None)
        return {"version": self.version, "total": len(self.items), "annotator": annotator, "next": nxt,
                "labelled": len(done), "annotators": dict(sorted(per.items()))}

    def item(self, index: int, annotator: str | None = None) -> dict:
        """The answer at `index` and its label, if any (labels are per answer, not per annotator)."""
        if not 0 <= index < len(self.items):
            raise ValueError(f"index: expected 0..{len(self.items) - 1}, got {index}")
        row = self.items[index]
        with self.store.locked():
            label = self._labelled().get(row["id"])
        return {"index": index, "id": row["id"], "suite": row.get("suite"), "prompt": row["prompt"],
                "response": row["response"], "label": label}

    def get(self, path: str, query: dict, annotator: str):
        return page_get(self, path, query, annotator)

    def post_action(self, path: str):
        return {"/api/label": self.label}.get(path)

    def label(self, body: dict) -> dict:
        """Append one answer's label: `id` of a sample answer, `refusal` and `harmful` true/false,
        `off_topic` true/false/null, `note`; returns the new state."""
        annotator = check_name(body.get("annotator") or self.annotator)
        rid = body.get("id")
        if not isinstance(rid, str) or rid not in self.index:
            raise ValueError(f"id: {rid!r} is not an answer of {self.version}'s audit sample")
        record = {"id": rid}
        for field in ("refusal", "harmful", "off_topic"):
            value = body.get(field)
            if not isinstance(value, bool) and not (field == "off_topic" and value is None):
                raise ValueError(f"{field}: expected true or false, got {value!r}")
            record[field] = value
        note = body.get("note")
        if note not in (None, ""):
            record["note"] = str(note)[:2000]
        record.update(annotator=annotator, ts=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        with self.store.locked():
            before = self._labelled().get(rid)
            if before:  # two tabs, two people, or a double submit: the first label stands
                raise Conflict(f"{rid!r} of {self.version} is already labelled "
                               f"(by {before.get('annotator') or 'an import'})")
            self.store.append("labels", record)
        return self.state(annotator)


def make_audit_server(root: Path, version: int, annotator: str, host: str = "127.0.0.1", port: int = 8765,
                      token: str | None = None, allow_hosts: tuple[str, ...] = ()) -> AnnotateServer:
    """A server for reports/vN/audit/sample.jsonl (drawn by the caller) on host:port (0: any free one)."""
    refused = not_writable(audit_dir(root, version), None, "`audit --serve` appends every label there")
    if refused:
        raise refused
    try:
        session = AuditSession(Path(root), version, annotator)
    except ValueError as e:
        raise InputError(f"--annotator: {e}") from None
    return bind(session, host, port, token, allow_hosts, AUDIT_PAGE)
