"""RM training speed: saferounds' RewardTrainer vs TRL's RewardTrainer, same model, pairs, batch size.

Both train the same backbone (fresh copy each run, same seed) on the same HH-RLHF harmless-base pairs,
pre-tokenized once with saferounds' formatting (so tokenization is not timed), same batch size, learning
rate, max_length and cosine schedule, dropout left on in both, no gradient checkpointing in either (TRL's
RewardConfig turns it on by default: --trl-gradient-checkpointing measures that), 1 CPU thread. Steps/s is measured between
the end of step `--skip` and the last step (start-up excluded). Runs alternate ours/TRL `--repeats` times;
the median of each is reported. TRL lives only in the bench venv:

    /work/benchenv-rm/bin/python bench/rm_speed.py --backbone tiny --steps 30

LoRA (--lora-layers N): ours builds the adapter in `load_reward_model` (the pipeline's path); TRL gets the
plain backbone and the same `peft.LoraConfig` as `peft_config` (TRL's own path), and the run stops unless both
sides end up with the same trainable parameter names and sizes.

--score: held-out scoring throughput (pairs per CPU-second of forward-only scoring, no training): ours is
`reward_models.evaluation.evaluate_pairs` (what the rm stage runs for held-out accuracy: chosen and rejected
texts sorted by length, one pass, `reward_models.scoring.score`), TRL's is `RewardTrainer.predict` on the same
token ids (ours' `encode` of each text, pre-tokenized so TRL's max-length filter drops nothing). Both scorers
run, alternating which goes first, on the TRL side's trained weights, and their per-text scores and accuracies
are compared there; ours also scores on its own side's weights (that is its held-out accuracy).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def _timer(skip: int):
    """Wall and process-CPU marks at the end of step `skip` (0: the start of training) and of the last step."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks, self.cpu = {}, {}

        def _mark(self, step):
            self.marks[step], self.cpu[step] = time.perf_counter(), time.process_time()

        def on_train_begin(self, args, state, control, **kwargs):
            if skip == 0:
                self._mark(0)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (skip, state.max_steps):
                self._mark(state.global_step)

    return Timer()


