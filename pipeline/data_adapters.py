"""Public safety and preference datasets, read as they are published.

Recognised from their columns (`detect_format`), like the HH-RLHF transcript adapter in pipeline.data,
and mapped by pure functions onto our rows:

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

import ast
import json
import logging
import math
import re
from collections import Counter
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors
from saferounds.core.io import atomic_write_text, read_rows
from saferounds.core.records import RATINGS, SAFETY_LABELS
from saferounds.eval.suites import RISK_CATEGORIES, risk_category
from saferounds.pipeline.data import _bool, _Prefixed, _response, _text

# --- recognising a format: the columns every row of the published schema has ----------------------

SIGNATURES = {  # checked in this order; the first whose columns are all present wins
    "pku-saferlhf": ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"),
    "ultrafeedback-binarized": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    "ultrafeedback": ("instruction", "completions"),
    "beavertails": ("prompt", "response", "is_safe", "category"),
    "hh-red-team": ("transcript", "min_harmlessness_score_transcript"),
}
PRODUCES = {  # format -> the kinds of rows it can give
    "pku-saferlhf": ("preferences", "prompts", "responses"),
    "ultrafeedback-binarized": ("preferences", "prompts"),
    "ultrafeedback": ("preferences", "prompts"),
    "beavertails": ("prompts", "responses"),
    "hh-red-team": ("prompts",),
}
KINDS = ("preferences", "prompts", "responses")


def detect_format(row: dict) -> str | None:
    """The public dataset a row comes from, by its columns (None: one of our own shapes)."""
    for name, columns in SIGNATURES.items():
        if all(c in row for c in columns):
            category = row.get("category")
            if name == "beavertails" and not (isinstance(category, dict) or str(category).startswith("{")):
                continue  # our own responses shape: `category` is a plain name, not BeaverTails' flags
            return name
    return None


# --- mapping tables (documented in README "Bring your own data") -----------------------------------

# UltraFeedback score gap -> LLaMA 2's four preference levels (Table 27 gives each level its margin).
# Gaps are in points of UltraFeedback's 1-5 aspect-rating scale; a binarized file whose scores go above
# 5 is on the critique's 1-10 scale and its gaps are halved first. Equal scores are a tie: no preference,
# the pair is dropped.
SCORE_GAP_RATINGS = (  # (smallest gap, rating), checked in order
    (1.5, "significantly_better"),  # e.g. 4.5 vs 3.0: one and a half points on every aspect
    (1.0, "better"),
    (0.5, "slightly_better"),
    (0.0, "negligibly_better"),     # any positive gap below half a point
)

# PKU-SafeRLHF severity_level (0 safe, 1 minor, 2 moderate, 3 severe): how much less severe the safer
# (chosen) response is than the other -> the safety pair's rating. A safer pick rated MORE severe than
# the other contradicts itself: "unsure" (margin 0, as "negligibly_better").
SEVERITY_GAP_RATINGS = {3: "significantly_better", 2: "better", 1: "slightly_better", 0: "negligibly_better"}

# PKU-SafeRLHF's 19 harm categories -> LLaMA 2's three risk categories (Sec. 4.2.1: illicit and criminal
# activities; hateful and harmful activities; unqualified advice).
PKU_RISK = {
    "Endangering National Security": "illicit_and_criminal",
    "Insulting Behavior": "hateful_and_harmful",
    "Discriminatory Behavior": "hateful_and_harmful",
    "Endangering Public Health": "hateful_and_harmful",
    "Copyright Issues": "illicit_and_criminal",
    "Violence": "illicit_and_criminal",
    "Drugs": "illicit_and_criminal",
    "Privacy Violation": "illicit_and_criminal",
    "Economic Crime": "illicit_and_criminal",
    "Mental Manipulation": "hateful_and_harmful",
    "Human Trafficking": "illicit_and_criminal",
    "Physical Harm": "hateful_and_harmful",
    "Sexual Content": "hateful_and_harmful",
    "Cybercrime": "illicit_and_criminal",
    "Disrupting Public Order": "illicit_and_criminal",
    "Environmental Damage": "illicit_and_criminal",
    "Psychological Harm": "hateful_and_harmful",
    "White-Collar Crime": "illicit_and_criminal",
    "Animal Abuse": "hateful_and_harmful",
}

# BeaverTails' 14 harm categories -> LLaMA 2 risk categories.
BEAVERTAILS_RISK = {
    "animal_abuse": "hateful_and_harmful",
    "child_abuse": "illicit_and_criminal",
    "controversial_topics,politics": "hateful_and_harmful",
    "discrimination,stereotype,injustice": "hateful_and_harmful",
    "drug_abuse,weapons,banned_substance": "illicit_and_criminal",
    "financial_crime,property_crime,theft": "illicit_and_criminal",
    "hate_speech,offensive_language": "hateful_and_harmful",
    "misinformation_regarding_ethics,laws_and_safety": "unqualified_advice",
    "non_violent_unethical_behavior": "hateful_and_harmful",
    "privacy_violation": "illicit_and_criminal",
    "self_harm": "hateful_and_harmful",
    "sexually_explicit,adult_content": "hateful_and_harmful",
    "terrorism,organized_crime": "illicit_and_criminal",
    "violence,aiding_and_abetting,incitement": "illicit_and_criminal",
}
# HH red-team attempts carry free-text `tags` (on a sample) and a `task_description`: they are mapped by
# eval.suites.risk_category's keyword table (tags first, then the description); None when nothing fits.

log = logging.getLogger(__name__)
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


# --- pure mapping functions ------------------------------------------------------------------------

def score_gap_rating(gap: float) -> str | None:
    """UltraFeedback: a score gap (1-5 scale points, chosen minus rejected) -> rating; None for a tie."""
    if gap <= 1e-9:
        return None
    for least, rating in SCORE_GAP_RATINGS:
        if gap >= least - 1e-9:
            return rating
    raise AssertionError("unreachable: the last level starts at 0")


def severity_rating(chosen_severity: int, rejected_severity: int) -> str:
    """PKU-SafeRLHF safety pair: severity of the rejected minus the chosen (safer) response -> rating."""
    gap = rejected_severity - chosen_severity
    return "unsure" if gap < 0 else SEVERITY_GAP_RATINGS[min(gap, 3)]


def safety_label(chosen_safe: bool, rejected_safe: bool) -> str:
    """LLaMA 2's 3-way safety label (Sec. 3.2.1) from the two responses' safe/unsafe labels. The fourth
    case, chosen unsafe and rejected safe, is kept under its own name and dropped from RM training
    (reward_models.training.reversed_safety), as LLaMA 2 does."""
    if chosen_safe:
        return "chosen_safe_rejected_unsafe" if not rejected_safe else "both_safe"
    return "both_unsafe" if not rejected_safe else "chosen_unsafe_rejected_safe"


def risk_of(names, table: dict[str, str]) -> str | None:
    """Harm-category names -> one LLaMA 2 risk category: the one most names map to (ties: the order of
    RISK_CATEGORIES). Names outside `table` go through eval.suites.risk_category's keyword table."""
    votes = Counter(table.get(n) or risk_category(n) for n in names)
    votes.pop(None, None)
    if not votes:
        return None
    return max(RISK_CATEGORIES, key=lambda r: (votes[r], -RISK_CATEGORIES.index(r)))


