"""The round's `distill` stage: safety context distillation (LLaMA 2 Sec. 4.2.4), before `rs`.

  step 1  the adversarial prompts: distill.prompts, else the `is_safety` prompts of data.prompts (rs's prompt set)
  step 2  each prompt's risk category: its `category` field (data.risk.risk_category) when that names one, else the
          classifier
          (LLM judge or keyword fallback); then its preprompt, generic or targeted  -> work/distill/categories.json
  step 3  one answer per prompt from the parent policy without and with the preprompt, with the same seed per
          prompt (the preprompt goes in as the system message when the chat template has one, else before the
          user turn)                                               -> work/distill/{plain,preprompted}.jsonl
  step 4  score both answers with this round's safety RM, on the PLAIN prompt, and keep the preprompted answer
          where score_pre - score_plain > distill.margin (Fig. 16)  -> distill.jsonl (appended per chunk)
  step 5  fine-tune the parent on the kept answers under the plain prompt (preprompt removed)
                                                              -> distill_train.jsonl, distill_policy/
How the stages chain: distill_policy/ is an intermediate policy of the version; the stages after distill in
the same version (rs, ppo) start from it (pipeline.rounds.stage_parent). A version that keeps no answer
writes no distill_policy/, and rs starts from the parent version's policy as usual.
Interrupted runs resume: generation from its JSONL files, scoring from distill.jsonl (torn tail cut, each
prompt recorded once), training from the Trainer checkpoints in work/distill/trainer.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
from pathlib import Path

import torch

from saferounds.core.accelerator import to_accelerator
from saferounds.core.errors import InputError
from saferounds.core.io import append_jsonl, read_json, read_jsonl, recover_jsonl, write_json, write_jsonl
from saferounds.data.risk import known_category, risk_category
from saferounds.data.load import load_prompts
from saferounds.pipeline.models import load_policy
from saferounds.pipeline.stage_policies import POLICY_DIRS
from saferounds.pipeline.stages.context import StageContext
from saferounds.pipeline.workspace import Workspace
from saferounds.sampling.distillation import (CATEGORY_REMINDER, category_messages, choose_preprompt, keep_distilled,
                                   keyword_category, parse_category, prompt_text, supports_system_role,
                                   training_row, with_preprompt)
from saferounds.sampling.generate import generate_samples


def distill_seed(seed: int, version: int) -> int:
    """A reproducible seed per round, shared by the plain and the preprompted answer of each prompt."""
    return int.from_bytes(hashlib.sha256(f"distill\x1f{seed}\x1f{version}".encode()).digest()[:4], "little")


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def adversarial_prompts(config, resolve) -> list[dict]:
    """distill.prompts (every row), else the is_safety prompts of data.prompts; at most distill.max_prompts.
    `resolve` maps a config path to a file (Workspace.resolve)."""
    cfg = config.distill
    if cfg.prompts:
        prompts, where = load_prompts(resolve(cfg.prompts)), f"distill.prompts ({cfg.prompts})"
    else:
        if not config.data.prompts:
            raise InputError("data.prompts: the distill stage needs prompts (or set distill.prompts)")
        prompts = [p for f in config.data.prompts for p in load_prompts(resolve(f)) if p.get("is_safety")]
        where = "data.prompts"
    if not prompts:
        raise InputError(f"{where}: no prompt tagged is_safety: true; the distill stage works on adversarial "
                         "prompts: tag them, or list a file of them in distill.prompts")
    seen = set()
    for p in prompts:
        if p["id"] in seen:
            raise InputError(f"{where}: prompt id {p['id']!r} appears more than once; ids must be unique")
        seen.add(p["id"])
    return prompts[:cfg.max_prompts] if cfg.max_prompts else prompts


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """The adversarial prompts load (distill.prompts, or the is_safety ones of data.prompts)."""
    adversarial_prompts(ws.config, ws.resolve)


def _classifier(ctx: StageContext) -> str:
    cfg = ctx.config.distill
    if cfg.classifier == "auto":
        return "judge" if ctx.config.judge.model else "keywords"
    return cfg.classifier


def categorise(ctx: StageContext, prompts: list[dict], work: Path) -> dict[str, dict]:
    """{prompt id: {"category": risk category or None, "from": field|judge|keywords|none}}, saved once."""
    path = work / "categories.json"
    if path.exists():
        return read_json(path)
    out, unlabelled = {}, []
    for p in prompts:
        # a category field that is no category name (a source name such as "hh-red-team") says nothing:
        # the classifier decides, as for a prompt without one
        if known_category(p.get("category")):
            out[p["id"]] = {"category": risk_category(p["category"]), "from": "field"}
        else:
            unlabelled.append(p)
    how = _classifier(ctx)
    if unlabelled and how == "judge":
        from saferounds.reward_models.feedback.judges import make_judge
        from saferounds.reward_models.feedback.labeling import ask

        ctx.progress(f"v{ctx.version} distill: the LLM judge classifies {len(unlabelled)} prompts")
        with make_judge(ctx.config.judge, cache_path=work / "judge_cache.sqlite") as judge:
            verdicts = judge.map(lambda p: ask(judge, category_messages(p["messages"]), parse_category,
                                               CATEGORY_REMINDER)[0], unlabelled)
        for p, v in zip(unlabelled, verdicts):
            out[p["id"]] = {"category": v if v not in (None, "none") else None, "from": "judge"}
    else:
        for p in unlabelled:
            cat = keyword_category(prompt_text(p["messages"])) if how == "keywords" else None
            out[p["id"]] = {"category": cat, "from": how}
    write_json(path, out)
    return out


def generate_pairs(ctx: StageContext, prompts: list[dict], categories: dict, work: Path) -> tuple[list[dict], list[dict], str]:
    """(plain answers, preprompted answers, "system"|"user": where the preprompt went), one per prompt."""
    cfg = ctx.config.distill
    model, tok = load_policy(ctx.parent_policy, ctx.config.model)
    model = to_accelerator(model)
    as_system = supports_system_role(tok)
    preprompted = []
    for p in prompts:
        _, text = choose_preprompt(categories[p["id"]]["category"], cfg)
        preprompted.append({**p, "messages": with_preprompt(p["messages"], text, as_system)})
    seed = distill_seed(ctx.config.seed, ctx.version)
    settings = dict(k=1, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, seed=seed, origin_version=ctx.version)
    runs = {}
    for name, batch in (("plain", prompts), ("preprompted", preprompted)):
        runs[name] = generate_samples(model, tok, batch, out_path=work / f"{name}.jsonl", **settings,
                                      on_batch=lambda done, total, name=name: ctx.progress(
                                          f"v{ctx.version} distill: {name} answers {done}/{total} prompts"))
    del model, tok
    _free()
    return runs["plain"], runs["preprompted"], "system" if as_system else "user"


def pair_row(prompt: dict, info: dict, kind: str, preprompt_as: str, plain: str, pre: str,
             score_plain: float, score_pre: float, margin: float) -> dict:
    """One distill.jsonl row: the pair, both safety-RM scores, and the gate's decision."""
    return {"prompt_id": prompt["id"], "messages": prompt["messages"], "source_category": prompt.get("category"),
            "category": info["category"], "category_from": info["from"], "preprompt": kind,
            "preprompt_as": preprompt_as, "answer_plain": plain, "answer_pre": pre,
            "score_plain": score_plain, "score_pre": score_pre, "gain": score_pre - score_plain,
            "margin": margin, "kept": keep_distilled(score_pre, score_plain, margin)}


