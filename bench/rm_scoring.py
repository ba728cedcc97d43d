"""Scoring rs candidates with both RMs: one RM after the other vs the shared trunk (score_both).

    SAFEROUNDS_THREADS=2 .venv/bin/python bench/rm_scoring.py -w bench-smollm2-full --samples 96 --json bench/results/rm_scoring.json

Loads a finished workspace's v1 helpfulness and safety RMs (LoRA on the top `model.lora.layers` blocks of
SmolLM2-135M) and the first `--samples` candidates of its v1 rs samples, then alternates the two ways of
scoring them `--rounds` times: `separate` = reward_models.scoring.score for each RM (what rs did before),
`shared` = score_both (the bottom blocks once per batch). Reports samples/s, the ratio and the largest
difference between the two sides' scores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, default=REPO / "bench-smollm2-full")
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("SAFEROUNDS_THREADS", "2")))

    from saferounds.core.io import read_jsonl
    from saferounds.pipeline.workspace import Workspace
    from saferounds.reward_models.modeling import load_reward_models
    from saferounds.reward_models.scoring import score, score_both, shared_trunk_depth

    ws = Workspace(args.workspace)
    cfg = ws.config
    rms = load_reward_models(ws.rm_paths(at_most=1), cfg.model)
    pair = [rms["helpfulness"], rms["safety"]]
    samples = list(read_jsonl(args.workspace / "versions" / "v1" / "samples.jsonl"))[:args.samples]
    prompts, responses = [s["messages"] for s in samples], [s["response"] for s in samples]
    kw = dict(batch_size=args.batch_size, max_length=cfg.reward_models.max_length)
    depth = shared_trunk_depth(*pair)
    times: dict[str, list[float]] = {"separate": [], "shared": []}
    got = {}
    for r in range(args.rounds):
        for side in (("separate", "shared") if r % 2 == 0 else ("shared", "separate")):
            t0 = time.perf_counter()
            got[side] = [score(m, t, prompts, responses, **kw) for m, t in pair] if side == "separate" \
                else score_both(pair, prompts, responses, **kw)
            times[side].append(time.perf_counter() - t0)
    diff = max(abs(x - y) for k in range(2) for x, y in zip(got["separate"][k], got["shared"][k]))
    rate = {k: [round(len(samples) / t, 2) for t in v] for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    out = {"workspace": str(args.workspace), "samples": len(samples), "blocks": len(pair[0][0].get_base_model().model.layers),
           "shared_blocks": depth, "lora_layers": cfg.model.lora.layers, "threads": torch.get_num_threads(),
           "samples_per_s": rate, "ratio_shared_over_separate": round(best["separate"] / best["shared"], 3),
           "max_abs_score_diff": diff, "load1": os.getloadavg()[0],
           "command": " ".join(["bench/rm_scoring.py", *sys.argv[1:]])}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
