"""Generation speed and sample quality on SmolLM2-135M: plain fp32 `model.generate` against the rs/eval sampler.

Sides, alternated round by round in one process (so machine load hits all of them), same prompts in the
same length-sorted batches, same K, temperature, top-p, max_new_tokens, torch threads:
  plain      fp32 model, `model.generate(do_sample=True, temperature, top_p, num_return_sequences=K)`
  ours-fp32  sampling.generate.generate_samples on the fp32 model (the sampler's own changes only: one
             prefill per prompt for its K samples, the top-k-first nucleus, the one-hot pick)
  ours-int8  generate_samples on the model prepared by `model.generation_quantize: int8`
  ours-eval  (--greedy) eval.generate.generate, the eval stage's greedy path (core.decoding: the shared prompt
             prefix prefilled once, suffixes prefilled in length groups, finished rows dropped, a reserved KV
             cache), on the same batches
  ours-eval-fullhead  (--greedy) ours-eval with core.decoding's screened LM head off (`screen_head=False`): the
             full fp32 head every step, what ours-eval was before session 12; where the screen is off anyway
             (no native bf16) the two sides are the same code. Runs of ours-eval record the screen's counters
             (`screen`: steps, rows, candidates rescored, fallback steps by reason)
  ours-eval-bf16  (--greedy) the same on the model cast to bf16: what the eval stage runs where the CPU has native
             bf16 units (AMX / AVX512-BF16; `model.generation_dtype: auto`); not the same tokens as fp32, so its
             share identical to plain's is the price
  llamacpp   llama.cpp compiled here (bench/llamacpp_ref.py, run with --llamacpp-python), same prompt tokens,
             batches, K, new tokens and greedy/sampling settings, in its own process (its own CPU clock)
  llamacpp-node  the earlier prebuilt node-llama-cpp reference (bench/llamacpp_node.mjs)
--greedy: every side decodes greedily (the eval stage's setting; K must be 1); `plain` is then
`model.generate(do_sample=False)` and the sides' tokens are compared (the share identical to plain's).
Sides other than ours-fp32 that use the seeded sampler get the same seeds, so the share of their samples
that are the same token sequences as ours-fp32's is reported too.
Tokens/s counts generated tokens up to and including EOS, per second of the process's CPU time (one
torch thread; on a shared machine the fairer clock) and per wall second. Quality: every sample of round 0 is scored
by the fp32 policy itself (mean log-prob per response token, teacher-forced, temperature 1), and we
compare the distributions (mean, std, bootstrap 95% CI of the difference to `plain`), with the EOS share
and mean length. No trained safety/helpfulness RM existed for SmolLM2 when this was written, and an RM
freshly initialised from the policy has a random head, so the policy's own log-prob is the measure.

    PYTHONPATH=$PWD .venv/bin/python bench/fast_generate.py --prompts 16 --k 4 --rounds 2 \
        --json bench/results/fast_generate.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
XSTEST = ROOT / ".." / "shared" / "data" / "xstest" / "xstest_prompts.csv"
MODELS = ROOT / ".bench-models"


def load_prompts(n: int) -> list[dict]:
    with open(XSTEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // n)  # spread over the file: safe and unsafe prompts, varied lengths
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}]} for r in rows[::step][:n]]


def plain_side(model, tok, prompts, batches, a, eos_ids) -> list[dict]:
    from saferounds.sampling.generate import format_prompt

    tok.padding_side = "left"
    out = []
    for batch in batches:
        enc = tok([format_prompt(tok, prompts[i]["messages"]) for i in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        sampling = dict(do_sample=False, temperature=None, top_p=None) if a.greedy else \
            dict(do_sample=True, temperature=a.temperature, top_p=a.top_p)
        with torch.inference_mode():
            gen = model.generate(**enc, **sampling, top_k=None, num_return_sequences=a.k,
                                 max_new_tokens=a.max_new_tokens, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)
        for row, tokens in enumerate(gen[:, enc["input_ids"].shape[1]:].tolist()):
            end = next((t for t, x in enumerate(tokens) if x in eos_ids), None)
            body = tokens if end is None else tokens[:end]
            out.append({"prompt_id": prompts[batch[row // a.k]]["id"], "messages": prompts[batch[row // a.k]]["messages"],
                        "response": tok.decode(body, skip_special_tokens=True),
                        "num_tokens": len(tokens) if end is None else end + 1,
                        "finish_reason": "length" if end is None else "eos"})
    return out


@torch.inference_mode()
def mean_logprobs(model, tok, samples, batch_size=16) -> list[float]:
    """Mean log-prob per response token under `model` (teacher-forced), one number per sample."""
    from saferounds.sampling.generate import format_prompt

    tok.padding_side = "right"
    vals = []
    for s in range(0, len(samples), batch_size):
        chunk = samples[s:s + batch_size]
        prompts = [tok(format_prompt(tok, x["messages"]), add_special_tokens=False)["input_ids"] for x in chunk]
        answers = [tok(x["response"], add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for x in chunk]
        seqs = [p + r for p, r in zip(prompts, answers)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, q in enumerate(seqs):
            ids[i, :len(q)], mask[i, :len(q)] = torch.tensor(q), 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
        for i, (p, r) in enumerate(zip(prompts, answers)):
            vals.append(tok_lp[i, len(p) - 1:len(p) - 1 + len(r)].mean().item())
    return vals


def bootstrap_diff(a: list[float], b: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    diffs = sorted(statistics.fmean(rng.choices(b, k=len(b))) - statistics.fmean(rng.choices(a, k=len(a)))
                   for _ in range(n))
    return diffs[int(0.025 * n)], diffs[int(0.975 * n)]


def eval_side(model, tok, prompts, batches, a, eos_ids, screen_head: bool | None = None) -> list[dict]:
    """The eval stage's greedy path (eval.generate.generate) on the same batches; tokens re-counted from the ids.
    `screen_head` False: core.decoding.greedy_decode with its screened LM head off (eval.generate calls it with the
    default, None: on where the CPU has native bf16)."""
    import functools

    import saferounds.core.decoding as decoding
    from saferounds.eval.generate import generate

    original = decoding.greedy_decode
    if screen_head is not None:  # eval.generate imports greedy_decode from core.decoding at each call
        decoding.greedy_decode = functools.partial(original, screen_head=screen_head)
    out = []
    try:
        for batch in batches:
            texts = generate(model, tok, [prompts[i]["messages"] for i in batch], max_new_tokens=a.max_new_tokens,
                             batch_size=len(batch))
            out += _eval_rows(tok, prompts, batch, texts, a)
    finally:
        decoding.greedy_decode = original
    return out


def _eval_rows(tok, prompts, batch, texts, a) -> list[dict]:
    out = []
    for i, t in zip(batch, texts):
        n = min(len(tok(t, add_special_tokens=False)["input_ids"]) + 1, a.max_new_tokens)
        out.append({"prompt_id": prompts[i]["id"], "messages": prompts[i]["messages"], "response": t,
                    "num_tokens": n, "finish_reason": "eos" if n < a.max_new_tokens else "length"})
    return out


def llamacpp_py_side(tok, prompts, batches, a) -> dict:
    """bench/llamacpp_ref.py in the llama.cpp venv: the same prompt tokens in the same batches."""
    import subprocess
    import tempfile

    from saferounds.sampling.generate import format_prompt

    groups = [[tok(format_prompt(tok, prompts[i]["messages"]), add_special_tokens=False)["input_ids"] for i in b]
              for b in batches]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"groups": groups, "k": a.k, "max_new_tokens": a.max_new_tokens, "greedy": a.greedy,
                   "temperature": a.temperature, "top_p": a.top_p, "threads": a.threads}, f)
    out = subprocess.run([str(a.llamacpp_python), str(ROOT / "bench" / "llamacpp_ref.py"), f.name], check=True,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
    os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def llamacpp_side(tok, prompts, a) -> dict:
    """bench/llamacpp_node.mjs on the same prompts (same chat template text), K, max_new_tokens, temperature,
    top-p and threads, with as many sequences decoded together as our batches have rows."""
    import subprocess
    import tempfile

    from saferounds.pipeline.gguf import locate
    from saferounds.sampling.generate import format_prompt

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": [format_prompt(tok, p["messages"]) for p in prompts], "temperature": a.temperature,
                   "top_p": a.top_p}, f)
    cmd = ["node", str(ROOT / "bench" / "llamacpp_node.mjs"), f.name, str(locate("smollm2-135m")), "--k", str(a.k),
           "--max-new-tokens", str(a.max_new_tokens), "--threads", str(a.threads),
           "--parallel", str(a.batch_prompts * a.k)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, NODE_PATH=str(a.node_modules)))
    os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 units (figures differ by machine)."""
    from saferounds.core.precision import cpu_model_name, native_bf16

    return f"{cpu_model_name()}, {os.cpu_count()} CPUs, native bf16: {native_bf16()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-prompts", type=int, default=8, help="prompts per batch (rows = this x K)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sides", default="plain,ours-fp32,ours-int8")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding on every side (eval's setting, K = 1)")
    ap.add_argument("--llamacpp-python", type=Path, default=Path("/tmp/llamacpp-venv/bin/python"),
                    help="the interpreter with llama-cpp-python, for the `llamacpp` side (bench/llamacpp_ref.py)")
    ap.add_argument("--node-modules", type=Path, default=Path("/work/.bench-node-llamacpp/node_modules"),
                    help="node-llama-cpp's install, for the `llamacpp` side (bench/llamacpp_node.mjs)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from transformers import AutoModelForCausalLM

    from saferounds.core import screened_head as screen_stats
    from saferounds.pipeline.gguf import ensure_converted
    from saferounds.pipeline.models import load_tokenizer
    from saferounds.sampling.fast_generate import quantize_int8
    from saferounds.sampling.generate import _eos_ids, format_prompt, generate_samples, plan_batches

    ckpt, _ = ensure_converted("smollm2-135m", MODELS)
    tok = load_tokenizer(ckpt)
    fp32 = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    sides = a.sides.split(",")
    prepared = {"ours-fp32": fp32}
    if "ours-eval-bf16" in sides:
        prepared["ours-eval-bf16"] = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    if "ours-int8" in sides:
        prepared["ours-int8"] = quantize_int8(AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval())
    prompts = load_prompts(a.prompts)
    lengths = [len(tok(format_prompt(tok, p["messages"]), add_special_tokens=False)["input_ids"]) for p in prompts]
    batches = plan_batches(lengths, a.batch_prompts)
    eos_ids = _eos_ids(fp32, tok)
    runs = {s: [] for s in sides}
    samples = {}
    for r in range(a.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
            if side.startswith("llamacpp"):  # llama.cpp on the GGUF itself, in its own process: its own CPU clock
                got = llamacpp_side(tok, prompts, a) if side == "llamacpp-node" else \
                    llamacpp_py_side(tok, prompts, batches, a)
                runs[side].append({"round": r, "seconds": got["wall_s"], "cpu_seconds": got["cpu_s"],
                                   "tokens": got["generated_tokens"], "tok_s": got["tok_per_wall_s"],
                                   "tok_per_cpu_s": got["tok_per_cpu_s"], "load1": round(load0, 2)})
                print(side, runs[side][-1], flush=True)
                continue
            if side == "plain":
                torch.manual_seed(r)
                out = plain_side(fp32, tok, prompts, batches, a, eos_ids)
            elif side in ("ours-eval", "ours-eval-bf16", "ours-eval-fullhead"):
                screen_stats.reset_stats()
                out = eval_side(prepared.get(side, fp32), tok, prompts, batches, a, eos_ids,
                                screen_head=False if side == "ours-eval-fullhead" else None)
            else:
                out = generate_samples(prepared[side], tok, prompts, k=a.k,
                                       temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                                       batch_size=a.batch_prompts, seed=r, show_progress=False)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            n_tok = sum(x["num_tokens"] for x in out)
            runs[side].append({"round": r, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2), "tokens": n_tok,
                               "tok_s": round(n_tok / dt, 2), "tok_per_cpu_s": round(n_tok / cpu, 2),
                               "load1": round((load0 + os.getloadavg()[0]) / 2, 2)})
            if side.startswith("ours-eval") and screen_stats.STATS["steps"]:
                runs[side][-1]["screen"] = dict(screen_stats.STATS)
            print(side, runs[side][-1], flush=True)
            samples.setdefault(side, out)
    # on a shared machine the process's CPU time (one torch thread) is the fairer clock; wall time is kept too
    tps = {s: statistics.median(x["tok_per_cpu_s"] for x in runs[s]) for s in sides}
    wall = {s: statistics.median(x["tok_s"] for x in runs[s]) for s in sides}
    quality = {}
    for side in [s for s in sides if not s.startswith("llamacpp")]:  # llama.cpp samples its own Q4_1 weights: a speed limit only
        lp = mean_logprobs(fp32, tok, samples[side])
        quality[side] = {"mean_logprob": round(statistics.fmean(lp), 4), "std": round(statistics.stdev(lp), 4),
                         "eos_share": round(sum(x["finish_reason"] == "eos" for x in samples[side]) / len(lp), 3),
                         "mean_tokens": round(statistics.fmean(x["num_tokens"] for x in samples[side]), 1),
                         "_lp": lp}
    base = sides[0]
    for side in [s for s in sides[1:] if s in quality]:
        lo, hi = bootstrap_diff(quality[base]["_lp"], quality[side]["_lp"])
        quality[side]["diff_vs_" + base + "_ci95"] = [round(lo, 4), round(hi, 4)]
    for q in quality.values():
        q.pop("_lp")
    if a.greedy and "plain" in samples:  # greedy: the same tokens as plain generate?
        ref = {x["prompt_id"]: x["response"].strip() for x in samples["plain"]}
        for side in [s for s in quality if s != "plain"]:
            same = [ref.get(x["prompt_id"]) == x["response"].strip() for x in samples[side]]
            quality[side]["identical_to_plain"] = round(sum(same) / len(same), 3)
    if "ours-fp32" in samples:  # same seeds, same sampler: a quality-keeping model draws the same tokens
        ref = {(x["prompt_id"], x["sample_index"]): x["response"] for x in samples["ours-fp32"]}
        for side in [s for s in quality if s.startswith("ours-") and s != "ours-fp32"]:
            same = [ref.get((x["prompt_id"], x["sample_index"])) == x["response"] for x in samples[side]]
            quality[side]["identical_to_ours_fp32"] = round(sum(same) / len(same), 3)
    result = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32)", "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()} | {"json": None},
              "rows_per_batch": a.batch_prompts * a.k, "runs": runs, "median_tok_s": tps,
              "ratio_vs_plain": {s: round(tps[s] / tps[base], 2) for s in sides},
              "median_wall_tok_s": wall, "wall_ratio_vs_plain": {s: round(wall[s] / wall[base], 2) for s in sides},
              "quality": quality,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model(),
              "torch": torch.__version__}
    print(json.dumps({k: result[k] for k in ("median_tok_s", "ratio_vs_plain", "wall_ratio_vs_plain", "quality")}, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
