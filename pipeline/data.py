"""Users' data: prompts, SFT examples, preference pairs, K-way rankings and raw text.

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
Anthropic HH-RLHF transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") are detected and converted, and
so are PKU-SafeRLHF, UltraFeedback, BeaverTails and HH red-team files (pipeline.data_adapters).

Every loader validates every row first and raises one InputError listing `file:line: field: reason`
for each bad row (capped), so nothing downstream ever starts on bad data.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import read_rows, read_text
from saferounds.core.records import RATINGS, RM_KINDS, SAFETY_LABELS, PreferencePair, Prompt, Ranking

ROLES = ("system", "user", "assistant")
MAX_TEXT_CHARS = 100_000  # longer texts are almost always a broken export; fail loudly
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
log = logging.getLogger(__name__)


def _text(row, field, line, errors, required=True):
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


def _turns(value, field, line, errors):
    """Validate a list of {role, content} chat turns."""
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
        content = _text(turn, "content", line, _Prefixed(errors, f"{field}[{i}]."))
        if content is None:
            return None
        out.append({"role": role, "content": content})
    return out


class _Prefixed:
    """Adds a field prefix to errors reported by the helpers above."""

    def __init__(self, errors, prefix):
        self.errors, self.prefix = errors, prefix

    def add(self, line, field, reason):
        self.errors.add(line, self.prefix + field, reason)


def _prompt_turns(row, line, errors, field=None):
    """The prompt as chat turns ending with a user turn, from `messages` or `prompt`."""
    field = field or ("messages" if "messages" in row else "prompt")
    value = row.get(field)
    if isinstance(value, str) or value is None:
        text = _text(row, field, line, errors)
        return None if text is None else [{"role": "user", "content": text}]
    turns = _turns(value, field, line, errors)
    if turns is not None and turns[-1]["role"] != "user":
        errors.add(line, field, "the last turn of a prompt must be a user turn")
        return None
    return turns


def _bool(row, field, line, errors, default=False):
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


def _choice(row, field, allowed, line, errors):
    value = row.get(field)
    if value is None or value == "":
        return None
    if value not in allowed:
        errors.add(line, field, f"expected one of {', '.join(allowed)}, got {value!r}")
        return None
    return value


def load_prompts(path) -> list[Prompt]:
    errors, out, seen = RowErrors(path), [], {}
    stem = Path(str(path)).stem.split(".")[0]
    rows = read_rows(path, errors)
    if (adapted := _adapted(path, rows, errors, "prompts")) is not None:
        return adapted
    for line, row in rows:
        messages = _prompt_turns(row, line, errors)
        pid = row.get("id")
        if pid is None or pid == "":  # no id column, or a blank CSV cell / null: number it by line
            pid = f"{stem}-{line}"
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            errors.add(line, "id", f"expected a string or integer, got {pid!r}")
        pid = str(pid)
        if pid in seen:
            errors.add(line, "id", f"duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = line
        is_safety = _bool(row, "is_safety", line, errors)
        category = row.get("category") or None
        if category is not None and not isinstance(category, str):
            errors.add(line, "category", f"expected a string, got {category!r}")
        reference = _text(row, "reference", line, errors, required=False)
        if messages is not None:
            out.append({"id": pid, "messages": messages, "is_safety": is_safety,
                        "category": category, "reference": reference})
    errors.raise_if_any()
    return _nonempty(out, path)


def load_sft(path) -> list[dict]:
    errors, out = RowErrors(path), []
    for line, row in read_rows(path, errors):
        if "completion" in row:
            messages = _prompt_turns(row, line, errors)
            if isinstance(row["completion"], list):  # TRL conversational: [{"role": "assistant", ...}]
                before, completion = _response(row["completion"], "completion", line, errors)
                if before:
                    errors.add(line, "completion", "expected one assistant turn (the prompt goes in prompt)")
                    completion = None
            else:
                completion = _text(row, "completion", line, errors)
        elif isinstance(row.get("messages"), list):
            turns = _turns(row["messages"], "messages", line, errors)
            messages = completion = None
            if turns is not None:
                if turns[-1]["role"] != "assistant" or len(turns) < 2:
                    errors.add(line, "messages", "an SFT conversation must end with an assistant turn")
                elif turns[-2]["role"] != "user":
                    errors.add(line, "messages", "the turn before the final assistant turn must be a user turn")
                else:
                    messages, completion = turns[:-1], turns[-1]["content"]
        else:
            errors.add(line, "completion", "missing (give prompt/messages + completion, or messages "
                                           "ending with an assistant turn)")
            continue
        if messages is not None and completion is not None:
            out.append({"messages": messages, "completion": completion})
    errors.raise_if_any()
    return _nonempty(out, path)


def _split_hh(transcript: str):
    """'\\n\\nHuman: a\\n\\nAssistant: b ...' -> (prompt turns, final assistant reply)."""
    parts = _HH_TURN.split(transcript)
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


def _is_hh(row) -> bool:
    return "prompt" not in row and isinstance(row.get("chosen"), str) and row["chosen"].startswith("\n\nHuman:")


def _response(value, field, line, errors):
    """A response given as a string, or as turns whose last (assistant) turn is the response."""
    if isinstance(value, list):
        turns = _turns(value, field, line, errors)
        if turns is None:
            return None, None
        if turns[-1]["role"] != "assistant":
            errors.add(line, field, "the last turn must be the assistant's response")
            return None, None
        return turns[:-1], turns[-1]["content"]
    return None, _text({field: value}, field, line, errors)


SAFETY_FLAGS = ("chosen_safe", "rejected_safe", "chosen_unsafe_rejected_safe")


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


def load_preferences(path, source: str | None = None) -> list[PreferencePair]:
    """Preference pairs; HH-RLHF transcripts and TRL implicit-prompt pairs are converted."""
    errors, out = RowErrors(path), []
    rows = read_rows(path, errors)
    if (adapted := _adapted(path, rows, errors, "preferences", source)) is not None:
        return adapted
    if rows and _is_hh(rows[0][1]):  # a whole HH-RLHF file: its few unusable rows are dropped
        pairs, counts = hh_pairs(path, source, rows)
        if counts["kept"] < counts["rows"]:
            log.warning("%s: kept %d of %d HH-RLHF rows (%d identical, %d empty, %d malformed)", path,
                        counts["kept"], counts["rows"], counts["identical"], counts["empty"],
                        counts["malformed"])
        return _nonempty(pairs, path)
    for line, row in rows:
        if _is_hh(row):
            prompt, chosen = _split_hh(row["chosen"])
            prompt_r, rejected = _split_hh(row.get("rejected") or "")
            if prompt is None or prompt_r is None:
                errors.add(line, "chosen" if prompt is None else "rejected",
                           "not an HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
                continue
            if prompt != prompt_r:
                errors.add(line, "rejected", "chosen and rejected transcripts have different prompts")
                continue
            if not prompt or not chosen or not rejected:
                errors.add(line, "chosen" if not chosen else "rejected", "empty text")
                continue
        else:
            prompt_c, chosen = _response(row.get("chosen"), "chosen", line, errors)
            prompt_r, rejected = _response(row.get("rejected"), "rejected", line, errors)
            if "prompt" in row or "messages" in row:
                prompt = _prompt_turns(row, line, errors)
            elif prompt_c:  # TRL implicit prompt: the shared turns before the responses
                prompt = prompt_c
                if prompt_r is not None and prompt_r != prompt_c:
                    errors.add(line, "rejected", "its turns before the response differ from chosen's "
                                                 "(an implicit prompt must be the same in both)")
                    prompt = None
            else:
                errors.add(line, "prompt", "missing")
                prompt = None
        if chosen is not None and chosen == rejected:
            errors.add(line, "rejected", "identical to chosen (a pair needs two different responses)")
            continue
        rating = _choice(row, "rating", RATINGS, line, errors)
        safety_label = _choice(row, "safety_label", SAFETY_LABELS, line, errors)
        src = _choice(row, "source", RM_KINDS, line, errors) or source or \
            ("safety" if safety_label else "helpfulness")
        margin = row.get("margin")
        if margin in ("", None):  # (a blank CSV cell; a NaN is an error below, never "no margin")
            margin = None
        else:
            try:
                margin = float(margin)
                if isinstance(row.get("margin"), bool) or not math.isfinite(margin):
                    raise ValueError
                if margin < 0:
                    errors.add(line, "margin", f"must be >= 0 (how much better chosen is), got {row.get('margin')!r}")
                    margin = None
            except (TypeError, ValueError):
                errors.add(line, "margin", f"expected a finite number, got {row.get('margin')!r}")
                margin = None
        safe_flags = _safety_flags(row, line, errors, csv_file=str(path).lower().removesuffix(".gz").endswith(".csv"))
        if None in (prompt, chosen, rejected):
            continue
        record = {k: v for k, v in row.items() if k not in ("messages",)}
        record.update(prompt=prompt, chosen=chosen, rejected=rejected, rating=rating, margin=margin,
                      safety_label=safety_label, source=src, **safe_flags)
        out.append(record)
    errors.raise_if_any()
    return _nonempty(out, path)


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
        prompt, chosen = _split_hh(row.get("chosen") or "")
        prompt_r, rejected = _split_hh(row.get("rejected") or "")
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


def load_rankings(path, source: str | None = None) -> list[Ranking]:
    errors, out = RowErrors(path), []
    for line, row in read_rows(path, errors):
        prompt = _prompt_turns(row, line, errors)
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            errors.add(line, "responses", "expected a list of at least 2 responses")
            continue
        texts = [_text({f"responses[{i}]": r}, f"responses[{i}]", line, errors) for i, r in enumerate(responses)]
        ranking = row.get("ranking")
        if not isinstance(ranking, list) or any(type(r) is not int for r in ranking) \
                or sorted(ranking) != list(range(len(responses))):  # ints only: no bools, floats, strings
            errors.add(line, "ranking", f"expected a permutation of 0..{len(responses) - 1} "
                                        f"(response indices, best first), got {ranking!r}")
            continue
        src = _choice(row, "source", RM_KINDS, line, errors) or source or "helpfulness"
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
        text = _text(row, "text", line, errors)
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
    stem = Path(str(path)).stem.split(".")[0]
    for line, row in rows:
        messages = _prompt_turns(row, line, errors)
        response = _text(row, "response", line, errors)
        if row.get("is_safe") in (None, ""):
            errors.add(line, "is_safe", "missing")
        is_safe = _bool(row, "is_safe", line, errors)
        category = row.get("category") or None
        if category is not None and not isinstance(category, str):
            errors.add(line, "category", f"expected a string, got {category!r}")
        harms = row.get("harm_categories") or []
        if not isinstance(harms, list) or not all(isinstance(h, str) for h in harms):
            errors.add(line, "harm_categories", f"expected a list of strings, got {harms!r}")
        if messages is not None and response is not None:
            out.append({"id": str(row.get("id") or f"{stem}-{line}"), "messages": messages, "response": response,
                        "is_safe": is_safe, "category": category, "harm_categories": harms})
    errors.raise_if_any()
    return _nonempty(out, path)


def _adapted(path, rows, errors, kind: str, source: str | None = None) -> list[dict] | None:
    """A public dataset's rows (PKU-SafeRLHF, UltraFeedback, BeaverTails, HH red-team) as `kind` records;
    None when the file is in one of our own shapes."""
    from saferounds.pipeline.data_adapters import adapt, detect_format

    fmt = detect_format(rows[0][1]) if rows else None
    return None if fmt is None else _nonempty(adapt(path, rows, fmt, kind, errors, source)[0], path)


def _nonempty(records: list, path) -> list:
    if not records:
        raise InputError(f"{path}: no records (the file is empty)")
    return records


LOADERS = {"prompts": load_prompts, "sft": load_sft, "preferences": load_preferences,
           "rankings": load_rankings, "text": load_text, "responses": load_responses}


def validate_file(path, kind: str) -> int:
    """Load a file as `kind` and return how many records it holds (InputError when bad)."""
    if kind not in LOADERS:
        raise InputError(f"--kind: expected one of {', '.join(LOADERS)}, got {kind!r}")
    return len(LOADERS[kind](path))
