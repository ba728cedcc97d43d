"""Training a helpfulness or safety reward model on transformers.Trainer (TRL style: config beside trainer).

LLaMA 2 Sec. 3.2.2: margin ranking loss (Eq. 2, Table 27), one epoch, cosine schedule down to 10% of the
peak learning rate with 3% warm-up, and the data mix of Sec. 3.2.2 (helpfulness RM: all
helpfulness pairs + an equal amount of safety pairs; safety RM: safety pairs mixed 90/10 with helpfulness).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
import typing
from pathlib import Path

import torch

from saferounds.core import distributed as dist
from saferounds.core.errors import InputError
from saferounds.core.io import write_json
from saferounds.core.progress import current, trainer_callback
from saferounds.core.tracking import point_tensorboard, trainer_kwargs
from saferounds.reward_models.config import RewardModelConfig
from saferounds.reward_models.evaluation import heldout_accuracy
from saferounds.reward_models.losses import SAFETY_TARGETS, centering_loss, pair_margin, ranking_loss, regression_loss, safety_loss
from saferounds.reward_models.modeling import load_reward_model, save_reward_model
from saferounds.reward_models.rankings import elo_rewards, ranking_pairs
from saferounds.reward_models.scoring import encode, format_sample

MANIFEST = "manifest.json"  # beside the weights in reward_models/{kind}/vN


# ---------------------------------------------------------------------------------------------
# Data: rankings -> pairs or Elo targets, the drop rule, the LLaMA 2 mix, a held-out split by prompt.

def prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def reversed_safety(pair: dict) -> bool:
    """A pair whose chosen response is unsafe and rejected one safe (LLaMA 2 drops these from RM training).

    The 3-way safety_label cannot say this, so such rows carry `"chosen_unsafe_rejected_safe": true`
    (or `chosen_safe: false` with `rejected_safe: true`, as data.synthetic and reward_models.feedback.labeling write);
    a safety_label of that name is accepted too.
    """
    return (pair.get("chosen_unsafe_rejected_safe") is True
            or pair.get("safety_label") == "chosen_unsafe_rejected_safe"
            or (pair.get("chosen_safe") is False and pair.get("rejected_safe") is True))


def safety_targets(pair: dict) -> tuple[float, float] | None:
    """(chosen safe, rejected safe) for the auxiliary safety term: from the 3-way safety_label, else
    from per-response `chosen_safe` / `rejected_safe` booleans (AI labels and the demo data carry them)."""
    if pair.get("safety_label") in SAFETY_TARGETS:
        return SAFETY_TARGETS[pair["safety_label"]]
    chosen, rejected = pair.get("chosen_safe"), pair.get("rejected_safe")
    if isinstance(chosen, bool) and isinstance(rejected, bool):
        return float(chosen), float(rejected)
    return None


def split_by_prompt(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, held_out) split: a prompt's records all land on one side (hash of prompt + seed)."""
    train, held = [], []
    for r in records:
        h = hashlib.sha256(f"{seed}:{prompt_key(r['prompt'])}".encode()).digest()
        (held if int.from_bytes(h[:8], "big") / 2 ** 64 < fraction else train).append(r)
    return train, held


def mix_for(kind: str, helpful: list, safety: list, cfg: RewardModelConfig, seed: int = 0) -> tuple[list, dict]:
    """LLaMA 2's RM data mix. helpfulness RM: all helpfulness + ratio x as many sampled safety items;
    safety RM: all safety items + helpfulness items sampled so they are `safety_helpfulness_fraction` of
    the mix (90/10 by default). Sampling is without replacement, capped at what exists, seeded."""
    rng = random.Random(seed)
    if kind == "helpfulness":
        base, other, want = helpful, safety, round(len(helpful) * cfg.helpfulness_safety_ratio)
    elif kind == "safety":
        f = cfg.safety_helpfulness_fraction
        base, other, want = safety, helpful, round(len(safety) * f / (1 - f))
    else:
        raise ValueError(f"kind must be 'helpfulness' or 'safety', got {kind!r}")
    extra = rng.sample(other, min(want, len(other)))
    mixed = list(base) + extra
    rng.shuffle(mixed)
    n_h = len(base) if kind == "helpfulness" else len(extra)
    return mixed, {"helpfulness": n_h, "safety": len(mixed) - n_h, "total": len(mixed)}


