"""PPO on the gated reward with a KL penalty to the reference policy (LLaMA 2 Sec. 3.2.3).

One iteration of `train_ppo` (CleanRL's shape, for language models), one function per phase:
  step 1. collect_rollout: sample a response per prompt from pi_theta; score the decoded text with the
          gated score R_c (LLaMA 2 Sec. 3.2.3); record log pi_theta, log pi_0, V          -> Rollout
  step 2. estimate_advantages: R~_c = the score whitened with running statistics; per-token rewards
          -beta * (log pi_theta - log pi_0), plus R~_c on the last token (LLaMA 2 Eq. 4, R = R~_c - beta * KL);
  step 3. GAE(gamma, lambda) advantages and returns, advantages whitened              -> Advantages
          (ppo.max_kl ends the run here, with a message, once the mean KL passes it)
  step 4. ppo_update: `ppo_epochs` passes over the batch in shuffled mini-batches, one AdamW step per
          mini-batch on the clipped surrogate + vf_coef * clipped value loss          -> PPOStats
  step 5. step_metrics: every number averaged over processes, logged (KL, the gated reward, response length
          and the refusal rate of the rollouts by eval.refusal's patterns among them); a checkpoint every
          ppo.save_every.
The equations are pure functions in ppo_math; sampling is ppo_sampling, the network ppo_model, and what
goes to disk (checkpoints, the step log, the trained policy) ppo_checkpoint.

Value function: a scalar head on the policy's last hidden state by default (`value_model: head`),
a separate critic (`value_model: critic`, initialised from the helpfulness reward model as in
InstructGPT) on request. The head is the default because it costs no second model: no second copy
of a 7-70B network and its AdamW state in memory, one forward/backward per mini-batch instead of
two, and it works unchanged with LoRA (the head trains beside the adapter). The price is that the
value loss shares the trunk with the policy; vf_coef (0.1) keeps its gradient small next to the
policy loss. Choose `critic` when memory allows and the value loss is seen to disturb the policy.

Reference policy pi_0: the round's starting checkpoint (or v0). With LoRA and a reference equal to
the frozen base, pi_0 is the same weights with the adapter disabled (peft's disable_adapter), so no
second copy is held. Runs unchanged under `accelerate launch` (DDP): each process samples its share
of the batch; scores, whitening statistics and logged metrics are reduced across processes.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from saferounds.core.errors import InputError
from saferounds.core.finite import check_scores, check_value, total_norm
from saferounds.core.maths import masked_mean, whiten
from saferounds.core.progress import NullProgress
from saferounds.core.progress import current as current_progress
from saferounds.core.tracking import accelerate_init_kwargs, trackers
from saferounds.eval.refusal import is_refusal
from saferounds.pipeline.training.config import PPOConfig
from saferounds.pipeline.training.ppo_checkpoint import StepLog, load_checkpoint, save_checkpoint
from saferounds.pipeline.training.ppo_math import entropy_of, gae, kl_penalised_rewards, logprobs_of, policy_loss, value_loss
from saferounds.pipeline.training.ppo_model import (PolicyAndValue, cat_frozen, disable_dropout, forward_response,
                                                    is_peft, reference_pass, trim)
from saferounds.pipeline.training.ppo_sampling import (encode_prompts, generate, generate_scored, left_pad,
                                                       rollout_from_sampling)
from saferounds.reward_models.gating import RunningWhitener

# A score function maps (prompt records, decoded responses) to (raw gated score logit(R_c) per
# response, used_safety flags or None). The loop whitens the scores itself with running statistics
# shared by all processes, so score functions must NOT whiten.
ScoreFn = Callable[[list, list], "tuple[torch.Tensor, Optional[torch.Tensor]]"]


class Rollout(NamedTuple):
    """The experience of one rollout chunk (or, after cat_rollouts, of the whole iteration on this
    process). B responses; Q prompt and T response positions."""
    query_ids: torch.Tensor      # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor     # (B, Q)
    response_ids: torch.Tensor   # (B, T) sampled tokens, right-padded with pad_id
    response_mask: torch.Tensor  # (B, T) 1 up to and including EOS
    logprobs: torch.Tensor       # (B, T) log pi_theta(token) when sampled
    ref_logprobs: torch.Tensor   # (B, T) log pi_0(token)
    values: torch.Tensor         # (B, T) V(s_t) when sampled
    scores: torch.Tensor         # (B,) raw gated score logit(R_c), not whitened
    used_safety: torch.Tensor    # (B,) bool: the gate took the safety branch
    frozen: Optional[torch.Tensor] = None  # (B, Q + T, H) the frozen lower layers' output (ppo_model), or None


class Advantages(NamedTuple):
    """Steps 2-3 on this process's Rollout."""
    score_whitened: torch.Tensor  # (B,) R~_c (the raw score when gate.whiten is off)
    kl: torch.Tensor              # (B, T) log pi_theta - log pi_0 on response tokens; a row's sum estimates KL
    advantages: torch.Tensor      # (B, T) GAE, whitened over the batch of all processes
    returns: torch.Tensor         # (B, T) advantages + V: the value target


