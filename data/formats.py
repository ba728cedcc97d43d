"""Public safety and preference datasets, read as they are published.

Recognised from their columns (`detect_format`), as data.load recognises HH-RLHF transcripts (data.hh), and mapped
by a table of row adapters, one per format and kind (ADAPTERS), onto our rows:

  preferences  {id, prompt, chosen, rejected, rating, margin, safety_label, source}; safety pairs also
               carry chosen_safe / rejected_safe
  prompts      {id, messages, is_safety, category, reference}   (category: a LLaMA 2 risk category)
  responses    {id, messages, response, is_safe, category, harm_categories}   (for learned safety judges)

  format                   preferences                                         prompts  responses
  pku-saferlhf             a helpfulness pair (better_response_id) AND a       yes      yes (both)
                           safety pair (safer_response_id) per row
  ultrafeedback-binarized  helpfulness: chosen vs rejected, rated by score gap  yes      -
  ultrafeedback            helpfulness: every pair of completions whose mean   yes      -
                           aspect ratings differ, rated by the gap
  beavertails              - (one response per row)                            yes      yes
  hh-red-team              - (one transcript per row)                          yes      -

Which RM gets what (LLaMA 2 Sec. 3.2.2): the helpfulness RM trains on helpfulness pairs (PKU's
better_response_id, UltraFeedback) and the safety RM on safety pairs (PKU's safer_response_id) with
the 3-way safety label; pairs carry `source` so `load_preferences(path, source)` keeps one kind.
Every bad row is reported as `file:line: field: reason` with the dataset's own field name.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import read_rows
from saferounds.core.records import SAFETY_LABELS
from saferounds.data import beavertails, hh, pku, ultrafeedback
from saferounds.data.adapted import Prompts, SourceFile

SIGNATURES = {  # checked in this order; the first whose columns are all present wins
    "pku-saferlhf": ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"),
    "ultrafeedback-binarized": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    "ultrafeedback": ("instruction", "completions"),
    "beavertails": ("prompt", "response", "is_safe", "category"),
    "hh-red-team": ("transcript", "min_harmlessness_score_transcript"),
}
# format -> kind -> row adapter (row, line, errors, SourceFile): preferences and responses adapters return
# the row's records, prompts adapters the prompt the row shows (a Seen, gathered one per text) or None.
ADAPTERS = {
    "pku-saferlhf": {"preferences": pku.preferences, "prompts": pku.prompts, "responses": pku.responses},
    "ultrafeedback-binarized": {"preferences": ultrafeedback.binarized_preferences,
                                "prompts": ultrafeedback.binarized_prompts},
    "ultrafeedback": {"preferences": ultrafeedback.preferences, "prompts": ultrafeedback.prompts},
    "beavertails": {"prompts": beavertails.prompts, "responses": beavertails.responses},
    "hh-red-team": {"prompts": hh.red_team_prompts},
}
PRODUCES = {fmt: tuple(kinds) for fmt, kinds in ADAPTERS.items()}  # format -> the kinds of rows it can give
KINDS = ("preferences", "prompts", "responses")
_WRONG_KIND_HINTS = {"hh-red-team": " (list it under data.prompts)",
                     "beavertails": " (one response per row: use it as prompts or labelled responses)"}
log = logging.getLogger(__name__)


def detect_format(row: dict) -> str | None:
    """The public dataset a row comes from, by its columns (None: one of our own shapes)."""
    for name, columns in SIGNATURES.items():
        if all(c in row for c in columns):
            category = row.get("category")
            if name == "beavertails" and not (isinstance(category, dict) or str(category).startswith("{")):
                continue  # our own responses shape: `category` is a plain name, not BeaverTails' flags
            return name
    return None


def read_detected(path) -> tuple[str | None, list[tuple[int, dict]], RowErrors]:
    """(format or None, rows, errors so far) for a file; the format comes from its first row."""
    errors = RowErrors(path)
    rows = read_rows(path, errors)
    return (detect_format(rows[0][1]) if rows else None), rows, errors


def adapt(path, rows: list[tuple[int, dict]], fmt: str, kind: str, errors: RowErrors | None = None,
          source: str | None = None) -> tuple[list[dict], Counter]:
    """A detected file's rows -> our `kind` records and counts of what was dropped or noted.

    Raises InputError listing every bad row; `source` keeps only that kind of preference pair."""
    if kind not in PRODUCES[fmt]:
        raise InputError(f"{path}: a {fmt} file gives {', '.join(PRODUCES[fmt])}, not {kind}"
                         + (_WRONG_KIND_HINTS.get(fmt, "") if kind == "preferences" else ""))
    errors = errors if errors is not None else RowErrors(path)
    file = SourceFile(Path(str(path)).stem.split(".")[0], rows)
    read = ADAPTERS[fmt][kind]
    if kind == "prompts":
        prompts = Prompts(file.stem)
        for line, row in rows:
            if (seen := read(row, line, errors, file)) is not None:
                prompts.add(line, seen)
        errors.raise_if_any()
        out = prompts.records()
        file.counts["duplicate prompts"] = len(rows) - len(out)
    else:
        out = [record for line, row in rows for record in read(row, line, errors, file)]
        errors.raise_if_any()
    if kind == "preferences":
        out = _of_source(path, fmt, out, source)
        file.counts["chosen_unsafe_rejected_safe"] = sum(p["safety_label"] == SAFETY_LABELS[3] for p in out)
    if not out:
        raise InputError(f"{path}: no {kind} records (every row was dropped: {dict(file.counts)})")
    dropped = {k: v for k, v in file.counts.items() if v and k != "chosen_unsafe_rejected_safe"}
    if dropped:
        log.info("%s (%s): %d %s; dropped %s", path, fmt, len(out), kind, dropped)
    return out, file.counts


def _of_source(path, fmt: str, pairs: list[dict], source: str | None) -> list[dict]:
    """The pairs of one `source` (all when None); InputError when the file has pairs but none of it."""
    if source is None:
        return pairs
    kept = [p for p in pairs if p["source"] == source]
    if pairs and not kept:
        raise InputError(f"{path}: a {fmt} file has no {source} pairs (it has "
                         f"{', '.join(sorted({p['source'] for p in pairs}))} pairs); list it under "
                         f"data.{pairs[0]['source']}_preferences")
    return kept
