"""K samples per prompt from a policy (LLaMA 2 Sec. 3.2.3, rejection sampling), batched and resumable.

- One `generate` call per batch of prompts, each repeated K times, left padding, prompts grouped
  by token length so little padding is computed, EOS stop, max_new_tokens.
- Deterministic per prompt: each sample draws its token at each step by inverse CDF from a uniform
  number that is a counter-based hash of (seed, prompt id, sample index, step), so a sample does not
  depend on which other prompts share its batch, on the batch size, or on anything sampled before it.
- samples.jsonl is appended once per batch (one write, flush, fsync). On start the file is read back,
  a torn last line is cut off, and batches whose prompts all have their K samples are skipped: a run
  killed with SIGKILL resumes with no sample duplicated or lost, and ends equal to an uninterrupted run.
The model's dtype comes from pipeline.models.load_policy (bf16 on GPUs that have it).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from saferounds.core.io import append_jsonl, read_jsonl, recover_jsonl
from saferounds.core.records import Sample
from saferounds.sampling.fast_generate import nucleus_choice

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
SETTINGS = ("temperature", "top_p", "max_new_tokens", "seed")


def _i64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser on int64 tensors (wrapping arithmetic): a counter-based RNG."""
    x = x + _i64(_GOLDEN)
    x = (x ^ _shr(x, 30)) * _i64(_MIX1)
    x = (x ^ _shr(x, 27)) * _i64(_MIX2)
    return x ^ _shr(x, 31)


def round_seed(seed: int, version: int) -> int:
    """A different, reproducible sampling seed for every round."""
    return int.from_bytes(hashlib.sha256(f"rs\x1f{seed}\x1f{version}".encode()).digest()[:4], "little")


