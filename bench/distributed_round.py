"""Wall time of one round (rm reused -> rs -> eval) on the tiny preset with 1 process and with 2
processes under `accelerate launch` (gloo on CPUs), on copies of the same workspace.

    .venv/bin/python bench/distributed_round.py [--prompts 24] [--repeat 1]

Runs alternate (1, 2, 1, 2, ...) so that load from other jobs falls on both; the load average is
recorded around each run. On a 2-core machine this measures the overhead of the launch (process
start, gloo meetings, rank 0 scoring alone), not a speed-up. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("SAFEROUNDS_QUIET", "1")  # stdout carries only the JSON

from test_distributed_round import run_cli, small_round  # noqa: E402  (the tests' launch helpers)


def template(root: Path, prompts: int) -> Path:
    """v0 (short SFT) and the v1 reward models, built in this process."""
    import logging

    from saferounds.pipeline.presets import init_workspace
    from saferounds.pipeline.stages.rm import load_rm_records, train_kind
    from saferounds.pipeline.v0 import run_sft
    from saferounds.pipeline.workspace import Workspace

    init_workspace(root, "tiny", data_size="smoke", overrides={"sft": {"epochs": 2}})
    small_round(root, prompts=prompts, plan=["rm", "rs", "eval"], k=4, tokens=24)
    run_sft(Workspace(root))
    records = load_rm_records(Workspace(root))
    for kind in ("helpfulness", "safety"):
        train_kind(Workspace(root), kind, 1, records, root / "work-rm" / kind, logging.getLogger("b"), max_steps=4)
    shutil.rmtree(root / "work-rm")
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = {"prompts": args.prompts, "k": 4, "max_new_tokens": 24, "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = template(Path(tmp) / "template", args.prompts)
        for i in range(args.repeat):
            for n in (1, 2):
                ws = Path(tmp) / f"run{i}-{n}"
                shutil.copytree(base, ws)
                load_before = os.getloadavg()[0]
                t0 = time.perf_counter()
                r = run_cli(ws, n, "round", "run", timeout=3600)
                wall = time.perf_counter() - t0
                if r.returncode != 0:
                    raise SystemExit(r.stderr[-3000:])
                m = json.loads((ws / "versions" / "v1" / "manifest.json").read_text())
                out["runs"].append({"processes": n, "wall_s": round(wall, 1), "stages_s": m["timings"],
                                    "generate_s": m["metrics"]["rs"].get("timings", {}).get("generate_s"),
                                    "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
                shutil.rmtree(ws)
    walls = {n: [r["wall_s"] for r in out["runs"] if r["processes"] == n] for n in (1, 2)}
    out["wall_ratio_2_over_1"] = round(sum(walls[2]) / sum(walls[1]), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