def prepare_pairs(records: list[dict]) -> tuple[list[dict], int]:
    """Preference pairs from preference and ranking records (rankings expanded); drops reversed-safety
    pairs. Returns (pairs, number dropped)."""
    pairs = []
    for r in records:
        pairs.extend(ranking_pairs(r) if "ranking" in r else [r])
    kept = [p for p in pairs if not reversed_safety(p)]
    return kept, len(pairs) - len(kept)


def prepare_regression(records: list[dict]) -> tuple[list[dict], int]:
    """(prompt, response, reward, source) items: rankings -> Elo rewards (reward_models.rankings.elo_rewards);
    a preference pair counts as a ranking of two (its rating is not used). Reversed-safety pairs are dropped."""
    items, dropped = [], 0
    for r in records:
        if "ranking" not in r:
            if reversed_safety(r):
                dropped += 1
                continue
            r = {"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranking": [0, 1],
                 "source": r.get("source", "helpfulness")}
        items.extend({"prompt": r["prompt"], "response": text, "reward": reward, "source": r["source"]}
                     for text, reward in elo_rewards(r))
    return items, dropped


def training_set(kind: str, records: list[dict], cfg: RewardModelConfig, seed: int = 0,
                 heldout: list[dict] | None = None):
    """(train items, held-out pairs of this kind's source, stats). The split is by prompt before mixing,
    so no held-out prompt is trained on; held-out pairs are pairwise for either objective (for evaluation).
    `heldout`: held-out records of their own (cfg.heldout_*, split by prompt when the data was built): then
    every record is trained on and these are the held-out pairs."""
    if heldout is not None:
        train_recs, (held, _) = records, prepare_pairs(heldout)
    else:
        train_recs, held_recs = split_by_prompt(records, cfg.eval_fraction, seed)
        held, _ = prepare_pairs([r for r in held_recs if r.get("source", "helpfulness") == kind])
    prepare = prepare_regression if cfg.objective == "regression" else prepare_pairs
    items, dropped = prepare(train_recs)
    helpful = [x for x in items if x.get("source", "helpfulness") == "helpfulness"]
    safety = [x for x in items if x.get("source") == "safety"]
    mixed, mix = mix_for(kind, helpful, safety, cfg, seed)
    return mixed, held, {"mix": mix, "dropped_reversed_safety": dropped, "held_out_pairs": len(held)}


# ---------------------------------------------------------------------------------------------
# Features, collator and the Trainer subclass.

def truncate_pair(chosen: list[int], rejected: list[int], max_length: int, keep: int = 0) -> tuple[list[int], list[int]]:
    """Fit a pair into max_length tokens by cutting the same number of leading tokens from both (they share
    their prompt, so both keep the same context and their whole responses); when the shorter one is not that
    long, each keeps its own last tokens. The first `keep` tokens are never cut: the special tokens a
    tokenizer puts in front (BERT's [CLS], which its head reads), as its own left truncation keeps them."""
    head_c, head_r, chosen, rejected = chosen[:keep], rejected[:keep], chosen[keep:], rejected[keep:]
    room = max_length - keep
    cut = max(len(chosen), len(rejected)) - room
    if cut <= 0:
        return head_c + chosen, head_r + rejected
    if cut < min(len(chosen), len(rejected)):
        return head_c + chosen[cut:], head_r + rejected[cut:]
    return head_c + chosen[-room:], head_r + rejected[-room:]


