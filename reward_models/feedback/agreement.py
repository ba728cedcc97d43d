"""Agreement between annotators who judged the same prompts (`saferounds annotate stats`).

Rankings: Kendall's tau between two best-first orders of the same K responses,
  tau = (concordant pairs - discordant pairs) / (K (K-1) / 2)   in [-1, 1] (1: the same order).
Safety labels: the share of responses both people labelled alike, and Cohen's kappa,
  kappa = (p_o - p_e) / (1 - p_e),  p_e = P_a(safe) P_b(safe) + P_a(unsafe) P_b(unsafe),
which discounts the agreement two people would reach by labelling at their own rates at random.
"""

from __future__ import annotations

from itertools import combinations


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall's tau between two rankings (best first) of the same items."""
    if sorted(a) != sorted(b) or len(set(a)) != len(a):
        raise ValueError(f"kendall_tau: expected two orders of the same distinct items, got {a} and {b}")
    if len(a) < 2:
        raise ValueError("kendall_tau: needs at least 2 items")
    pos_a = {x: i for i, x in enumerate(a)}
    pos_b = {x: i for i, x in enumerate(b)}
    score = 0
    for x, y in combinations(a, 2):
        da, db = pos_a[x] - pos_a[y], pos_b[x] - pos_b[y]
        score += 1 if da * db > 0 else -1  # no ties in a strict ranking
    return score / (len(a) * (len(a) - 1) / 2)


def safety_agreement(pairs: list[tuple[bool, bool]]) -> dict:
    """Raw agreement and Cohen's kappa over (label_a, label_b) pairs of the same responses."""
    n = len(pairs)
    if n == 0:
        return {"labels": 0, "agreement": None, "kappa": None}
    p_o = sum(a == b for a, b in pairs) / n
    safe_a = sum(a for a, _ in pairs) / n
    safe_b = sum(b for _, b in pairs) / n
    p_e = safe_a * safe_b + (1 - safe_a) * (1 - safe_b)
    kappa = None if p_e == 1 else (p_o - p_e) / (1 - p_e)  # both labelled everything alike: undefined
    return {"labels": n, "agreement": p_o, "kappa": kappa}


def pairwise_agreement(records: list[dict]) -> list[dict]:
    """For every two annotators with prompts in common (same version and id, the same responses):
    mean Kendall's tau, how often they chose the same best response, and safety-label agreement."""
    by_prompt: dict[tuple, dict[str, dict]] = {}
    for r in records:
        who = r.get("annotator")
        if who:
            by_prompt.setdefault((r.get("version"), str(r.get("id"))), {})[who] = r
    out = []
    names = sorted({who for judged in by_prompt.values() for who in judged})
    for a, b in combinations(names, 2):
        taus, same_best, labels = [], 0, []
        for judged in by_prompt.values():
            ra, rb = judged.get(a), judged.get(b)
            if ra is None or rb is None or ra["responses"] != rb["responses"]:
                continue
            taus.append(kendall_tau(ra["ranking"], rb["ranking"]))
            same_best += ra["ranking"][0] == rb["ranking"][0]
            if ra.get("safety") and rb.get("safety"):
                labels += list(zip(ra["safety"], rb["safety"]))
        if taus:
            out.append({"annotators": [a, b], "prompts": len(taus), "kendall_tau": sum(taus) / len(taus),
                        "same_best": same_best / len(taus), "safety": safety_agreement(labels)})
    return out
