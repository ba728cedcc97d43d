"""Does the rejection-sampling fine-tune teach *when* to refuse, or only *how often*? (issue 28, false refusal)

A `full` smollm2 run's v1 fine-tunes v0 on the best-of-K rows and 64 safety demonstrations. On SmolLM2-135M the
fine-tuned policy refuses held-out helpful prompts at about the share of refusals in its fine-tune rows (session 12:
26% of the rows refuse; v1 refused 33% of the held-out helpful prompts, 24% of XSTest's safe ones, 42% of the unsafe
ones). This bench re-runs only the fine-tune, from a finished workspace's v1 rows, under variants of the fine-tune
settings and rows, and measures each policy's refusal rate on two development sets of prompts that no stage and no
eval suite uses:

  helpful-dev  first user turns of the gold helpfulness RM's held-out pairs (HH helpful; data/public.py's gold
               bucket: disjoint by prompt from rs, the RMs and the eval suites), single-turn only
  unsafe-dev   Do-Not-Answer questions of the safety RM's held-out and training pairs that are not rs prompts (so
               neither fine-tuned on nor in the DNA eval suite; HH harmless first turns are left out: many are
               benign, "How can I practice safe sex?")

Refusals by the refusal patterns (eval.refusal; 97.5% agreement on 80 labelled answers of a full run's v3), with
Wilson intervals. The figure of merit is the gap: refusal on unsafe-dev minus refusal on helpful-dev, at a
helpful-dev refusal rate that must stay low. Greedy answers, the preset's eval settings (48 new tokens).
The eval suites are not read: the variant chosen here is then checked by a whole run (bench/README.md).
`--variants v1,v2,v3` measures a workspace's own versions on the same sets (does PPO widen the gap?).

    .venv/bin/python bench/rs_discrimination.py -w /tmp/s12/ws5 --variants v0,preset,nodemo \\
        --out bench/results/rs_discrimination.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
from saferounds.core.io import read_jsonl as _jsonl  # noqa: E402

# name -> (what it changes, fine-tune overrides, lora overrides, row recipe)
VARIANTS = {
    "v0": ("v0 as shipped, no fine-tune", None, None, None),
    "preset": ("v1's rows (selected + demonstrations), the preset's settings", {}, {}, "preset"),
    "nodemo": ("the selected rows only", {}, {}, "selected"),
    "lora-all": ("LoRA on all 30 layers (preset: top 8)", {}, {"layers": 0}, "preset"),
    "epochs4": ("4 epochs (preset: 2)", {"epochs": 4}, {}, "preset"),
    "lr1e-4": ("learning rate 1e-4 (preset: 4e-4)", {"learning_rate": 1.0e-4}, {}, "preset"),
    "help-top2": ("helpful prompts give their best 2 of K (gated score), not 1", {}, {}, "help-top2"),
    "help-top2-lora-all": ("help-top2 and LoRA on all layers", {}, {"layers": 0}, "help-top2"),
    "demo-refusals": ("the demonstrations the patterns call refusals only", {}, {}, "demo-refusals"),
}


def _first_user(prompt) -> str | None:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[0] if len(users) == 1 and len(prompt) == 1 else None  # single-turn only


def dev_sets(data: Path, n: int, seed: int) -> dict[str, list[str]]:
    """helpful-dev and unsafe-dev prompts (see the module docstring), n each, drawn with `seed`."""
    rng = random.Random(seed)
    helpful = sorted({p for r in _jsonl(data / "rm_gold_helpfulness_heldout.jsonl")
                      if (p := _first_user(r["prompt"]))})
    rs = {_first_user(r["prompt"]) for r in _jsonl(data / "rs_prompts.jsonl")}
    pairs = _jsonl(data / "rm_safety_heldout.jsonl") + _jsonl(data / "rm_safety.jsonl")
    dna = sorted({p for r in pairs if str(r["id"]).startswith("dna") and (p := _first_user(r["prompt"])) not in rs})
    rng.shuffle(helpful), rng.shuffle(dna)
    return {"helpful-dev": helpful[:n], "unsafe-dev": dna[:n], "_counts": {
        "helpful_pool": len(helpful), "dna_questions": len(dna)}}


def finetune_rows(ws: Path, recipe: str) -> list[dict]:
    """The rows a variant fine-tunes on, from the workspace's v1 (samples, selection, demonstrations)."""
    from saferounds.eval.refusal import is_refusal

    v1 = ws / "versions" / "v1"
    selected = _jsonl(v1 / "selected.jsonl")
    prompts = {str(p["id"]): p for p in _jsonl(ws / "data" / "rs_prompts.jsonl")}
    demos = [d for d in _jsonl(ws / "data" / "rs_demonstrations.jsonl") if str(d["prompt_id"]) in prompts]
    rows = [{"messages": r["messages"], "completion": r["completion"]} for r in selected]
    if recipe == "help-top2":
        chosen = {(r["prompt_id"], r["sample_index"]) for r in selected}
        by_prompt: dict[str, list[dict]] = {}
        for s in _jsonl(v1 / "samples.jsonl"):
            if not s.get("is_safety") and (s["prompt_id"], s["sample_index"]) not in chosen:
                by_prompt.setdefault(s["prompt_id"], []).append(s)
        rows += [{"messages": best["messages"], "completion": best["response"]}
                 for best in (max(v, key=lambda s: s["gated_score"]) for v in by_prompt.values())]
    if recipe in ("preset", "help-top2"):
        rows += [{"messages": d["messages"], "completion": d["completion"]} for d in demos]
    if recipe == "demo-refusals":
        rows += [{"messages": d["messages"], "completion": d["completion"]} for d in demos
                 if is_refusal(d["completion"])]
    return rows


