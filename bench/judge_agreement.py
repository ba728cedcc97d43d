"""Judge vs. human preference on HH-RLHF test pairs (the RLAIF acceptance figure).

    .venv/bin/python bench/judge_agreement.py --judge openai:MODEL@URL[#KEY_ENV] [--n 200]
    .venv/bin/python bench/judge_agreement.py --judge hf:/path/to/chat-model --n 200

Half the pairs come from helpful-base (judged with the helpfulness guideline), half from
harmless-base (safety guideline); a fixed seeded draw, so every judge sees the same 200 pairs.
Each pair goes through reward_models.feedback.labeling.label_pair: both orders, disagreement -> unsure, unparseable
-> missing. Reported:
  agreement_decided  judge's chosen == human chosen, over pairs the judge decided (not unsure/missing)
  agreement_all      the same over all pairs, unsure and missing counting 1/2 (a coin flip)
  coverage           decided / all
Verdicts are cached (--cache), so a rerun or a resumed run costs nothing.

`--tiny` builds the untrained tiny preset policy and uses it as an `hf:` judge: it shows the code
path runs end to end on a CPU and gives no meaningful figure (its verdicts are noise, mostly missing).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saferounds.reward_models.config import JudgeConfig

from saferounds.reward_models.feedback.judges import make_judge, parse_judge_spec  # noqa: E402
from saferounds.reward_models.feedback.labeling import label_pair  # noqa: E402
from saferounds.data.hh import hh_pairs  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "hh-rlhf"


def hh_sample(n: int, seed: int = 0) -> list[dict]:
    """n pairs: n/2 helpful-base + n/2 harmless-base test pairs, a seeded draw."""
    out = []
    for subset, is_safety, k in (("helpful-base", False, n - n // 2), ("harmless-base", True, n // 2)):
        pairs, _ = hh_pairs(DATA / subset / "test.jsonl.gz")
        for p in random.Random(seed).sample(pairs, k):
            out.append({**p, "is_safety": is_safety, "subset": subset})
    return out


def agreement(results: list[dict]) -> dict:
    n = len(results)
    decided = [r for r in results if r["verdict"] in ("human", "other")]
    agree = sum(r["verdict"] == "human" for r in decided)
    return {"pairs": n, "decided": len(decided), "unsure": sum(r["verdict"] == "unsure" for r in results),
            "missing": sum(r["verdict"] == "missing" for r in results),
            "agreement_decided": agree / len(decided) if decided else None,
            "agreement_all": (agree + 0.5 * (n - len(decided))) / n if n else None,
            "coverage": len(decided) / n if n else None}


def run(judge_cfg: JudgeConfig, n: int, cache: Path, seed: int = 0) -> dict:
    pairs = hh_sample(n, seed)
    started = time.time()
    with make_judge(judge_cfg, cache_path=cache) as judge:
        def one(p):
            prompt = {"id": p["id"], "messages": p["prompt"], "is_safety": p["is_safety"]}
            out = label_pair(judge, prompt, p["chosen"], p["rejected"])
            if "missing" in out:
                verdict = "missing"
            elif out["record"]["rating"] == "unsure":
                verdict = "unsure"
            else:
                verdict = "human" if out["record"]["chosen"] == p["chosen"] else "other"
            return {"id": p["id"], "subset": p["subset"], "verdict": verdict}

        results = judge.map(one, pairs)
        requests, hits = judge.requests, judge.cache_hits
    report = {"judge": f"{judge_cfg.backend}:{judge_cfg.model}", "seed": seed, **agreement(results),
              "by_subset": {s: agreement([r for r in results if r["subset"] == s])
                            for s in ("helpful-base", "harmless-base")},
              "requests": requests, "cache_hits": hits, "seconds": round(time.time() - started, 1)}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", help="openai:MODEL@URL[#KEY_ENV] or hf:MODEL_ID_OR_PATH")
    ap.add_argument("--tiny", action="store_true", help="code-path check with the untrained tiny model (no figure)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=768)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench-judge" / "judge_cache.sqlite")
    ap.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = ap.parse_args()
    base = JudgeConfig(max_tokens=args.max_tokens, concurrency=args.concurrency)
    if args.tiny:
        import torch

        torch.set_num_threads(1)
        from saferounds.data.tiny import build_tiny

        tiny = build_tiny(Path(tempfile.mkdtemp(prefix="tiny-judge-")))["policy"]
        cfg = replace(base, backend="hf", model=str(tiny), max_tokens=min(args.max_tokens, 24), parse_retries=0)
    elif args.judge:
        cfg = parse_judge_spec(args.judge, base)
    else:
        ap.error("give --judge SPEC (a capable judge) or --tiny (code-path check only)")
    report = run(cfg, args.n, args.cache, args.seed)
    if args.tiny:
        report["note"] = "untrained tiny model: code-path check only, not a measurement of judge quality"
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
