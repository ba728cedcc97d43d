"""The round's `rs` stage: rejection-sampling fine-tuning (LLaMA 2 Sec. 3.2.3).

  1. temperature of this round: from the config's schedule, or `auto` (sweep on a held-out slice, Fig. 8)
                                                               -> work/rs/temperature.json
  2. K samples per prompt from the parent policy            -> samples.jsonl (appended per batch, resumable)
  3. score this round's samples and the kept samples of earlier versions together with this round's RMs
     and the gate (one whitening), or, with rejection_sampling.reward: judge, by the LLM judge's score;
     rejection_sampling.demonstrations (use: pool) join as one more candidate per prompt
                                                            -> samples.jsonl (rewritten with scores)
  4. best-of-K per prompt over those candidates             -> selected.jsonl (origin version, score)
  5. max-of-K curve (Fig. 7)                                 -> max_of_k.json
  6. fine-tune the parent on selected.jsonl (SFT code path)  -> rs_policy/
Interrupted runs resume: sampling from samples.jsonl, the sweep from work/rs/, training from the
Trainer checkpoints in work/rs/trainer; finished steps are not redone (steps 1-5 are done once
selected.jsonl exists).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.accelerator import free_accelerator_memory, to_accelerator
from saferounds.core.errors import InputError
from saferounds.core.io import read_json, read_jsonl, read_rows, write_json, write_jsonl
from saferounds.core.progress import counter
from saferounds.core.progress import current as current_progress
from saferounds.core.tracking import runs_dir
from saferounds.data.load import load_prompts, load_sft
from saferounds.pipeline.models import load_policy, to_generation_dtype
from saferounds.pipeline.stage_policies import POLICY_DIRS
from saferounds.pipeline.stages.context import StageContext, validate_planned_rms, validate_prompts
from saferounds.pipeline.workspace import Workspace
from saferounds.reward_models.evaluation import ranks_better_than_chance
from saferounds.reward_models.modeling import load_reward_models, require_reward_models
from saferounds.sampling.config import demonstrations_use_for_round, reward_for_round, temperature_for_round
from saferounds.sampling.curves import max_of_k_curve
from saferounds.sampling.demonstrations import demonstration_candidates, finetune_examples
from saferounds.sampling.generate import round_seed
from saferounds.sampling.rejection import (best_of_k, kept_samples, mean_of, origin_counts, pool_candidates, sample_key, selected_row,
                                share_of)
from saferounds.sampling.scoring import RoundScorer
from saferounds.sampling.selection_audit import selection_audit, summary_lines
from saferounds.sampling.shards import generate_sharded
from saferounds.sampling.temperature import sweep_slice, sweep_temperature


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """The prompts and demonstrations load; both reward models are there unless this round's reward is the judge."""
    validate_prompts(ws, plan)
    for f in ws.config.rejection_sampling.demonstrations:  # not after the RMs trained: a missing file fails now
        load_sft(ws.resolve(f))
    if reward_for_round(ws.config.rejection_sampling, n) != "judge":
        validate_planned_rms(ws, n, plan)


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.rejection_sampling
    version, out = ctx.version, Path(ctx.dir)
    work = out / "work" / "rs"
    work.mkdir(parents=True, exist_ok=True)
    seed = round_seed(ctx.config.seed, version)
    prompts = _prompts(ctx)
    scorer = _scorer(ctx, reward_for_round(cfg, version), work)
    selected_path, timings = out / "selected.jsonl", {}

    if not selected_path.exists():
        ctx.log.info("rs v%d: loading policy %s", version, ctx.parent_policy)
        model, tok = load_policy(ctx.parent_policy, ctx.config.model)
        model = to_accelerator(to_generation_dtype(model, ctx.config.model))

        # step 1: this round's temperature (LLaMA 2 Fig. 8: re-tuned every round); rank 0 sweeps
        temperature, sweep = dist.run_on_main(_temperature, ctx, model, tok, prompts, scorer, seed, work)

        # step 2: K samples per prompt, appended batch by batch (sharded by batch across ranks)
        gen_stats: dict = {}
        current = generate_sharded(model, tok, prompts, k=cfg.k, temperature=temperature, top_p=cfg.top_p,
                                   max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed,
                                   out_path=out / "samples.jsonl", shard_dir=work / "shards",
                                   origin_version=version, on_batch=_progress(ctx, "sampling"), stats=gen_stats)
        timings["generate_s"] = round(gen_stats["generate_s"], 3)
        del model, tok
        free_accelerator_memory()
        # steps 3-5: rank 0 scores, selects and writes; the others wait for selected.jsonl
        dist.run_on_main(_select, ctx, scorer, prompts, current, temperature, sweep, timings)

    # step 6: fine-tune the parent on the selected samples (the SFT code path)
    selected = read_jsonl(selected_path)
    ft = _finetune(ctx, prompts, selected, out / POLICY_DIRS["rs"], work)
    audit_path = out / "selection_audit.json"
    return _metrics(read_json(work / "summary.json"), read_jsonl(out / "samples.jsonl"), selected,
                    read_json(out / "max_of_k.json")["points"], ft, timings,
                    read_json(audit_path) if audit_path.exists() else None)