# --- field readers (the dataset's own field names in every error) ----------------------------------

def _flags(row, field, line, errors) -> list[str] | None:
    """A {category: bool} object (JSON/Parquet; a JSON or Python-literal string in CSV) -> flagged names."""
    value = row.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = None
    if not isinstance(value, dict) or not {type(v) for v in value.values()} <= {bool, type(None)}:
        errors.add(line, field, "expected an object of category: true/false")
        return None
    return [name for name, flagged in value.items() if flagged]


def _int_in(row, field, allowed, line, errors, required=True) -> int | None:
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


def _number(row, field, line, errors, required=True) -> float | None:
    value = row.get(field)
    if value is None or value == "":
        if required:
            errors.add(line, field, "missing")
        return None
    try:
        number = float(value)
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError):
        errors.add(line, field, f"expected a finite number, got {value!r}")
        return None
    return number


def _strict_bool(row, field, line, errors) -> bool | None:
    if row.get(field) is None or row.get(field) == "":
        errors.add(line, field, "missing")
        return None
    n = len(errors.problems)
    value = _bool(row, field, line, errors)
    return None if len(errors.problems) > n else value


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- per-row adapters: (row, line, errors) -> records of one kind ----------------------------------

def pku_row(row, line, errors) -> dict | None:
    """The fields of one PKU-SafeRLHF row, validated (None when bad; the problems are in `errors`)."""
    prompt = _text(row, "prompt", line, errors)
    responses = [_text(row, f"response_{i}", line, errors) for i in (0, 1)]
    safe = [_strict_bool(row, f"is_response_{i}_safe", line, errors) for i in (0, 1)]
    better = _int_in(row, "better_response_id", (0, 1), line, errors)
    safer = _int_in(row, "safer_response_id", (0, 1), line, errors)
    harms = [_flags(row, f"response_{i}_harm_category", line, errors) for i in (0, 1)]  # absent in v0
    severity = [_int_in(row, f"response_{i}_severity_level", (0, 1, 2, 3), line, errors, required=False)
                for i in (0, 1)]
    if None in (prompt, better, safer) or None in responses or None in safe or None in harms:
        return None
    if responses[0] == responses[1]:
        errors.add(line, "response_1", "identical to response_0 (a pair needs two different responses)")
        return None
    return {"prompt": prompt, "responses": responses, "safe": safe, "better": better, "safer": safer,
            "harms": harms, "severity": severity}


