"""The round's `rs` stage: rejection-sampling fine-tuning (LLaMA 2 Sec. 3.2.3).

  1. temperature of this round: from the config's schedule, or `auto` (sweep on a held-out slice, Fig. 8)
  2. K samples per prompt from the parent policy            -> samples.jsonl (appended per batch, resumable)
  3. score with this round's RMs and the gate (Eq. 4)       -> samples.jsonl (rewritten with scores)
     (or, with rejection_sampling.reward: judge, by the LLM judge's score: direct AI feedback)
  4. best-of-K over this round's samples pooled with the kept samples of earlier versions, all re-scored
     with this round's RMs and gated together                -> selected.jsonl (origin version, score)
  5. max-of-K curve (Fig. 7)                                 -> max_of_k.json
  6. fine-tune the parent on selected.jsonl (SFT code path)  -> rs_policy/
Interrupted runs resume: sampling from samples.jsonl, the sweep from work/rs/, training from the
Trainer checkpoints in work/rs/trainer; finished steps are not redone.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import time
from pathlib import Path

import torch

from core.accelerator import to_accelerator
from core.errors import InputError
from core.io import read_json, read_jsonl, write_json, write_jsonl
from core.versions import dir_version
from pipeline.data import load_prompts
from pipeline.models import load_policy
from sampling.config import reward_for_round, temperature_for_round
from sampling.curves import max_of_k_curve
from sampling.generate import generate_samples
from sampling.rejection import best_of_k, origin_counts, pool_candidates
from sampling.scoring import score_samples
from sampling.temperature import sweep_temperature

SCORE_FIELDS = ("helpfulness", "safety", "safety_sigmoid", "gate_branch", "gated_logit", "gated_score",
                "judge_score")


def judge_score_samples(ctx, samples: list[dict], work: Path) -> None:
    """Direct AI feedback: the LLM judge's score in [0, 1] as each sample's reward (`judge_score`;
    None when its verdict stayed unparseable). Cached under work/, so a resumed round pays nothing twice."""
    from reward_models.feedback.judges import make_judge
    from reward_models.feedback.labeling import judge_scores

    with make_judge(ctx.config.judge, cache_path=work / "judge_cache.sqlite") as judge:
        scores = judge_scores(judge, samples, [s["response"] for s in samples])
    for s, v in zip(samples, scores):
        s["judge_score"] = v


def _free() -> None:
    """Release memory of models the caller has just dropped (the next model needs the GPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def round_seed(seed: int, version: int) -> int:
    """A different, reproducible sampling seed for every round."""
    return int.from_bytes(hashlib.sha256(f"rs\x1f{seed}\x1f{version}".encode()).digest()[:4], "little")


def _prompts(ctx) -> list[dict]:
    files = ctx.config.data.prompts
    if not files:
        raise InputError("data.prompts: the rs stage needs at least one prompts file in saferounds.yaml")
    prompts = [p for f in files for p in load_prompts(ctx.workspace.resolve(f))]
    seen = {}
    for p in prompts:
        if p["id"] in seen:
            raise InputError(f"data.prompts: prompt id {p['id']!r} appears in more than one file; ids must be unique")
        seen[p["id"]] = True
    return prompts


def _sweep_prompts(ctx, prompts: list[dict], n: int, seed: int) -> list[dict]:
    """The held-out slice for `auto`: data.heldout_prompts when set, else n prompts picked by a seeded
    hash of their ids (the same slice in every round, so rounds are comparable)."""
    if ctx.config.data.heldout_prompts:
        return load_prompts(ctx.workspace.resolve(ctx.config.data.heldout_prompts))[:n]
    ranked = sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}\x1f{p['id']}".encode()).hexdigest())
    return ranked[:n]


def _kept_samples(prior_versions: list[Path]) -> dict[int, list[dict]]:
    """{v: the rows of vN/selected.jsonl} for earlier versions that ran rs (v0 has none)."""
    kept = {}
    for d in prior_versions:
        n = dir_version(d)
        path = Path(d) / "selected.jsonl"
        if n is not None and path.exists():
            rows = read_jsonl(path)
            for r in rows:
                r["response"] = r.pop("completion")
            kept[n] = rows
    return kept


