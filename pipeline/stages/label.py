"""The `label` stage: an LLM judge labels pairs of policy samples (RLAIF) -> ai_preferences.jsonl.

Which samples: this version's samples.jsonl when it exists (a plan that runs `label` after
sampling, or a resumed version), otherwise those of the newest earlier version that has one;
with the default stage order (rm -> label -> rs) that is the previous round's samples, and the
pairs it writes train the reward models of the next round like human pairs.

Writes ctx.dir/ai_preferences.jsonl (contract preference records + rationale) and
ai_preferences.missing.jsonl (pairs whose verdict stayed unparseable: recorded, never guessed).
The judge's cache lives in ctx.dir/work/label/judge_cache.sqlite (or judge.cache_path), so an
interrupted stage resumes without paying for a verdict twice.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from core.io import atomic_write_text, read_rows
from core.progress import counter
from reward_models.feedback.judges import make_judge
from reward_models.feedback.labeling import group_samples, label_groups

OUTPUT = "ai_preferences.jsonl"
MISSING = "ai_preferences.missing.jsonl"


def samples_to_label(ctx) -> Path | None:
    own = ctx.dir / "samples.jsonl"
    if own.exists():
        return own
    for d in sorted(ctx.prior_versions, key=lambda p: p.name, reverse=True):
        if (d / "samples.jsonl").exists():
            return d / "samples.jsonl"
    return None


def run(ctx) -> dict:
    cfg = ctx.config.judge
    source = samples_to_label(ctx)
    if source is None:
        ctx.log.warning("label: no samples.jsonl in v%d or any earlier version; nothing to label", ctx.version)
        atomic_write_text(ctx.dir / OUTPUT, "")
        return {"pairs": 0, "missing": 0, "samples": None}
    groups = group_samples(read_rows(source), where=str(source))
    cache = ctx.workspace.resolve(cfg.cache_path) if cfg.cache_path else ctx.dir / "work" / "label" / "judge_cache.sqlite"
    ctx.progress(f"label: judging pairs from {len(groups)} prompts of {source} with {cfg.backend}:{cfg.model}")
    with make_judge(cfg, cache_path=cache) as judge:
        records, missing = label_groups(judge, groups, _progress(ctx))
        requests, hits = judge.requests, judge.cache_hits
    atomic_write_text(ctx.dir / OUTPUT, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(ctx.dir / MISSING, "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in missing))
    ratings = Counter(r["rating"] for r in records)
    return {"pairs": len(records), "missing": len(missing), "unsure": ratings.get("unsure", 0),
            "ratings": dict(ratings), "by_source": dict(Counter(r["source"] for r in records)),
            "samples": str(source), "judge": f"{cfg.backend}:{cfg.model}",
            "judge_requests": requests, "judge_cache_hits": hits}


def _progress(ctx):
    """About twenty progress lines per stage, not one per pair."""
    last = [0]
    bar = counter("label", "pairs")

    def report(done: int, total: int) -> None:
        bar(done, total)
        if done == total or done - last[0] >= max(1, total // 20):
            last[0] = done
            ctx.progress(f"label: {done}/{total} pairs judged")

    return report
