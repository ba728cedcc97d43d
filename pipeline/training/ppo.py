"""PPO on the gated reward with a KL penalty to the reference policy (LLaMA 2 Sec. 3.2.3).

One iteration (CleanRL's shape, for language models):
  1. rollout: sample a response per prompt from pi_theta; score the decoded text with the gated
     score R_c (LLaMA 2 Sec. 3.2.3); record log pi_theta, log pi_0, V;
  2. R~_c = the score whitened with running statistics; per-token rewards -beta * (log pi_theta -
     log pi_0), plus R~_c on the last token (LLaMA 2 Eq. 4, R = R~_c - beta * KL);
  3. GAE(gamma, lambda) advantages and returns, advantages whitened;
  4. `ppo_epochs` passes over the batch in shuffled mini-batches, one AdamW step per mini-batch on
     the clipped surrogate + vf_coef * clipped value loss.

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
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from saferounds.core.errors import InputError
from saferounds.core.finite import check_scores, check_value, total_norm
from saferounds.core.maths import masked_mean, whiten
from saferounds.core.progress import NullProgress
from saferounds.core.progress import current as current_progress
from saferounds.pipeline.training.config import PPOConfig
from saferounds.pipeline.training.ppo_math import entropy_of, gae, kl_penalised_rewards, logprobs_of, policy_loss, value_loss
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


class PolicyAndValue(nn.Module):
    """One module for DDP: the policy plus its value function (a head on the policy, or a critic
    that is any *ForSequenceClassification model, used per token through its `score` layer)."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        if critic is None:
            self.value_head = nn.Linear(policy.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no spurious advantages
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, keep: int):
        """(logits, values) of the last `keep` positions."""
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False)
        if self.critic is None:
            out = self.policy(**kwargs, output_hidden_states=True, logits_to_keep=keep)
            values = self.value_head(out.hidden_states[-1][:, -keep:].float()).squeeze(-1)
        else:
            out = self.policy(**kwargs, logits_to_keep=keep)
            backbone = getattr(self.critic, self.critic.base_model_prefix)
            hidden = backbone(**kwargs).last_hidden_state[:, -keep:]
            values = self.critic.score(hidden).float().squeeze(-1)
        return out.logits, values