def score_and_gate(ctx: StageContext, prompts, categories, plain, pre, preprompt_as, out_path: Path) -> list[dict]:
    """Append the scored, gated pairs to distill.jsonl chunk by chunk; prompts already there are skipped."""
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    cfg, rm_cfg = ctx.config.distill, ctx.config.reward_models
    done = {r["prompt_id"] for r in recover_jsonl(out_path)}
    todo = [i for i, p in enumerate(prompts) if p["id"] not in done]
    if todo:
        if "safety" not in ctx.rm_paths:
            raise InputError(f"distill stage of v{ctx.version}: no safety reward model yet; plan an `rm` stage "
                             "before `distill` (rounds.plan) or train one with `saferounds rm train --kind safety`")
        rm, rm_tok = load_reward_model(ctx.rm_paths["safety"], ctx.config.model)
        rm = to_accelerator(rm).requires_grad_(False)
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            messages = [prompts[i]["messages"] for i in chunk]  # both answers are judged as answers to the plain prompt
            both = score(rm, rm_tok, messages * 2, [plain[i]["response"] for i in chunk] +
                         [pre[i]["response"] for i in chunk], batch_size=rm_cfg.score_batch_size,
                         max_length=rm_cfg.max_length)
            rows = [pair_row(prompts[i], categories[prompts[i]["id"]],
                             choose_preprompt(categories[prompts[i]["id"]]["category"], cfg)[0], preprompt_as,
                             plain[i]["response"], pre[i]["response"], float(s_plain), float(s_pre), cfg.margin)
                    for i, s_plain, s_pre in zip(chunk, both[:len(chunk)], both[len(chunk):])]
            append_jsonl(out_path, rows)
            ctx.progress(f"v{ctx.version} distill: scored {len(done) + start + len(chunk)}/{len(prompts)} pairs")
        del rm, rm_tok
        _free()
    order = {p["id"]: i for i, p in enumerate(prompts)}
    return sorted(read_jsonl(out_path), key=lambda r: order[r["prompt_id"]])