def _select(ctx: StageContext, scorer: RoundScorer, prompts: list[dict], current: list[dict], temperature: float,
            sweep: dict | None, timings: dict) -> None:
    """Steps 3-5 (rank 0): score, best-of-K, summary, max-of-K curve, selected.jsonl."""
    cfg, version, out = ctx.config.rejection_sampling, ctx.version, Path(ctx.dir)
    work = out / "work" / "rs"
    selected_path = out / "selected.jsonl"
    # step 3: score this round's samples with the kept samples of earlier versions, all together
    candidates = pool_candidates(current, kept_samples(ctx.prior_versions), cfg.pool)
    if demonstrations_use_for_round(cfg, ctx.version) == "pool":  # one more candidate per demonstration
        seen = {sample_key(c) for c in candidates}
        candidates += [d for d in demonstration_candidates(_demonstrations(ctx), prompts)
                       if sample_key(d) not in seen]
    ctx.progress(f"v{version} rs: scoring {len(candidates)} samples ({len(candidates) - len(current)} kept "
                 "from earlier versions)")
    t0 = time.perf_counter()
    current_progress().stage("rs scoring", total=len(candidates), unit="samples")
    scorer(candidates)
    current_progress().advance(len(candidates))
    timings["score_s"] = round(time.perf_counter() - t0, 3)
    write_jsonl(out / "samples.jsonl", current)

    # step 4: best-of-K per prompt
    selected = best_of_k([c for c in candidates if c.get(scorer.key) is not None], scorer.key, cfg.min_score)
    current_progress().done(f"{len(candidates)} samples, best of {cfg.k} kept for {len(selected)} prompts")
    if not selected:
        raise InputError(f"rejection_sampling.min_score={cfg.min_score}: no prompt's best sample reaches it, "
                         "so there is nothing to fine-tune on; lower or remove min_score")
    write_json(work / "summary.json", {
        "reward": scorer.reward, "temperature": temperature, "temperature_sweep": sweep, "k": cfg.k,
        "pool": cfg.pool, "demonstrations_use": demonstrations_use_for_round(cfg, version),
        "prompts": len(prompts), "samples": len(current),
        "generated_tokens": sum(s["num_tokens"] for s in current),
        "candidates": len(candidates), "candidates_from_earlier": len(candidates) - len(current),
        "selected_demonstrations": sum(bool(x.get("demonstration")) for x in selected)})

    # step 5: the max-of-K curve (Fig. 7)
    write_json(out / "max_of_k.json", {
        "version": version, "temperature": temperature, "k": cfg.k, "score": scorer.curve_key,
        "points": max_of_k_curve(scorer.for_curves(current), scorer.curve_key),
        **({"points_whitened": max_of_k_curve(current, "gated_score")} if scorer.reward == "rm" else {})})
    # step 5b: what best-of-K chose, by judges the round did not optimise (the selection audit)
    write_json(out / "selection_audit.json", _audit_selection(ctx, candidates, selected, scorer.reward == "rm"))
    write_jsonl(selected_path, [selected_row(s, version, scorer.key) for s in selected])
    scorer.release()
    free_accelerator_memory()


def rm_chance_note(rm_paths: dict) -> str | None:
    """One line when a reward model of this round does not rank better than chance on its held-out pairs
    (95% interval includes 0.5, or never measured): then best-of-K by it selects nothing better than a random
    sample, and neither the rs log nor the report may present the selection as a result (issue 27)."""
    weak = []
    for kind, path in sorted(rm_paths.items()):
        manifest = Path(path) / "manifest.json"
        held = (read_json(manifest).get("metrics") or {}).get("heldout") if manifest.exists() else None
        if not ranks_better_than_chance(held):
            weak.append(f"{kind} RM {_accuracy_text(held)}")
    if not weak:
        return None
    return ("reward models at chance: " + "; ".join(weak) + ": best-of-K by them selects no better than a "
            "random sample, so this round's selection is not evidence of the method")


def _accuracy_text(held: dict | None) -> str:
    if not held or held.get("accuracy") is None:
        return "held-out accuracy not measured"
    ci = f" [{held['ci95'][0]:.2f}, {held['ci95'][1]:.2f}]" if "ci95" in held else ""
    return f"held-out accuracy {held['accuracy']:.2f}{ci} on {held['n']} pairs"


