"""PKU-SafeRLHF (two responses per prompt, each labelled safe or not, with which is better and which
is safer): a helpfulness pair and a safety pair per row (LLaMA 2 Sec. 3.2.2: two RMs), its prompts,
and its labelled responses."""

from __future__ import annotations

from saferounds.data import fields
from saferounds.data.adapted import Seen, response_record, user
from saferounds.data.risk import PKU_RISK

# PKU-SafeRLHF severity_level (0 safe, 1 minor, 2 moderate, 3 severe): how much less severe the safer
# (chosen) response is than the other -> the safety pair's rating. A safer pick rated MORE severe than
# the other contradicts itself: "unsure" (margin 0, as "negligibly_better").
SEVERITY_GAP_RATINGS = {3: "significantly_better", 2: "better", 1: "slightly_better", 0: "negligibly_better"}


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


def pku_row(row, line, errors) -> dict | None:
    """The fields of one PKU-SafeRLHF row, validated (None when bad; the problems are in `errors`)."""
    prompt = fields.text(row, "prompt", line, errors)
    responses = [fields.text(row, f"response_{i}", line, errors) for i in (0, 1)]
    safe = [fields.strict_boolean(row, f"is_response_{i}_safe", line, errors) for i in (0, 1)]
    better = fields.int_in(row, "better_response_id", (0, 1), line, errors)
    safer = fields.int_in(row, "safer_response_id", (0, 1), line, errors)
    harms = [fields.flags(row, f"response_{i}_harm_category", line, errors) for i in (0, 1)]  # absent in v0
    severity = [fields.int_in(row, f"response_{i}_severity_level", (0, 1, 2, 3), line, errors, required=False)
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
    prompt, (resp, safe, sev) = user(r["prompt"]), (r["responses"], r["safe"], r["severity"])
    b, s = r["better"], r["safer"]
    helpful = {"id": f"{pid}-helpfulness", "prompt": prompt, "chosen": resp[b], "rejected": resp[1 - b],
               "rating": None, "margin": None, "safety_label": None, "source": "helpfulness"}
    rating = severity_rating(sev[s], sev[1 - s]) if None not in sev else None
    safety = {"id": f"{pid}-safety", "prompt": prompt, "chosen": resp[s], "rejected": resp[1 - s],
              "rating": rating, "margin": None, "safety_label": safety_label(safe[s], safe[1 - s]),
              "source": "safety", "chosen_safe": safe[s], "rejected_safe": safe[1 - s]}
    return [helpful, safety]


# --- row adapters by kind (data.formats.ADAPTERS) ---------------------------------------------------

def preferences(row, line, errors, file) -> list[dict]:
    r = pku_row(row, line, errors)
    return [] if r is None else pku_pairs(r, file.pid(line))


def prompts(row, line, errors, file) -> Seen | None:
    r = pku_row(row, line, errors)
    return None if r is None else Seen(r["prompt"], not all(r["safe"]), r["harms"][0] + r["harms"][1], PKU_RISK)


def responses(row, line, errors, file) -> list[dict]:
    r = pku_row(row, line, errors)
    if r is None:
        return []
    return [response_record(f"{file.pid(line)}-{i}", r["prompt"], r["responses"][i], r["safe"][i], r["harms"][i],
                            PKU_RISK) for i in (0, 1)]
