"""Proxy vs gold reward per version (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"): the
helpfulness RM the rounds optimised (the proxy) and a gold helpfulness RM trained on pairs of other prompts and
never used for selection or PPO (reward_models.gold) both score every version's answers to the held-out helpful
prompts. Over-optimisation shows where the proxy's mean rises from version to version and the gold's does not;
the gold RM's win rate of a version against v0 (same prompts, ties half) carries a 95% interval.

Pure counting over eval records (`core.records.EvalRecord`: `id`, `suite`, `helpfulness_score`) and the gold
scores the eval stage computed for them, so a test can check every number by hand.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from saferounds.core.maths import wilson_interval
from saferounds.eval.metrics import mean, win_rate_of


def gold_win_rate(gold: Mapping[tuple, float], baseline: Mapping[tuple, float]) -> dict:
    """WIN block of the gold scores of one version against the baseline's on the prompts both answered
    (keyed by (suite, id)); ties count half, in the rate and in its Wilson 95% interval."""
    keys = sorted(set(gold) & set(baseline))
    wins = sum(gold[k] > baseline[k] for k in keys)
    ties = sum(gold[k] == baseline[k] for k in keys)
    block = win_rate_of(wins, ties, len(keys) - wins - ties)
    lo, hi = wilson_interval(wins + 0.5 * ties, len(keys))
    return {**block, "ci95": [lo, hi]}


def proxy_vs_gold(records: Mapping[str, Sequence[Mapping]], gold: Mapping[str, Sequence[float]], *,
                  baseline: str = "v0", rm: Optional[str] = None, heldout: Optional[dict] = None) -> dict:
    """Per version: answers scored, the proxy (helpfulness RM) mean, the gold mean and the gold win rate
    against `baseline` (absent for the baseline itself, or when it was not evaluated). `records[v]` and
    `gold[v]` are aligned lists over the version's held-out helpful answers. `heldout`: the gold RM's own
    held-out accuracy block (accuracy, ci95, n), shown beside it so a gold RM at chance is read as one."""
    keyed = {v: {(r["suite"], r["id"]): float(g) for r, g in zip(recs, gold[v])} for v, recs in records.items()}
    versions = {}
    for v, recs in records.items():
        proxy = [float(r["helpfulness_score"]) for r in recs if r.get("helpfulness_score") is not None]
        row = {"n": len(recs), "proxy_mean": mean(proxy), "gold_mean": mean(keyed[v].values())}
        if v != baseline and baseline in keyed:
            row["gold_win_rate_vs_" + baseline] = gold_win_rate(keyed[v], keyed[baseline])
        versions[v] = row
    ranks = heldout is not None and heldout.get("ci95") is not None and heldout["ci95"][0] > 0.5
    return {"gold_rm": rm, "baseline": baseline, "heldout": heldout, "ranks_better_than_chance": ranks,
            "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0].lstrip("v")))),
            "note": "gold helpfulness RM: trained on pairs of prompts the proxy never saw, never used for "
                    "selection or PPO (Gao et al. 2022)"}
