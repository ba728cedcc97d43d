"""The human loop: export K samples per prompt for people to rank; import their rankings back.

Export writes the same items twice, for whichever tool the annotators use:
  FILE.jsonl  {"id", "prompt": [messages], "is_safety", "category", "source", "responses": [K],
               "ranking": null, "ratings": null, "safety": null, "annotator": null}
  FILE.csv    id, source, prompt (rendered), response_1..response_K, ranking, ratings, safety, annotator
Annotators fill, with responses numbered from 1 as shown:
  ranking  best first, every response once: [2, 1, 3] or "2>1>3" (also "2,1,3" / "2 1 3")
  ratings  optional, K-1 strengths between neighbours in the ranking (LLaMA 2's four levels):
           significantly_better | better | slightly_better | negligibly_better | unsure
  safety   optional, one per response in response order: safe | unsafe
Rows left without a ranking are skipped (annotation can be imported in batches).

Import joins the filled file with the export's JSONL by `id` (the text people saw is taken from
the export, not from a spreadsheet that may have mangled it) and validates every row before
writing anything; problems raise InputError as FILE:LINE: FIELD: reason. Output: the contract's
ranking records (+ id, ratings, safety), which reward_models.rankings turns into pairs or Elo.
Without an export, import reads ranking records themselves: what `annotate serve` appends
(reward_models/feedback/annotate_server.py), whose `top_rating` rates #1 over #2.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from saferounds.core.errors import InputError, RowErrors, rows_by_id
from saferounds.core.io import read_rows
from saferounds.core.records import RATINGS
from saferounds.reward_models.feedback.labeling import render_conversation
from saferounds.reward_models.rankings import ranking_pairs

_RATING_ALIASES = {"significantly": "significantly_better", "slightly": "slightly_better",
                   "negligibly": "negligibly_better", "much_better": "significantly_better"}
_SAFE = {"safe": True, "yes": True, "1": True, "true": True, "unsafe": False, "no": False, "0": False, "false": False}


def annotation_items(groups: list[dict]) -> list[dict]:
    """Sample groups (reward_models.feedback.labeling.group_samples) -> export items with empty answer fields."""
    seen: set[str] = set()
    items = []
    for g in groups:
        item_id = str(g["id"])
        if item_id in seen:
            raise InputError(f"annotate export: prompt id {item_id!r} appears twice; ids must be unique")
        seen.add(item_id)
        items.append({"id": item_id, "prompt": g["messages"], "is_safety": bool(g.get("is_safety")),
                      "category": g.get("category"), "source": "safety" if g.get("is_safety") else "helpfulness",
                      "responses": list(g["responses"]), "ranking": None, "ratings": None, "safety": None,
                      "annotator": None})
    return items


def export_annotation(groups: list[dict], out_jsonl: str | Path, out_csv: str | Path | None = None) -> int:
    """Write the items to JSONL (the reference for import) and CSV. Returns the number of prompts."""
    items = annotation_items(groups)
    out_jsonl = Path(out_jsonl)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(out_jsonl, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    if out_csv is not None:
        k = max((len(i["responses"]) for i in items), default=0)
        header = ["id", "source", "prompt"] + [f"response_{n}" for n in range(1, k + 1)] + [
            "ranking", "ratings", "safety", "annotator"]
        with open(out_csv, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for item in items:
                cells = item["responses"] + [""] * (k - len(item["responses"]))
                w.writerow([item["id"], item["source"], render_conversation(item["prompt"])] + cells + ["", "", "", ""])
    return len(items)


def _split(value, seps: str = r"[>,;|]") -> list | None:
    """A list field as given in JSONL (list) or CSV ("2>1>3", "2,1,3", "safe; unsafe"); None if empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, (int, float)):
        return [value]
    return [p.strip() for p in re.split(seps, str(value).strip()) if p.strip()]


def _rating(value) -> str | None:
    v = re.sub(r"[\s-]+", "_", str(value).strip().lower())
    v = _RATING_ALIASES.get(v, v)
    return v if v in RATINGS else None


