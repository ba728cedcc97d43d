"""What the format adapters (data.formats) build from a public dataset's rows: user turns, labelled
responses, and a file's prompts gathered one per distinct text."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from saferounds.data.risk import risk_of


def user(text: str) -> list[dict]:
    """A prompt of one user turn."""
    return [{"role": "user", "content": text}]


def response_record(rid, prompt, response, is_safe, harms, table) -> dict:
    """A labelled response (for learned safety judges); its risk category from its harm names via `table`."""
    return {"id": rid, "messages": user(prompt), "response": response, "is_safe": is_safe,
            "category": None if is_safe else risk_of(harms, table), "harm_categories": list(harms)}


@dataclass
class SourceFile:
    """What a row adapter knows of the file it reads: its rows (ids are `<stem>-<line>`), and `counts` of
    what was dropped or noted."""
    stem: str
    rows: list
    counts: Counter = field(default_factory=Counter)
    _once: dict = field(default_factory=dict)

    def pid(self, line: int) -> str:
        return f"{self.stem}-{line}"

    def once(self, fn):
        """fn(rows), computed on first use: a property of the whole file (e.g. its score scale)."""
        if fn not in self._once:
            self._once[fn] = fn(self.rows)
        return self._once[fn]


class Seen(NamedTuple):
    """A prompt as one row shows it: unsafe when the row shows it eliciting an unsafe response (or the format
    is adversarial by construction); `harms` are mapped onto a risk category through `table`."""
    text: str
    unsafe: bool
    harms: list
    table: dict
    pid: str | None = None


class Prompts:
    """Prompts in file order, one per distinct text: a prompt is a safety prompt when any of its rows
    shows it eliciting an unsafe response (or the format is adversarial by construction)."""

    def __init__(self, stem: str):
        self.stem, self.rows = stem, {}

    def add(self, line: int, seen: Seen):
        p = self.rows.setdefault(seen.text, {"id": seen.pid or f"{self.stem}-{line}", "unsafe": False,
                                             "harms": [], "table": seen.table})
        p["unsafe"] |= seen.unsafe
        p["harms"] += [h for h in seen.harms if h not in p["harms"]]

    def records(self) -> list[dict]:
        return [{"id": p["id"], "messages": user(text), "is_safety": p["unsafe"],
                 "category": risk_of(p["harms"], p["table"]) if p["unsafe"] else None, "reference": None}
                for text, p in self.rows.items()]
