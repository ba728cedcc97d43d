"""Safety context distillation on the real model (issue 14, item 5): the smollm2 plan with and without `distill`.

    .venv/bin/python bench/smollm2_demo.py --size full              # first: the plan without distill
    .venv/bin/python bench/smollm2_distill.py                       # then: the same plan with distill
    .venv/bin/python bench/smollm2_distill.py --report-only         # the side-by-side table again

The run without distill is the acceptance run (v1 = rm, rs, eval). The run with distill builds a second
workspace from the first one's v0, data, learned judges and v1 reward models, and runs v1 = distill, rs,
eval (`saferounds round run`; a round without an `rm` stage uses the workspace's newest RMs). v0's eval
answers are shared too (a cache file the eval reads), so the two v1 are judged by identical judges
against identical v0 answers and differ only by the distill stage and what it changes downstream (rs
samples from the distilled policy). Nothing is tuned on the eval suites.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from smollm2_demo import _pct, acceptance  # noqa: E402

PLAN = [{"versions": "1", "stages": ["distill", "rs", "eval"]}]


def build(base: Path, ws: Path) -> None:
    """The distill workspace from a finished run without distill (same v0, data, judges, RMs, v0 answers)."""
    if not (base / "versions" / "v1" / "manifest.json").exists():
        raise SystemExit(f"{base}: no finished v1; run bench/smollm2_demo.py first")
    tmp = ws.with_name(ws.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = yaml.safe_load((base / "saferounds.yaml").read_text())
    preset = yaml.safe_load((REPO / "pipeline" / "presets" / "smollm2.yaml").read_text())
    cfg["rounds"]["plan"] = PLAN
    cfg["distill"] = preset["distill"]
    (tmp / "saferounds.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for d in ("data", "models", "judges", "versions/v0"):
        shutil.copytree(base / d, tmp / d, symlinks=True)
    for kind in ("helpfulness", "safety"):
        shutil.copytree(base / "reward_models" / kind / "v1", tmp / "reward_models" / kind / "v1")
    src = base / "versions" / "v1" / "eval" / "generations" / "v0"
    shutil.copytree(src, tmp / "reports" / f"from-{base.name}" / "generations" / "v0")
    os.replace(tmp, ws)


def distill_figures(ws: Path) -> dict:
    rows = [json.loads(line) for line in (ws / "versions" / "v1" / "distill.jsonl").read_text().splitlines() if line]
    kept = [r for r in rows if r.get("kept")]
    diff = [r["gain"] for r in rows]
    return {"prompts": len(rows), "kept": len(kept), "kept_share": len(kept) / len(rows) if rows else None,
            "mean_safety_gain_all": sum(diff) / len(diff) if diff else None,
            "by_preprompt": {p: sum(r["preprompt"] == p for r in kept) for p in sorted({r["preprompt"] for r in rows})},
            "examples_rejected": [{k: r.get(k) for k in ("messages", "answer_plain", "answer_pre", "score_plain",
                                                         "score_pre")}
                                  for r in rows if not r.get("kept")][:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=REPO / "bench-smollm2-full", help="the finished run without distill")
    ap.add_argument("-w", "--workspace", type=Path, default=REPO / "bench-smollm2-distill")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    wall = None
    if not args.report_only:
        if not args.workspace.exists():
            build(args.base, args.workspace)
        env = dict(os.environ, SAFEROUNDS_QUIET="1", PYTHONPATH=str(REPO))
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "saferounds.pipeline.cli", "round", "run", "-w", str(args.workspace)],
                       check=True, env=env, cwd=REPO)
        wall = time.time() - t0
    without, with_ = acceptance(args.base), acceptance(args.workspace)
    dist = distill_figures(args.workspace)
    a, b, c = without["v0"], without["final"], with_["final"]
    rows = [("violation on unsafe prompts", "violation"), ("  XSTest contrasts", "violation_xstest"),
            ("  Do-Not-Answer held-out", "violation_dna"), ("refusal rate on unsafe prompts", "refusal_unsafe"),
            ("false refusal on XSTest safe", "xstest_false_refusal"),
            ("violation, refusals judged by the patterns", "violation_patterns"),
            ("refusal rate on unsafe prompts, patterns", "refusal_unsafe_patterns"),
            ("false refusal on XSTest safe, patterns", "xstest_false_refusal_patterns")]
    print(f"\nsmollm2, v1 with and without context distillation ({a['n_unsafe']} unsafe, "
          f"{a['n_xstest_safe']} XSTest safe prompts; same judges, same v0 answers)")
    print("| metric | v0 | v1 rm, rs | v1 distill, rs |\n|---|---|---|---|")
    for name, key in rows:
        print(f"| {name} | {_pct(a[key])} | {_pct(b[key])} | {_pct(c[key])} |")
    w1, w2 = without["win_rate_vs_v0"], with_["win_rate_vs_v0"]
    print(f"| helpfulness-RM win rate vs v0 | | {_pct(w1['rate'])} | {_pct(w2['rate'])} |")
    print(f"\ndistill: {dist['kept']} of {dist['prompts']} preprompted answers kept ({_pct(dist['kept_share'])}); "
          f"mean safety-RM gain of the preprompt over all prompts {dist['mean_safety_gain_all']:+.3f}")
    print("seconds per stage (with distill): " + ", ".join(f"{k} {v:.0f}" for k, v in with_["stage_seconds"].items()))
    if wall is not None:
        print(f"wall clock of this invocation: {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"without_distill": without, "with_distill": with_, "distill": dist},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