def summarise(rows: list[dict], preprompt_as: str) -> dict:
    def mean(values):
        return sum(values) / len(values) if values else None

    kept = [r for r in rows if r["kept"]]
    by_kind = {}
    for r in rows:
        k = by_kind.setdefault(r["preprompt"], {"pairs": 0, "kept": 0})
        k["pairs"] += 1
        k["kept"] += int(r["kept"])
    return {"prompts": len(rows), "selected": len(kept), "kept_share": len(kept) / len(rows) if rows else None,
            "preprompt_as": preprompt_as, "by_preprompt": by_kind,
            "category_from": {f: sum(r["category_from"] == f for r in rows)
                              for f in sorted({r["category_from"] for r in rows})},
            "mean_safety_plain": mean([r["score_plain"] for r in rows]),
            "mean_safety_pre": mean([r["score_pre"] for r in rows]),
            "mean_gain_kept": mean([r["gain"] for r in kept])}


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.distill
    out = Path(ctx.dir)
    work = out / "work" / "distill"
    work.mkdir(parents=True, exist_ok=True)
    pairs_path, train_path, policy_dir, ft_file = (out / "distill.jsonl", out / "distill_train.jsonl",
                                                   out / POLICY_DIRS["distill"], work / "finetune.json")

    # step 1: the adversarial prompts
    prompts = adversarial_prompts(ctx.config, ctx.workspace.resolve)

    # step 2: risk category and preprompt of each prompt
    categories = categorise(ctx, prompts, work)

    if not train_path.exists():
        # step 3: plain and preprompted answers, same seed per prompt (resumable JSONL)
        summary_file = work / "generation.json"
        done = {r["prompt_id"] for r in recover_jsonl(pairs_path)}
        if all(p["id"] in done for p in prompts) and summary_file.exists():
            plain = pre = []  # every pair is scored already; nothing to generate
            preprompt_as = read_json(summary_file)["preprompt_as"]
        else:
            ctx.log.info("distill v%d: answering %d prompts with and without preprompt (%s)", ctx.version,
                         len(prompts), ctx.parent_policy)
            plain, pre, preprompt_as = generate_pairs(ctx, prompts, categories, work)
            write_json(summary_file, {"preprompt_as": preprompt_as})

        # step 4: safety-RM scores of both answers and the gate (LLaMA 2 Sec. 4.2.4, Fig. 16)
        rows = score_and_gate(ctx, prompts, categories, plain, pre, preprompt_as, pairs_path)
        write_jsonl(train_path, [training_row(r) for r in rows if r["kept"]])
    order = {p["id"]: i for i, p in enumerate(prompts)}
    rows = sorted(read_jsonl(pairs_path), key=lambda r: order[r["prompt_id"]])
    kept = read_jsonl(train_path)

    # step 5: fine-tune the parent on the kept answers, the preprompt removed (the SFT code path)
    if ft_file.exists() and (policy_dir.exists() or not kept):
        ft = read_json(ft_file)
    elif not kept:
        ft = None  # nothing to distil: no distill_policy/, the next stage starts from the parent
        ctx.log.warning("distill v%d: no preprompted answer beat the plain one by margin %g; no fine-tune",
                        ctx.version, cfg.margin)
        write_json(ft_file, ft)
    else:
        from saferounds.pipeline.training.sft import finetune

        train_cfg = dataclasses.replace(ctx.config.sft, epochs=cfg.finetune.epochs,
                                        learning_rate=cfg.finetune.learning_rate, batch_size=cfg.finetune.batch_size)
        ctx.progress(f"v{ctx.version} distill: fine-tuning on {len(kept)} kept answers")
        ft = finetune(ctx.parent_policy, [{"messages": r["messages"], "completion": r["completion"]} for r in kept],
                      train_cfg, ctx.config.model, policy_dir, work / "trainer", seed=ctx.config.seed)
        write_json(ft_file, ft)
    return {**summarise(rows, rows[0]["preprompt_as"] if rows else None), "finetune": ft,
            "policy": policy_dir.name if policy_dir.exists() else None}
