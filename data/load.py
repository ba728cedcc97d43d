"""Users' data: prompts, SFT examples, preference pairs, K-way rankings, raw text and labelled responses.

Accepted shapes follow Hugging Face / TRL so existing files work unchanged:
  prompts      `messages` (chat turns ending with a user turn) or `prompt` (a string or turns);
               optional `id`, `is_safety`, `category`, `reference`
  sft          `prompt`/`messages` + `completion`, or `messages` ending with an assistant turn
  preferences  `prompt` + `chosen` + `rejected` (strings or turns; TRL's implicit-prompt form, where
               chosen/rejected are whole conversations, works too), optional `rating`, `margin`,
               `safety_label`, `source`
  rankings     `prompt` + `responses` (K strings) + `ranking` (indices, best first)
  responses    `prompt`/`messages` + `response` + `is_safe` (labelled, for learned safety judges);
               optional `id`, `category`, `harm_categories`
Anthropic HH-RLHF transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") are detected and converted
(data.hh), and so are PKU-SafeRLHF, UltraFeedback, BeaverTails and HH red-team files (data.formats).

Every loader validates every row first and raises one InputError listing `file:line: field: reason`
for each bad row (capped), so nothing downstream ever starts on bad data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import read_rows, read_text
from saferounds.core.records import RATINGS, RM_KINDS, SAFETY_LABELS, PreferencePair, Prompt, Ranking
from saferounds.data import fields
from saferounds.data.formats import adapt, detect_format
from saferounds.data.hh import hh_pairs, is_hh, split_hh

SAFETY_FLAGS = ("chosen_safe", "rejected_safe", "chosen_unsafe_rejected_safe")
log = logging.getLogger(__name__)


def load_prompts(path) -> list[Prompt]:
    errors, out, seen = RowErrors(path), [], {}
    stem = _stem(path)
    rows = read_rows(path, errors)
    if (adapted := _adapted(path, rows, errors, "prompts")) is not None:
        return adapted
    for line, row in rows:
        messages = fields.prompt_turns(row, line, errors)
        pid = row.get("id")
        if pid is None or pid == "":  # no id column, or a blank CSV cell / null: number it by line
            pid = f"{stem}-{line}"
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            errors.add(line, "id", f"expected a string or integer, got {pid!r}")
        pid = str(pid)
        if pid in seen:
            errors.add(line, "id", f"duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = line
        is_safety = fields.boolean(row, "is_safety", line, errors)
        category = _category(row, line, errors)
        reference = fields.text(row, "reference", line, errors, required=False)
        if messages is not None:
            out.append({"id": pid, "messages": messages, "is_safety": is_safety,
                        "category": category, "reference": reference})
    errors.raise_if_any()
    return _nonempty(out, path)


def load_sft(path) -> list[dict]:
    errors, out = RowErrors(path), []
    for line, row in read_rows(path, errors):
        if "completion" in row:
            messages = fields.prompt_turns(row, line, errors)
            if isinstance(row["completion"], list):  # TRL conversational: [{"role": "assistant", ...}]
                before, completion = fields.response(row["completion"], "completion", line, errors)
                if before:
                    errors.add(line, "completion", "expected one assistant turn (the prompt goes in prompt)")
                    completion = None
            else:
                completion = fields.text(row, "completion", line, errors)
        elif isinstance(row.get("messages"), list):
            messages, completion = _sft_conversation(row["messages"], line, errors)
        else:
            errors.add(line, "completion", "missing (give prompt/messages + completion, or messages "
                                           "ending with an assistant turn)")
            continue
        if messages is not None and completion is not None:
            out.append({"messages": messages, "completion": completion})
    errors.raise_if_any()
    return _nonempty(out, path)


def _sft_conversation(value, line, errors) -> tuple[list[dict] | None, str | None]:
    """`messages` ending with an assistant turn -> (the turns before it, its text)."""
    turns = fields.turns(value, "messages", line, errors)
    if turns is None:
        return None, None
    if turns[-1]["role"] != "assistant" or len(turns) < 2:
        errors.add(line, "messages", "an SFT conversation must end with an assistant turn")
    elif turns[-2]["role"] != "user":
        errors.add(line, "messages", "the turn before the final assistant turn must be a user turn")
    else:
        return turns[:-1], turns[-1]["content"]
    return None, None


def load_preferences(path, source: str | None = None) -> list[PreferencePair]:
    """Preference pairs; HH-RLHF transcripts and TRL implicit-prompt pairs are converted."""
    errors, out = RowErrors(path), []
    rows = read_rows(path, errors)
    if (adapted := _adapted(path, rows, errors, "preferences", source)) is not None:
        return adapted
    if rows and is_hh(rows[0][1]):  # a whole HH-RLHF file: its few unusable rows are dropped
        pairs, counts = hh_pairs(path, source, rows)
        if counts["kept"] < counts["rows"]:
            log.warning("%s: kept %d of %d HH-RLHF rows (%d identical, %d empty, %d malformed)", path,
                        counts["kept"], counts["rows"], counts["identical"], counts["empty"],
                        counts["malformed"])
        return _nonempty(pairs, path)
    csv_file = str(path).lower().removesuffix(".gz").endswith(".csv")
    for line, row in rows:
        if (record := _preference(row, line, errors, source, csv_file)) is not None:
            out.append(record)
    errors.raise_if_any()
    return _nonempty(out, path)


def _preference(row, line, errors, source, csv_file: bool) -> dict | None:
    """One row of our preference shape (or an HH transcript pair) -> a pair, or None when it is bad."""
    texts = _hh_texts(row, line, errors) if is_hh(row) else _trl_texts(row, line, errors)
    if texts is None:
        return None
    prompt, chosen, rejected = texts
    if chosen is not None and chosen == rejected:
        errors.add(line, "rejected", "identical to chosen (a pair needs two different responses)")
        return None
    rating = fields.choice(row, "rating", RATINGS, line, errors)
    safety_label = fields.choice(row, "safety_label", SAFETY_LABELS, line, errors)
    src = fields.choice(row, "source", RM_KINDS, line, errors) or source or \
        ("safety" if safety_label else "helpfulness")
    margin = fields.number(row, "margin", line, errors, required=False)  # (a NaN is an error, never "no margin")
    if margin is not None and margin < 0:
        errors.add(line, "margin", f"must be >= 0 (how much better chosen is), got {row.get('margin')!r}")
        margin = None
    safe_flags = _safety_flags(row, line, errors, csv_file)
    if None in (prompt, chosen, rejected):
        return None
    record = {k: v for k, v in row.items() if k not in ("messages",)}
    record.update(prompt=prompt, chosen=chosen, rejected=rejected, rating=rating, margin=margin,
                  safety_label=safety_label, source=src, **safe_flags)
    return record


def _hh_texts(row, line, errors) -> tuple | None:
    """(prompt, chosen, rejected) of one HH transcript pair; None when it is bad (reported)."""
    prompt, chosen = split_hh(row["chosen"])
    prompt_r, rejected = split_hh(row.get("rejected") or "")
    if prompt is None or prompt_r is None:
        errors.add(line, "chosen" if prompt is None else "rejected",
                   "not an HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    elif prompt != prompt_r:
        errors.add(line, "rejected", "chosen and rejected transcripts have different prompts")
    elif not prompt or not chosen or not rejected:
        errors.add(line, "chosen" if not chosen else "rejected", "empty text")
    else:
        return prompt, chosen, rejected
    return None


def _trl_texts(row, line, errors) -> tuple:
    """(prompt, chosen, rejected) of a TRL-shaped pair, explicit or implicit prompt; None for what is bad."""
    prompt_c, chosen = fields.response(row.get("chosen"), "chosen", line, errors)
    prompt_r, rejected = fields.response(row.get("rejected"), "rejected", line, errors)
    if "prompt" in row or "messages" in row:
        prompt = fields.prompt_turns(row, line, errors)
    elif prompt_c:  # TRL implicit prompt: the shared turns before the responses
        prompt = prompt_c
        if prompt_r is not None and prompt_r != prompt_c:
            errors.add(line, "rejected", "its turns before the response differ from chosen's "
                                         "(an implicit prompt must be the same in both)")
            prompt = None
    else:
        errors.add(line, "prompt", "missing")
        prompt = None
    return prompt, chosen, rejected


def _safety_flags(row, line, errors, csv_file: bool) -> dict:
    """Per-response safety booleans must be booleans: "yes" (or 1) in JSON would silently mean "no
    safety label" to the RM. CSV cells are text, so there "true"/"false" are read as booleans."""
    out = {}
    for field in SAFETY_FLAGS:
        value = row.get(field)
        if value is None or (csv_file and value == ""):
            continue
        if isinstance(value, bool):
            out[field] = value
        elif csv_file and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[field] = value.strip().lower() == "true"
        else:
            errors.add(line, field, f"expected true or false (a JSON boolean), got {value!r}")
    return out