def leading_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer itself puts before a text (BERT: 1, its [CLS]); 0 with a chat
    template, which writes its own (encode then adds none)."""
    if getattr(tokenizer, "chat_template", None):
        return 0
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    return next((n for n in range(len(full) - len(plain) + 1) if full[n:n + len(plain)] == plain), 0)


def pair_features(tokenizer, pairs: list[dict], margin_scale: str, max_length: int) -> dict[str, list]:
    """Columns for pairwise training: token ids of chosen/rejected (truncate_pair), margin, safety targets,
    length."""
    chosen = encode(tokenizer, [format_sample(tokenizer, p["prompt"], p["chosen"]) for p in pairs], None)["input_ids"]
    rejected = encode(tokenizer, [format_sample(tokenizer, p["prompt"], p["rejected"]) for p in pairs], None)["input_ids"]
    keep = leading_special_tokens(tokenizer)
    chosen, rejected = map(list, zip(*(truncate_pair(c, r, max_length, keep) for c, r in zip(chosen, rejected)))) \
        if pairs else ([], [])
    targets = [safety_targets(p) for p in pairs]
    return {
        "chosen_input_ids": chosen, "rejected_input_ids": rejected,
        "margin": [pair_margin(p, margin_scale) for p in pairs],
        "safe_chosen": [t[0] if t else 0.0 for t in targets],
        "safe_rejected": [t[1] if t else 0.0 for t in targets],
        "has_safety": [t is not None for t in targets],
        "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected)],
    }


def drop_identical(cols: dict[str, list]) -> tuple[dict[str, list], int]:
    """The pair columns without rows whose chosen and rejected token ids are the same, and how many went."""
    keep = [i for i, (c, r) in enumerate(zip(cols["chosen_input_ids"], cols["rejected_input_ids"])) if c != r]
    return {k: [v[i] for i in keep] for k, v in cols.items()}, len(cols["chosen_input_ids"]) - len(keep)


def regression_features(tokenizer, items: list[dict], max_length: int) -> dict[str, list]:
    enc = encode(tokenizer, [format_sample(tokenizer, x["prompt"], x["response"]) for x in items], max_length)
    return {"input_ids": enc["input_ids"], "reward": [float(x["reward"]) for x in items],
            "length": [len(ids) for ids in enc["input_ids"]]}


class PairCollator:
    """Pads chosen and rejected together into one [2B, L] batch: one forward pass scores both."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict:
        if "chosen_input_ids" in features[0]:
            ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
            batch = dict(self.tokenizer.pad({"input_ids": ids}, return_tensors="pt"))
            for key in ("margin", "safe_chosen", "safe_rejected"):
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
            batch["has_safety"] = torch.tensor([f["has_safety"] for f in features], dtype=torch.bool)
            return batch
        batch = dict(self.tokenizer.pad({"input_ids": [f["input_ids"] for f in features]}, return_tensors="pt"))
        batch["reward"] = torch.tensor([f["reward"] for f in features], dtype=torch.float32)
        return batch


# ---------------------------------------------------------------------------------------------
# Shared-prompt rows: a pair's chosen and rejected texts share their prompt tokens, so one row holds the
# prompt once and both responses, with a block-causal mask; every position sees exactly what it would see
# in its own sequence, so the two scores are those of separate scoring, for fewer tokens.


def shared_prefix_length(chosen: list[int], rejected: list[int]) -> int:
    """Tokens both sequences start with, leaving each at least one token of its own (its score's position)."""
    limit, k = min(len(chosen), len(rejected)) - 1, 0
    while k < limit and chosen[k] == rejected[k]:
        k += 1
    return k


def packed_length(chosen: list[int], rejected: list[int]) -> int:
    return len(chosen) + len(rejected) - shared_prefix_length(chosen, rejected)


class SharedPromptCollator:
    """Pairs as one right-padded row each: prompt, chosen response, rejected response. Returns input_ids,
    a 4-D boolean attention mask [B, 1, N, N] (causal, the rejected response blind to the chosen one),
    position_ids (the rejected response restarts where the chosen one started) and the index of each
    response's last token (where its score is read)."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features: list[dict]) -> dict:
        rows, spans = [], []
        for f in features:
            c, r = f["chosen_input_ids"], f["rejected_input_ids"]
            p = shared_prefix_length(c, r)
            rows.append(c + r[p:])
            spans.append((p, len(c), len(c) + len(r) - p))
        width = max(len(x) for x in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.tril(torch.ones(width, width, dtype=torch.bool)).repeat(len(rows), 1, 1)
        for i, (row, (p, c_end, end)) in enumerate(zip(rows, spans)):
            ids[i, :end] = torch.tensor(row)
            pos[i, :c_end] = torch.arange(c_end)
            pos[i, c_end:end] = torch.arange(p, p + end - c_end)
            mask[i, c_end:, p:c_end] = False  # the rejected response (and the padding) never sees the chosen one
        batch = {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": pos,
                 "chosen_last": torch.tensor([c_end - 1 for _, c_end, _ in spans]),
                 "rejected_last": torch.tensor([end - 1 for _, _, end in spans])}
        for key in ("margin", "safe_chosen", "safe_rejected"):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        batch["has_safety"] = torch.tensor([f["has_safety"] for f in features], dtype=torch.bool)
        return batch


def score_head(model):
    """The sequence-classification head (`score`) of an RM, through peft and DDP wrappers; None if it has none."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return getattr(base, "score", None)