class PPOStats(NamedTuple):
    """Step 4's losses and diagnostics: of one mini-batch, or their mean over a step on this process."""
    policy_loss: torch.Tensor      # the clipped surrogate (Schulman et al. 2017 Eq. 7), as a loss
    value_loss: torch.Tensor       # the clipped value loss
    clip_frac: torch.Tensor        # share of response tokens whose ratio was clipped
    approx_kl: torch.Tensor        # k3 estimate of KL(pi_old || pi_theta)
    entropy: torch.Tensor          # per-token entropy of pi_theta
    value_clip_frac: torch.Tensor  # share of response tokens whose value was clipped


@dataclass(frozen=True)
class RolloutSettings:
    """What the rollout needs beyond the config, decided once per run."""
    pad_id: int
    eos_id: int | None
    device: torch.device
    logprobs_from_sampling: bool  # ppo.rollout_logprobs resolved: old log pi and V from the sampling pass


class PPOSetup(NamedTuple):
    """The models and optimiser state train_ppo builds once."""
    model: nn.Module                  # PolicyAndValue as accelerate prepared it (DDP under accelerate launch)
    unwrapped: PolicyAndValue         # the same module unwrapped: sampling, reference, checkpoints
    ref_policy: nn.Module | None      # pi_0, frozen; None: the policy with its LoRA adapter disabled
    optimizer: torch.optim.Optimizer
    params: list                      # the trainable parameters (gradient clipping, norm checks)
    whitener: RunningWhitener | None  # running statistics of the score (gate.whiten); None: raw scores


class StepClock:
    """Seconds of one PPO step: generating and scoring (summed over chunks), steps 1-3, the whole step."""

    def __init__(self):
        self.start = time.perf_counter()
        self.spent = {"rollout_s": 0.0, "generate_s": 0.0, "score_s": 0.0}

    @contextlib.contextmanager
    def timing(self, key: str):
        t = time.perf_counter()
        yield
        self.spent[key] += time.perf_counter() - t

    def lap(self, key: str) -> None:
        self.spent[key] = time.perf_counter() - self.start

    def seconds(self) -> dict:
        return {**self.spent, "step_s": time.perf_counter() - self.start}


def batch_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompts of iteration `step`: consecutive slices of a stream of seeded epoch
    permutations, so the order depends only on (seed, step) and a resumed run sees the same data."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos + len(out), n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        out.extend(perm[offset: offset + batch_size - len(out)].tolist())
    return out


