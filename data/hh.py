"""Anthropic HH-RLHF, read as published: preference transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") and
red-team attempts (one transcript per attack)."""

from __future__ import annotations

import re
from pathlib import Path

from saferounds.core.io import read_rows
from saferounds.data import fields
from saferounds.data.adapted import Seen

HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def split_hh(transcript: str):
    """'\\n\\nHuman: a\\n\\nAssistant: b ...' -> (prompt turns, final assistant reply); (None, None) when not one."""
    parts = HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        return None, None
    turns = [{"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
             for speaker, text in zip(parts[1::2], parts[2::2])]
    if turns[-1]["role"] != "assistant":
        return None, None
    prompt: list[dict] = []
    for turn in turns[:-1]:  # a few public rows have empty turns or one speaker twice in a row;
        if not turn["content"]:  # chat templates (Llama 2's) insist on alternating non-empty turns
            continue
        if prompt and prompt[-1]["role"] == turn["role"]:
            prompt[-1]["content"] += "\n\n" + turn["content"]
        else:
            prompt.append(turn)
    if not prompt or prompt[-1]["role"] != "user":
        return None, None
    return prompt, turns[-1]["content"]


def is_hh(row) -> bool:
    """A preference row in HH-RLHF's shape: chosen/rejected transcripts, no prompt."""
    return "prompt" not in row and isinstance(row.get("chosen"), str) and row["chosen"].startswith("\n\nHuman:")


def hh_pairs(path, source: str | None = None, rows: list[tuple[int, dict]] | None = None) -> tuple[list[dict], dict]:
    """Anthropic HH-RLHF transcripts -> preference pairs, dropping unusable rows.

    The public test splits have a few rows with chosen == rejected or an empty final turn; those
    are dropped (and counted) rather than failing the whole file. Returns (pairs, counts).
    `rows`: the file's rows when the caller has already read them.
    """
    source = source or ("safety" if "harmless" in str(path) else "helpfulness")
    pairs, counts = [], {"rows": 0, "kept": 0, "identical": 0, "empty": 0, "malformed": 0}
    for line, row in rows if rows is not None else read_rows(path):
        counts["rows"] += 1
        prompt, chosen = split_hh(row.get("chosen") or "")
        prompt_r, rejected = split_hh(row.get("rejected") or "")
        if prompt is None or prompt_r is None or prompt != prompt_r:
            counts["malformed"] += 1
        elif not prompt or not chosen or not rejected:
            counts["empty"] += 1
        elif chosen == rejected:
            counts["identical"] += 1
        else:
            counts["kept"] += 1
            pairs.append({"id": f"{Path(str(path)).parent.name}-{line}", "prompt": prompt,
                          "chosen": chosen, "rejected": rejected, "rating": None, "margin": None,
                          "safety_label": None, "source": source})
    return pairs, counts


def red_team_row(row, line, errors) -> dict | None:
    """An HH red-team attempt -> its opening attack (the first Human turn) and tag/description words.

    Only the first turn is kept: later turns answer the red-teamed model's replies, which our policy
    never wrote."""
    transcript = fields.text(row, "transcript", line, errors)
    fields.number(row, "min_harmlessness_score_transcript", line, errors, required=False)
    fields.number(row, "rating", line, errors, required=False)
    tags = row.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        errors.add(line, "tags", f"expected a list of strings or null, got {tags!r}")
        return None
    description = row.get("task_description")
    if transcript is None:
        return None
    parts = HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip() or parts[1] != "Human" or not parts[2].strip():
        errors.add(line, "transcript", "expected '\\n\\nHuman: ...\\n\\nAssistant: ...' starting with a "
                                       "non-empty Human turn")
        return None
    words = list(tags or []) + ([description] if isinstance(description, str) and description.strip() else [])
    return {"prompt": parts[2].strip(), "words": words}


def red_team_prompts(row, line, errors, file) -> Seen | None:
    """hh-red-team -> prompts: every attempt is an attack, its category from its tags and description."""
    r = red_team_row(row, line, errors)
    return None if r is None else Seen(r["prompt"], True, r["words"], {})