def row_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """The seed of one sample: a hash of (seed, prompt id, sample index) as a signed int64."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def uniform_noise(row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform number in (0, 1) per row, a pure function of (row seed, step)."""
    z = splitmix64(splitmix64(row_seeds ^ _i64((step + 1) * _GOLDEN % (1 << 64))))
    return (_shr(z, 11).to(torch.float64) + 0.5) / float(1 << 53)  # 53 random bits


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling where row r's token at step t is drawn by inverse CDF with the
    uniform number u(seed_r, t): the same sample whatever else is in the batch. Returns one-hot logits
    (0 at the chosen token, -inf elsewhere), so generate's own multinomial step picks that token with
    probability 1. One hashed number per row and step: O(vocab) work, like multinomial."""

    def __init__(self, row_seeds: torch.Tensor, temperature: float, top_p: float, prompt_length: int):
        self.row_seeds, self.temperature, self.top_p = row_seeds, temperature, top_p
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        if self.temperature <= 0:  # temperature 0: greedy
            choice = scores.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            u = uniform_noise(self.row_seeds, input_ids.shape[1] - self.prompt_length)
            if self.top_p < 1.0:  # nucleus: searched among the top-k first (sampling.fast_generate)
                choice = nucleus_choice(probs, self.top_p, u)
            else:
                cdf = probs.cumsum(-1)
                # the first token whose cumulative mass exceeds u * total: never a token without mass
                choice = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1])[:, None], right=True)
                over = choice >= cdf.shape[-1]  # u * total rounded up to the total: the last token with mass
                if over.any():
                    last = (probs > 0).cumsum(-1).argmax(-1, keepdim=True)
                    choice = torch.where(over, last, choice)
        return torch.full_like(scores, float("-inf")).scatter(-1, choice, 0.0)


def format_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped by token length (stable sort, then chunks of batch_size)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _check_settings(rows: list[dict], settings: dict, known: set[str], path: Path) -> None:
    for i, r in enumerate(rows, 1):
        if str(r["prompt_id"]) not in known:
            raise ValueError(f"{path}:{i}: prompt_id {r['prompt_id']!r} is not among this run's prompts; "
                             "the prompts changed since this file was written: delete it to sample again")
        for key in SETTINGS:
            if r.get(key) != settings[key]:
                raise ValueError(f"{path}:{i}: {key}={r.get(key)!r} but this run uses {settings[key]!r}; "
                                 "delete the file to sample again with the new settings")


@torch.inference_mode()
def shared_prompt_cache(model, enc: dict, k: int):
    """The KV cache of each prompt but its last token, computed once and repeated for its K samples (None when
    K = 1 or the prompts are one token long). generate then runs only the last prompt token and the new ones:
    the prefill costs 1/K of what K copies of the prompt would (K copies of the same keys and values)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if k <= 1 or ids.shape[1] < 2:
        return None
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # what generate gives real tokens (padding is masked)
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    return cache


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[dict], *, k: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int, eos_ids: list[int]) -> list[Sample]:
    """K samples for each prompt of one batch, as records (prompt-major, sample_index 0..K-1)."""
    device = next(model.parameters()).device
    texts = [format_prompt(tokenizer, p["messages"]) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    seeds = torch.tensor([row_seed(seed, p["id"], j) for p in prompts for j in range(k)],
                         dtype=torch.long, device=device)
    prompt_length = enc["input_ids"].shape[1]
    sampler = SeededSampler(seeds, temperature, top_p, prompt_length)
    cache = shared_prompt_cache(model, enc, k)
    # each prompt's row repeated K times (what num_return_sequences does); the sampler returns one-hot
    # logits, so greedy decoding takes its token: no second softmax + multinomial over the vocabulary
    enc = {name: t.repeat_interleave(k, dim=0) for name, t in enc.items()}
    out = model.generate(
        **enc, **({} if cache is None else {"cache": cache}), do_sample=False, max_new_tokens=max_new_tokens,
        logits_processor=LogitsProcessorList([sampler]), temperature=None, top_p=None, top_k=None,
        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, prompt_length:].tolist()
    eos = set(eos_ids)
    records = []
    for row, tokens in enumerate(new):
        p, j = prompts[row // k], row % k
        end = next((t for t, tok in enumerate(tokens) if tok in eos), None)
        body = tokens if end is None else tokens[:end]
        records.append({
            "prompt_id": str(p["id"]), "sample_index": j, "messages": p["messages"],
            "is_safety": bool(p.get("is_safety", False)), "category": p.get("category"),
            "response": tokenizer.decode(body, skip_special_tokens=True),
            "num_tokens": len(tokens) if end is None else end + 1,
            "finish_reason": "length" if end is None else "eos",
            "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
        })
    return records


def generate_samples(model, tokenizer, prompts: list[dict], *, k: int, temperature: float,
                     top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0,
                     out_path: Optional[Path] = None, origin_version: Optional[int] = None,
                     show_progress: Optional[bool] = None, on_batch: Optional[Callable[[int, int], None]] = None,
                     stats: Optional[dict] = None, resume_from: Sequence[Path] = (),
                     shard: Optional[tuple[int, int]] = None) -> list[Sample]:
    """K samples for every prompt ({"id", "messages", "is_safety"?, "category"?}), in prompt order.

    With out_path, samples are appended to it batch by batch and an existing file is resumed (see the
    module docstring). A tqdm bar shows on a terminal (show_progress=None) or when asked; on_batch(done,
    total) reports complete prompts after each batch. origin_version, when given, is stored on every sample. `stats` (a dict) receives
    generate_s, new_tokens and new_samples for this call. Under a launcher (sampling.shards): samples
    in `resume_from` (read, never written) count as done, and shard=(rank, world) generates only the
    batches b with b % world == rank (the batches of one process, so samples equal its bit for bit)
    and returns only their samples.
    """
    from tqdm.auto import tqdm

    ids = [str(p["id"]) for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("generate_samples: prompt ids must be unique")
    settings = {"temperature": float(temperature), "top_p": float(top_p),
                "max_new_tokens": int(max_new_tokens), "seed": int(seed)}
    done: dict[tuple[str, int], dict] = {}
    if out_path is not None:
        existing = recover_jsonl(Path(out_path)) + [r for p in resume_from if Path(p).exists() for r in read_jsonl(p)]
        _check_settings(existing, settings, set(ids), Path(out_path))
        done = {(str(r["prompt_id"]), int(r["sample_index"])): r for r in existing}

    def complete(pid: str) -> bool:
        return all((pid, j) in done for j in range(k))

    lengths = [len(tokenizer(format_prompt(tokenizer, p["messages"]), add_special_tokens=False)["input_ids"])
               for p in prompts]
    eos_ids = _eos_ids(model, tokenizer)
    n_done = sum(complete(pid) for pid in ids)
    t0, new_tokens, new_samples = time.perf_counter(), 0, 0
    disable = None if show_progress is None else not show_progress  # None: a bar on terminals only
    with tqdm(total=len(prompts), initial=n_done, disable=disable, desc="sampling",
              unit="prompt") as bar:
        for b, batch in enumerate(plan_batches(lengths, batch_size)):
            if shard is not None and b % shard[1] != shard[0]:
                continue  # another rank's batch
            todo = sum(not complete(ids[i]) for i in batch)
            if todo == 0:
                continue
            # The whole batch is regenerated even if a torn write left part of it on disk, so the
            # samples equal those of an uninterrupted run bit for bit; only the missing ones are written.
            records = generate_batch(model, tokenizer, [prompts[i] for i in batch], k=k,
                                     temperature=settings["temperature"], top_p=settings["top_p"],
                                     max_new_tokens=settings["max_new_tokens"], seed=settings["seed"],
                                     eos_ids=eos_ids)
            fresh = [r for r in records if (r["prompt_id"], r["sample_index"]) not in done]
            if origin_version is not None:
                for r in fresh:
                    r["origin_version"] = int(origin_version)
            if out_path is not None:
                append_jsonl(Path(out_path), fresh)
            for r in fresh:
                done[(r["prompt_id"], r["sample_index"])] = r
            new_tokens += sum(r["num_tokens"] for r in fresh)
            new_samples += len(fresh)
            bar.update(todo)
            if on_batch is not None:
                on_batch(sum(complete(pid) for pid in ids), len(prompts))
    if stats is not None:
        stats.update(generate_s=time.perf_counter() - t0, new_tokens=new_tokens, new_samples=new_samples)
    return [done[(pid, j)] for pid in ids for j in range(k) if shard is None or (pid, j) in done]
