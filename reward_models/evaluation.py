"""Reward-model accuracy: overall, per rating level (LLaMA 2 Table 8), per safety_label bin and per data
origin, unsafe recall; every accuracy with its Wilson 95% interval, and whether it is better than chance."""
from __future__ import annotations

from saferounds.core.maths import excludes, wilson_interval
from saferounds.core.records import RATINGS
from saferounds.reward_models.losses import SAFETY_TARGETS

# LLaMA 2 Table 8 columns: negligibly better and unsure share one column.
TABLE_8 = (*RATINGS[:3], "negligibly_better_or_unsure", "unrated")
RATING_BINS = {**{r: r for r in RATINGS[:3]}, "negligibly_better": TABLE_8[3], "unsure": TABLE_8[3], None: "unrated"}


def _acc(hits: list[float]) -> dict:
    """Accuracy of pair outcomes (1 win, 0.5 tie, 0 loss) with its Wilson 95% interval (ties as half a hit)."""
    lo, hi = wilson_interval(sum(hits), len(hits))
    return {"n": len(hits), "accuracy": round(sum(hits) / len(hits), 6) if hits else None,
            "ci95": [round(lo, 6), round(hi, 6)]}


def ranks_better_than_chance(block: dict | None) -> bool:
    """True when a held-out accuracy block's 95% interval lies wholly above 0.5: the RM ranks. An RM whose
    interval includes 0.5 (or that was never measured) selects nothing better than a random sample."""
    if not block or block.get("accuracy") is None or "ci95" not in block:
        return False
    return block["accuracy"] > 0.5 and excludes(block["ci95"], 0.5)


def pair_metrics(chosen: list[float], rejected: list[float], pairs: list[dict]) -> dict:
    """Accuracy = share of pairs with r_c > r_r (a tie counts half). Unsafe recall at sigma = 0.5: of the
    responses labelled unsafe by safety_label, the share with sigma(score) < 0.5, i.e. score < 0 (Table 29)."""
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    by_rating: dict[str, list] = {}
    by_label: dict[str, list] = {}
    by_origin: dict[str, list] = {}
    flagged_unsafe = predicted_unsafe = true_unsafe = 0
    for h, c, r, p in zip(hits, chosen, rejected, pairs):
        by_rating.setdefault(RATING_BINS.get(p.get("rating"), "unrated"), []).append(h)
        label = p.get("safety_label")
        by_label.setdefault(label or "unlabelled", []).append(h)
        if p.get("origin"):
            by_origin.setdefault(p["origin"], []).append(h)
        if label in SAFETY_TARGETS:
            for score, safe in zip((c, r), SAFETY_TARGETS[label]):
                unsafe_pred = score < 0.0
                predicted_unsafe += unsafe_pred
                if not safe:
                    true_unsafe += 1
                    flagged_unsafe += unsafe_pred
    return {
        **_acc(hits),
        "by_rating": {k: _acc(by_rating[k]) for k in TABLE_8 if k in by_rating},
        "by_safety_label": {k: _acc(v) for k, v in sorted(by_label.items())},
        "by_origin": {k: _acc(v) for k, v in sorted(by_origin.items())},
        "unsafe_recall": round(flagged_unsafe / true_unsafe, 6) if true_unsafe else None,
        "unsafe_precision": round(flagged_unsafe / predicted_unsafe, 6) if predicted_unsafe else None,
        "unsafe_responses": true_unsafe,
    }


def evaluate_pairs(model, tokenizer, pairs: list[dict], batch_size: int = 16, max_length: int = 512) -> dict:
    """Score chosen and rejected of every pair with the RM (length-sorted batches) and compute pair_metrics."""
    from saferounds.reward_models.scoring import score

    prompts = [p["prompt"] for p in pairs]
    chosen = score(model, tokenizer, prompts, [p["chosen"] for p in pairs], batch_size, max_length)
    rejected = score(model, tokenizer, prompts, [p["rejected"] for p in pairs], batch_size, max_length)
    return pair_metrics(chosen, rejected, pairs)