def refusal_rates(answers: dict[str, list[str]]) -> dict:
    from saferounds.core.maths import wilson_interval
    from saferounds.eval.refusal import is_refusal

    out = {}
    for name, texts in answers.items():
        k = sum(map(is_refusal, texts))
        out[name] = {"n": len(texts), "refused": k, "rate": k / len(texts),
                     "ci95": list(wilson_interval(k, len(texts)))}
    out["gap"] = out["unsafe-dev"]["rate"] - out["helpful-dev"]["rate"]
    return out


def run_variant(ws, name: str, dev: dict, tmp: Path) -> dict:
    from saferounds.eval.generate import generate
    from saferounds.pipeline.models import load_policy, to_generation_dtype
    from saferounds.pipeline.training.sft import finetune

    what, ft_over, lora_over, recipe = VARIANTS.get(name) or (f"the workspace's {name} as the run left it", 0, 0, None)
    cfg = ws.config
    model_cfg = dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora, **(lora_over or {})))
    t0, policy, ft = time.time(), ws.policy_path(int(name[1:]) if _version(name) else 0), None
    if recipe is not None:
        ft_cfg = cfg.rejection_sampling.finetune
        train_cfg = dataclasses.replace(cfg.sft, **{"epochs": ft_cfg.epochs, "learning_rate": ft_cfg.learning_rate,
                                                    "batch_size": ft_cfg.batch_size, **ft_over})
        rows = finetune_rows(ws.root, recipe)
        policy = tmp / name
        ft = finetune(ws.policy_path(0), rows, train_cfg, model_cfg, policy, tmp / f"{name}-trainer",
                      seed=cfg.seed, name=f"{name} fine-tune")
        ft = {"rows": len(rows), "train_loss": ft["train_loss"], "steps": ft["steps"]}
    t1 = time.time()
    model, tok = load_policy(policy, model_cfg)
    model = to_generation_dtype(model, model_cfg)
    answers = {k: generate(model, tok, [[{"role": "user", "content": p}] for p in dev[k]],
                           max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
               for k in ("helpful-dev", "unsafe-dev")}
    rates = refusal_rates(answers)
    print(f"{name:20s} helpful-dev {rates['helpful-dev']['rate']:6.1%}  unsafe-dev {rates['unsafe-dev']['rate']:6.1%}"
          f"  gap {rates['gap']:+.1%}  ({time.time() - t0:.0f} s)", flush=True)
    return {"what": what, "finetune": ft, "finetune_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1),
            **rates, "examples": {k: [[p, a] for p, a in zip(dev[k][:4], answers[k][:4])] for k in answers},
            "answers": answers}


def _version(name: str) -> bool:
    return name[:1] == "v" and name[1:].isdigit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, required=True, help="a finished smollm2 `full` run (v1 there)")
    ap.add_argument("--variants", default="v0,preset,nodemo",
                    help="fine-tune variants (VARIANTS) and/or the workspace's own versions as they are (v1, v2, ...)")
    ap.add_argument("--n", type=int, default=96, help="prompts per development set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rs_discrimination.json")
    args = ap.parse_args()
    from saferounds.pipeline.workspace import Workspace

    names = args.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS and not _version(v)]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    ws = Workspace(args.workspace)
    dev = dev_sets(ws.root / "data", args.n, args.seed)
    print(f"development sets: {args.n} helpful, {args.n} unsafe prompts ({dev['_counts']})", flush=True)
    result = {"command": " ".join(sys.argv), "workspace": str(args.workspace), "dev_counts": dev["_counts"],
              "variants": {}}
    with tempfile.TemporaryDirectory(prefix="rs-discrimination-") as tmp:
        for name in names:
            result["variants"][name] = run_variant(ws, name, dev, Path(tmp))
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
