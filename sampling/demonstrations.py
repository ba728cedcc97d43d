"""Safe demonstrations in rejection sampling (`rejection_sampling.demonstrations`).

LLaMA 2 begins safety tuning with supervised fine-tuning on safe demonstrations for adversarial
prompts (Sec. 4.2.2) before rejection sampling and PPO. A small chat model that almost never refuses
gives best-of-K almost nothing safe to select, so a demonstration can enter a round in two ways:
  pool      it joins its prompt's K samples as one more candidate; this round's RMs and gate (Eq. 4)
            score it like every sample and it is kept only when it is the best of the K + 1
            (origin_version 0, sample_index -1 - j: never confused with a policy sample);
  finetune  it is added to the fine-tune data as it is (plain safety SFT).
Pure functions; the stage (pipeline/stages/rs.py) reads the files.
"""
from __future__ import annotations

import json

DEMONSTRATION_ORIGIN = 0  # origin_version of a demonstration (v0 never samples in a round)


def _key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def match_demonstrations(demos: list[dict], prompts: list[dict]) -> dict[str, list[dict]]:
    """{prompt id: its demonstrations}; a demonstration names its prompt by `prompt_id` or by the same
    `messages`. Demonstrations of prompts not in this round are ignored."""
    by_id = {str(p["id"]): p for p in prompts}
    by_messages = {_key(p["messages"]): str(p["id"]) for p in prompts}
    out: dict[str, list[dict]] = {}
    for d in demos:
        pid = str(d["prompt_id"]) if d.get("prompt_id") is not None and str(d["prompt_id"]) in by_id \
            else by_messages.get(_key(d["messages"]))
        if pid is not None:
            out.setdefault(pid, []).append(d)
    return out


def demonstration_candidates(demos: list[dict], prompts: list[dict]) -> list[dict]:
    """Candidates for best-of-K, shaped like samples (prompt_id, sample_index, response, origin...)."""
    by_id = {str(p["id"]): p for p in prompts}
    out = []
    for pid, ds in sorted(match_demonstrations(demos, prompts).items()):
        p = by_id[pid]
        for j, d in enumerate(ds):
            out.append({"prompt_id": pid, "sample_index": -1 - j, "messages": p["messages"],
                        "is_safety": bool(p.get("is_safety", False)), "category": p.get("category"),
                        "response": d["completion"], "origin_version": DEMONSTRATION_ORIGIN,
                        "demonstration": True, "num_tokens": None, "finish_reason": "demonstration"})
    return out


def finetune_examples(demos: list[dict], prompts: list[dict]) -> list[dict]:
    """Demonstrations of this round's prompts as {"messages", "completion"} fine-tune examples."""
    by_id = {str(p["id"]): p for p in prompts}
    return [{"messages": by_id[pid]["messages"], "completion": d["completion"]}
            for pid, ds in sorted(match_demonstrations(demos, prompts).items()) for d in ds]
