"""Rankings of K samples per prompt -> ordered preference pairs, or -> Elo scores for (sample, reward) regression."""
from __future__ import annotations

import math


def rank_distance_rating(distance: int) -> str:
    """Rating from how far apart two responses sit in a ranking (1 = adjacent).

    Adjacent -> slightly_better, two apart -> better, three or more -> significantly_better.
    (Table 27 margins then grow with the distance; there is no "negligibly_better" from a strict ranking.)
    """
    if distance < 1:
        raise ValueError(f"rank distance must be >= 1, got {distance}")
    return {1: "slightly_better", 2: "better"}.get(distance, "significantly_better")


def ranking_pairs(record: dict) -> list[dict]:
    """Expand a ranking record into every ordered pair (better, worse) with a rating from the rank distance."""
    order = record["ranking"]
    responses = record["responses"]
    pairs = []
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            pairs.append({
                "prompt": record["prompt"],
                "chosen": responses[order[i]],
                "rejected": responses[order[j]],
                "rating": rank_distance_rating(j - i),
                "margin": None,
                "safety_label": None,
                "source": record.get("source", "helpfulness"),
            })
    return pairs


def elo_scores(ranking: list[int], n: int | None = None, k: float = 32.0, initial: float = 1000.0,
               passes: int = 10) -> list[float]:
    """Elo ratings of n responses from one best-first ranking (indices into the responses).

    Deterministic: every ordered pair (ranking[i] beats ranking[j], i < j) is one game; games are played in the
    fixed order i = 0.., j = i+1.., and the whole schedule is repeated `passes` times with K-factor
    k / pass_number (annealed, so later passes refine rather than overshoot). Ratings start at `initial`;
    responses absent from the ranking keep `initial`. Result: list of n ratings, index = response index.
    """
    n = len(ranking) if n is None else n
    if sorted(set(ranking)) != sorted(ranking) or any(not 0 <= r < n for r in ranking):
        raise ValueError(f"ranking must be distinct indices in [0, {n}), got {ranking}")
    elo = [float(initial)] * n
    for p in range(1, passes + 1):
        kp = k / p
        for i in range(len(ranking)):
            for j in range(i + 1, len(ranking)):
                w, lo = ranking[i], ranking[j]
                expected_w = 1.0 / (1.0 + 10 ** ((elo[lo] - elo[w]) / 400.0))
                delta = kp * (1.0 - expected_w)
                elo[w] += delta
                elo[lo] -= delta
    return elo


def elo_rewards(record: dict, **elo_kwargs) -> list[tuple[str, float]]:
    """(response, reward) regression targets for one ranking record.

    Elo difference d maps to the Bradley-Terry logit d * ln(10) / 400 (the Elo expected score is
    sigmoid of that), so rewards are on the same scale as pairwise RM logits; centred per prompt.
    """
    elo = elo_scores(record["ranking"], n=len(record["responses"]), **elo_kwargs)
    ranked = list(record["ranking"])
    mean = sum(elo[i] for i in ranked) / len(ranked)
    return [(record["responses"][i], (elo[i] - mean) * math.log(10) / 400.0) for i in ranked]