def train_ppo(policy, tokenizer, prompts: list[dict], score_fn: ScoreFn, cfg: PPOConfig, *,
              ref_policy=None, critic=None, work_dir: Path | None = None, log_path: Path | None = None,
              whiten_scores: bool = True, accelerator=None, logger: logging.Logger | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[nn.Module, dict]:
    """Run PPO; returns (the trained policy, unwrapped, on the main device; summary metrics).

    prompts: normalised prompt records ({"messages", "is_safety", ...}). ref_policy: pi_0; None
    means the policy's disabled adapter (LoRA) or a frozen copy of the policy as given (full
    fine-tuning). critic: a *ForSequenceClassification model for `value_model: critic`.
    work_dir: checkpoints (resumed from when present). log_path: the JSONL step log.
    whiten_scores: gate.whiten, R~_c = whiten(logit(R_c)) with running statistics (else the raw score).
    """
    logger = logger or logging.getLogger("saferounds.ppo")
    accelerator = accelerator or make_accelerator(log_path.parent / "tensorboard" if log_path else None)
    world, rank = accelerator.num_processes, accelerator.process_index
    check_inputs(cfg, prompts, critic, world)
    if cfg.kl_stop is not None:
        logger.warning("ppo.kl_stop is deprecated: it is read as ppo.max_kl; rename it in saferounds.yaml")
    refused: list[bool] = []  # the refusal patterns' verdicts on this step's rollouts, in batch order
    score_fn = _noting_refusals(score_fn, refused)
    run = setup_models(policy, ref_policy, critic, cfg, accelerator, whiten_scores)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = RolloutSettings(pad_id, tokenizer.eos_token_id, accelerator.device,
                               rollout_from_sampling(cfg, run.unwrapped.policy))

    torch.manual_seed(cfg.seed * 1_000_003 + rank)  # each process samples differently
    random.seed(cfg.seed + rank)
    start = load_checkpoint(work_dir, run.unwrapped, run.optimizer, run.whitener, accelerator, logger) \
        if work_dir else 0
    if start:
        logger.info("ppo: resuming from step %d (%s)", start, work_dir)
    if accelerator.trackers == [] and log_path is not None and accelerator.log_with:
        accelerator.init_trackers("ppo", config={k: v for k, v in asdict(cfg).items() if v is not None},
                                  init_kwargs=accelerate_init_kwargs(Path(accelerator.project_dir) / "ppo"))
    log_step = StepLog(log_path, accelerator, logger, start)
    bar = current_progress() if accelerator.is_main_process else NullProgress()
    bar.stage("ppo", total=cfg.steps, unit="steps")
    bar.advance(start)
    encoded = encode_prompts(tokenizer, prompts)
    summary: dict = {"steps_done": start, "stopped_early": False}
    window: list[tuple[int, int]] = []  # (refused, rollouts) of the helpful branch per step, for max_refusal_rate

    for step in range(start, cfg.steps):
        clock = StepClock()
        refused.clear()
        idx = batch_indices(len(prompts), cfg.batch_size, step, cfg.seed)[rank::world]
        # step 1: rollout
        batch = collect_rollout(run, settings, tokenizer, [encoded[i] for i in idx], [prompts[i] for i in idx],
                                score_fn, cfg, step, clock)
        # steps 2-3: whitened score, KL-penalised rewards (Eq. 4), whitened GAE advantages
        adv = estimate_advantages(batch, run.whitener, cfg, accelerator)
        mean_kl = accelerator.reduce(adv.kl.sum(1).mean(), reduction="mean").item()
        window.append(helpful_refusals(refused, batch.used_safety, accelerator))
        stop = early_stop(step, mean_kl, window, cfg)
        if stop:
            summary.update(stopped_early=True, **stop)
            announce_stop(step, stop, logger, progress, log_path if accelerator.is_main_process else None)
            break
        clock.lap("rollout_s")
        # step 4: PPO epochs over shuffled mini-batches, one optimiser step each
        stats = ppo_update(run, batch, adv, cfg, accelerator, step)
        # step 5: log (everything averaged over processes), check, checkpoint
        metrics = step_metrics(step, batch, adv, stats, cfg, accelerator, clock, refused)
        log_step(metrics)
        if progress:
            progress(f"ppo step {step + 1}/{cfg.steps}: score {metrics['score']:.3f} KL {metrics['kl']:.3f}")
        bar.advance(1, score=metrics["score"], kl=metrics["kl"])
        check_value(total_norm(run.params), "ppo", step + 1, "the weight norm")
        summary.update(steps_done=step + 1, last=metrics)
        if work_dir is not None and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(work_dir, step + 1, run.unwrapped, run.optimizer, run.whitener, accelerator)

    accelerator.wait_for_everyone()
    if accelerator.trackers:
        accelerator.end_training()
    last = summary.get("last") or {}
    bar.done((f"score {last['score']:.3f}, KL {last['kl']:.3f}" if last else f"{summary['steps_done']} steps")
             + (f" ({STOP_REASONS[summary['stop_reason']]})" if summary["stopped_early"] else ""))
    return run.unwrapped.policy, summary


def check_inputs(cfg: PPOConfig, prompts: list[dict], critic, world: int) -> None:
    problems = []
    if cfg.batch_size % world:
        problems.append(f"ppo.batch_size: {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.batch_size % cfg.mini_batch_size:
        problems.append(f"ppo.mini_batch_size: {cfg.mini_batch_size} does not divide ppo.batch_size "
                        f"{cfg.batch_size}")
    if cfg.mini_batch_size % world:
        problems.append(f"ppo.mini_batch_size: {cfg.mini_batch_size} is not divisible by the {world} processes")
    if problems:
        raise InputError("\n".join(problems))
    if not prompts:
        raise InputError("data.prompts: PPO needs at least one prompt")
    if cfg.value_model == "critic" and critic is None:
        raise InputError("ppo.value_model: 'critic' needs a critic model")


def setup_models(policy, ref_policy, critic, cfg: PPOConfig, accelerator, whiten_scores: bool) -> PPOSetup:
    """pi_0 frozen (a copy of the policy as given unless LoRA can disable its adapter), no dropout
    anywhere, the policy with its value head or critic as one module, AdamW; prepared by accelerate."""
    if ref_policy is None and not is_peft(policy):
        ref_policy = copy.deepcopy(policy)  # the start checkpoint, frozen before any update
    if ref_policy is not None:
        ref_policy.requires_grad_(False).eval()
        ref_policy.to(accelerator.device)
    for m in (policy, critic, ref_policy):
        if m is not None:
            disable_dropout(m)
    model = PolicyAndValue(policy, critic if cfg.value_model == "critic" else None)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    return PPOSetup(model, accelerator.unwrap_model(model), ref_policy, optimizer, params,
                    RunningWhitener() if whiten_scores else None)


def collect_rollout(run: PPOSetup, settings: RolloutSettings, tokenizer, queries: list[list[int]],
                    records: list[dict], score_fn: ScoreFn, cfg: PPOConfig, step: int, clock: StepClock) -> Rollout:
    """Step 1 on this process's prompts (token ids `queries`, prompt `records`), in chunks of
    ppo.rollout_batch_size: a sampled response each, its log pi_theta, log pi_0 and V per token, and
    the raw gated score logit(R_c)."""
    q_all, qm_all = left_pad(queries, settings.pad_id)
    chunks = []
    for c in range(0, len(queries), cfg.rollout_batch_size):
        rows = slice(c, c + cfg.rollout_batch_size)
        chunks.append(_rollout_chunk(run, settings, tokenizer, q_all[rows], qm_all[rows], records[rows],
                                     score_fn, cfg, step, clock))
    return cat_rollouts(chunks, settings.pad_id)


def _rollout_chunk(run: PPOSetup, settings: RolloutSettings, tokenizer, q_ids, q_mask, records: list[dict],
                   score_fn: ScoreFn, cfg: PPOConfig, step: int, clock: StepClock) -> Rollout:
    """One chunk of step 1. The old log pi_theta and V come from the sampling pass itself, or (ppo.rollout_logprobs
    resolved to `forward`) from a second no-grad forward over prompt + response."""
    pad_id, eos_id = settings.pad_id, settings.eos_id
    q_ids, q_mask = q_ids.to(settings.device), q_mask.to(settings.device)
    with clock.timing("generate_s"):
        if settings.logprobs_from_sampling:
            r_ids, r_mask, logp, values = generate_scored(run.unwrapped, q_ids, q_mask, cfg, pad_id, eos_id)
        else:
            r_ids, r_mask = generate(run.unwrapped.policy, q_ids, q_mask, cfg, pad_id, eos_id)
    q_ids, q_mask, r_ids, r_mask = trim(q_ids, q_mask, r_ids, r_mask)
    with torch.no_grad():
        if not settings.logprobs_from_sampling:  # a second forward pass for the old log pi and V
            logits, values = forward_response(run.unwrapped, q_ids, q_mask, r_ids, r_mask, cfg.temperature)
            logp = logprobs_of(logits, r_ids)
            del logits
        ref_logp, frozen = reference_pass(run.ref_policy, run.unwrapped, q_ids, q_mask, r_ids, r_mask, cfg.temperature)
    texts = tokenizer.batch_decode(r_ids.masked_fill(r_mask == 0, pad_id).tolist(), skip_special_tokens=True)
    with clock.timing("score_s"):
        score, used_safety = score_fn(records, texts)
    score = torch.as_tensor(score, dtype=torch.float32)
    check_scores(score.tolist(), f"ppo step {step + 1}", "the reward-model score")
    if used_safety is None:
        used_safety = torch.zeros(len(texts), dtype=torch.bool)
    return Rollout(q_ids, q_mask, r_ids, r_mask, logp, ref_logp, values, scores=score.to(settings.device),
                   used_safety=used_safety.to(settings.device), frozen=frozen)


def estimate_advantages(batch: Rollout, whitener: RunningWhitener | None, cfg: PPOConfig,
                        accelerator) -> Advantages:
    """Steps 2-3. R~_c = whiten(logit(R_c)) with running statistics over all processes (Sec. 3.2.3);
    per-token rewards R = R~_c - beta * KL (LLaMA 2 Eq. 4); GAE advantages, whitened over the batch of
    all processes, and returns."""
    mask = batch.response_mask.float()
    all_scores = accelerator.gather(batch.scores)
    if whitener is None:
        score_w = batch.scores
    else:
        whitener.update(all_scores)
        score_w = whitener.whiten(batch.scores)
    with torch.no_grad():
        rewards, kl = kl_penalised_rewards(score_w, batch.logprobs, batch.ref_logprobs, mask, cfg.beta)
        advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask, stats=_global_mean_var(advantages, mask, accelerator))
    return Advantages(score_w, kl, advantages, returns)


def ppo_update(run: PPOSetup, batch: Rollout, adv: Advantages, cfg: PPOConfig, accelerator, step: int) -> PPOStats:
    """Step 4: ppo.ppo_epochs passes over this process's batch in shuffled mini-batches (ppo.mini_batch_size
    over all processes), one AdamW step each; returns the mean of the mini-batches' PPOStats."""
    b_size = batch.response_ids.shape[0]
    mb_size = cfg.mini_batch_size // accelerator.num_processes
    per_minibatch: list[PPOStats] = []
    for epoch in range(cfg.ppo_epochs):
        b_inds = torch.randperm(b_size, generator=torch.Generator().manual_seed(
            (cfg.seed * 1_000_003 + step) * 1_009 + epoch))
        for start in range(0, b_size, mb_size):
            mb_inds = b_inds[start: start + mb_size].to(accelerator.device)
            per_minibatch.append(_minibatch_step(run, batch, adv, mb_inds, cfg, accelerator, step))
    return PPOStats(*(torch.stack(column).mean() for column in zip(*per_minibatch)))


def _minibatch_step(run: PPOSetup, batch: Rollout, adv: Advantages, mb_inds: torch.Tensor, cfg: PPOConfig,
                    accelerator, step: int) -> PPOStats:
    """One AdamW step on the clipped surrogate (Schulman et al. 2017 Eq. 7) + vf_coef * the clipped value loss."""
    mb_q_ids, mb_q_mask, mb_r_ids, mb_r_mask = trim(batch.query_ids[mb_inds], batch.query_mask[mb_inds],
                                                    batch.response_ids[mb_inds], batch.response_mask[mb_inds])
    width, q_full = mb_r_ids.shape[1], batch.query_ids.shape[1]
    mb_mask = mb_r_mask.float()
    frozen = None if batch.frozen is None else batch.frozen[mb_inds, q_full - mb_q_ids.shape[1]: q_full + width]
    logits, new_values = forward_response(run.model, mb_q_ids, mb_q_mask, mb_r_ids, mb_r_mask, cfg.temperature,
                                          frozen=frozen)
    new_logp = logprobs_of(logits, mb_r_ids)
    pg, pg_stats = policy_loss(new_logp, batch.logprobs[mb_inds, :width], adv.advantages[mb_inds, :width],
                               mb_mask, cfg.clip_ratio)
    vl, vf_stats = value_loss(new_values, batch.values[mb_inds, :width], adv.returns[mb_inds, :width], mb_mask,
                              cfg.clip_value)
    loss = pg + cfg.vf_coef * vl
    check_value(loss, "ppo", step + 1, "the loss")
    accelerator.backward(loss)
    if cfg.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
    else:
        grad_norm = total_norm(p.grad for p in run.params if p.grad is not None)
    check_value(grad_norm, "ppo", step + 1, "the gradient norm")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        entropy = masked_mean(entropy_of(logits.detach()), mb_mask)
    return PPOStats(policy_loss=pg.detach(), value_loss=vl.detach(), entropy=entropy, **pg_stats, **vf_stats)


def kl_stop_message(step: int, mean_kl: float, cfg: PPOConfig) -> str:
    """What PPO says when it stops early on ppo.max_kl (LLaMA 2 Eq. 4's penalty did not hold the policy)."""
    return (f"ppo: stopped early before step {step + 1} of {cfg.steps}: the rollouts' mean KL to the reference, "
            f"{mean_kl:.4g} nats per response, passed ppo.max_kl {cfg.kl_limit:.4g}; the policy after step {step} "
            "is kept")


STOP_REASONS = {"kl": "stopped early: KL passed ppo.max_kl",
                "refusal": "stopped early: helpful-branch refusals passed ppo.max_refusal_rate"}
STOP_FILE = "ppo_stop.json"  # beside the step log: why and before which step PPO stopped early


def early_stop(step: int, mean_kl: float, window: list[tuple[int, int]], cfg: PPOConfig) -> dict | None:
    """Why PPO stops before step `step`'s update (ppo.max_kl, then ppo.max_refusal_rate), or None."""
    if cfg.kl_limit is not None and mean_kl > cfg.kl_limit:
        return dict(stop_reason="kl", kl_at_stop=mean_kl, stop_message=kl_stop_message(step, mean_kl, cfg))
    pooled = pooled_refusal_rate(window, cfg.refusal_window)
    if cfg.max_refusal_rate is not None and pooled is not None and pooled[0] > cfg.max_refusal_rate:
        return dict(stop_reason="refusal", refusal_at_stop=pooled[0],
                    stop_message=refusal_stop_message(step, pooled, cfg))
    return None


def announce_stop(step: int, stop: dict, logger, progress, log_path: Path | None) -> None:
    """The early stop's message to the log and the progress callback; ppo_stop.json beside the step log."""
    logger.warning(stop["stop_message"])
    if progress:
        progress(stop["stop_message"])
    if log_path is not None:
        write_stop(log_path, step, stop)


def helpful_refusals(refused: list[bool], used_safety: torch.Tensor, accelerator) -> tuple[int, int]:
    """(refused, rollouts) among this step's rollouts the gate scored with the helpfulness RM, summed over
    processes; (0, 0) when the refusal verdicts do not line up with the batch."""
    helpful = ~used_safety.bool()
    if len(refused) != len(helpful):
        return 0, 0
    flags = torch.tensor([bool(x) for x in refused], dtype=torch.bool, device=helpful.device)
    counts = torch.stack([(flags & helpful).sum(), helpful.sum()]).float()
    counts = accelerator.reduce(counts, reduction="sum")
    return int(counts[0].item()), int(counts[1].item())


def pooled_refusal_rate(window: list[tuple[int, int]], steps: int, min_rollouts: int = 8
                        ) -> tuple[float, int, int] | None:
    """(rate, refused, rollouts) pooled over the last `steps` entries of `window`; None under `min_rollouts`."""
    k = sum(r for r, _ in window[-steps:])
    n = sum(t for _, t in window[-steps:])
    return (k / n, k, n) if n >= min_rollouts else None


def refusal_stop_message(step: int, pooled: tuple[float, int, int], cfg: PPOConfig) -> str:
    """What PPO says when it stops early on ppo.max_refusal_rate (the policy learning to refuse helpful prompts)."""
    rate, k, n = pooled
    return (f"ppo: stopped early before step {step + 1} of {cfg.steps}: the refusal patterns flag {k} of the {n} "
            f"helpful-branch rollouts of the last {min(cfg.refusal_window, step + 1)} step(s) ({rate:.0%}), past "
            f"ppo.max_refusal_rate {cfg.max_refusal_rate:.0%}; the policy after step {step} is kept")


def write_stop(log_path: Path, step: int, stop: dict) -> None:
    """ppo_stop.json beside the step log (written whole, then renamed): the report says why PPO stopped."""
    path = Path(log_path).parent / STOP_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"before_step": step + 1, **stop}, indent=1))
    os.replace(tmp, path)


