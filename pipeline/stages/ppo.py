"""The round's `ppo` stage: PPO on the gated reward from this round's RS checkpoint (LLaMA 2 Sec. 3.2.3).

  1. start   ctx.parent_policy: ctx.dir/rs_policy when this round ran rs (pipeline.rounds.stage_parent), else
             the parent version's policy
  2. reward  both reward models of this round on the decoded responses, gated (Sec. 3.2.3), whitened
             with running statistics across PPO steps when gate.whiten
  3. models  the policy (trainable), pi_0 from ppo.reference: `start` (default) or `v0` (with LoRA and
             pi_0 = the start checkpoint, pi_0 is the adapter switched off: no second copy), and the
             critic when ppo.value_model is `critic`
  4. train   pipeline.training.ppo.train_ppo, R = R~_c - beta * KL (Eq. 4)
             -> ppo_log.jsonl (one line per step), work/ppo/ (checkpoints; resumed from); curves in
             WORKSPACE/runs/vN/ppo (core.tracking; for `saferounds ppo --out DIR` runs/DIR-name/ppo) when
             tensorboard is installed
  5. save    ppo_policy/ (save_pretrained, LoRA merged)
"""
from __future__ import annotations

from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.core.tracking import runs_dir
from saferounds.data.load import load_prompts
from saferounds.pipeline.models import is_adapter_dir, load_policy
from saferounds.pipeline.stage_policies import POLICY_DIRS
from saferounds.pipeline.stages.context import StageContext, validate_planned_rms, validate_prompts
from saferounds.pipeline.training.ppo import make_accelerator, train_ppo
from saferounds.pipeline.training.ppo_checkpoint import save_policy
from saferounds.pipeline.workspace import Workspace
from saferounds.reward_models.gating import gated_score_fn
from saferounds.reward_models.modeling import load_reward_model, load_reward_models, require_reward_models


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """The prompts load, and both reward models are there."""
    validate_prompts(ws, plan)
    validate_planned_rms(ws, n, plan)


def run(ctx: StageContext) -> dict:
    cfg, model_cfg, rm_cfg = ctx.config.ppo, ctx.config.model, ctx.config.reward_models
    out = Path(ctx.dir)
    if not ctx.config.data.prompts:
        raise InputError("data.prompts: the ppo stage needs at least one prompts file in saferounds.yaml")
    require_reward_models(ctx.rm_paths, "ppo", ctx.version)
    prompts = [p for f in ctx.config.data.prompts for p in load_prompts(ctx.workspace.resolve(f))]

    # step 1: where PPO starts (this round's rs_policy/ when it ran rs), and its KL anchor
    start = Path(ctx.parent_policy)
    ref_path = reference_path(ctx, start)
    accelerator = make_accelerator(tensorboard_dir(ctx).parent)  # the tracker adds the run name, "ppo"

    # step 2: the gated reward of this round's RMs (whitened by the loop)
    rms = load_reward_models(ctx.rm_paths, model_cfg, device=accelerator.device)
    score_fn = gated_score_fn(rms["helpfulness"], rms["safety"], ctx.config.gate,
                              batch_size=rm_cfg.score_batch_size, max_length=rm_cfg.max_length)

    # step 3: policy, reference and (optionally) critic
    policy, tokenizer = load_policy(start, model_cfg, for_training=True)
    reference = load_reference(policy, start, ref_path, model_cfg)
    critic = load_critic(ctx.rm_paths.get("helpfulness"), model_cfg, len(tokenizer)) \
        if cfg.value_model == "critic" else None
    ctx.log.info("ppo: start %s, reference %s%s, %d prompts", start, ref_path,
                 " (adapter disabled)" if reference is None and hasattr(policy, "disable_adapter") else "",
                 len(prompts))

    # step 4: PPO
    policy, summary = train_ppo(policy, tokenizer, prompts, score_fn, cfg, ref_policy=reference, critic=critic,
                                work_dir=out / "work" / "ppo", log_path=out / "ppo_log.jsonl",
                                whiten_scores=ctx.config.gate.whiten, accelerator=accelerator,
                                logger=ctx.log, progress=ctx.progress)

    # step 5: save the policy (never a NaN one: a diverged run fails the stage instead)
    from saferounds.core.finite import check_weights

    check_weights(policy, "ppo", summary["steps_done"])
    save_policy(policy, tokenizer, out / POLICY_DIRS["ppo"], accelerator)
    last = summary.get("last", {})
    return {"ppo_start": str(start), "ppo_reference": str(ref_path), "ppo_steps": summary["steps_done"],
            "ppo_reference_version": reference_version(ctx, ref_path), "ppo_max_kl": cfg.kl_limit,
            "ppo_max_refusal_rate": cfg.max_refusal_rate, "ppo_stopped_early": summary["stopped_early"],
            **({"ppo_stop_reason": summary["stop_reason"]} if summary.get("stop_reason") else {}),
            **({"ppo_stop_message": summary["stop_message"]} if summary.get("stop_message") else {}),
            **{f"ppo_{k}": last[k] for k in ("score", "kl", "entropy", "response_length",
                                             "share_safety_branch") if k in last}}


def tensorboard_dir(ctx: StageContext) -> Path:
    """WORKSPACE/runs/vN/ppo in a round; runs/<--out's name>/ppo outside one."""
    ws = ctx.workspace
    inside = Path(ws.versions_dir).resolve() in Path(ctx.dir).resolve().parents
    return runs_dir(ws.root, f"v{ctx.version}" if inside else Path(ctx.dir).name, "ppo")


def reference_path(ctx: StageContext, start: Path) -> Path:
    return Path(ctx.workspace.policy_path(0)) if ctx.config.ppo.reference == "v0" else start


def reference_version(ctx: StageContext, ref: Path) -> str | None:
    """"vM" when the KL anchor pi_0 is a finished version's policy (e.g. v2 for the smollm2 preset's v3), else
    None (this round's own rs_policy/)."""
    ws = ctx.workspace
    return next((f"v{m}" for m in ws.finished_versions() if _same(ws.policy_path(m), ref)), None)


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


def load_critic(helpfulness_rm: Path | None, model_cfg, policy_vocab: int):
    """The helpfulness RM as the initial critic (InstructGPT); it must read the policy's tokens."""
    if helpfulness_rm is None:
        raise InputError("ppo.value_model: 'critic' starts from the helpfulness reward model; plan an rm stage")
    critic, _ = load_reward_model(helpfulness_rm, model_cfg)
    if hasattr(critic, "merge_and_unload"):
        critic = critic.merge_and_unload()
    if critic.config.vocab_size < policy_vocab:
        raise InputError(f"ppo.value_model: the helpfulness RM ({helpfulness_rm}) has a vocabulary of "
                         f"{critic.config.vocab_size} tokens, the policy {policy_vocab}; a critic must share "
                         "the policy's tokenizer; use value_model: head")
    critic.train().requires_grad_(True)
    return critic
