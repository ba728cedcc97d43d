"""Rejection-sampling selection (LLaMA 2 Sec. 3.2.3): keep the best of K samples per prompt by the
gated reward, chosen among this round's samples and the kept samples of earlier versions.

Pure functions over samples (core.records.Sample), besides `kept_samples`, which reads the selected.jsonl
of earlier versions. A sample has at least prompt_id, sample_index, response, origin_version and a
score field.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Literal

from saferounds.core.io import read_jsonl
from saferounds.core.records import Sample, SelectedRow
from saferounds.core.versions import dir_version

Pool = Literal["all", "previous", "current"]


def sample_key(s: dict) -> tuple[int, str, int]:
    """Identity of a sample across rounds: (origin_version, prompt_id, sample_index)."""
    return (int(s["origin_version"]), str(s["prompt_id"]), int(s["sample_index"]))


def _rank(s: dict, score: str) -> tuple:
    # Deterministic tie-break: higher score, then the newer origin version (the latest policy's sample),
    # then the lower sample index, then the response text, so equal inputs always give the same pick.
    return (-float(s[score]), -int(s["origin_version"]), int(s["sample_index"]), s["response"])


def pool_candidates(current: list[Sample], kept_by_version: dict[int, list[Sample]], pool: Pool) -> list[Sample]:
    """The candidates for selection this round (LLaMA 2: select from the samples of all prior
    iterations, the fix for the RLHF-V3 regression).

    current          this round's samples (origin_version = this round).
    kept_by_version  {v: the samples kept (selected.jsonl) by version v} for earlier versions.
    pool             "current": this round only; "previous": plus the newest earlier version's kept
                     samples; "all": plus every earlier version's kept samples.
    A sample kept by several versions (re-selected from an older origin) appears once.
    """
    if pool not in ("all", "previous", "current"):
        raise ValueError(f"pool must be all | previous | current, got {pool!r}")
    versions = sorted(kept_by_version)
    if pool == "current" or not versions:
        chosen_versions: list[int] = []
    elif pool == "previous":
        chosen_versions = versions[-1:]
    else:
        chosen_versions = versions
    out, seen = [], set()
    for s in list(current) + [s for v in chosen_versions for s in kept_by_version[v]]:
        key = sample_key(s)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def best_of_k(candidates: Iterable[Sample], score: str = "gated_score",
              min_score: float | None = None) -> list[Sample]:
    """One sample per prompt: the highest `score` (LLaMA 2 rejection sampling), ties broken as in
    `_rank`. Prompts whose best score is below `min_score` are dropped. Output is ordered by prompt_id."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in candidates:
        groups[str(s["prompt_id"])].append(s)
    selected = []
    for pid in sorted(groups):
        best = min(groups[pid], key=lambda s: _rank(s, score))
        if min_score is not None and float(best[score]) < min_score:
            continue
        selected.append(best)
    return selected


def origin_counts(selected: Iterable[dict]) -> dict[str, int]:
    """How many selected examples came from each origin version, e.g. {"v1": 3, "v2": 5}."""
    counts: dict[int, int] = defaultdict(int)
    for s in selected:
        counts[int(s["origin_version"])] += 1
    return {f"v{v}": counts[v] for v in sorted(counts)}


# The scores a selected.jsonl row carries over from its sample.
SCORE_FIELDS = ("helpfulness", "safety", "safety_sigmoid", "gate_branch", "gated_logit", "gated_score",
                "judge_score")


def selected_row(s: Sample, version: int, key: str = "gated_score") -> SelectedRow:
    """A selected.jsonl row: SFT-shaped (`messages` + `completion`, so `saferounds sft` reads it) plus
    where it came from and its scores under this round's RMs."""
    row = {"prompt_id": s["prompt_id"], "messages": s["messages"], "completion": s["response"],
           "origin_version": int(s["origin_version"]), "sample_index": int(s["sample_index"]),
           "selected_in": version, "score": s[key],
           "is_safety": s.get("is_safety", False), "category": s.get("category")}
    row.update({k: s[k] for k in SCORE_FIELDS if k in s})
    if s.get("demonstration"):
        row["demonstration"] = True
    return row


def kept_samples(prior_versions: Iterable[Path]) -> dict[int, list[Sample]]:
    """{v: the rows of vN/selected.jsonl, as samples again} for earlier versions that ran rs (v0 has none)."""
    kept = {}
    for d in prior_versions:
        n, path = dir_version(d), Path(d) / "selected.jsonl"
        if n is not None and path.exists():
            rows = read_jsonl(path)
            for r in rows:
                r["response"] = r.pop("completion")
            kept[n] = rows
    return kept


def mean_of(rows: Iterable[dict], field: str) -> float | None:
    """Mean of a field over the rows that have it (None when none do)."""
    values = [r[field] for r in rows if r.get(field) is not None]
    return sum(values) / len(values) if values else None


def share_of(rows: list[dict], predicate) -> float | None:
    """Fraction of rows for which predicate(row) holds (None for no rows)."""
    return sum(bool(predicate(r)) for r in rows) / len(rows) if rows else None