def shared_prompt_scores(model, inputs) -> torch.Tensor:
    """[chosen scores..., rejected scores...] of a SharedPromptCollator batch (one forward pass)."""
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"], output_hidden_states=True)
    hidden = out.hidden_states[-1]  # the final (normed) hidden states, what the head pools
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    picked = torch.cat([hidden[rows, inputs["chosen_last"]], hidden[rows, inputs["rejected_last"]]])
    return score_head(model)(picked)[:, 0].float()


@torch.no_grad()
def shared_prompt_is_exact(model, tokenizer, cols: dict[str, list], n: int = 4, tol: float = 1e-3) -> bool:
    """Whether shared-prompt rows give this model the scores of separate rows, on the first n pairs (a causal
    decoder with a `score` head does; a bidirectional encoder, or one that ignores the 4-D mask, does not)."""
    if score_head(model) is None or not cols["chosen_input_ids"]:
        return False
    features = [{k: v[i] for k, v in cols.items()} for i in range(min(n, len(cols["chosen_input_ids"])))]
    was_training = model.training
    model.eval()
    try:
        plain = PairCollator(tokenizer)(features)
        device = next(model.parameters()).device
        ref = model(input_ids=plain["input_ids"].to(device), attention_mask=plain["attention_mask"].to(device)).logits
        packed = SharedPromptCollator(tokenizer)(features)
        got = shared_prompt_scores(model, {k: v.to(device) for k, v in packed.items()})
    except Exception:  # an architecture that rejects 4-D masks or position ids: separate rows
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(got, ref[:, 0].float(), atol=tol, rtol=tol))


# ---------------------------------------------------------------------------------------------
# Head-only RMs (reward_models.train_head_only): the backbone frozen, what the scalar head reads computed once
# per text (cached across epochs and across the two RMs of a process), the head trained on it by Eq. 2.

_HEAD_INPUTS: dict[tuple, dict[str, torch.Tensor]] = {}  # (backbone, max_length) -> {text: head input}


def scalar_head(model) -> torch.nn.Module:
    """The one-output head of a sequence classifier: `score` (decoders) or `classifier` (BERT-like)."""
    head = score_head(model)
    return head if head is not None else getattr(model, "classifier")


@torch.inference_mode()
def head_inputs(model, tokenizer, texts: list[str], max_length: int, batch_size: int, key=None) -> torch.Tensor:
    """[len(texts), hidden]: what the RM's scalar head reads for each formatted text, by one frozen forward pass
    per text (longest first, in batches): BERT's pooled [CLS] output; a decoder's final hidden state at its
    last non-pad token (the position transformers reads the score at). `key`: cache them under it."""
    cache = _HEAD_INPUTS.setdefault(key, {}) if key is not None else {}
    todo = sorted({t for t in texts if t not in cache}, key=len, reverse=True)
    seen: dict[str, torch.Tensor] = {}
    hook = scalar_head(model).register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0]))
    pad = tokenizer.pad_token_id
    model.eval()
    if todo:
        current().stage("RM head inputs (frozen backbone, once per text)", total=len(todo), unit="texts")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            batch = tokenizer.pad(encode(tokenizer, chunk, max_length), return_tensors="pt")
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            x = seen["x"]
            if x.dim() == 3:  # (B, T, H): transformers scores the rightmost token that is not padding
                width = batch["input_ids"].shape[1]
                last = (torch.arange(width) * (batch["input_ids"] != pad)).argmax(-1)
                x = x[torch.arange(x.shape[0]), last]
            cache.update(zip(chunk, x.float().clone()))
            current().advance(len(chunk))
    finally:
        hook.remove()
    return torch.stack([cache[t] for t in texts]) if texts else torch.zeros(0)