def pku_pairs(r: dict, pid: str) -> list[dict]:
    """One PKU-SafeRLHF row -> a helpfulness pair and a safety pair (LLaMA 2 Sec. 3.2.2: two RMs).

    The helpfulness pair has no safety fields: it must not be dropped from the helpfulness RM when its
    better response is the unsafe one (the gate of Eq. 4 settles that conflict, not the data)."""
    prompt, (resp, safe, sev) = _user(r["prompt"]), (r["responses"], r["safe"], r["severity"])
    b, s = r["better"], r["safer"]
    helpful = {"id": f"{pid}-helpfulness", "prompt": prompt, "chosen": resp[b], "rejected": resp[1 - b],
               "rating": None, "margin": None, "safety_label": None, "source": "helpfulness"}
    rating = severity_rating(sev[s], sev[1 - s]) if None not in sev else None
    safety = {"id": f"{pid}-safety", "prompt": prompt, "chosen": resp[s], "rejected": resp[1 - s],
              "rating": rating, "margin": None, "safety_label": safety_label(safe[s], safe[1 - s]),
              "source": "safety", "chosen_safe": safe[s], "rejected_safe": safe[1 - s]}
    return [helpful, safety]


def ultrafeedback_binarized_pair(row, line, errors, pid: str, halve: bool) -> dict | None | str:
    """One ultrafeedback_binarized row -> a helpfulness pair; "tie" when the scores are equal."""
    prompt = _text(row, "prompt", line, errors)
    _, chosen = _response(row.get("chosen"), "chosen", line, errors)
    _, rejected = _response(row.get("rejected"), "rejected", line, errors)
    hi = _number(row, "score_chosen", line, errors)
    lo = _number(row, "score_rejected", line, errors)
    if None in (prompt, chosen, rejected, hi, lo):
        return None
    if hi < lo:
        errors.add(line, "score_rejected", f"{lo:g} is above score_chosen {hi:g}")
        return None
    rating = score_gap_rating((hi - lo) / (2 if halve else 1))
    if rating is None or chosen == rejected:
        return "tie"
    pid = row.get("prompt_id") if isinstance(row.get("prompt_id"), str) and row["prompt_id"] else pid
    return {"id": pid, "prompt": _user(prompt), "chosen": chosen, "rejected": rejected, "rating": rating,
            "margin": None, "safety_label": None, "source": "helpfulness"}


