"""UltraFeedback, raw (completions with per-aspect ratings) and binarized (chosen vs rejected with
scores): helpfulness pairs rated by their score gap, and prompts."""

from __future__ import annotations

from saferounds.data import fields
from saferounds.data.adapted import Seen, user

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
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def score_gap_rating(gap: float) -> str | None:
    """UltraFeedback: a score gap (1-5 scale points, chosen minus rejected) -> rating; None for a tie."""
    if gap <= 1e-9:
        return None
    for least, rating in SCORE_GAP_RATINGS:
        if gap >= least - 1e-9:
            return rating
    raise AssertionError("unreachable: the last level starts at 0")


def ten_point_scale(rows) -> bool:
    """Binarized UltraFeedback scores above 5 anywhere: the critique's 1-10 overall_score scale."""
    for _, r in rows:
        for field in ("score_chosen", "score_rejected"):
            try:
                if float(r.get(field)) > 5:
                    return True
            except (TypeError, ValueError):
                pass
    return False


def ultrafeedback_binarized_pair(row, line, errors, pid: str, halve: bool) -> dict | None | str:
    """One ultrafeedback_binarized row -> a helpfulness pair; "tie" when the scores are equal."""
    prompt = fields.text(row, "prompt", line, errors)
    _, chosen = fields.response(row.get("chosen"), "chosen", line, errors)
    _, rejected = fields.response(row.get("rejected"), "rejected", line, errors)
    hi = fields.number(row, "score_chosen", line, errors)
    lo = fields.number(row, "score_rejected", line, errors)
    if None in (prompt, chosen, rejected, hi, lo):
        return None
    if hi < lo:
        errors.add(line, "score_rejected", f"{lo:g} is above score_chosen {hi:g}")
        return None
    rating = score_gap_rating((hi - lo) / (2 if halve else 1))
    if rating is None or chosen == rejected:
        return "tie"
    pid = row.get("prompt_id") if isinstance(row.get("prompt_id"), str) and row["prompt_id"] else pid
    return {"id": pid, "prompt": user(prompt), "chosen": chosen, "rejected": rejected, "rating": rating,
            "margin": None, "safety_label": None, "source": "helpfulness"}


def _aspect_mean(annotations: dict, where: str, line, errors) -> float | None | str:
    """The mean of a completion's numeric aspect ratings; None when unrated ("N/A"), "bad" when a rating is."""
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
            return "bad"
        ratings.append(number)
    return sum(ratings) / len(ratings) if ratings else None


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
        text = fields.text(c, "response", line, fields.Prefixed(errors, where + "."))
        annotations = c.get("annotations")
        if not isinstance(annotations, dict):
            errors.add(line, f"{where}.annotations", "expected an object of aspect ratings")
            return None
        score = _aspect_mean(annotations, where, line, errors)
        if score == "bad" or text is None:
            return None
        out.append((text, score))
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
            pairs.append({"id": f"{pid}-{i}-{j}", "prompt": user(prompt), "chosen": a, "rejected": b,
                          "rating": rating, "margin": None, "safety_label": None, "source": "helpfulness"})
    return pairs, ties


# --- row adapters by kind (data.formats.ADAPTERS) ---------------------------------------------------

def binarized_preferences(row, line, errors, file) -> list[dict]:
    pair = ultrafeedback_binarized_pair(row, line, errors, file.pid(line), file.once(ten_point_scale))
    if pair == "tie":
        file.counts["ties"] += 1
        return []
    return [] if pair is None else [pair]


def binarized_prompts(row, line, errors, file) -> Seen | None:
    text = fields.text(row, "prompt", line, errors)
    if text is None:
        return None
    return Seen(text, False, [], {}, str(row["prompt_id"]) if row.get("prompt_id") else None)


def preferences(row, line, errors, file) -> list[dict]:
    text = fields.text(row, "instruction", line, errors)
    scored = ultrafeedback_scores(row, line, errors)
    if text is None or scored is None:
        return []
    pairs, ties = ultrafeedback_pairs(text, scored, file.pid(line))
    file.counts["ties"] += ties
    file.counts["unrated completions"] += sum(s is None for _, s in scored)
    return pairs


def prompts(row, line, errors, file) -> Seen | None:
    text = fields.text(row, "instruction", line, errors)
    return None if text is None else Seen(text, False, [], {})