class HeadData(typing.NamedTuple):
    """What a head-only fit reads, one row per pair: cached head inputs of the chosen and the rejected text,
    the Eq. 2 margin, the safety targets (chosen, rejected) and whether the pair has them."""
    chosen: torch.Tensor
    rejected: torch.Tensor
    margin: torch.Tensor
    safe: torch.Tensor
    has: torch.Tensor

    def rows(self, idx: torch.Tensor) -> "HeadData":
        return HeadData(*(t[idx] for t in self))


def head_loss(head, d: HeadData, weight: float, l2: float = 0.0) -> torch.Tensor:
    """Eq. 2 with the pair's margin, + `weight` x the safety term, + l2 x |w|^2 (the bias is not penalised)."""
    scores = head(torch.cat([d.chosen, d.rejected]))[:, 0]
    n = len(d.chosen)
    loss = ranking_loss(scores[:n], scores[n:], d.margin)  # LLaMA 2 Eq. 2
    if weight > 0:
        loss = loss + weight * safety_loss(scores, d.safe.T.reshape(-1), d.has.repeat(2))
    if l2:
        loss = loss + l2 * sum(w.pow(2).sum() for name, w in head.named_parameters() if not name.endswith("bias"))
    return loss


def fit_head_lbfgs(head, d: HeadData, weight: float, l2: float, iterations: int = 200) -> float:
    """The head fitted to convergence on all of d at once (L-BFGS, strong-Wolfe line search); its final loss."""
    opt = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = head_loss(head, d, weight, l2)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(head_loss(head, d, weight, l2))


HEAD_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def cross_validated_l2(head, d: HeadData, groups: list[str], weight: float, folds: int = 4,
                       grid: tuple[float, ...] = HEAD_L2_GRID) -> tuple[float, dict[float, float]]:
    """(the L2 strength with the best mean validation pair accuracy, {l2: that accuracy}): `folds`-fold
    cross-validation over the training pairs grouped by prompt (a prompt's pairs share a fold), the head
    re-initialised as given for every fit. Ties go to the stronger L2."""
    keys = sorted(set(groups))
    fold_of = {k: int(hashlib.sha256(k.encode()).hexdigest(), 16) % folds for k in keys}
    fold = torch.tensor([fold_of[g] for g in groups])
    init = {k: v.clone() for k, v in head.state_dict().items()}
    acc = {}
    for l2 in grid:
        right = 0.0
        for f in range(folds):
            tr, va = (fold != f).nonzero().flatten(), (fold == f).nonzero().flatten()
            if not len(tr) or not len(va):
                continue
            head.load_state_dict(init)
            fit_head_lbfgs(head, d.rows(tr), weight, l2)
            with torch.no_grad():
                v = d.rows(va)
                gap = head(v.chosen)[:, 0] - head(v.rejected)[:, 0]
            right += float((gap > 0).sum() + 0.5 * (gap == 0).sum())
        acc[l2] = right / len(groups)
    head.load_state_dict(init)
    best = max(grid, key=lambda l2: (round(acc[l2], 9), l2))
    return best, acc


def train_head(model, tokenizer, items: list[dict], cfg: RewardModelConfig, kind: str, seed: int = 0,
               key=None) -> dict:
    """Train only the scalar head on cached head inputs: Eq. 2 with the pair's margin (+ the safety term for
    the safety RM). head_fit `adamw`: `epochs` passes in shuffled batches of batch_size, AdamW, LLaMA 2's
    cosine schedule; `lbfgs-cv`: to convergence on all pairs at once, with the L2 strength chosen by
    cross-validation over the training pairs grouped by prompt (cross_validated_l2)."""
    fmt = lambda side: [format_sample(tokenizer, p["prompt"], p[side]) for p in items]  # noqa: E731
    f_c = head_inputs(model, tokenizer, fmt("chosen"), cfg.max_length, cfg.score_batch_size, key)
    f_r = head_inputs(model, tokenizer, fmt("rejected"), cfg.max_length, cfg.score_batch_size, key)
    targets = [safety_targets(p) for p in items]
    d = HeadData(f_c, f_r, torch.tensor([pair_margin(p, cfg.margin) for p in items], dtype=torch.float32),
                 torch.tensor([[t[0], t[1]] if t else [0.0, 0.0] for t in targets], dtype=torch.float32),
                 torch.tensor([t is not None for t in targets]))
    weight = cfg.safety_term_weight if kind == "safety" else cfg.helpfulness_safety_term_weight
    head = scalar_head(model).float()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    texts = len(set(fmt("chosen") + fmt("rejected")))
    if cfg.head_fit == "lbfgs-cv":
        l2, cv = cross_validated_l2(head, d, [prompt_key(p["prompt"]) for p in items], weight)
        loss = fit_head_lbfgs(head, d, weight, l2)
        model.eval()
        return {"steps": 1, "head_fit": "lbfgs-cv", "head_l2": l2, "train_loss": round(loss, 6),
                "cv_accuracy": {str(k): round(v, 4) for k, v in cv.items()}, "texts_encoded": texts}
    return _train_head_adamw(model, head, d, cfg, weight, seed, texts)