def ultrafeedback_scores(row, line, errors) -> list[tuple[str, float | None]] | None:
    """(response, mean of its numeric aspect ratings) per completion; None score when unrated ("N/A").

    The mean aspect rating is used, not the critique's overall_score, which contradicts its own
    rationale on hundreds of rows (the issue that made Argilla re-binarize UltraFeedback)."""
    completions = row.get("completions")
    if not isinstance(completions, list):
        errors.add(line, "completions", "expected a list of completions")
        return None
    out = []
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            errors.add(line, where, "expected an object with response and annotations")
            return None
        text = _text(c, "response", line, _Prefixed(errors, where + "."))
        annotations = c.get("annotations")
        if not isinstance(annotations, dict):
            errors.add(line, f"{where}.annotations", "expected an object of aspect ratings")
            return None
        ratings = []
        for aspect in ULTRAFEEDBACK_ASPECTS:
            a = annotations.get(aspect)
            a = a[0] if isinstance(a, list) and a else a  # some exports wrap each aspect in a list
            value = a.get("Rating") if isinstance(a, dict) else None
            if value in (None, "N/A", ""):
                continue
            try:
                number = float(value)
                if not 1 <= number <= 5:
                    raise ValueError
            except (TypeError, ValueError):
                errors.add(line, f"{where}.annotations.{aspect}.Rating", f"expected 1-5 or N/A, got {value!r}")
                return None
            ratings.append(number)
        if text is None:
            return None
        out.append((text, sum(ratings) / len(ratings) if ratings else None))
    return out


def ultrafeedback_pairs(prompt: str, scored, pid: str) -> tuple[list[dict], int]:
    """Every pair of rated completions whose scores differ (better first), rated by the gap, as our
    rankings expand into all ordered pairs. Returns (pairs, ties dropped)."""
    rated = [(t, s) for t, s in scored if s is not None]
    pairs, ties = [], 0
    for i in range(len(rated)):
        for j in range(i + 1, len(rated)):
            (a, sa), (b, sb) = sorted((rated[i], rated[j]), key=lambda x: -x[1])
            rating = score_gap_rating(sa - sb)
            if rating is None or a == b:
                ties += 1
                continue
            pairs.append({"id": f"{pid}-{i}-{j}", "prompt": _user(prompt), "chosen": a, "rejected": b,
                          "rating": rating, "margin": None, "safety_label": None, "source": "helpfulness"})
    return pairs, ties


def beavertails_row(row, line, errors) -> dict | None:
    prompt = _text(row, "prompt", line, errors)
    response = _text(row, "response", line, errors)
    is_safe = _strict_bool(row, "is_safe", line, errors)
    harms = _flags(row, "category", line, errors)
    if None in (prompt, response, is_safe, harms):
        return None
    return {"prompt": prompt, "response": response, "is_safe": is_safe, "harms": harms}


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def red_team_row(row, line, errors) -> dict | None:
    """An HH red-team attempt -> its opening attack (the first Human turn) and tag/description words.

    Only the first turn is kept: later turns answer the red-teamed model's replies, which our policy
    never wrote."""
    transcript = _text(row, "transcript", line, errors)
    _number(row, "min_harmlessness_score_transcript", line, errors, required=False)
    _number(row, "rating", line, errors, required=False)
    tags = row.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        errors.add(line, "tags", f"expected a list of strings or null, got {tags!r}")
        return None
    description = row.get("task_description")
    if transcript is None:
        return None
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip() or parts[1] != "Human" or not parts[2].strip():
        errors.add(line, "transcript", "expected '\\n\\nHuman: ...\\n\\nAssistant: ...' starting with a "
                                       "non-empty Human turn")
        return None
    words = list(tags or []) + ([description] if isinstance(description, str) and description.strip() else [])
    return {"prompt": parts[2].strip(), "words": words}


# --- whole files ------------------------------------------------------------------------------------

class _Prompts:
    """Prompts in file order, one per distinct text: a prompt is a safety prompt when any of its rows
    shows it eliciting an unsafe response (or the format is adversarial by construction)."""

    def __init__(self, stem: str):
        self.stem, self.rows = stem, {}

    def add(self, text: str, line: int, unsafe: bool, harms, table, pid: str | None = None):
        p = self.rows.setdefault(text, {"id": pid or f"{self.stem}-{line}", "unsafe": False, "harms": [],
                                        "table": table})
        p["unsafe"] |= unsafe
        p["harms"] += [h for h in harms if h not in p["harms"]]

    def records(self) -> list[dict]:
        return [{"id": p["id"], "messages": _user(text), "is_safety": p["unsafe"],
                 "category": risk_of(p["harms"], p["table"]) if p["unsafe"] else None, "reference": None}
                for text, p in self.rows.items()]