def disable_dropout(model: nn.Module) -> None:
    """PPO ratios compare two forward passes; dropout would make them differ at ratio 1."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


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


def encode_prompts(tokenizer, prompts: list[dict]) -> list[list[int]]:
    """Chat-formatted prompt token ids (the policy answers after the generation prompt)."""
    texts = [tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def response_mask(responses: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it (generate pads finished rows)."""
    if eos_id is None:
        return torch.ones_like(responses)
    is_eos = (responses == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


@torch.no_grad()
def generate(policy, q_ids, q_mask, cfg: PPOConfig, pad_id: int, eos_id: int | None,
             do_sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses (B, R) and their mask; R is the longest response in the batch."""
    responses, mask, _, _ = _sample(policy, q_ids, q_mask, cfg, pad_id, eos_id, do_sample)
    return responses, mask


@torch.no_grad()
def generate_scored(unwrapped: "PolicyAndValue", q_ids, q_mask, cfg: PPOConfig, pad_id: int, eos_id: int | None):
    """Sample responses with their old log-probs log pi(token) at cfg.temperature and values V(s_t),
    both taken from the sampling pass (ppo.rollout_logprobs: sampling): (responses, mask, logprobs, values)."""
    return _sample(unwrapped.policy, q_ids, q_mask, cfg, pad_id, eos_id, True, value_head=unwrapped.value_head)


def _sample(policy, q_ids, q_mask, cfg: PPOConfig, pad_id: int, eos_id: int | None, do_sample: bool,
            value_head: nn.Module | None = None):
    was_training = policy.training
    policy.eval()  # KV cache on, even with gradient checkpointing
    scored = value_head is not None
    out = policy.generate(input_ids=q_ids, attention_mask=q_mask, do_sample=do_sample,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature if do_sample else None,
                          top_p=cfg.top_p if do_sample else None, top_k=0 if do_sample else None,
                          pad_token_id=pad_id, eos_token_id=eos_id, return_dict_in_generate=True,
                          output_logits=scored, output_hidden_states=scored)
    policy.train(was_training)
    responses = out.sequences[:, q_ids.shape[1]:]
    mask = response_mask(responses, eos_id)
    width = max(int(mask.sum(1).max()), 1)
    responses, mask = responses[:, :width], mask[:, :width]
    responses = responses.masked_fill(mask == 0, pad_id)
    if not scored:
        return responses, mask, None, None
    # step t's raw logits predict token t; its last hidden state (the prompt's last position at step 0) is s_t
    logits = torch.stack(out.logits[:width], 1).float() / cfg.temperature
    hidden = torch.cat([out.hidden_states[0][-1][:, -1:]] + [h[-1] for h in out.hidden_states[1:width]], 1)
    values = value_head(hidden.float()).squeeze(-1)
    return responses, mask, logprobs_of(logits, responses), values


def rollout_from_sampling(cfg: PPOConfig, policy) -> bool:
    """ppo.rollout_logprobs: whether old log-probs and values come from the sampling pass (see the config)."""
    if cfg.rollout_logprobs != "auto":
        return cfg.rollout_logprobs == "sampling"
    quantised = getattr(policy, "is_quantized", False) or getattr(policy, "is_loaded_in_4bit", False) \
        or getattr(policy, "is_loaded_in_8bit", False)
    dtypes = {p.dtype for p in policy.parameters() if p.is_floating_point()}
    return cfg.value_model == "head" and not quantised and dtypes == {torch.float32}


def trim(q_ids, q_mask, r_ids, r_mask):
    """Drop columns that are padding in every row (left of the prompts, right of the responses)."""
    q_start = int((q_mask.sum(0) > 0).nonzero()[0]) if q_mask.any() else 0
    r_end = max(int((r_mask.sum(0) > 0).nonzero()[-1]) + 1, 1) if r_mask.any() else 1
    return q_ids[:, q_start:], q_mask[:, q_start:], r_ids[:, :r_end], r_mask[:, :r_end]


def forward_response(model, q_ids, q_mask, r_ids, r_mask, temperature: float):
    """(response logits / T, values) at the positions that predict each response token."""
    ids = torch.cat([q_ids, r_ids], 1)
    attn = torch.cat([q_mask, r_mask], 1)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    width = r_ids.shape[1]
    logits, values = model(ids, attn, pos, keep=width + 1)
    return logits[:, :-1].float() / temperature, values[:, :-1]


@torch.no_grad()
def reference_logprobs(ref, unwrapped: PolicyAndValue, q_ids, q_mask, r_ids, r_mask, temperature):
    ids = torch.cat([q_ids, r_ids], 1)
    attn = torch.cat([q_mask, r_mask], 1)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    width = r_ids.shape[1]
    if ref is None:  # LoRA: pi_0 is the policy with its adapter switched off
        ctx, model = unwrapped.policy.disable_adapter(), unwrapped.policy
    else:
        ctx, model = contextlib.nullcontext(), ref
    with ctx:
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                       logits_to_keep=width + 1).logits
    return logprobs_of(logits[:, :-1].float() / temperature, r_ids)


class StepLog:
    """Console (logger), JSONL (main process) and accelerate trackers."""

    def __init__(self, path: Path | None, accelerator, logger: logging.Logger, resume_step: int):
        self.path, self.acc, self.logger = path, accelerator, logger
        if path is not None and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.exists():  # drop lines past the checkpoint we resume from: they will be redone
                kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            path.write_text("".join(l + "\n" for l in kept))

    def __call__(self, metrics: dict) -> None:
        if not self.acc.is_main_process:
            return
        self.logger.info("ppo step %d  " % metrics["step"] + "  ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k != "step" and isinstance(v, float)))
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                         step=metrics["step"])


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(work_dir: Path, step: int, model: PolicyAndValue, optimizer, whitener,
                    accelerator, keep: int = 1) -> None:
    """policy/critic/head trainable weights, optimizer, running whitening stats and step (main
    process), the RNG state of every process; `latest` names the newest complete checkpoint."""
    ckpt = work_dir / f"step_{step:06d}"
    if accelerator.is_main_process:
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step, "model": _trainable(model), "optimizer": optimizer.state_dict(),
                    "whitener": whitener.state_dict() if whitener else None}, ckpt / "state.pt")
    accelerator.wait_for_everyone()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, ckpt / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = work_dir / "latest.tmp"
        tmp.write_text(ckpt.name)
        tmp.replace(work_dir / "latest")
        old = sorted(p for p in work_dir.glob("step_*") if p.name != ckpt.name and p.name[5:].isdigit())
        for p in old[: max(len(old) - keep + 1, 0)]:
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
    accelerator.wait_for_everyone()


def _readable_state(work_dir: Path, logger=None) -> tuple[Path, dict] | None:
    """(checkpoint dir, state) of the newest PPO checkpoint whose state.pt loads; a torn one (a kill or a
    full disk in the middle of torch.save) is set aside as step_N.torn with a note, and an older one used."""
    from saferounds.core.checkpoints import set_aside

    latest = work_dir / "latest"
    named = [work_dir / latest.read_text().strip()] if latest.exists() else []
    for ckpt in named + sorted(work_dir.glob("step_[0-9]*[0-9]"), reverse=True):
        if not ckpt.is_dir():
            continue
        try:
            return ckpt, torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            set_aside(ckpt, f"state.pt unreadable ({type(e).__name__})", logger)
    return None


def load_checkpoint(work_dir: Path, model: PolicyAndValue, optimizer, whitener, accelerator, logger=None) -> int:
    """Restore the newest complete checkpoint; returns the step to continue from (0 when there is none)."""
    if not (work_dir / "latest").exists() and not any(work_dir.glob("step_*")):
        return 0
    found = _readable_state(work_dir, logger)
    if found is None:
        return 0
    ckpt, state = found
    params = dict(model.named_parameters())
    missing = set(state["model"]) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise InputError(f"{ckpt}: checkpoint does not match the model (parameters differ: "
                         f"{sorted(missing)[:5]}); delete {work_dir} to start PPO afresh")
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    if whitener is not None and state["whitener"] is not None:
        whitener.load_state_dict(state["whitener"])
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])


def _global_mean_var(x, mask, accelerator):
    """Masked mean and population variance over all processes."""
    total = accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum()]), reduction="sum")
    mean = total[0] / total[1].clamp(min=1)
    sq = accelerator.reduce(((x - mean) ** 2 * mask).sum(), reduction="sum")
    return mean, sq / total[1].clamp(min=1)


def make_accelerator(project_dir: Path | None):
    """An Accelerator with TensorBoard tracking when tensorboard is installed."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    # Several processes without CUDA (torchrun / `accelerate launch --multi_gpu` on CPUs): gloo DDP.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if project_dir is not None and is_tensorboard_available():
        return Accelerator(cpu=cpu, log_with="tensorboard", project_dir=str(project_dir))
    return Accelerator(cpu=cpu)


def check_sizes(cfg: PPOConfig, world: int) -> None:
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


def train_ppo(policy, tokenizer, prompts: list[dict], score_fn: ScoreFn, cfg: PPOConfig, *,
              ref_policy=None, critic=None, work_dir: Path | None = None, log_path: Path | None = None,
              whiten_scores: bool = True, accelerator=None, logger: logging.Logger | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[nn.Module, dict]:
    """Run PPO; returns (the trained policy, unwrapped, on the main device; summary metrics).

    prompts: normalised prompt records ({"messages", "is_safety", ...}). ref_policy: pi_0; None
    means the policy's disabled adapter (LoRA) or a frozen copy of the policy as given (full
    fine-tuning). critic: a *ForSequenceClassification model for `value_model: critic`.
    work_dir: checkpoints (resumed from when present). log_path: the JSONL step log.
    """
    logger = logger or logging.getLogger("saferounds.ppo")
    accelerator = accelerator or make_accelerator(log_path.parent / "tensorboard" if log_path else None)
    world, rank = accelerator.num_processes, accelerator.process_index
    check_sizes(cfg, world)
    if not prompts:
        raise InputError("data.prompts: PPO needs at least one prompt")
    if cfg.value_model == "critic" and critic is None:
        raise InputError("ppo.value_model: 'critic' needs a critic model")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id

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
    unwrapped: PolicyAndValue = accelerator.unwrap_model(model)
    whitener = RunningWhitener() if whiten_scores else None

    torch.manual_seed(cfg.seed * 1_000_003 + rank)  # each process samples differently
    random.seed(cfg.seed + rank)
    start = load_checkpoint(work_dir, unwrapped, optimizer, whitener, accelerator, logger) if work_dir else 0
    if start:
        logger.info("ppo: resuming from step %d (%s)", start, work_dir)
    if accelerator.trackers == [] and log_path is not None and accelerator.log_with:
        accelerator.init_trackers("ppo", config={k: v for k, v in asdict(cfg).items() if v is not None})
    log_step = StepLog(log_path, accelerator, logger, start)
    bar = current_progress() if accelerator.is_main_process else NullProgress()
    bar.stage("ppo", total=cfg.steps, unit="steps")
    bar.advance(start)
    encoded = encode_prompts(tokenizer, prompts)
    device = accelerator.device
    local_mb = cfg.mini_batch_size // world
    summary: dict = {"steps_done": start, "stopped_early": False}
    from_sampling = rollout_from_sampling(cfg, unwrapped.policy)

    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        t_gen = t_score = 0.0
        idx = batch_indices(len(prompts), cfg.batch_size, step, cfg.seed)[rank::world]
        q_all, qm_all = left_pad([encoded[i] for i in idx], pad_id)

        # 1. rollout, in chunks of rollout_batch_size
        chunks: list[Rollout] = []
        for c in range(0, len(idx), cfg.rollout_batch_size):
            rows = slice(c, c + cfg.rollout_batch_size)
            q_ids, q_mask = q_all[rows].to(device), qm_all[rows].to(device)
            t = time.perf_counter()
            if from_sampling:
                r_ids, r_mask, logp, values = generate_scored(unwrapped, q_ids, q_mask, cfg, pad_id, eos_id)
            else:
                r_ids, r_mask = generate(unwrapped.policy, q_ids, q_mask, cfg, pad_id, eos_id)
            t_gen += time.perf_counter() - t
            q_ids, q_mask, r_ids, r_mask = trim(q_ids, q_mask, r_ids, r_mask)
            with torch.no_grad():
                if not from_sampling:
                    logits, values = forward_response(unwrapped, q_ids, q_mask, r_ids, r_mask, cfg.temperature)
                    logp = logprobs_of(logits, r_ids)
                    del logits
                ref_logp = reference_logprobs(ref_policy, unwrapped, q_ids, q_mask, r_ids, r_mask,
                                              cfg.temperature)
            texts = tokenizer.batch_decode(r_ids.masked_fill(r_mask == 0, pad_id).tolist(),
                                           skip_special_tokens=True)
            t = time.perf_counter()
            score, used_safety = score_fn([prompts[i] for i in idx[rows]], texts)
            t_score += time.perf_counter() - t
            check_scores(torch.as_tensor(score, dtype=torch.float32).tolist(), f"ppo step {step + 1}",
                         "the reward-model score")
            if used_safety is None:
                used_safety = torch.zeros(len(texts), dtype=torch.bool)
            chunks.append(Rollout(q_ids, q_mask, r_ids, r_mask, logp, ref_logp, values,
                                  scores=torch.as_tensor(score, dtype=torch.float32).to(device),
                                  used_safety=used_safety.to(device)))
        batch = cat_rollouts(chunks, pad_id)
        mask = batch.response_mask.float()

        # 2. whitened score (running statistics over all processes) and KL-penalised rewards (Eq. 4)
        all_scores = accelerator.gather(batch.scores)
        if whitener is not None:
            whitener.update(all_scores)
            score_w = whitener.whiten(batch.scores)
        else:
            score_w = batch.scores
        with torch.no_grad():
            rewards, kl = kl_penalised_rewards(score_w, batch.logprobs, batch.ref_logprobs, mask, cfg.beta)
            # 3. GAE and advantage whitening over the whole batch (all processes)
            advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask, stats=_global_mean_var(advantages, mask, accelerator))
        mean_kl = accelerator.reduce(kl.sum(1).mean(), reduction="mean").item()
        if cfg.kl_stop is not None and mean_kl > cfg.kl_stop:
            logger.info("ppo: stopping early at step %d: KL %.4g passed ppo.kl_stop %.4g",
                        step, mean_kl, cfg.kl_stop)
            summary.update(stopped_early=True, kl_at_stop=mean_kl)
            break
        t_rollout = time.perf_counter() - t0

        # 4. PPO epochs over shuffled mini-batches, one optimiser step each
        stats: dict[str, list] = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl",
                                                  "entropy", "value_clip_frac")}
        n_local = batch.response_ids.shape[0]
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(n_local, generator=torch.Generator().manual_seed(
                (cfg.seed * 1_000_003 + step) * 1_009 + epoch))
            for s in range(0, n_local, local_mb):
                mb = perm[s: s + local_mb].to(device)
                mb_q_ids, mb_q_mask, mb_r_ids, mb_r_mask = trim(batch.query_ids[mb], batch.query_mask[mb],
                                                                batch.response_ids[mb], batch.response_mask[mb])
                width = mb_r_ids.shape[1]
                mb_mask = mb_r_mask.float()
                logits, new_values = forward_response(model, mb_q_ids, mb_q_mask, mb_r_ids, mb_r_mask,
                                                      cfg.temperature)
                new_logp = logprobs_of(logits, mb_r_ids)
                pg, pg_stats = policy_loss(new_logp, batch.logprobs[mb, :width], advantages[mb, :width], mb_mask,
                                           cfg.clip_ratio)
                vl, vf_stats = value_loss(new_values, batch.values[mb, :width], returns[mb, :width], mb_mask,
                                          cfg.clip_value)
                check_value(pg + cfg.vf_coef * vl, "ppo", step + 1, "the loss")
                accelerator.backward(pg + cfg.vf_coef * vl)
                if cfg.max_grad_norm > 0:
                    check_value(accelerator.clip_grad_norm_(params, cfg.max_grad_norm), "ppo", step + 1,
                                "the gradient norm")
                else:
                    check_value(total_norm(p.grad for p in params if p.grad is not None), "ppo", step + 1,
                                "the gradient norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    stats["entropy"].append(masked_mean(entropy_of(logits.detach()), mb_mask))
                stats["policy_loss"].append(pg.detach())
                stats["value_loss"].append(vl.detach())
                for k, v in {**pg_stats, **vf_stats}.items():
                    stats[k].append(v)

        # 5. log: everything averaged over processes
        local = {k: torch.stack(v).mean() for k, v in stats.items()}
        used_safety = batch.used_safety.float()
        local.update(kl=kl.sum(1).mean(), score=batch.scores.mean(), score_whitened=score_w.mean(),
                     non_score_reward=(-cfg.beta * kl.sum(1)).mean(), share_safety_branch=used_safety.mean(),
                     share_helpfulness_branch=1 - used_safety.mean(), response_length=mask.sum(1).mean())
        keys = sorted(local)
        reduced = accelerator.reduce(torch.stack([local[k].float() for k in keys]), reduction="mean")
        metrics = {"step": step + 1, **{k: float(v) for k, v in zip(keys, reduced.tolist())},
                   "lr": cfg.learning_rate, "rollout_s": t_rollout, "generate_s": t_gen, "score_s": t_score,
                   "step_s": time.perf_counter() - t0}
        log_step(metrics)
        if progress:
            progress(f"ppo step {step + 1}/{cfg.steps}: score {metrics['score']:.3f} KL {metrics['kl']:.3f}")
        bar.advance(1, score=metrics["score"], kl=metrics["kl"])
        check_value(total_norm(params), "ppo", step + 1, "the weight norm")
        summary.update(steps_done=step + 1, last=metrics)
        if work_dir is not None and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(work_dir, step + 1, unwrapped, optimizer, whitener, accelerator)

    accelerator.wait_for_everyone()
    if accelerator.trackers:
        accelerator.end_training()
    last = summary.get("last") or {}
    bar.done((f"score {last['score']:.3f}, KL {last['kl']:.3f}" if last else f"{summary['steps_done']} steps")
             + (" (stopped early: KL passed ppo.kl_stop)" if summary["stopped_early"] else ""))
    return unwrapped.policy, summary


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
                   used_safety=torch.cat([c.used_safety for c in chunks]))


