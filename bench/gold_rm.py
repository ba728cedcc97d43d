"""The smollm2 preset's gold helpfulness RM (reward_models.gold; issue 28 item 2), trained as v1's rm stage trains
it, and its accuracy on its own held-out pairs (HH helpful, prompts no other RM sees) with the 95% interval.

A fresh smollm2 workspace of the given data size is written from ../shared/data, v0 is taken as given (the GGUF
converted once), then pipeline.stages.rm.train_gold runs with the preset's settings (or --backbone/--lr to
try another). Prints and writes bench/results/gold_rm_<size>[_<tag>].json: pairs, steps, held-out accuracy
and interval, wall and CPU seconds, the load average when it started.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/gold_rm.py --size quarter
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/gold_rm.py --size full
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="quarter", choices=("mini", "quarter", "full"))
    ap.add_argument("--backbone", default="", help="reward_models.gold.backbone ('' = the preset's: v0 + LoRA)")
    ap.add_argument("--lr", type=float, default=None, help="reward_models.gold.learning_rate")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from saferounds.pipeline.presets import init_workspace
    from saferounds.pipeline.stages.rm import train_gold
    from saferounds.pipeline.v0 import run_given
    from saferounds.pipeline.workspace import Workspace

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="gold-rm-") as tmp:
        root = Path(tmp) / "ws"
        gold = {"preferences": ["data/rm_gold_helpfulness.jsonl"], "heldout": ["data/rm_gold_helpfulness_heldout.jsonl"],
                "backbone": args.backbone, "learning_rate": args.lr}
        init_workspace(root, "smollm2", data_size=args.size, data_root=DATA, overrides=None)
        cfg_path = root / "saferounds.yaml"
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["reward_models"]["gold"] = {**cfg["reward_models"].get("gold", {}), **{k: v for k, v in gold.items() if v}}
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ws = Workspace(root)
        with ws.lock():
            run_given(ws)
            t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
            summary = train_gold(ws, 1, root / "work-gold")
            c1 = resource.getrusage(resource.RUSAGE_SELF)
        out = {"command": f"bench/gold_rm.py --size {args.size}" + (f" --backbone {args.backbone}" if args.backbone else "")
               + (f" --lr {args.lr}" if args.lr else ""), "size": args.size, "gold": cfg["reward_models"]["gold"],
               "summary": summary, "wall_s": round(time.time() - t0, 1),
               "cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 1),
               "threads": os.environ.get("OMP_NUM_THREADS"), "load1_at_start": load}
    name = f"gold_rm_{args.size}{'_' + args.tag if args.tag else ''}.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(out, indent=1) + "\n")
    s = summary
    print(f"gold RM ({args.size}): {s['train_items']} pairs, {s['steps']} steps, held-out accuracy "
          f"{s['heldout_accuracy']:.3f} [{s['heldout_ci95'][0]:.3f}, {s['heldout_ci95'][1]:.3f}] on {s['heldout_n']} "
          f"pairs; {out['wall_s']} s wall, {out['cpu_s']} s CPU (load {load:.1f} at start)")


if __name__ == "__main__":
    main()