def _selected_row(s: dict, version: int, key: str = "gated_score") -> dict:
    """A selected.jsonl row: SFT-shaped (`messages` + `completion`, so `saferounds sft` reads it) plus
    where it came from and its scores under this round's RMs."""
    row = {"prompt_id": s["prompt_id"], "messages": s["messages"], "completion": s["response"],
           "origin_version": int(s["origin_version"]), "sample_index": int(s["sample_index"]),
           "selected_in": version, "score": s[key],
           "is_safety": s.get("is_safety", False), "category": s.get("category")}
    row.update({k: s[k] for k in SCORE_FIELDS if k in s})
    return row


def _load_rms(ctx):
    from reward_models.modeling import load_reward_model

    missing = [k for k in ("helpfulness", "safety") if k not in ctx.rm_paths]
    if missing:
        raise InputError(f"rs stage of v{ctx.version}: no {' or '.join(missing)} reward model yet; plan an "
                         "`rm` stage before `rs` (rounds.plan) or train one with `saferounds rm train`")
    rms = {}
    for kind in ("helpfulness", "safety"):
        model, tok = load_reward_model(ctx.rm_paths[kind], ctx.config.model)
        rms[kind] = (to_accelerator(model), tok)
    return rms


def run(ctx) -> dict:
    cfg = ctx.config.rejection_sampling
    gate, rm_cfg = ctx.config.gate, ctx.config.reward_models
    version, out = ctx.version, Path(ctx.dir)
    work = out / "work" / "rs"
    work.mkdir(parents=True, exist_ok=True)
    seed = round_seed(ctx.config.seed, version)
    prompts = _prompts(ctx)
    timings: dict[str, float] = {}
    rms = None

    reward = reward_for_round(cfg, version)
    key, curve_key = ("gated_score", "gated_logit") if reward == "rm" else ("judge_score", "judge_score")

    def score(samples):
        nonlocal rms
        if reward == "judge":
            judge_score_samples(ctx, samples, work)
            return
        if rms is None:
            rms = _load_rms(ctx)
        score_samples(samples, rms["helpfulness"], rms["safety"], gate, batch_size=rm_cfg.score_batch_size,
                      max_length=rm_cfg.max_length)

    def scored(samples):  # curves and the sweep rank a missing judge verdict lowest
        return [s if s.get(curve_key) is not None else {**s, curve_key: 0.0} for s in samples]

    def progress(what):
        return lambda done, total: ctx.progress(f"v{version} rs: {what} {done}/{total} prompts")

    selected_path = out / "selected.jsonl"
    if not selected_path.exists():
        ctx.log.info("rs v%d: loading policy %s", version, ctx.parent_policy)
        model, tok = load_policy(ctx.parent_policy, ctx.config.model)
        model = to_accelerator(model)

        # 1. temperature (LLaMA 2 Fig. 8: re-tuned every round)
        temperature, sweep = temperature_for_round(cfg, version), None
        sweep_file = work / "temperature.json"
        if temperature is None and sweep_file.exists():
            sweep = read_json(sweep_file)
        elif temperature is None:
            held = _sweep_prompts(ctx, prompts, cfg.auto_prompts, ctx.config.seed)
            def score_for_sweep(samples):
                score(samples)
                samples[:] = scored(samples)

            sweep = sweep_temperature(model, tok, held, cfg.auto_temperatures, cfg.auto_k or cfg.k, score_for_sweep,
                                      top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.batch_size, seed=seed, work_dir=work, key=curve_key)
            write_json(sweep_file, sweep)
        if sweep is not None:
            temperature = float(sweep["temperature"])
            ctx.log.info("rs v%d: temperature sweep %s -> T=%g", version, sweep["mean_max_of_k"], temperature)

        # 2. K samples per prompt, appended batch by batch
        gen_stats: dict = {}
        current = generate_samples(model, tok, prompts, k=cfg.k, temperature=temperature, top_p=cfg.top_p,
                                   max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed,
                                   out_path=out / "samples.jsonl", origin_version=version,
                                   on_batch=progress("sampling"), stats=gen_stats)
        timings["generate_s"] = round(gen_stats["generate_s"], 3)
        del model, tok
        _free()

        # 3-4. score this round's samples and the kept samples of earlier versions with THIS round's RMs,
        # gate them together (one whitening), then best-of-K per prompt
        kept = _kept_samples(ctx.prior_versions)
        candidates = pool_candidates(current, kept, cfg.pool)
        ctx.progress(f"v{version} rs: scoring {len(candidates)} samples ({len(candidates) - len(current)} kept "
                     "from earlier versions)")
        t0 = time.perf_counter()
        score(candidates)
        timings["score_s"] = round(time.perf_counter() - t0, 3)
        write_jsonl(out / "samples.jsonl", current)
        selected = best_of_k([c for c in candidates if c.get(key) is not None], key, cfg.min_score)
        if not selected:
            raise InputError(f"rejection_sampling.min_score={cfg.min_score}: no prompt's best sample reaches it, "
                             "so there is nothing to fine-tune on; lower or remove min_score")
        summary = {"reward": reward, "temperature": temperature, "temperature_sweep": sweep, "k": cfg.k, "pool": cfg.pool,
                   "prompts": len(prompts), "samples": len(current),
                   "generated_tokens": sum(s["num_tokens"] for s in current),
                   "candidates": len(candidates), "candidates_from_earlier": len(candidates) - len(current)}
        write_json(work / "summary.json", summary)
        write_json(out / "max_of_k.json", {
            "version": version, "temperature": temperature, "k": cfg.k, "score": curve_key,
            "points": max_of_k_curve(scored(current), curve_key),
            **({"points_whitened": max_of_k_curve(current, "gated_score")} if reward == "rm" else {})})
        write_jsonl(selected_path, [_selected_row(s, version, key) for s in selected])
        rms = None
        _free()

    # 5. fine-tune the parent on the selected samples (the SFT code path)
    current = read_jsonl(out / "samples.jsonl")
    selected = read_jsonl(selected_path)
    summary = read_json(work / "summary.json")
    curve = read_json(out / "max_of_k.json")["points"]
    ft_file = work / "finetune.json"
    policy_dir = out / "rs_policy"
    if ft_file.exists() and policy_dir.exists():
        ft = read_json(ft_file)
    else:
        from pipeline.training.sft import finetune

        ft_cfg = cfg.finetune
        train_cfg = dataclasses.replace(ctx.config.sft, epochs=ft_cfg.epochs, learning_rate=ft_cfg.learning_rate,
                                        batch_size=ft_cfg.batch_size)
        ctx.progress(f"v{version} rs: fine-tuning on {len(selected)} selected samples")
        examples = [{"messages": s["messages"], "completion": s["completion"]} for s in selected]
        ft = finetune(ctx.parent_policy, examples, train_cfg, ctx.config.model, policy_dir, work / "trainer",
                      seed=ctx.config.seed, stage=f"v{version} rs fine-tune")
        write_json(ft_file, ft)

    def mean(rows, field):
        values = [r[field] for r in rows if r.get(field) is not None]
        return sum(values) / len(values) if values else None

    return {
        **{k: v for k, v in summary.items()},
        "mean_gated_logit": mean(current, "gated_logit"),
        "mean_helpfulness": mean(current, "helpfulness"),
        "mean_safety": mean(current, "safety"),
        "mean_judge_score": mean(current, "judge_score"),
        "safety_branch_fraction": mean([{"x": s.get("gate_branch") == "safety"} for s in current], "x"),
        "eos_fraction": mean([{"x": s["finish_reason"] == "eos"} for s in current], "x"),
        "selected": len(selected),
        "selected_by_origin": origin_counts(selected),
        "selected_mean_gated_logit": mean(selected, "gated_logit"),
        "max_of_k": [[p["k"], round(p["max"], 4), round(p["median"], 4), round(p["mean"], 4)] for p in curve],
        "finetune": ft,
        **({"timings": timings} if timings else {}),
    }
