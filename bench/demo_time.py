"""How long `saferounds demo` takes on this machine (the demo issue: smoke <= 3 min, default <= 10 min
on 2 CPU cores), and whether two runs with the same seed give the same metrics.

    .venv/bin/python bench/demo_time.py                 # smoke and default, one run each
    .venv/bin/python bench/demo_time.py --size default --repeat 2   # + the determinism check

Each run is a fresh subprocess (`python -m saferounds.pipeline.cli demo`) in a fresh directory, timed by the
wall clock; the headline metrics are read back from the final version's metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMITS = {"smoke": 180, "default": 600}


def headline(ws: Path) -> dict:
    m = json.loads((ws / "versions" / "v3" / "eval" / "metrics.json").read_text())
    v0 = m["compared"]["v0"]
    pick = lambda x: {  # noqa: E731
        "violation": x["safety"]["violation_rate"],
        "false_refusal_borderline": x["safety"]["false_refusal"]["borderline"]["rate"],
        "helpfulness_rm": x["helpfulness"]["mean_score"],
        "reference_overlap": x["helpfulness"]["reference_overlap"]}
    return {"v0": pick(v0), "v3": pick(m), "v3_win_rate_vs_v0": m["helpfulness"]["win_rate"]["v0"]["rate"]}


def run_once(size: str, root: Path) -> tuple[float, dict]:
    ws = root / f"demo-{size}"
    shutil.rmtree(ws, ignore_errors=True)
    env = dict(os.environ, SAFEROUNDS_QUIET="1")
    started = time.time()
    subprocess.run([sys.executable, "-m", "saferounds.pipeline.cli", "demo", "-w", str(ws), "--size", size, "--json"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - started, headline(ws)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["smoke", "default", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    sizes = ["smoke", "default"] if args.size == "both" else [args.size]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            results = [run_once(size, Path(tmp) / str(i)) for i in range(args.repeat)]
            for seconds, figures in results:
                print(json.dumps({"size": size, "seconds": round(seconds, 1), "limit_s": LIMITS[size],
                                  "within_limit": seconds <= LIMITS[size], **figures}))
            if args.repeat > 1:
                same = all(f == results[0][1] for _, f in results[1:])
                print(json.dumps({"size": size, "same_metrics_across_runs": same}))


if __name__ == "__main__":
    main()
