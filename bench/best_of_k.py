"""Best-of-K throughput: saferounds' batched sampling path vs a naive loop (not a timed test).

Both paths start from the same model, prompts (XSTest, real), K, temperature, top-p and max_new_tokens,
and use the same per-sample seeds, so they generate the same samples and the same number of tokens
(the script checks it). Throughput = generated tokens / wall time of sampling + scoring with both RMs
+ the gate + best-of-K selection.

  batched  sampling.generate.generate_samples (one generate call per length-grouped batch of prompts,
           num_return_sequences=K, left padding, samples.jsonl fsync'd per batch), then
           sampling.scoring.score_samples (length-sorted batches per RM) and sampling.rejection.best_of_k
  naive    one model.generate call per sample (batch 1, no padding), each sample scored alone by each RM,
           then the same gate and best_of_k

It also times the batched generate with Hugging Face's own multinomial sampling (not per-sample
deterministic) to show what the per-sample seeded sampler costs, and breaks the batched
path's time down (model forward, sampler, other generate overhead, decode, jsonl+fsync, RM scoring,
gate+selection).

Run (CPU, one thread, as the figures in the report):
  .venv/bin/python bench/best_of_k.py --model tiny  --prompts 16 --k 4 --max-new-tokens 32
  .venv/bin/python bench/best_of_k.py --model small --prompts 16 --k 4 --max-new-tokens 32
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
XSTEST = ROOT / ".." / "shared" / "data" / "xstest" / "xstest_prompts.csv"

import saferounds.sampling.generate as gen  # noqa: E402
from saferounds.reward_models.config import GateConfig
from saferounds.reward_models.scoring import score  # noqa: E402
from saferounds.sampling.rejection import best_of_k  # noqa: E402
from saferounds.sampling.scoring import add_gate, score_samples  # noqa: E402


def load_xstest(n: int) -> list[dict]:
    with open(XSTEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // n)  # spread over the file: safe and unsafe prompts, varied lengths
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}],
             "is_safety": r["label"] == "unsafe", "category": r["type"]} for r in rows[::step][:n]]


def build_models(kind: str, device: str, work: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, \
        LlamaForCausalLM

    from saferounds.data.tiny import build_tiny

    paths = build_tiny(work / "tiny")
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    if kind == "tiny":
        policy = AutoModelForCausalLM.from_pretrained(paths["policy"])
    elif kind == "small":  # a Llama of ~35M parameters on the tiny tokenizer
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(paths["policy"]).config.to_dict()
        base.update(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=8)
        policy = LlamaForCausalLM(LlamaConfig(**base))
        policy.generation_config = AutoModelForCausalLM.from_pretrained(paths["policy"]).generation_config
    else:
        policy = AutoModelForCausalLM.from_pretrained(kind)
        tok = AutoTokenizer.from_pretrained(kind)
        tok.pad_token = tok.pad_token or tok.eos_token
    rm = AutoModelForSequenceClassification.from_pretrained(paths["reward_model"])
    rm_tok = AutoTokenizer.from_pretrained(paths["reward_model"])
    return policy.to(device).eval(), tok, (rm.to(device).eval(), rm_tok)


class Timers:
    """Wall time per labelled part, accumulated by patching the functions that do each part."""

    def __init__(self):
        self.t = defaultdict(float)
        self._undo = []

    def wrap(self, owner, name, label):
        orig = getattr(owner, name)

        def timed(*a, **kw):
            sync()
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                sync()
                self.t[label] += time.perf_counter() - t0

        setattr(owner, name, timed)
        self._undo.append((owner, name, orig))

    def hook_forward(self, model, label):
        start = {}

        def pre(m, args, kwargs):
            sync()
            start["t"] = time.perf_counter()

        def post(m, args, kwargs, out):
            sync()
            self.t[label] += time.perf_counter() - start["t"]

        self._undo.append((model.register_forward_pre_hook(pre, with_kwargs=True), None, None))
        self._undo.append((model.register_forward_hook(post, with_kwargs=True), None, None))

    def undo(self):
        for owner, name, orig in reversed(self._undo):
            if name is None:
                owner.remove()
            else:
                setattr(owner, name, orig)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def batched(policy, tok, rm, prompts, a, out_path):
    gate = GateConfig()
    t0 = time.perf_counter()
    samples = gen.generate_samples(policy, tok, prompts, k=a.k, temperature=a.temperature, top_p=a.top_p,
                                   max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed,
                                   out_path=out_path, origin_version=1)
    t1 = time.perf_counter()
    score_samples(samples, rm, rm, gate, batch_size=a.score_batch_size)
    t2 = time.perf_counter()
    selected = best_of_k(samples)
    t3 = time.perf_counter()
    return samples, selected, {"generate": t1 - t0, "score": t2 - t1, "select": t3 - t2, "total": t3 - t0}


@torch.no_grad()
def naive(policy, tok, rm, prompts, a):
    gate = GateConfig()
    eos = gen._eos_ids(policy, tok)
    t0 = time.perf_counter()
    samples = []
    for p in prompts:
        for j in range(a.k):  # one generate call per sample
            enc = tok(gen.format_prompt(tok, p["messages"]), return_tensors="pt",
                      add_special_tokens=False).to(policy.device)
            seeds = torch.tensor([gen.row_seed(a.seed, p["id"], j)], device=policy.device)
            sampler = gen.SeededSampler(seeds, a.temperature, a.top_p, enc["input_ids"].shape[1])
            out = policy.generate(**enc, do_sample=True, max_new_tokens=a.max_new_tokens,
                                  logits_processor=gen.LogitsProcessorList([sampler]), temperature=1.0,
                                  top_p=1.0, top_k=None, eos_token_id=eos, pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1]:].tolist()
            end = next((i for i, t in enumerate(new) if t in eos), None)
            samples.append({"prompt_id": p["id"], "sample_index": j, "origin_version": 1, "messages": p["messages"],
                            "is_safety": p["is_safety"],
                            "response": tok.decode(new if end is None else new[:end], skip_special_tokens=True),
                            "num_tokens": len(new) if end is None else end + 1})
    t1 = time.perf_counter()
    for s in samples:  # each sample scored alone by each RM
        s["helpfulness"] = score(rm[0], rm[1], [s["messages"]], [s["response"]], batch_size=1)[0]
        s["safety"] = score(rm[0], rm[1], [s["messages"]], [s["response"]], batch_size=1)[0]
    add_gate(samples, gate)
    t2 = time.perf_counter()
    selected = best_of_k(samples)
    t3 = time.perf_counter()
    return samples, selected, {"generate": t1 - t0, "score": t2 - t1, "select": t3 - t2, "total": t3 - t0}


@torch.no_grad()
def hf_native_generate(policy, tok, prompts, a) -> tuple[float, int]:
    """The batched generate with HF's own multinomial sampling: what the seeded sampler costs."""
    lengths = [len(tok(gen.format_prompt(tok, p["messages"]), add_special_tokens=False)["input_ids"]) for p in prompts]
    eos = gen._eos_ids(policy, tok)
    torch.manual_seed(a.seed)
    tokens, t0 = 0, time.perf_counter()
    tok.padding_side = "left"
    for batch in gen.plan_batches(lengths, a.batch_size):
        enc = tok([gen.format_prompt(tok, prompts[i]["messages"]) for i in batch], return_tensors="pt",
                  padding=True, add_special_tokens=False).to(policy.device)
        out = policy.generate(**enc, do_sample=True, num_return_sequences=a.k, max_new_tokens=a.max_new_tokens,
                              temperature=a.temperature, top_p=a.top_p, top_k=None, eos_token_id=eos,
                              pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            tokens += len(row) if end is None else end + 1
            tok.decode(row if end is None else row[:end], skip_special_tokens=True)
    tok.padding_side = "right"
    return time.perf_counter() - t0, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | small | a local causal-LM path")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    ap.add_argument("--score-batch-size", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-bok-"))
    policy, tok, rm = build_models(a.model, a.device, work)
    prompts = load_xstest(a.prompts)
    n_params = sum(p.numel() for p in policy.parameters())
    # warm-up (allocator, kernels) on two prompts, not timed
    gen.generate_samples(policy, tok, prompts[:2], k=2, temperature=1.0, max_new_tokens=4, seed=99)

    timers = Timers()
    timers.hook_forward(policy, "model forward (policy)")
    timers.wrap(gen.SeededSampler, "__call__", "sampler (softmax, top-p, seeded inverse-CDF draw)")
    timers.wrap(gen, "append_jsonl", "samples.jsonl append + fsync")
    timers.wrap(tok, "decode", "decode")
    b_samples, b_sel, b_t = batched(policy, tok, rm, prompts, a, work / "samples.jsonl")
    timers.undo()
    n_samples, n_sel, n_t = naive(policy, tok, rm, prompts, a)
    hf_s, hf_tokens = hf_native_generate(policy, tok, prompts, a)

    b_tokens = sum(s["num_tokens"] for s in b_samples)
    n_tokens = sum(s["num_tokens"] for s in n_samples)
    same = sum(x["response"] == y["response"] for x, y in zip(b_samples, n_samples))
    same_pick = sum((x["prompt_id"], x["sample_index"]) == (y["prompt_id"], y["sample_index"])
                    for x, y in zip(b_sel, n_sel))
    parts = dict(timers.t)
    parts["generate: other (HF loop, padding, tokenize, bookkeeping)"] = b_t["generate"] - sum(timers.t.values())
    parts["RM scoring (2 RMs)"] = b_t["score"]
    parts["gate + best_of_k"] = b_t["select"]
    res = {
        "model": a.model, "params": n_params, "device": a.device, "threads": a.threads,
        "torch": torch.__version__, "prompts": len(prompts), "k": a.k, "max_new_tokens": a.max_new_tokens,
        "batch_size": a.batch_size, "tokens": b_tokens, "naive_tokens": n_tokens,
        "identical_samples": f"{same}/{len(b_samples)}", "identical_selection": f"{same_pick}/{len(b_sel)}",
        "batched": {**{k: round(v, 3) for k, v in b_t.items()}, "tokens_per_s": round(b_tokens / b_t["total"], 1)},
        "naive": {**{k: round(v, 3) for k, v in n_t.items()}, "tokens_per_s": round(n_tokens / n_t["total"], 1)},
        "ratio": round((b_tokens / b_t["total"]) / (n_tokens / n_t["total"]), 2),
        "hf_native_batched_generate": {"s": round(hf_s, 3), "tokens": hf_tokens,
                                       "tokens_per_s": round(hf_tokens / hf_s, 1)},
        "seeded_generate_tokens_per_s": round(b_tokens / b_t["generate"], 1),
        "batched_breakdown_s": {k: round(v, 3) for k, v in parts.items()},
    }
    print(json.dumps(res, indent=2))
    print(f"\nbest-of-{a.k}, {len(prompts)} prompts, {b_tokens} tokens, {a.model} ({n_params / 1e6:.1f}M params) "
          f"on {a.device}: batched {res['batched']['tokens_per_s']} tok/s vs naive {res['naive']['tokens_per_s']} "
          f"tok/s -> {res['ratio']}x")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {v:8.3f}s {100 * v / b_t['total']:5.1f}%  {k}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
