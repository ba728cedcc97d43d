"""The round's `ppo` stage: PPO on the gated reward from this round's RS checkpoint (LLaMA 2 Sec. 3.2.3).

  start   ctx.dir/rs_policy when this round ran rs, else the parent version's policy
  pi_0    ppo.reference: `start` (default) or `v0`; with LoRA, the start checkpoint is the frozen base
          and pi_0 is the adapter switched off (no second copy)
  reward  both reward models of this round on the decoded responses, gated (Eq. 4), whitened with
          running statistics across PPO steps when gate.whiten
  writes  ppo_policy/ (save_pretrained, LoRA merged), ppo_log.jsonl (one line per step),
          tensorboard/ (when tensorboard is installed), work/ppo/ (checkpoints; resumed from)
"""
from __future__ import annotations

from pathlib import Path

from core.errors import InputError
from pipeline.data import load_prompts
from pipeline.models import is_adapter_dir, load_policy
from pipeline.training.ppo import ScoreFn, make_accelerator, save_policy, train_ppo
from reward_models.config import GateConfig
from reward_models.gating import gated_reward
from reward_models.scoring import score


def rm_score_fn(helpfulness, safety, gate: GateConfig, batch_size: int = 16, max_length: int = 512) -> ScoreFn:
    """(prompts, responses) -> (logit(R_c), used_safety) from two (model, tokenizer) RMs; not whitened
    here (the PPO loop whitens with running statistics shared by all processes)."""
    def score_fn(prompts: list[dict], responses: list[str]):
        messages = [p["messages"] for p in prompts]
        h = score(*helpfulness, messages, responses, batch_size=batch_size, max_length=max_length)
        s = score(*safety, messages, responses, batch_size=batch_size, max_length=max_length)
        return gated_reward(s, h, [bool(p.get("is_safety", False)) for p in prompts],
                            threshold=gate.threshold, whitening=False, eps=gate.eps)
    return score_fn


def start_checkpoint(ctx) -> Path:
    rs = Path(ctx.dir) / "rs_policy"
    return rs if rs.exists() else Path(ctx.parent_policy)


def reference_path(ctx, start: Path) -> Path:
    return Path(ctx.workspace.policy_path(0)) if ctx.config.ppo.reference == "v0" else start


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def load_reference(policy, start: Path, ref: Path, model_cfg):
    """None when pi_0 is the policy with its adapter disabled; else a frozen copy loaded from `ref`."""
    if hasattr(policy, "disable_adapter"):
        # A fresh adapter sits on the start checkpoint; an adapter directory's own base is its base.
        base = policy.peft_config["default"].base_model_name_or_path if is_adapter_dir(start) else start
        if _same(base, ref):
            return None
    if not hasattr(policy, "disable_adapter") and _same(ref, start):
        return None  # train_ppo freezes a copy of the policy as given (the start checkpoint)
    model, _ = load_policy(ref, model_cfg, for_training=False)
    return model


def load_critic(ctx, policy_vocab: int):
    """The helpfulness RM as the initial critic (InstructGPT); it must read the policy's tokens."""
    from reward_models.modeling import load_reward_model

    path = ctx.rm_paths.get("helpfulness")
    if path is None:
        raise InputError("ppo.value_model: 'critic' starts from the helpfulness reward model; plan an rm stage")
    critic, _ = load_reward_model(path, ctx.config.model)
    if hasattr(critic, "merge_and_unload"):
        critic = critic.merge_and_unload()
    if critic.config.vocab_size < policy_vocab:
        raise InputError(f"ppo.value_model: the helpfulness RM ({path}) has a vocabulary of "
                         f"{critic.config.vocab_size} tokens, the policy {policy_vocab}; a critic must share "
                         "the policy's tokenizer; use value_model: head")
    critic.train().requires_grad_(True)
    return critic


def run(ctx) -> dict:
    cfg, model_cfg = ctx.config.ppo, ctx.config.model
    out = Path(ctx.dir)
    if not ctx.config.data.prompts:
        raise InputError("data.prompts: the ppo stage needs at least one prompts file in saferounds.yaml")
    missing = [k for k in ("helpfulness", "safety") if k not in ctx.rm_paths]
    if missing:
        raise InputError(f"ppo stage of v{ctx.version}: no {' or '.join(missing)} reward model yet; plan an "
                         "`rm` stage before `ppo` (rounds.plan) or train one with `saferounds rm train`")
    prompts = [p for f in ctx.config.data.prompts for p in load_prompts(ctx.workspace.resolve(f))]
    start = start_checkpoint(ctx)
    ref_path = reference_path(ctx, start)
    accelerator = make_accelerator(out / "tensorboard")

    from reward_models.modeling import load_reward_model

    rms = {}
    for kind in ("helpfulness", "safety"):
        model, tok = load_reward_model(ctx.rm_paths[kind], model_cfg)
        rms[kind] = (model.to(accelerator.device).eval().requires_grad_(False), tok)
    rm_cfg = ctx.config.reward_models
    score_fn = rm_score_fn(rms["helpfulness"], rms["safety"], ctx.config.gate,
                           batch_size=rm_cfg.score_batch_size, max_length=rm_cfg.max_length)

    policy, tokenizer = load_policy(start, model_cfg, for_training=True)
    reference = load_reference(policy, start, ref_path, model_cfg)
    critic = load_critic(ctx, len(tokenizer)) if cfg.value_model == "critic" else None
    ctx.log.info("ppo: start %s, reference %s%s, %d prompts", start, ref_path,
                 " (adapter disabled)" if reference is None and hasattr(policy, "disable_adapter") else "",
                 len(prompts))
    policy, summary = train_ppo(policy, tokenizer, prompts, score_fn, cfg, ref_policy=reference, critic=critic,
                                work_dir=out / "work" / "ppo", log_path=out / "ppo_log.jsonl",
                                whiten_scores=ctx.config.gate.whiten, accelerator=accelerator,
                                logger=ctx.log, progress=ctx.progress)
    from core.finite import check_weights

    check_weights(policy, "ppo", summary["steps_done"])  # never save (or finish a version with) a NaN policy
    save_policy(policy, tokenizer, out / "ppo_policy", accelerator)
    last = summary.get("last", {})
    return {"ppo_start": str(start), "ppo_reference": str(ref_path), "ppo_steps": summary["steps_done"],
            "ppo_stopped_early": summary["stopped_early"],
            **{f"ppo_{k}": last[k] for k in ("score", "kl", "entropy", "response_length",
                                             "share_safety_branch") if k in last}}