def _noting_refusals(score_fn: ScoreFn, refused: list[bool]) -> ScoreFn:
    """score_fn that also notes, per response, whether the refusal patterns (eval.refusal) flag it."""
    def scored(records, texts):
        refused.extend(is_refusal(t) for t in texts)
        return score_fn(records, texts)
    return scored


def _share_of(flags: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean of `flags` over the rows where `where` is 1 (0 when there are none)."""
    return (flags * where).sum() / where.sum().clamp(min=1)


def step_metrics(step: int, batch: Rollout, adv: Advantages, stats: PPOStats, cfg: PPOConfig, accelerator,
                 clock: StepClock, refused: list[bool] | None = None) -> dict:
    """Step 5's log line, each number averaged over processes: losses; `kl` (nats per response: the sum over
    its tokens of log pi_theta - log pi_0); `score`, the gated reward logit(R_c) before whitening; branch
    shares; `response_length` (tokens); `refusal_rate`, the share of this step's rollouts the refusal
    patterns flag (`refused`, in batch order), and `refusal_rate_safety` / `refusal_rate_helpful` by the gate's
    branch (0 for an empty branch); the learning rate; seconds spent."""
    kl = adv.kl.sum(1)
    used_safety = batch.used_safety.float()
    flags = torch.tensor([bool(x) for x in refused], dtype=torch.float32, device=used_safety.device) \
        if refused and len(refused) == len(used_safety) else torch.zeros_like(used_safety)
    local = {**stats._asdict(), "kl": kl.mean(), "score": batch.scores.mean(), "refusal_rate": flags.mean(),
             "refusal_rate_safety": _share_of(flags, used_safety), "refusal_rate_helpful": _share_of(flags, 1 - used_safety),
             "score_whitened": adv.score_whitened.mean(), "non_score_reward": (-cfg.beta * kl).mean(),
             "share_safety_branch": used_safety.mean(), "share_helpfulness_branch": 1 - used_safety.mean(),
             "response_length": batch.response_mask.float().sum(1).mean()}
    keys = sorted(local)
    reduced = accelerator.reduce(torch.stack([local[k].float() for k in keys]), reduction="mean")
    return {"step": step + 1, **{k: float(v) for k, v in zip(keys, reduced.tolist())},
            "lr": cfg.learning_rate, **clock.seconds()}


def left_pad_cat(ids_list, mask_list, pad_id):
    width = max(t.shape[1] for t in ids_list)
    ids = torch.cat([nn.functional.pad(t, (width - t.shape[1], 0), value=pad_id) for t in ids_list])
    mask = torch.cat([nn.functional.pad(t, (width - t.shape[1], 0), value=0) for t in mask_list])
    return ids, mask


def cat_rollouts(chunks: list[Rollout], pad_id: int) -> Rollout:
    """One Rollout from the chunks of an iteration: prompts left-padded, per-token fields right-padded
    (token ids with pad_id, the mask with 0, log-probabilities and values with 0.0)."""
    query_ids, query_mask = left_pad_cat([c.query_ids for c in chunks], [c.query_mask for c in chunks], pad_id)
    width = max(c.response_ids.shape[1] for c in chunks)

    def right_pad_cat(field: str, value) -> torch.Tensor:
        return torch.cat([nn.functional.pad(getattr(c, field), (0, width - c.response_ids.shape[1]), value=value)
                          for c in chunks])

    return Rollout(query_ids, query_mask, response_ids=right_pad_cat("response_ids", pad_id),
                   response_mask=right_pad_cat("response_mask", 0), logprobs=right_pad_cat("logprobs", 0.0),
                   ref_logprobs=right_pad_cat("ref_logprobs", 0.0), values=right_pad_cat("values", 0.0),
                   scores=torch.cat([c.scores for c in chunks]),
                   used_safety=torch.cat([c.used_safety for c in chunks]),
                   frozen=cat_frozen([c.frozen for c in chunks], [c.query_ids.shape[1] for c in chunks],
                                     query_ids.shape[1], width))


def _global_mean_var(x, mask, accelerator):
    """Masked mean and population variance over all processes."""
    total = accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum()]), reduction="sum")
    mean = total[0] / total[1].clamp(min=1)
    sq = accelerator.reduce(((x - mean) ** 2 * mask).sum(), reduction="sum")
    return mean, sq / total[1].clamp(min=1)


def make_accelerator(project_dir: Path | None):
    """An Accelerator with the stage's trackers (tracking.report_to, core.tracking) under `project_dir`."""
    import os

    from accelerate import Accelerator

    # Several processes without CUDA (torchrun / `accelerate launch --multi_gpu` on CPUs): gloo DDP.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    log_with = trackers() if project_dir is not None else []
    if log_with:
        return Accelerator(cpu=cpu, log_with=log_with, project_dir=str(project_dir))
    return Accelerator(cpu=cpu)