def parse_annotation(row: dict, item: dict, line: int, errors: RowErrors) -> dict | None:
    """One filled row -> a ranking record (0-based), None if not ranked yet or invalid (errors added)."""
    k = len(item["responses"])
    ranking = _split(row.get("ranking"), r"[>,;|\s]")
    if ranking is None:
        return None
    try:
        order = [int(str(r).strip()) for r in ranking]
    except ValueError:
        errors.add(line, "ranking", f"expected response numbers 1..{k} best first (e.g. \"2>1>3\"), got {row['ranking']!r}")
        return None
    if sorted(order) != list(range(1, k + 1)):
        errors.add(line, "ranking", f"must list each of the {k} responses (1..{k}) exactly once, got {order}")
        return None
    ok = True
    ratings = _split(row.get("ratings"))
    if ratings is not None:
        parsed = [_rating(r) for r in ratings]
        if len(parsed) != k - 1 or None in parsed:
            errors.add(line, "ratings", f"expected {k - 1} of {', '.join(RATINGS)} (one per neighbouring pair "
                                        f"in the ranking), got {row['ratings']!r}")
            ok = False
        ratings = parsed
    safety = _split(row.get("safety"), r"[>,;|\s]")
    if safety is not None:
        parsed_safe = [_SAFE.get(str(s).strip().lower()) if not isinstance(s, bool) else s for s in safety]
        if len(parsed_safe) != k or None in parsed_safe:
            errors.add(line, "safety", f"expected {k} of safe/unsafe (one per response, in response order), "
                                       f"got {row['safety']!r}")
            ok = False
        safety = parsed_safe
    if not ok:
        return None
    return {"id": item["id"], "prompt": item["prompt"], "responses": item["responses"],
            "ranking": [r - 1 for r in order], "source": item["source"], "ratings": ratings, "safety": safety,
            "annotator": row.get("annotator") or None}


def import_annotation(filled: str | Path, export_jsonl: str | Path) -> tuple[list[dict], int]:
    """Validate a filled JSONL/CSV against the export -> (ranking records, number of unranked rows)."""
    items = {str(row.get("id")): row for _, row in read_rows(export_jsonl)}
    errors = RowErrors(filled)
    records, unranked = [], 0
    for line, item_id, row in rows_by_id(read_rows(filled), errors, items,
                                         missing="missing; every row needs the id from the export",
                                         unknown="{id!r} is not in the export " +
                                         str(export_jsonl).replace("{", "{{").replace("}", "}}"),
                                         twice="{id!r} was already annotated on line {first}"):
        rec = parse_annotation(row, items[item_id], line, errors)
        if rec is None and _split(row.get("ranking")) is None:
            unranked += 1
        elif rec is not None:
            records.append(rec)
    errors.raise_if_any()
    return records, unranked


def import_rankings(path: str | Path) -> list[dict]:
    """Ranking records as `annotate serve` appends them (or an earlier import wrote them: 0-based
    `ranking`, `responses`, `prompt`), validated like a filled export; serve's own fields
    (version, top_rating, note) are kept. Problems raise InputError as FILE:LINE: FIELD: reason."""
    errors = RowErrors(path)
    records = []
    for line, row in read_rows(path):
        responses, ranking, prompt = row.get("responses"), row.get("ranking"), row.get("prompt")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            errors.add(line, "responses", "expected a list of at least 2 strings")
            continue
        if not (isinstance(prompt, str) and prompt.strip() or isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in prompt)):
            errors.add(line, "prompt", "expected a string or a list of {role, content}")
            continue
        if not isinstance(ranking, list) or any(type(r) is not int for r in ranking):
            errors.add(line, "ranking", f"expected response indices from 0, best first, got {ranking!r}")
            continue
        item = {"id": str(row.get("id", line)), "prompt": prompt, "responses": responses,
                "source": row.get("source") or "helpfulness"}
        rec = parse_annotation({**row, "ranking": [r + 1 for r in ranking]}, item, line, errors)
        if rec is not None:
            rec.update({k: row[k] for k in ("version", "top_rating", "note") if row.get(k) is not None})
            records.append(rec)
    errors.raise_if_any()
    return records


def annotation_pairs(record: dict) -> list[dict]:
    """A human ranking -> preference pairs (reward_models.rankings.ranking_pairs), then the people's
    own labels: a pair's rating is the strongest neighbour rating between the two (A >> B > C means
    A >> C), and its safety_label comes from the two responses' safety."""
    pairs = ranking_pairs(record)
    order = record["ranking"]
    at = 0
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            pair = pairs[at]
            at += 1
            if record.get("ratings"):
                pair["rating"] = min(record["ratings"][i:j], key=RATINGS.index)
            elif record.get("top_rating") and i == 0:  # `annotate serve` rates #1 over #2; #1 beats the
                top = record["top_rating"]                # rest (each at most as good as #2) at least as much
                pair["rating"] = top if j == 1 else min(pair["rating"], top, key=RATINGS.index)
            if record.get("safety"):
                c, r = record["safety"][order[i]], record["safety"][order[j]]
                pair["chosen_safe"], pair["rejected_safe"] = c, r  # the RM drops chosen-unsafe/rejected-safe
                pair["safety_label"] = ("chosen_safe_rejected_unsafe" if c and not r else "both_safe" if c and r
                                        else "both_unsafe" if not c and not r else None)
            pair["prompt_id"] = record.get("id")
    assert at == len(pairs), "ranking_pairs changed its pair order"
    return pairs
