"""Reward-model accuracy: overall, per rating level (LLaMA 2 Table 8), per safety_label bin and per data
origin, unsafe recall; every accuracy with its Wilson 95% interval, and whether it is better than chance."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
    """Score chosen and rejected of every pair with the RM in one pass (batches of similar length) and compute
    pair_metrics."""
    from saferounds.reward_models.scoring import score

    prompts = [p["prompt"] for p in pairs]
    scores = score(model, tokenizer, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                   batch_size, max_length)
    return pair_metrics(scores[:len(pairs)], scores[len(pairs):], pairs)


# --- held-out pairs: a subset per origin, and the cache by RM hash ----------------------------------------

NO_RATINGS = ("rating levels (LLaMA 2 Table 8): none of these pairs carries one (HH-RLHF and Do-Not-Answer "
              "have no levels), so accuracy is shown by origin")
CACHE_KEYS = ("rm_sha256", "pairs_sha256", "max_length")


def per_origin_subset(pairs: list[dict], max_per_origin: int) -> list[dict]:
    """The first `max_per_origin` pairs of each origin, in file order (0 = all): at 400 pairs a 95% interval
    around 0.5 is about +-0.05, and scoring more buys little."""
    if not max_per_origin:
        return list(pairs)
    seen: dict[str, int] = {}
    out = []
    for p in pairs:
        o = p.get("origin") or "unlabelled"
        seen[o] = seen.get(o, 0) + 1
        if seen[o] <= max_per_origin:
            out.append(p)
    return out


def pairs_digest(pairs: list[dict]) -> str:
    """sha256 of what held-out scoring reads from the pairs (texts and the fields accuracy is grouped by)."""
    keys = ("prompt", "chosen", "rejected", "origin", "rating", "safety_label")
    blob = json.dumps([{k: p.get(k) for k in keys} for p in pairs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def rm_digest(rm_dir: str | Path) -> str:
    """sha256 of a saved RM: every file's relative path and bytes, but its manifest.json (which the held-out
    block itself is written into)."""
    root, digest = Path(rm_dir), hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cached_heldout(block: dict | None, rm_sha: str, pairs_sha: str, max_length: int) -> dict | None:
    """A stored held-out block when it scored exactly these pairs with exactly this RM (same hashes and
    max_length); None otherwise."""
    want = dict(zip(CACHE_KEYS, (rm_sha, pairs_sha, max_length)))
    if block and all(block.get(k) == v for k, v in want.items()):
        return block
    return None


def heldout_accuracy(rm_dir, pairs: list[dict], cfg, stored: dict | None = None, model=None, tokenizer=None,
                     model_cfg=None) -> dict:
    """Held-out accuracy of the RM saved in rm_dir on `pairs` (at most cfg.heldout_max_pairs per origin), from
    `stored` when that block scored the same pairs with the same RM, else scored (the RM loaded from rm_dir
    unless given). The block carries the hashes it was computed for, and `cached` says whether it was reused."""
    pairs = per_origin_subset(pairs, cfg.heldout_max_pairs)
    rm_sha, pairs_sha = rm_digest(rm_dir), pairs_digest(pairs)
    if (hit := cached_heldout(stored, rm_sha, pairs_sha, cfg.max_length)) is not None:
        return {**hit, "cached": True}
    if model is None:
        from saferounds.reward_models.modeling import load_reward_model

        model, tokenizer = load_reward_model(rm_dir, model_cfg)
    block = evaluate_pairs(model, tokenizer, pairs, cfg.score_batch_size, cfg.max_length)
    return {**block, **dict(zip(CACHE_KEYS, (rm_sha, pairs_sha, cfg.max_length))), "cached": False}


def has_rating_levels(block: dict) -> bool:
    """Whether any pair of a held-out block carried a rating level (Table 8 needs them)."""
    return any(k != "unrated" for k in block.get("by_rating", {}))
