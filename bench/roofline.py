"""How close each stage of the smollm2 demo gets to this CPU's limit (issue 30).

Part 1, the limit: fp32 matrix-product peak (torch.mm, 2048^3, best of N, per CPU-second and per wall second,
one and two threads), the same at the shapes the stages run (a 64-row decode step's projections and LM
head), and memory bandwidth (a 256 MB copy and a 256 MB sum).

Part 2, each stage: a short in-process run of the stage's own code path on SmolLM2-135M-Instruct (the demo's
v0, fp32, one thread, the smollm2 preset's LoRA: r 16 on every Linear of the top 8 of 30 layers):
  rm_train     one RM training step: 8 pairs (16 sequences) x 128 tokens, Eq. 2 loss, backward, AdamW
               (the model work of reward_models.training's Trainer step; the Trainer itself is not run)
  rm_score     reward_models.scoring.score on 32 (prompt, answer) texts, batch 32
  rs_sample    sampling.generate.generate_samples, 8 prompts x K = 4, 32 new tokens, T 0.8, top-p 0.95
  rs_finetune  one fine-tune step: 8 sequences x 192 tokens, LM loss, backward, AdamW (sft's model work)
  ppo_step     pipeline.training.ppo.train_ppo, LoRA, batch 8, mini-batch 4, 2 epochs, 16 new tokens (the
               second of two steps; a constant score function instead of the RMs, which rm_score covers)
  eval_gen     eval.generate.generate, greedy, 32 prompts in one batch, 32 new tokens
The FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode over one run of the stage
(matrix products and attention, forward and backward); the same run is then timed without the counter.
Achieved = counted FLOPs / CPU seconds, as a fraction of the 1-thread matmul peak.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/roofline.py --json bench/results/roofline.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ROOT / ".bench-models"


def clocked(fn, repeat: int = 1) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) of fn() over `repeat` calls."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def matmul_peak(threads: int, n: int = 2048, repeat: int = 5, dtype: torch.dtype = torch.float32) -> dict:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    cpu, wall = clocked(lambda: a @ b, repeat)
    flops = 2 * n ** 3
    return {"threads": threads, "dtype": str(dtype).removeprefix("torch."), "gflop_per_cpu_s": flops / cpu / 1e9,
            "gflop_per_wall_s": flops / wall / 1e9, "load1": os.getloadavg()[0]}


def shape_efficiency(rows: int = 64, repeat: int = 5) -> dict:
    """GFLOP/CPU-s of the products a decode step of SmolLM2-135M runs at `rows` rows, one thread."""
    torch.set_num_threads(1)
    out = {}
    for name, (k, n) in {"q/o 576x576": (576, 576), "k/v 576x192": (576, 192), "gate/up 576x1536": (576, 1536),
                         "down 1536x576": (1536, 576), "lm_head 576x49152": (576, 49152)}.items():
        x, w = torch.randn(rows, k), torch.randn(n, k)
        reps = max(1, int(2e9 / (2 * rows * k * n)))  # ~2 GFLOP per timing

        def run():
            for _ in range(reps):
                torch.nn.functional.linear(x, w)
        run()
        cpu, _ = clocked(run, repeat)
        out[name] = 2 * rows * k * n * reps / cpu / 1e9
    return out


def bandwidth(threads: int, mb: int = 256, repeat: int = 5) -> dict:
    torch.set_num_threads(threads)
    a = torch.ones(mb * 2 ** 20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    _, copy_wall = clocked(lambda: b.copy_(a), repeat)
    _, sum_wall = clocked(lambda: a.sum(), repeat)
    nbytes = a.numel() * 4
    return {"threads": threads, "copy_gb_s": 2 * nbytes / copy_wall / 1e9, "read_gb_s": nbytes / sum_wall / 1e9}


def load_model(lora: bool, seq_cls: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from saferounds.pipeline.gguf import ensure_converted
    from saferounds.reward_models.modeling import linear_module_names

    ckpt, _ = ensure_converted("smollm2-135m", MODELS)
    cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    model = cls.from_pretrained(ckpt, **({"num_labels": 1} if seq_cls else {}))
    if seq_cls:
        model.config.pad_token_id = model.config.pad_token_id or 0
    if lora:
        n = model.config.num_hidden_layers
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 task_type="SEQ_CLS" if seq_cls else "CAUSAL_LM",
                                                 target_modules=linear_module_names(model),
                                                 layers_to_transform=list(range(n - 8, n))))
    return ckpt, model


def prompts(n: int) -> list[dict]:
    import csv

    with open(ROOT / ".." / "shared" / "data" / "xstest" / "xstest_prompts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = rows[::max(1, len(rows) // n)][:n]
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}], "is_safety": False} for r in rows]


def train_step_fn(model, ids, loss_of):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = loss_of(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def stage_fns(tok) -> dict:
    """name -> (setup() -> (run, tokens per run))."""
    def rm_train():
        _, rm = load_model(lora=True, seq_cls=True)
        ids = torch.randint(100, 40000, (16, 128))

        def loss_of(m, x):
            s = m(input_ids=x).logits[:, 0]
            return -torch.nn.functional.logsigmoid(s[:8] - s[8:]).mean()
        return train_step_fn(rm, ids, loss_of), ids.numel()

    def rm_score():
        from saferounds.reward_models.scoring import score
        _, rm = load_model(lora=True, seq_cls=True)
        rm.eval()
        ps = prompts(32)
        answers = ["Here is a short and helpful answer about that topic, with a few details. " * 2] * 32
        from saferounds.reward_models.scoring import format_sample
        n_tok = sum(min(128, len(tok(format_sample(tok, p["messages"], a), add_special_tokens=False)["input_ids"]))
                    for p, a in zip(ps, answers))
        return (lambda: torch.no_grad()(score)(rm, tok, [p["messages"] for p in ps], answers, batch_size=32,
                                               max_length=128)), n_tok

    def rs_sample():
        from saferounds.sampling.generate import generate_samples
        _, m = load_model(lora=False)
        m.eval()
        box = {}

        def run():
            out = generate_samples(m, tok, prompts(8), k=4, temperature=0.8, top_p=0.95, max_new_tokens=32,
                                   batch_size=8, seed=0, show_progress=False)
            box["n"] = sum(x["num_tokens"] for x in out)
        return run, box

    def rs_finetune():
        _, m = load_model(lora=True)
        ids = torch.randint(100, 40000, (8, 192))
        return train_step_fn(m, ids, lambda mm, x: mm(input_ids=x, labels=x).loss), ids.numel()

    def ppo_step():
        from saferounds.pipeline.training.config import PPOConfig
        from saferounds.pipeline.training.ppo import train_ppo
        _, m = load_model(lora=True)
        cfg = PPOConfig(steps=1, batch_size=8, mini_batch_size=4, rollout_batch_size=8, ppo_epochs=2,
                        max_new_tokens=16, temperature=0.8, learning_rate=1e-4, save_every=10_000, seed=0)
        score = lambda batch, texts: (torch.zeros(len(texts)), None)  # noqa: E731
        return (lambda: train_ppo(m, tok, prompts(8), score, cfg)), 8 * 16

    def eval_gen():
        from saferounds.eval.generate import generate
        _, m = load_model(lora=False)
        box = {}

        def run():
            out = generate(m, tok, [p["messages"] for p in prompts(32)], max_new_tokens=32, batch_size=32)
            box["n"] = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in out)
        return run, box
    return {"rm_train": rm_train, "rm_score": rm_score, "rs_sample": rs_sample, "rs_finetune": rs_finetune,
            "ppo_step": ppo_step, "eval_gen": eval_gen}


def measure_stage(setup) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    torch.manual_seed(0)
    run, tokens = setup()
    counter = FlopCounterMode(display=False)
    with counter:
        run()  # counted (and the warm-up)
    torch.manual_seed(0)
    cpu, wall = clocked(run)
    n_tok = tokens["n"] if isinstance(tokens, dict) else tokens
    flops = counter.get_total_flops()
    return {"gflop": flops / 1e9, "cpu_s": cpu, "wall_s": wall, "tokens": n_tok, "tok_per_cpu_s": n_tok / cpu,
            "gflop_per_cpu_s": flops / cpu / 1e9, "load1": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="rm_train,rm_score,rs_sample,rs_finetune,ppo_step,eval_gen")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from saferounds.core.precision import cpu_model_name
    from saferounds.pipeline.gguf import ensure_converted
    from saferounds.pipeline.models import load_tokenizer

    result = {"load1_start": os.getloadavg(), "cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    # the limit, measured twice around the stages (the machine is shared): the better figure is the peak
    peaks = [matmul_peak(1), matmul_peak(2)]
    # bf16 too: on a CPU with AMX / AVX512-BF16 the pipeline generates in bf16 (model.generation_dtype: auto), and
    # that is a different limit from fp32's
    result["bf16_matmul_peaks"] = [matmul_peak(1, dtype=torch.bfloat16), matmul_peak(2, dtype=torch.bfloat16)]
    result["cpu_model"] = cpu_model_name()
    result["bandwidth"] = [bandwidth(1), bandwidth(2)]
    result["decode_shapes_gflop_per_cpu_s"] = {"rows_64": shape_efficiency(64), "rows_32": shape_efficiency(32)}
    print(json.dumps({"peaks": peaks, "bf16_peaks": result["bf16_matmul_peaks"], "bandwidth": result["bandwidth"],
                      "decode_shapes": result["decode_shapes_gflop_per_cpu_s"]}, indent=1), flush=True)
    tok = load_tokenizer(ensure_converted("smollm2-135m", MODELS)[0])
    fns = stage_fns(tok)
    stages = {}
    for name in a.stages.split(","):
        stages[name] = measure_stage(fns[name])
        print(name, json.dumps(stages[name]), flush=True)
    peaks += [matmul_peak(1), matmul_peak(2)]
    peak1 = max(p["gflop_per_cpu_s"] for p in peaks if p["threads"] == 1)
    for s in stages.values():
        s["fraction_of_peak"] = s["gflop_per_cpu_s"] / peak1
    result.update(matmul_peaks=peaks, peak_1_thread_gflop_per_cpu_s=peak1, stages=stages,
                  load1_end=os.getloadavg())
    print(f"\nfp32 matmul peak, 1 thread: {peak1:.1f} GFLOP per CPU-second")
    print(f"{'stage':<12} {'GFLOP':>8} {'CPU s':>7} {'tok/CPU-s':>9} {'GFLOP/CPU-s':>11} {'of peak':>7}")
    for name, s in stages.items():
        print(f"{name:<12} {s['gflop']:>8.1f} {s['cpu_s']:>7.2f} {s['tok_per_cpu_s']:>9.1f} "
              f"{s['gflop_per_cpu_s']:>11.1f} {s['fraction_of_peak']:>7.0%}")
    if stages:
        worst = min(stages, key=lambda k: stages[k]["fraction_of_peak"])
        result["furthest_from_limit"] = worst
        print(f"furthest from its limit: {worst}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