def adapt(path, rows: list[tuple[int, dict]], fmt: str, kind: str, errors: RowErrors | None = None,
          source: str | None = None) -> tuple[list[dict], Counter]:
    """A detected file's rows -> our `kind` records and counts of what was dropped or noted.

    Raises InputError listing every bad row; `source` keeps only that kind of preference pair."""
    if kind not in PRODUCES[fmt]:
        hint = {"hh-red-team": " (list it under data.prompts)",
                "beavertails": " (one response per row: use it as prompts or labelled responses)"}
        raise InputError(f"{path}: a {fmt} file gives {', '.join(PRODUCES[fmt])}, not {kind}"
                         + (hint.get(fmt, "") if kind == "preferences" else ""))
    errors = errors if errors is not None else RowErrors(path)
    stem = Path(str(path)).stem.split(".")[0]
    out, counts, prompts = [], Counter(), _Prompts(stem)
    halve = fmt == "ultrafeedback-binarized" and _ten_point_scale(rows)
    for line, row in rows:
        pid = f"{stem}-{line}"
        if fmt == "pku-saferlhf":
            r = pku_row(row, line, errors)
            if r is None:
                continue
            if kind == "preferences":
                out += pku_pairs(r, pid)
            elif kind == "prompts":
                prompts.add(r["prompt"], line, not all(r["safe"]), r["harms"][0] + r["harms"][1], PKU_RISK)
            else:
                out += [_response_record(f"{pid}-{i}", r["prompt"], r["responses"][i], r["safe"][i],
                                         r["harms"][i], PKU_RISK) for i in (0, 1)]
        elif fmt == "ultrafeedback-binarized":
            if kind == "preferences":
                pair = ultrafeedback_binarized_pair(row, line, errors, pid, halve)
                if pair == "tie":
                    counts["ties"] += 1
                elif pair is not None:
                    out.append(pair)
            else:
                text = _text(row, "prompt", line, errors)
                if text is not None:
                    prompts.add(text, line, False, [], {}, str(row["prompt_id"]) if row.get("prompt_id") else None)
        elif fmt == "ultrafeedback":
            text = _text(row, "instruction", line, errors)
            if kind == "prompts":
                if text is not None:
                    prompts.add(text, line, False, [], {})
                continue
            scored = ultrafeedback_scores(row, line, errors)
            if text is None or scored is None:
                continue
            pairs, ties = ultrafeedback_pairs(text, scored, pid)
            out += pairs
            counts["ties"] += ties
            counts["unrated completions"] += sum(s is None for _, s in scored)
        elif fmt == "beavertails":
            r = beavertails_row(row, line, errors)
            if r is None:
                continue
            if kind == "prompts":
                prompts.add(r["prompt"], line, not r["is_safe"], r["harms"], BEAVERTAILS_RISK)
            else:
                out.append(_response_record(pid, r["prompt"], r["response"], r["is_safe"], r["harms"],
                                            BEAVERTAILS_RISK))
        else:  # hh-red-team: every attempt is an attack
            r = red_team_row(row, line, errors)
            if r is not None:
                prompts.add(r["prompt"], line, True, r["words"], {})
    errors.raise_if_any()
    if kind == "prompts":
        out = prompts.records()
        counts["duplicate prompts"] = len(rows) - len(out)
    if kind == "preferences":
        if source is not None:
            kept = [p for p in out if p["source"] == source]
            if out and not kept:
                raise InputError(f"{path}: a {fmt} file has no {source} pairs (it has "
                                 f"{', '.join(sorted({p['source'] for p in out}))} pairs); list it under "
                                 f"data.{out[0]['source']}_preferences")
            out = kept
        counts["chosen_unsafe_rejected_safe"] = sum(p["safety_label"] == SAFETY_LABELS[3] for p in out)
    if not out:
        raise InputError(f"{path}: no {kind} records (every row was dropped: {dict(counts)})")
    dropped = {k: v for k, v in counts.items() if v and k != "chosen_unsafe_rejected_safe"}
    if dropped:
        log.info("%s (%s): %d %s; dropped %s", path, fmt, len(out), kind, dropped)
    return out, counts


