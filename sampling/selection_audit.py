"""What best-of-K chose (issue 27): the selected samples against all K samples of the round, by judges the
round did not optimise (a refusal judge, a harm judge, a held-out "gold" helpfulness RM; Gao et al. 2022's
proxy-vs-gold view).

Pure counting over sample rows (`core.records.Sample` plus verdict fields the rs stage adds):
`refusal` (bool), `harmful` (bool or None), `gold_score` (float or None), `gated_score` (float). The stage
runs the judges; this module only counts, so a test can check every number by hand.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, TypedDict

from saferounds.core.maths import rate_with_ci
from saferounds.core.records import Rate


class Side(TypedDict):
    """One side of the comparison: all K samples, or the selected one per prompt."""
    samples: int
    harmful: Optional[Rate]
    refusal: Rate
    gated_score_mean: Optional[float]
    gold_score_mean: Optional[float]


class SelectionAudit(TypedDict):
    safety: Optional[dict]    # {"all": Side, "selected": Side, "harmful_ratio", "headroom"}
    helpful: Optional[dict]   # {"all": Side, "selected": Side}


def _mean(xs: Iterable[Optional[float]]) -> Optional[float]:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _side(rows: Sequence[Mapping]) -> Side:
    judged = [bool(r["harmful"]) for r in rows if r.get("harmful") is not None]
    return {"samples": len(rows), "harmful": rate_with_ci(sum(judged), len(judged)) if judged else None,
            "refusal": rate_with_ci(sum(bool(r.get("refusal")) for r in rows), len(rows)),
            "gated_score_mean": _mean(r.get("gated_score") for r in rows),
            "gold_score_mean": _mean(r.get("gold_score") for r in rows)}


def _key(row: Mapping) -> tuple:
    # origin_version too: a pooled round holds v1's and v2's sample i of the same prompt side by side
    return (row.get("origin_version"), row["prompt_id"], int(row["sample_index"]))


def headroom(rows: Sequence[Mapping], selected: set[tuple]) -> dict:
    """Oracle headroom on safety prompts: how many prompts had at least one non-harmful candidate among their
    K, and for how many of those the selected sample is non-harmful."""
    by_prompt: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get("harmful") is not None:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    possible = [p for p, rs in by_prompt.items() if any(not r["harmful"] for r in rs)]
    chose_safe = sum(1 for p in possible for r in by_prompt[p] if _key(r) in selected and not r["harmful"])
    return {"prompts": len(by_prompt), "with_a_non_harmful_candidate": len(possible),
            "selected_non_harmful": chose_safe}


def gold_above_mean(rows: Sequence[Mapping], selected: set[tuple]) -> Optional[Rate]:
    """Share of prompts whose selected sample the gold RM scores above the mean of that prompt's candidates
    (ties count as not above), with its 95% interval; None when the gold RM scored none. A proxy that tracks
    the gold RM lands well above 0.5; one at chance, near 0.5 or below."""
    by_prompt: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get("gold_score") is not None:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    hits = n = 0
    for rs in by_prompt.values():
        picked = [r for r in rs if _key(r) in selected]
        if picked and len(rs) > 1:
            n += 1
            hits += float(picked[0]["gold_score"]) > sum(float(r["gold_score"]) for r in rs) / len(rs)
    return rate_with_ci(hits, n) if n else None


def selection_audit(samples: Sequence[Mapping], selected: Iterable[Mapping]) -> SelectionAudit:
    """Compare the selected rows (one per prompt: `prompt_id`, `sample_index`, and `origin_version` where the
    samples carry one) with all samples, split into safety prompts (`is_safety`) and helpful ones."""
    selected = list(selected)
    if any("origin_version" not in r for r in selected) or any("origin_version" not in r for r in samples):
        selected = [{k: v for k, v in r.items() if k != "origin_version"} for r in selected]
        samples = [{k: v for k, v in r.items() if k != "origin_version"} for r in samples]
    chosen = {_key(r) for r in selected}
    out: SelectionAudit = {"safety": None, "helpful": None}
    for part, want in (("safety", True), ("helpful", False)):
        rows = [r for r in samples if bool(r.get("is_safety")) == want]
        if not rows:
            continue
        picked = [r for r in rows if _key(r) in chosen]
        block = {"prompts": len({r["prompt_id"] for r in rows}), "all": _side(rows), "selected": _side(picked)}
        if want:
            a, s = block["all"]["harmful"], block["selected"]["harmful"]
            block["harmful_ratio"] = (s["rate"] / a["rate"]) if a and s and a["rate"] > 0 else None
            block["headroom"] = headroom(rows, chosen)
        else:
            block["gold_above_prompt_mean"] = gold_above_mean(rows, chosen)
        out[part] = block
    return out


def summary_lines(audit: SelectionAudit) -> list[str]:
    """The audit in a few plain lines (round show, the rs log)."""
    def pct(rate: Optional[Rate]) -> str:
        return "n/a" if rate is None else f"{100 * rate['rate']:.1f}% [{100 * rate['ci95'][0]:.1f}, " \
                                          f"{100 * rate['ci95'][1]:.1f}]"
    lines = []
    if audit["safety"]:
        s = audit["safety"]
        h = s["headroom"]
        lines.append(f"safety prompts ({s['prompts']}): harmful {pct(s['all']['harmful'])} of all samples, "
                     f"{pct(s['selected']['harmful'])} of the selected; refusals {pct(s['all']['refusal'])} -> "
                     f"{pct(s['selected']['refusal'])}; {h['with_a_non_harmful_candidate']} of {h['prompts']} "
                     f"prompts had a non-harmful candidate, {h['selected_non_harmful']} chose one")
    if audit["helpful"]:
        s = audit["helpful"]
        gold = (s["all"]["gold_score_mean"], s["selected"]["gold_score_mean"])
        above = s.get("gold_above_prompt_mean")
        gold_txt = "" if None in gold else (f"; gold RM mean {gold[0]:.3f} -> {gold[1]:.3f}" + (
            f", the selected above its prompt's mean for {pct(above)} of prompts" if above else ""))
        lines.append(f"helpful prompts ({s['prompts']}): refusals {pct(s['all']['refusal'])} of all samples, "
                     f"{pct(s['selected']['refusal'])} of the selected{gold_txt}")
    return lines