def load_rankings(path, source: str | None = None) -> list[Ranking]:
    errors, out = RowErrors(path), []
    for line, row in read_rows(path, errors):
        prompt = fields.prompt_turns(row, line, errors)
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            errors.add(line, "responses", "expected a list of at least 2 responses")
            continue
        texts = [fields.text({f"responses[{i}]": r}, f"responses[{i}]", line, errors) for i, r in enumerate(responses)]
        ranking = row.get("ranking")
        if not isinstance(ranking, list) or any(type(r) is not int for r in ranking) \
                or sorted(ranking) != list(range(len(responses))):  # ints only: no bools, floats, strings
            errors.add(line, "ranking", f"expected a permutation of 0..{len(responses) - 1} "
                                        f"(response indices, best first), got {ranking!r}")
            continue
        src = fields.choice(row, "source", RM_KINDS, line, errors) or source or "helpfulness"
        if prompt is not None and None not in texts:
            out.append({"prompt": prompt, "responses": texts, "ranking": ranking, "source": src})
    errors.raise_if_any()
    return _nonempty(out, path)


def load_text(path) -> list[str]:
    """Raw text for domain pretraining: a .txt file or records with a `text` field."""
    p = Path(str(path))
    if p.name.endswith((".txt", ".txt.gz")):
        if not p.is_file():
            raise InputError(f"{p}: file not found")
        raw = read_text(p).replace("\r\n", "\n")  # gzip and UTF-8 errors with their line
        # Documents are separated by blank lines; a file without blank lines has one per line.
        sep = "\n\n" if "\n\n" in raw.strip() else "\n"
        docs = [d.strip() for d in raw.split(sep) if d.strip()]
        return _nonempty(docs, path)
    errors, docs = RowErrors(path), []
    for line, row in read_rows(path, errors):
        text = fields.text(row, "text", line, errors)
        if text is not None:
            docs.append(text)
    errors.raise_if_any()
    return _nonempty(docs, path)