def _audit_selection(ctx: StageContext, candidates: list[dict], selected: list[dict], by_rms: bool) -> dict:
    """The selected samples against all candidates, judged by the eval judges (the workspace's learned ones
    when trained, else the refusal patterns) — judges the round did not select by. ``by_rms``: the round
    selected by the reward models (not the LLM judge), whose held-out accuracy then decides the chance note."""
    from saferounds.eval.evaluate import prompt_text
    from saferounds.eval.judges.judging import load_judges

    judges = load_judges(ctx.workspace.root, ctx.config.eval.refusal_judge, judge_cfg=ctx.config.judge)
    rows = [c for c in candidates if c.get("response") is not None]
    verdicts = judges.judge([prompt_text(c["messages"]) for c in rows], [c["response"] for c in rows])
    gold = _gold_after_selection(ctx, rows, selected)
    judged = [{**{k: c.get(k) for k in ("prompt_id", "sample_index", "origin_version", "is_safety", "gated_score")},
               "refusal": v["refusal"], "harmful": v["harmful"] if c.get("is_safety") else None,
               "gold_score": gold.get(sample_key(c))}
              for c, v in zip(rows, verdicts)]
    audit = selection_audit(judged, selected)
    note = rm_chance_note(ctx.rm_paths) if by_rms else None
    for line in summary_lines(audit) + ([note] if note else []):
        ctx.log.info("rs v%d: %s", ctx.version, line)
        ctx.progress(f"v{ctx.version} rs: {line}")
    return {**audit, "judges": judges.describe(), "notes": judges.notes, "rm_chance": note}


def selection_digest(selected: list[dict]) -> str:
    """sha256 of which samples best-of-K chose ((origin_version, prompt_id, sample_index), sorted)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(sample_key(s) for s in selected)).encode()).hexdigest()


def _gold_after_selection(ctx: StageContext, rows: list[dict], selected: list[dict]) -> dict:
    """The gold helpfulness RM's scores of the helpful-prompt candidates, {sample_key: score}, computed only
    now that best-of-K has chosen (the digest of its choice is stored with them) and kept apart from
    samples.jsonl and selected.jsonl in selection_gold.json, naming every sample it scored."""
    from saferounds.pipeline.stages.rm import gold_scores

    helpful = [c for c in rows if not c.get("is_safety")]
    digest = selection_digest(selected)  # fixed before the gold RM is loaded
    got = gold_scores(ctx.workspace, ctx.version, [c["messages"] for c in helpful], [c["response"] for c in helpful])
    if got is None:
        return {}
    path, scores = got
    scored = [{"origin_version": int(c["origin_version"]), "prompt_id": c["prompt_id"],
               "sample_index": int(c["sample_index"]), "gold_score": x} for c, x in zip(helpful, scores)]
    write_json(Path(ctx.dir) / "selection_gold.json", {
        "gold_rm": str(path), "scored_after_selection": digest, "scored": scored,
        "note": "the gold helpfulness RM scored these candidates after best-of-K chose; selection never read them"})
    return {(s["origin_version"], s["prompt_id"], s["sample_index"]): s["gold_score"] for s in scored}


def _prompts(ctx: StageContext) -> list[dict]:
    files = ctx.config.data.prompts
    if not files:
        raise InputError("data.prompts: the rs stage needs at least one prompts file in saferounds.yaml")
    prompts = [p for f in files for p in load_prompts(ctx.workspace.resolve(f))]
    seen = set()
    for p in prompts:
        if p["id"] in seen:
            raise InputError(f"data.prompts: prompt id {p['id']!r} appears in more than one file; ids must be unique")
        seen.add(p["id"])
    return prompts


def finetune_rows(ctx: StageContext, prompts: list[dict], selected: list[dict]) -> list[dict]:
    """What round vN fine-tunes on: the selected rows, and the demonstrations where this round's
    rejection_sampling.demonstrations_use is `finetune` (safety SFT data mixed in, Sec. 4.2.2)."""
    rows = [{"messages": s["messages"], "completion": s["completion"]} for s in selected]
    if demonstrations_use_for_round(ctx.config.rejection_sampling, ctx.version) == "finetune":
        rows += finetune_examples(_demonstrations(ctx), prompts)
    return rows


def _demonstrations(ctx: StageContext) -> list[dict]:
    """rejection_sampling.demonstrations: SFT-shaped rows (validated by load_sft) with their prompt_id."""
    out = []
    for f in ctx.config.rejection_sampling.demonstrations:
        path = ctx.workspace.resolve(f)
        examples = load_sft(path)  # every bad row is reported as file:line: field: reason
        ids = [row.get("prompt_id") for _, row in read_rows(path)]
        out += [{**e, "prompt_id": pid} for e, pid in zip(examples, ids)]
    return out


def _scorer(ctx: StageContext, reward: str, work: Path) -> RoundScorer:
    """This round's RMs (loaded on first use) and gate, or the LLM judge."""
    if reward == "rm":
        require_reward_models(ctx.rm_paths, "rs", ctx.version)
    rm_cfg = ctx.config.reward_models
    return RoundScorer(reward, gate=ctx.config.gate, batch_size=rm_cfg.score_batch_size, max_length=rm_cfg.max_length,
                       load_rms=lambda: load_reward_models(ctx.rm_paths, ctx.config.model),
                       judge_cfg=ctx.config.judge, judge_cache=work / "judge_cache.sqlite")


