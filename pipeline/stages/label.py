"""The `label` stage: an LLM judge labels pairs of policy samples (RLAIF) -> ai_preferences.jsonl.

  1. which samples: this version's samples.jsonl when it exists (a plan that runs `label` after
     sampling, or a resumed version), otherwise those of the newest earlier version that has one;
     with the default stage order (rm -> label -> rs) that is the previous round's samples, and the
     pairs it writes train the reward models of the next round like human pairs
  2. group them by prompt and judge pairs of each group, both orders
     (reward_models.feedback.labeling.label_groups)
  3. write ctx.dir/ai_preferences.jsonl (contract preference records + rationale) and
     ai_preferences.missing.jsonl (pairs whose verdict stayed unparseable: recorded, never guessed)
The judge's cache lives in ctx.dir/work/label/judge_cache.sqlite (or judge.cache_path), so an
interrupted stage resumes without paying for a verdict twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from saferounds.core.io import read_rows, write_jsonl
from saferounds.core.progress import counter
from saferounds.core.versions import ensure_outside_finished_versions
from saferounds.reward_models.feedback.judges import make_judge
from saferounds.pipeline.stages.context import StageContext, validate_prompts
from saferounds.pipeline.workspace import Workspace
from saferounds.reward_models.feedback.labeling import group_samples, label_groups

OUTPUT = "ai_preferences.jsonl"
MISSING = "ai_preferences.missing.jsonl"


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """The prompts load, and judge.cache_path lies outside every finished version."""
    validate_prompts(ws, plan)
    if ws.config.judge.cache_path:
        ensure_outside_finished_versions(ws.resolve(ws.config.judge.cache_path), "judge.cache_path")


def samples_to_label(ctx: StageContext) -> Path | None:
    own = ctx.dir / "samples.jsonl"
    if own.exists():
        return own
    for d in sorted(ctx.prior_versions, key=lambda p: p.name, reverse=True):
        if (d / "samples.jsonl").exists():
            return d / "samples.jsonl"
    return None


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.judge
    # step 1: which samples
    source = samples_to_label(ctx)
    if source is None:
        ctx.log.warning("label: no samples.jsonl in v%d or any earlier version; nothing to label", ctx.version)
        write_jsonl(ctx.dir / OUTPUT, [])
        return {"pairs": 0, "missing": 0, "samples": None}
    # step 2: judge pairs of each prompt's samples
    groups = group_samples(read_rows(source), where=str(source))
    cache = ctx.workspace.resolve(cfg.cache_path) if cfg.cache_path else ctx.dir / "work" / "label" / "judge_cache.sqlite"
    ctx.progress(f"label: judging pairs from {len(groups)} prompts of {source} with {cfg.backend}:{cfg.model}")
    with make_judge(cfg, cache_path=cache) as judge:
        records, missing = label_groups(judge, groups, _progress(ctx))
        requests, hits = judge.requests, judge.cache_hits
    # step 3: the labelled pairs, and the pairs left without a verdict
    write_jsonl(ctx.dir / OUTPUT, records)
    write_jsonl(ctx.dir / MISSING, missing)
    ratings = Counter(r["rating"] for r in records)
    return {"pairs": len(records), "missing": len(missing), "unsure": ratings.get("unsure", 0),
            "ratings": dict(ratings), "by_source": dict(Counter(r["source"] for r in records)),
            "samples": str(source), "judge": f"{cfg.backend}:{cfg.model}",
            "judge_requests": requests, "judge_cache_hits": hits}


def _progress(ctx: StageContext):
    """About twenty progress lines per stage, not one per pair."""
    last = [0]
    bar = counter("label", "pairs")

    def report(done: int, total: int) -> None:
        bar(done, total)
        if done == total or done - last[0] >= max(1, total // 20):
            last[0] = done
            ctx.progress(f"label: {done}/{total} pairs judged")

    return report