def _train_head_adamw(model, head, d: HeadData, cfg: RewardModelConfig, weight: float, seed: int, texts: int) -> dict:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    items = range(len(d.chosen))
    total, warm = warmup_steps(len(items), cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warm, total, min_lr_rate=cfg.min_lr_ratio)
    gen, losses, step = torch.Generator().manual_seed(seed), [], 0
    while step < total:
        for b in torch.randperm(len(items), generator=gen).split(cfg.batch_size):
            loss = head_loss(head, d.rows(b), weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= total:
                break
    model.eval()
    return {"steps": step, "warmup_steps": warm, "planned_steps": total, "train_loss": round(sum(losses) / len(losses), 6),
            "texts_encoded": texts}


def _trainer_class():
    from transformers import Trainer

    class RewardTrainer(Trainer):
        """Trainer with LLaMA 2's RM loss: Eq. 2 margin ranking + safety BCE term + optional centering;
        or (sample, reward) regression when the batch carries `reward`."""

        def __init__(self, *args, safety_term_weight: float = 0.0, center_rewards: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            # our losses are means over the batch's pairs, not sums over items: Trainer must divide by the
            # accumulation steps itself and must not rescale by the number of processes (it does both
            # for models whose forward takes loss kwargs, which would double the loss on 2 ranks)
            self.model_accepts_loss_kwargs = False
            self.safety_term_weight = safety_term_weight
            self.center_rewards = center_rewards

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "chosen_last" in inputs:  # SharedPromptCollator: one row per pair
                scores = shared_prompt_scores(model, inputs)
            else:
                scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0].float()
            if "reward" in inputs:
                loss = regression_loss(scores, inputs["reward"])
                return (loss, {"scores": scores}) if return_outputs else loss
            n = scores.shape[0] // 2
            chosen, rejected = scores[:n], scores[n:]
            loss = ranking_loss(chosen, rejected, inputs["margin"])
            if self.safety_term_weight > 0:
                mask = inputs["has_safety"].repeat(2)
                targets = torch.cat([inputs["safe_chosen"], inputs["safe_rejected"]])
                loss = loss + self.safety_term_weight * safety_loss(scores, targets, mask)
            if self.center_rewards > 0:
                loss = loss + self.center_rewards * centering_loss(chosen, rejected)
            return (loss, {"chosen": chosen, "rejected": rejected}) if return_outputs else loss

    return RewardTrainer


def _log_callback(log, kind: str):
    """A TrainerCallback that sends the training logs to a logging.Logger."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("%s RM step %d/%d: %s", kind, state.global_step, state.max_steps, logs)

    return LogCallback()


def warmup_steps(n_items: int, cfg: RewardModelConfig, world_size: int = 1) -> tuple[int, int]:
    """(total optimizer steps, warm-up steps): warm-up is warmup_ratio of the run, at least min_warmup_steps
    (never more than the run)."""
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * world_size
    total = max(1, math.ceil(math.ceil(n_items / per_step) * cfg.epochs))
    return total, min(total, max(cfg.min_warmup_steps, math.ceil(cfg.warmup_ratio * total)))


def make_trainer(kind: str, items: list[dict], model, tokenizer, cfg: RewardModelConfig, work_dir, seed: int = 0,
                 max_steps: int | None = None, log=None, runs=None):
    """The RewardTrainer for already mixed items (pairs, or regression items): returns (trainer, total, warm)."""
    import datasets
    from transformers import TrainingArguments

    log = log or logging.getLogger("saferounds.rm")
    if cfg.objective == "regression":
        cols = regression_features(tokenizer, items, cfg.max_length)
    else:
        cols, same = drop_identical(pair_features(tokenizer, items, cfg.margin, cfg.max_length))
        if same:  # their two scores are one score: the loss's gradient is exactly zero, only time is spent
            log.info("%s RM: %d of %d pairs have identical chosen and rejected tokens; left out", kind, same, len(items))
        if not cols["chosen_input_ids"]:
            raise InputError(f"reward_models: every {kind} pair has identical chosen and rejected texts")
    collator = PairCollator(tokenizer)
    if cfg.objective != "regression" and cfg.share_prompt:
        if shared_prompt_is_exact(model, tokenizer, cols):
            collator = SharedPromptCollator(tokenizer)
            cols["length"] = [packed_length(c, r) for c, r in zip(cols["chosen_input_ids"], cols["rejected_input_ids"])]
        else:
            log.info("%s RM: shared-prompt rows do not reproduce this model's scores; chosen and rejected go "
                     "as separate rows", kind)
    dataset = datasets.Dataset.from_dict(cols)
    # under a launcher each global batch of cfg.batch_size is split across the ranks (split_batches):
    # the optimizer takes the same steps on the same batches as one process
    total, warm = warmup_steps(len(dataset), cfg)
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=max_steps if max_steps is not None else -1,
        # LLaMA 2 Sec. 3.2.2: cosine down to 10% of the peak, 3% warm-up (at least min_warmup_steps)
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=warm, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length", remove_unused_columns=False, **trainer_kwargs(runs), seed=seed,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True, save_only_model=False,  # progress: core.progress; the loss dicts: the log
        **dist.trainer_kwargs(cfg.batch_size, "reward_models.batch_size"),
    )
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        processing_class=tokenizer,
        safety_term_weight=cfg.safety_term_weight if kind == "safety" else cfg.helpfulness_safety_term_weight,
        center_rewards=cfg.center_rewards,
    )
    # logs go to the logger (the stage log), not stdout (the CLI's --json owns stdout)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_log_callback(log, kind))
    trainer.add_callback(trainer_callback(f"rm {kind}"))
    point_tensorboard(trainer, runs)
    return trainer, total, warm


def train_reward_model(kind: str, records: list[dict], backbone: str, out_dir, cfg: RewardModelConfig | None = None,
                       model_cfg=None, work_dir=None, seed: int = 0, log=None, max_steps: int | None = None,
                       extra: dict | None = None, runs=None, heldout: list[dict] | None = None) -> dict:
    """Train a `kind` RM ("helpfulness" | "safety") on normalised preference/ranking records; save to out_dir.

    Checkpoints go to work_dir (default out_dir/../.work-<name>) every save_steps; a rerun resumes from the
    last one. Held-out pairs (`heldout`, else eval_fraction split by prompt) are scored after training, the
    block keyed by the saved RM's sha256 (evaluation.heldout_accuracy). Returns metrics
    (training loss, steps, data mix, held-out accuracy block); they, `extra` and the config are written to
    out_dir/manifest.json.
    """
    from transformers import set_seed

    from saferounds.core.checkpoints import torn_notes

    cfg = cfg or RewardModelConfig()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".work-{out_dir.name}"
    t0 = time.time()
    items, held, stats = training_set(kind, records, cfg, seed, heldout)
    if not items:
        raise InputError(f"reward_models: no training data for the {kind} RM; set data.{kind}_preferences "
                         "(or data.rankings) in saferounds.yaml")
    _say_new_head(kind, backbone, model_cfg)
    set_seed(seed)  # a backbone without a scalar head gets a fresh one: its init must be seeded too
    fit = _fit_head if cfg.train_head_only else _fit_trainer
    model, tokenizer, fitted = fit(kind, items, backbone, out_dir, cfg, model_cfg, work_dir=work_dir, seed=seed,
                                   log=log, max_steps=max_steps, runs=runs)
    metrics = {"kind": kind, "backbone": str(backbone), "objective": cfg.objective, **fitted, **stats}
    if torn_notes(work_dir):
        metrics["torn_checkpoints"] = torn_notes(work_dir)
    if held:
        metrics["heldout"] = heldout_accuracy(out_dir, held, cfg, model=model, tokenizer=tokenizer)
    metrics["seconds"] = round(time.time() - t0, 1)
    manifest = {**(extra or {}), "metrics": metrics, "reward_models_config": dataclasses.asdict(cfg)}
    dist.run_on_main(write_json, out_dir / MANIFEST, manifest)
    acc = (metrics.get("heldout") or {}).get("accuracy")
    current().done(f"acc {acc:.2f} (held-out)" if acc is not None else f"train loss {metrics['train_loss']:.3f}")
    return metrics


def _fit_trainer(kind: str, items: list[dict], backbone, out_dir: Path, cfg: RewardModelConfig, model_cfg, work_dir,
                 seed: int, log, max_steps, runs) -> tuple:
    """The RM trained by transformers.Trainer (every weight, or model.lora's adapters) and saved to out_dir:
    (model, tokenizer, metrics of the fit)."""
    from saferounds.core.checkpoints import train as train_resumable
    from saferounds.core.finite import check_value, check_weights, finite_callback

    model, tokenizer = load_reward_model(backbone, model_cfg, for_training=True)
    trainer, total, warm = make_trainer(kind, items, model, tokenizer, cfg, work_dir, seed, max_steps, log, runs)
    stage = f"{kind} RM training"
    trainer.add_callback(finite_callback(stage))
    result, last = train_resumable(trainer, work_dir, log)  # a torn checkpoint-N is set aside, not resumed from
    model = trainer.model
    check_value(result.training_loss, stage, trainer.state.global_step, "the training loss")
    check_weights(model, stage, trainer.state.global_step)
    # a LoRA RM saves adapter + head; load_reward_model reloads it. Rank 0 writes (a sharded engine gathers first)
    dist.save_trained(trainer, lambda: save_reward_model(model, tokenizer, out_dir), out_dir, tokenizer)
    return model, tokenizer, {"train_items": len(trainer.train_dataset), "steps": trainer.state.global_step,
                              "warmup_steps": warm, "planned_steps": total,
                              "train_loss": round(float(result.training_loss), 6),
                              "resumed_from": str(last) if last else None}


def _fit_head(kind: str, items: list[dict], backbone, out_dir: Path, cfg: RewardModelConfig, model_cfg, seed: int = 0,
              **_) -> tuple:
    """reward_models.train_head_only: the backbone frozen (model.lora not applied), the head trained on cached
    head inputs (train_head), the whole RM saved to out_dir as an ordinary sequence classifier."""
    from saferounds.core.finite import check_value, check_weights

    if cfg.objective != "pairwise":
        raise InputError("reward_models.train_head_only: trains on pairs; set reward_models.objective: pairwise")
    model, tokenizer = load_reward_model(backbone, model_cfg)
    pooling = getattr(model_cfg, "reward_model_pooling", "head")  # the same backbone read two ways: two caches
    layers, dtype = getattr(model_cfg, "reward_model_layers", 0), getattr(model_cfg, "reward_model_dtype", "")
    fitted = train_head(model, tokenizer, items, cfg, kind, seed,
                        key=(str(backbone), cfg.max_length, pooling) + ((layers,) if layers else ())
                        + ((str(next(model.parameters()).dtype),) if dtype else ()))
    check_value(fitted["train_loss"], f"{kind} RM head training", fitted["steps"], "the training loss")
    check_weights(model, f"{kind} RM head training", fitted["steps"])
    dist.run_on_main(save_reward_model, model, tokenizer, out_dir)
    return model, tokenizer, {"train_items": len(items), **fitted, "train_head_only": True}


def _say_new_head(kind: str, backbone, model_cfg) -> None:
    """An RM started from a policy gets a freshly initialised scalar head, as LLaMA 2 does; transformers
    reports `score.weight | MISSING` for it (into the log). Say so once, in words that do not read as
    an error."""
    from saferounds.reward_models.modeling import has_scalar_head

    if not has_scalar_head(backbone, model_cfg):
        current().note(f"{kind} RM: new scalar head on {_short(backbone)}'s backbone (expected)")


def _short(backbone) -> str:
    """`v0` for WORKSPACE/versions/v0/policy; else the directory name or hub id."""
    p = Path(str(backbone))
    if p.name == "policy" and p.parent.parent.name == "versions":
        return p.parent.name
    return p.name if p.exists() else str(backbone)
