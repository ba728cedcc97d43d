"""Temperature per round, `auto`: sample the held-out slice at each candidate temperature and keep the
one with the highest mean max-of-K gated score (LLaMA 2 Fig. 8: the best temperature moves as the
policy is updated, so it is re-tuned every round)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

from saferounds.sampling.curves import mean_max_of_k
from saferounds.sampling.generate import generate_samples


def sweep_slice(prompts: list[dict], n: int, seed: int) -> list[dict]:
    """n prompts picked by a seeded hash of their ids: the same held-out slice in every round, so the
    rounds' sweeps are comparable."""
    return sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}\x1f{p['id']}".encode()).hexdigest())[:n]


def pick_temperature(values: dict[float, float]) -> float:
    """The temperature with the highest value; ties go to the lower temperature (deterministic)."""
    return min(values, key=lambda t: (-values[t], t))


def sweep_temperature(model, tokenizer, prompts: list[dict], temperatures: list[float], k: int,
                      score_fn: Callable[[list[dict]], None], *, top_p: float = 1.0, max_new_tokens: int = 128,
                      batch_size: int = 8, seed: int = 0, work_dir: Optional[Path] = None,
                      show_progress: Optional[bool] = None, key: str = "gated_logit") -> dict:
    """Returns {"temperature": best T, "mean_max_of_k": {T: value}, "k", "prompts"}.

    Every temperature uses the same seed, so the comparison is paired (common random numbers).
    score_fn(samples) must set `key` on each sample: "gated_logit" (the un-whitened logit puts every
    temperature on one scale) or, when an LLM judge is the reward, its score. With work_dir, each temperature's samples resume from work_dir/sweep_T*.jsonl.
    """
    values = {}
    for t in temperatures:
        out = None if work_dir is None else Path(work_dir) / f"sweep_T{t:g}.jsonl"
        samples = generate_samples(model, tokenizer, prompts, k=k, temperature=t, top_p=top_p,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                   out_path=out, show_progress=show_progress)
        score_fn(samples)
        values[float(t)] = mean_max_of_k(samples, k, key)
    return {"temperature": pick_temperature(values), "mean_max_of_k": {f"{t:g}": v for t, v in values.items()},
            "k": k, "prompts": len(prompts)}