def _ten_point_scale(rows) -> bool:
    """Binarized UltraFeedback scores above 5 anywhere: the critique's 1-10 overall_score scale."""
    for _, r in rows:
        for field in ("score_chosen", "score_rejected"):
            try:
                if float(r.get(field)) > 5:
                    return True
            except (TypeError, ValueError):
                pass
    return False


def _response_record(rid, prompt, response, is_safe, harms, table) -> dict:
    return {"id": rid, "messages": _user(prompt), "response": response, "is_safe": is_safe,
            "category": None if is_safe else risk_of(harms, table), "harm_categories": list(harms)}


def read_detected(path) -> tuple[str | None, list[tuple[int, dict]], RowErrors]:
    """(format or None, rows, errors so far) for a file; the format comes from its first row."""
    errors = RowErrors(path)
    rows = read_rows(path, errors)
    return (detect_format(rows[0][1]) if rows else None), rows, errors


# --- what `saferounds data validate` and `data convert` show --------------------------------------

def summarize(kind: str, records: list[dict], counts: Counter) -> dict:
    """Counts a user checks before training: pairs by source and rating, safety labels, prompts and
    responses by LLaMA 2 risk category."""
    s: dict = {"records": len(records)}
    if kind == "preferences":
        s["by_source"] = dict(Counter(p["source"] for p in records))
        s["by_rating"] = {}
        for src in s["by_source"]:
            n = Counter(p["rating"] or "unrated" for p in records if p["source"] == src)
            s["by_rating"][src] = {r: n[r] for r in (*RATINGS, "unrated") if n[r]}  # LLaMA 2's order
        s["by_safety_label"] = dict(Counter(p["safety_label"] for p in records if p["safety_label"]))
        s["dropped_by_safety_rm"] = counts.get("chosen_unsafe_rejected_safe", 0)
    elif kind == "prompts":
        s["safety"] = sum(p["is_safety"] for p in records)
        s["by_category"] = dict(Counter(p["category"] or "none" for p in records if p["is_safety"]))
    else:
        s["unsafe"] = sum(not r["is_safe"] for r in records)
        s["by_category"] = dict(Counter(r["category"] or "none" for r in records if not r["is_safe"]))
    s["dropped"] = {k: v for k, v in counts.items() if v and k != "chosen_unsafe_rejected_safe"}
    return s


def summarize_file(path, kind: str | None = None) -> dict | None:
    """{format, kinds: {kind: summary}} for a public-dataset file (every kind it gives, or `kind`);
    None when the file is in one of our own shapes."""
    fmt, rows, errors = read_detected(path)
    if fmt is None:
        errors.raise_if_any()
        return None
    kinds = [kind] if kind else list(PRODUCES[fmt])
    out = {}
    for k in kinds:
        records, counts = adapt(path, rows, fmt, k, errors)
        out[k] = summarize(k, records, counts)
    return {"file": str(path), "format": fmt, "ok": True, "kinds": out}


def convert_file(path, kind: str, output, source: str | None = None) -> dict:
    """Write `path` as our `kind` rows (JSONL, atomically) to `output`; any supported file works, public
    dataset or our own shape. Returns {file, format, kind, output, summary}."""
    from saferounds.pipeline.data import load_preferences, load_prompts, load_responses

    if kind not in KINDS:
        raise InputError(f"--to: expected one of {', '.join(KINDS)}, got {kind!r}")
    if source not in (None, "helpfulness", "safety"):
        raise InputError(f"--source: expected helpfulness or safety, got {source!r}")
    if source is not None and kind != "preferences":
        raise InputError("--source: only with --to preferences")
    fmt, rows, errors = read_detected(path)
    if fmt is not None:
        records, counts = adapt(path, rows, fmt, kind, errors, source)
    else:
        errors.raise_if_any()
        loader = {"preferences": lambda p: load_preferences(p, source), "prompts": load_prompts,
                  "responses": load_responses}[kind]
        records, counts = loader(path), Counter()
        if source is not None:
            records = [r for r in records if r["source"] == source]
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return {"file": str(path), "format": fmt or "saferounds", "kind": kind, "output": str(output),
            "summary": summarize(kind, records, counts)}