def _temperature(ctx: StageContext, model, tok, prompts, scorer: RoundScorer, seed: int, work: Path) -> tuple[float, dict | None]:
    """(temperature, sweep): the configured one, or for `auto` the best of a sweep on a held-out slice
    (data.heldout_prompts when set, else a seeded slice of the prompts); the sweep is kept in work/."""
    cfg = ctx.config.rejection_sampling
    temperature = temperature_for_round(cfg, ctx.version)
    if temperature is not None:
        return temperature, None
    sweep_file = work / "temperature.json"
    if sweep_file.exists():
        sweep = read_json(sweep_file)
    else:
        heldout = ctx.config.data.heldout_prompts
        held = (load_prompts(ctx.workspace.resolve(heldout))[:cfg.auto_prompts] if heldout
                else sweep_slice(prompts, cfg.auto_prompts, ctx.config.seed))
        sweep = sweep_temperature(model, tok, held, cfg.auto_temperatures, cfg.auto_k or cfg.k,
                                  scorer.score_for_sweep, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.batch_size, seed=seed, work_dir=work, key=scorer.curve_key)
        write_json(sweep_file, sweep)
    ctx.log.info("rs v%d: temperature sweep %s -> T=%g", ctx.version, sweep["mean_max_of_k"], sweep["temperature"])
    return float(sweep["temperature"]), sweep


def _finetune(ctx: StageContext, prompts: list[dict], selected: list[dict], policy_dir: Path, work: Path) -> dict:
    """Fine-tune the parent policy on the selected rows (rejection_sampling.finetune over the sft settings)."""
    ft_file = work / "finetune.json"
    if ft_file.exists() and policy_dir.exists():
        return read_json(ft_file)
    from saferounds.pipeline.training.sft import finetune

    ft_cfg = ctx.config.rejection_sampling.finetune
    train_cfg = dataclasses.replace(ctx.config.sft, epochs=ft_cfg.epochs, learning_rate=ft_cfg.learning_rate,
                                    batch_size=ft_cfg.batch_size)
    rows = finetune_rows(ctx, prompts, selected)
    extra = f" and {len(rows) - len(selected)} demonstrations" if len(rows) > len(selected) else ""
    ctx.progress(f"v{ctx.version} rs: fine-tuning on {len(selected)} selected samples{extra}")
    ft = finetune(ctx.parent_policy, rows, train_cfg, ctx.config.model, policy_dir, work / "trainer",
                  seed=ctx.config.seed, name="rs fine-tune",
                  runs=runs_dir(ctx.workspace.root, f"v{ctx.version}", "rs"))
    dist.run_on_main(write_json, ft_file, ft)
    return ft


def _metrics(summary: dict, current: list[dict], selected: list[dict], curve: list[dict], ft: dict,
             timings: dict, audit: dict | None = None) -> dict:
    """What the manifest keeps of the stage."""
    return {
        **({"selection_audit": {k: audit[k] for k in ("safety", "helpful", "rm_chance")}} if audit else {}),
        **summary,
        "mean_gated_logit": mean_of(current, "gated_logit"),
        "mean_helpfulness": mean_of(current, "helpfulness"),
        "mean_safety": mean_of(current, "safety"),
        "mean_judge_score": mean_of(current, "judge_score"),
        "safety_branch_fraction": share_of(current, lambda s: s.get("gate_branch") == "safety"),
        "eos_fraction": share_of(current, lambda s: s["finish_reason"] == "eos"),
        "selected": len(selected),
        "selected_by_origin": origin_counts(selected),
        "selected_mean_gated_logit": mean_of(selected, "gated_logit"),
        "max_of_k": [[p["k"], round(p["max"], 4), round(p["median"], 4), round(p["mean"], 4)] for p in curve],
        "finetune": ft,
        **({"timings": timings} if timings else {}),
    }


def _progress(ctx: StageContext, what: str):
    bar = counter(f"rs {what}", "prompts")

    def report(done, total):
        ctx.progress(f"v{ctx.version} rs: {what} {done}/{total} prompts")
        bar(done, total)
    return report