def load_responses(path) -> list[dict]:
    """Responses labelled safe/unsafe, for learned safety judges; BeaverTails and PKU-SafeRLHF are converted."""
    errors, out = RowErrors(path), []
    rows = read_rows(path, errors)
    if (adapted := _adapted(path, rows, errors, "responses")) is not None:
        return adapted
    stem = _stem(path)
    for line, row in rows:
        messages = fields.prompt_turns(row, line, errors)
        response = fields.text(row, "response", line, errors)
        if row.get("is_safe") in (None, ""):
            errors.add(line, "is_safe", "missing")
        is_safe = fields.boolean(row, "is_safe", line, errors)
        category = _category(row, line, errors)
        harms = row.get("harm_categories") or []
        if not isinstance(harms, list) or not all(isinstance(h, str) for h in harms):
            errors.add(line, "harm_categories", f"expected a list of strings, got {harms!r}")
        if messages is not None and response is not None:
            out.append({"id": str(row.get("id") or f"{stem}-{line}"), "messages": messages, "response": response,
                        "is_safe": is_safe, "category": category, "harm_categories": harms})
    errors.raise_if_any()
    return _nonempty(out, path)


def _category(row, line, errors) -> str | None:
    """An optional free `category` name (a blank one is none)."""
    category = row.get("category") or None
    if category is not None and not isinstance(category, str):
        errors.add(line, "category", f"expected a string, got {category!r}")
    return category


def _stem(path) -> str:
    return Path(str(path)).stem.split(".")[0]


def _adapted(path, rows, errors, kind: str, source: str | None = None) -> list[dict] | None:
    """A public dataset's rows (PKU-SafeRLHF, UltraFeedback, BeaverTails, HH red-team) as `kind` records;
    None when the file is in one of our own shapes."""
    fmt = detect_format(rows[0][1]) if rows else None
    return None if fmt is None else _nonempty(adapt(path, rows, fmt, kind, errors, source)[0], path)


def _nonempty(records: list, path) -> list:
    if not records:
        raise InputError(f"{path}: no records (the file is empty)")
    return records


LOADERS = {"prompts": load_prompts, "sft": load_sft, "preferences": load_preferences,
           "rankings": load_rankings, "text": load_text, "responses": load_responses}