def steps_per_s(timer, skip: int, steps: int) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of this process) between the two marks."""
    return ((steps - skip) / (timer.marks[steps] - timer.marks[skip]),
            (steps - skip) / (timer.cpu[steps] - timer.cpu[skip]))


def _model_cfg(a, lora: bool = True):
    from saferounds.reward_models.config import ModelConfig

    cfg = ModelConfig()
    if a.lora_layers >= 0 and lora:
        cfg.lora.enabled, cfg.lora.layers, cfg.lora.r, cfg.lora.alpha = True, a.lora_layers, 16, 32
        cfg.lora.dropout = a.lora_dropout
    return cfg


def trainable(model) -> dict[str, int]:
    """Trainable parameters by name (peft's wrapper prefixes dropped), with their sizes."""
    return {n.removeprefix("base_model.model."): p.numel() for n, p in model.named_parameters() if p.requires_grad}


def lora_reference(backbone, a):
    """(the LoraConfig `load_reward_model` builds for ours, its trainable parameters): what TRL must get too."""
    import copy

    from saferounds.reward_models.modeling import load_reward_model

    model, _ = load_reward_model(backbone, _model_cfg(a), for_training=True)
    return copy.deepcopy(model.peft_config["default"]), trainable(model)


def _timed(fn):
    """(fn(), wall s, CPU s of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_ours(backbone, pairs, a, work, share_prompt: bool = True) -> float:
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.training import make_trainer

    torch.manual_seed(a.seed)
    model, tok = load_reward_model(backbone, _model_cfg(a), for_training=True)
    cfg = RewardModelConfig(learning_rate=a.lr, batch_size=a.batch_size, max_length=a.max_length,
                            save_steps=10_000, logging_steps=10_000, group_by_length=a.group_by_length,
                            margin="none", weight_decay=0.0, share_prompt=share_prompt)
    trainer, _, warm = make_trainer("helpfulness", pairs, model, tok, cfg, work, a.seed, a.steps,
                                    logging.getLogger("bench"))
    timer = _timer(a.skip)
    trainer.add_callback(timer)
    trainer.train()
    rate = steps_per_s(timer, a.skip, a.steps)
    if a.score:
        (acc, _), wall, cpu = _timed(lambda: ours_scores(trainer.model, tok, a))
        a.scoring.append({"weights": "ours", "scorer": "ours", "accuracy": acc, "wall_s": wall, "cpu_s": cpu,
                          "load1": os.getloadavg()[0]})
        return rate, acc
    return rate, held_out_accuracy(trainer.model, tok, a)


def held_out_accuracy(model, tok, a) -> float | None:
    """Accuracy on pairs neither side trained on (the next --held-out pairs of the file), same scorer."""
    if not a.held_out:
        return None
    from saferounds.reward_models.evaluation import evaluate_pairs

    model.eval()
    return evaluate_pairs(model, tok, a.held_pairs, batch_size=8, max_length=a.max_length)["accuracy"]


def ours_scores(model, tok, a) -> tuple[float, list[float]]:
    """(accuracy, scores of chosen then rejected texts) by the rm stage's held-out path: `evaluate_pairs`'s body
    (every text through `scoring.score`, sorted by length, --score-batch-size texts per forward, then
    `pair_metrics`), spelled out here to keep the per-text scores."""
    from saferounds.reward_models.evaluation import pair_metrics
    from saferounds.reward_models.scoring import score

    model.eval()
    prompts = [p["prompt"] for p in a.held_pairs]
    scores = score(model, tok, prompts + prompts, [p["chosen"] for p in a.held_pairs] +
                   [p["rejected"] for p in a.held_pairs], a.score_batch_size, a.max_length)
    n = len(a.held_pairs)
    return pair_metrics(scores[:n], scores[n:], a.held_pairs)["accuracy"], scores


def held_out_ids(tok, a) -> dict[str, list]:
    """Token ids of the held-out texts exactly as ours' scorer encodes them (each text on its own, left-truncated)."""
    from saferounds.reward_models.scoring import encode, format_sample

    ids = {k: encode(tok, [format_sample(tok, p["prompt"], p[k]) for p in a.held_pairs], a.max_length)["input_ids"]
           for k in ("chosen", "rejected")}
    return {"chosen_ids": ids["chosen"], "rejected_ids": ids["rejected"]}


def trl_scores(trainer, tok, a) -> tuple[float, list[float]]:
    """(accuracy, scores of chosen then rejected texts) by `RewardTrainer.predict` on the held-out pairs
    (per_device_eval_batch_size pairs = twice that many rows; TRL logs no accuracy here: without labels the
    Trainer's prediction_step calls the model, not compute_loss)."""
    import datasets

    ds = datasets.Dataset.from_dict(held_out_ids(tok, a))
    out = trainer.predict(ds)
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    n = len(a.held_pairs)
    chosen, rejected = split_predictions(logits, n, trainer.args.per_device_eval_batch_size)
    acc = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / n  # ties: half, as ours
    return acc, chosen + rejected


def split_predictions(logits, n: int, batch: int) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of n pairs from RewardTrainer.predict's flat logits: each batch of `batch`
    pairs is its pairs' chosen rows, then their rejected rows."""
    flat = [float(x) for x in logits.reshape(-1)]
    chosen, rejected, k = [], [], 0
    for start in range(0, n, batch):
        m = min(batch, n - start)
        chosen += flat[k:k + m]
        rejected += flat[k + m:k + 2 * m]
        k += 2 * m
    assert k == len(flat), (k, len(flat))
    return chosen, rejected


def run_trl(backbone, pairs, a, work) -> float:
    import datasets
    from trl import RewardConfig, RewardTrainer

    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.config import RewardModelConfig
    from saferounds.reward_models.training import pair_features, warmup_steps

    torch.manual_seed(a.seed)
    peft = a.lora_layers >= 0  # TRL's own LoRA path: the plain backbone plus ours' LoraConfig as peft_config
    model, tok = load_reward_model(backbone, _model_cfg(a, lora=not peft), for_training=True)
    cols = pair_features(tok, pairs, "none", a.max_length)  # identical token ids to ours
    ds = datasets.Dataset.from_dict({"chosen_ids": cols["chosen_input_ids"], "rejected_ids": cols["rejected_input_ids"]})
    _, warm = warmup_steps(len(pairs), RewardModelConfig(batch_size=a.batch_size))
    args = RewardConfig(output_dir=str(work), per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                        max_steps=a.steps, lr_scheduler_type="cosine_with_min_lr",
                        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=warm, weight_decay=0.0,
                        max_length=a.max_length, disable_dropout=False, save_steps=10_000, logging_steps=10_000,
                        report_to=[], seed=a.seed, dataloader_num_workers=0, disable_tqdm=True,
                        bf16=torch.cuda.is_available(), gradient_checkpointing=a.trl_gradient_checkpointing,
                        per_device_eval_batch_size=a.score_batch_size // 2)
    import copy

    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                            peft_config=copy.deepcopy(a.lora_config) if peft else None)
    if peft:
        got = trainable(trainer.model)
        if got != a.lora_trainable:
            sys.exit(f"TRL's peft model trains other parameters than ours: only TRL {sorted(set(got) - set(a.lora_trainable))[:8]}, "
                     f"only ours {sorted(set(a.lora_trainable) - set(got))[:8]}")
    timer = _timer(a.skip)
    trainer.add_callback(timer)
    trainer.train()
    rate = steps_per_s(timer, a.skip, a.steps)
    if not a.score:
        return rate, held_out_accuracy(trainer.model, tok, a)
    # both scorers on these weights, alternating which goes first
    runs = {"ours": lambda: ours_scores(trainer.model, tok, a), "trl": lambda: trl_scores(trainer, tok, a)}
    order = ["ours", "trl"] if len(a.scoring) % 4 < 2 else ["trl", "ours"]
    got = {}
    for scorer in order:
        res, wall, cpu = _timed(runs[scorer])
        got[scorer] = res
        a.scoring.append({"weights": "trl", "scorer": scorer, "accuracy": res[0], "wall_s": wall, "cpu_s": cpu,
                          "load1": os.getloadavg()[0]})
    diff = max(abs(x - y) for x, y in zip(got["ours"][1], got["trl"][1]))
    a.scoring[-1]["max_abs_score_diff"] = a.scoring[-2]["max_abs_score_diff"] = diff
    print(f"scorers on TRL's weights: accuracy ours {got['ours'][0]:.4f} trl {got['trl'][0]:.4f}, "
          f"max |score difference| {diff:.2e}", flush=True)
    return rate, got["ours"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--steps", type=int, default=0, help="0: one epoch over --pairs")
    ap.add_argument("--skip", type=int, default=0,
                    help="steps left out of the timing (0: time every step; with length-grouped batches the "
                         "first batch is the longest, so skipping it would favour ours)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-group-by-length", dest="group_by_length", action="store_false")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL's RewardConfig default (True); off by default here to match ours")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=int, default=0, help="pairs after the training ones to measure accuracy on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lora-layers", type=int, default=-1,
                    help="-1: train every weight (full fine-tune); N >= 0: LoRA r=16 on the top N blocks "
                         "(0 = every block), the same model on both sides")
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (the smollm2 preset's: 0)")
    ap.add_argument("--score", action="store_true",
                    help="also time held-out scoring (needs --held-out): ours' evaluate_pairs vs TRL's predict")
    ap.add_argument("--score-batch-size", type=int, default=16,
                    help="texts per scoring forward on both sides (TRL: half as many pairs per eval batch)")
    ap.add_argument("--sides", default="ours,trl",
                    help="ours (shared-prompt rows when exact), ours-rows (chosen and rejected as separate rows), trl")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.steps = a.steps or -(-a.pairs // a.batch_size)
    if a.score and (not a.held_out or a.held_out % (a.score_batch_size // 2)):
        # accelerate's gather_for_metrics cuts a short last batch to its first rows: the chosen ones only
        ap.error("--score needs --held-out N, a multiple of --score-batch-size / 2 (TRL's pairs per eval batch)")
    a.scoring = []
    load_start = os.getloadavg()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    import trl

    from saferounds.data.hh import hh_pairs

    every = hh_pairs(DATA, source="helpfulness")[0]
    pairs, a.held_pairs = every[: a.pairs], every[a.pairs: a.pairs + a.held_out]
    tmp = Path(tempfile.mkdtemp(prefix="rm_speed_"))
    backbone = a.backbone
    if backbone == "tiny":
        from saferounds.data.tiny import build_tiny

        backbone = str(build_tiny(tmp / "tiny")["reward_model"])
    elif backbone == "smollm2":  # SmolLM2-135M-Instruct, a fresh scalar head on the converted checkpoint
        from saferounds.pipeline.gguf import ensure_converted

        backbone = str(ensure_converted("smollm2-135m", ROOT / ".bench-models")[0])
    a.lora_config, a.lora_trainable = lora_reference(backbone, a) if a.lora_layers >= 0 else (None, None)
    sides = a.sides.split(",")
    rates, acc, cpu, loads = {s: [] for s in sides}, {s: [] for s in sides}, {s: [] for s in sides}, []
    runners = {"ours": run_ours, "trl": run_trl,
               "ours-rows": lambda *x: run_ours(*x, share_prompt=False)}  # pairs as separate rows (share_prompt off)
    for r in range(a.repeats):  # alternate the order, so a change in machine load hits every side
        for side in (sides if r % 2 == 0 else sides[::-1]):
            loads.append(os.getloadavg()[0])
            (sps, cps), held = runners[side](backbone, pairs, a, tmp / f"{side}{r}")
            rates[side].append(sps)
            cpu[side].append(cps)
            acc[side].append(held)
            print(side, r, round(sps, 4), round(cps, 4), held, round(loads[-1], 2), flush=True)
    ours, theirs = rates["ours"], rates["trl"]
    o, t = statistics.median(ours), statistics.median(theirs)
    oc, tc = statistics.median(cpu["ours"]), statistics.median(cpu["trl"])
    out = {"held_out_pairs": a.held_out, "held_out_accuracy": acc, "load1": [round(x, 2) for x in loads],
           "threads": a.threads, "pairs": a.pairs, "skip": a.skip, "lora_layers": a.lora_layers,
           "ours_steps_per_cpu_s": [round(x, 4) for x in cpu["ours"]],
           "trl_steps_per_cpu_s": [round(x, 4) for x in cpu["trl"]], "ratio_per_cpu_s": round(oc / tc, 3),
           "steps_per_cpu_s": {s: [round(x, 4) for x in v] for s, v in cpu.items()},
           "ratio_per_cpu_s_vs_trl": {s: round(statistics.median(v) / tc, 3) for s, v in cpu.items()},
           "load_avg_start_end": [list(load_start), list(os.getloadavg())]}
    if a.lora_layers >= 0:
        out["lora"] = {"r": a.lora_config.r, "alpha": a.lora_config.lora_alpha, "dropout": a.lora_config.lora_dropout,
                       "target_modules": sorted(a.lora_config.target_modules),
                       "layers_to_transform": a.lora_config.layers_to_transform,
                       "trainable_params": sum(a.lora_trainable.values()), "same_on_both_sides": True}
    if a.score:
        def rate(rows):
            return [round(len(a.held_pairs) / r["cpu_s"], 4) for r in rows]
        on_trl = {s: [r for r in a.scoring if r["weights"] == "trl" and r["scorer"] == s] for s in ("ours", "trl")}
        out["scoring"] = {"pairs": len(a.held_pairs), "texts_per_forward": a.score_batch_size, "runs": a.scoring,
                          "pairs_per_cpu_s_on_trl_weights": {s: rate(v) for s, v in on_trl.items()},
                          "pairs_per_cpu_s_ours_on_ours_weights": rate([r for r in a.scoring if r["weights"] == "ours"])}
        if on_trl["trl"]:
            o_, t_ = (statistics.median(rate(on_trl[s])) for s in ("ours", "trl"))
            out["scoring"]["ratio_per_cpu_s_on_trl_weights"] = round(o_ / t_, 3)
            print(f"scoring {len(a.held_pairs)} held-out pairs, pairs per CPU-s: ours {rate(on_trl['ours'])} "
                  f"trl {rate(on_trl['trl'])}: {o_ / t_:.2f}x", flush=True)
    print(json.dumps({**out, "backbone": a.backbone, "trl": trl.__version__, "batch_size": a.batch_size,
                      "max_length": a.max_length, "steps": a.steps, "group_by_length": a.group_by_length,
                      "trl_gradient_checkpointing": a.trl_gradient_checkpointing,
                      "ours_steps_per_s": [round(x, 3) for x in ours], "trl_steps_per_s": [round(x, 3) for x in theirs],
                      "median_ours": round(o, 3), "median_trl": round(t, 3), "ratio_ours_over_trl": round(o / t, 3)}))
    if a.json:
        a.json.write_text(json.dumps(out | {
            "backbone": a.backbone, "trl": trl.__version__, "batch_size": a.batch_size, "max_length": a.max_length,
            "steps": a.steps, "group_by_length": a.group_by_length, "lr": a.lr,
            "ours_steps_per_s": [round(x, 4) for x in ours], "trl_steps_per_s": [round(x, 4) for x in theirs],
            "ratio_ours_over_trl": round(o / t, 3)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