@torch.no_grad()
def mean_score(policy, tokenizer, prompts: list[dict], score_fn: ScoreFn, cfg: PPOConfig,
               do_sample: bool = False) -> tuple[float, list[str]]:
    """Mean raw gated score of the policy's responses (greedy by default) on held-out prompts."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(policy.parameters()).device
    q_ids, q_mask = left_pad(encode_prompts(tokenizer, prompts), pad_id)
    r_ids, r_mask = generate(policy, q_ids.to(device), q_mask.to(device), cfg, pad_id,
                             tokenizer.eos_token_id, do_sample=do_sample)
    texts = tokenizer.batch_decode(r_ids.tolist(), skip_special_tokens=True)
    score, _ = score_fn(prompts, texts)
    return float(torch.as_tensor(score, dtype=torch.float32).mean()), texts


def save_policy(policy, tokenizer, out_dir: Path, accelerator=None) -> Path:
    """save_pretrained (safetensors) of the trained policy; a LoRA adapter is merged into its base
    first (unless quantised) so the result loads without knowing where the base lived."""
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return out_dir
    if is_peft(policy) and not getattr(policy, "is_loaded_in_4bit", False) \
            and not getattr(policy, "is_loaded_in_8bit", False):
        policy = policy.merge_and_unload()
    from saferounds.core.accelerator import save_pretrained_atomic

    return save_pretrained_atomic(policy, tokenizer, out_dir)
