"""`saferounds demo --model ID|PATH|GGUF`: the smollm2 plan on any causal chat model with a chat template.

The model is made a local checkpoint once (pipeline.models.resolve_source: a .gguf converted, a hub id
downloaded) and checked before anything starts (a chat template, a ...ForCausalLM config). The smollm2 preset's
sizes were chosen for SmolLM2-135M on 2 cores; for another model they scale with its parameter count P, as
r = P / 135M:
  * new tokens (rs, eval, PPO): 48 up to r = 2, 32 up to r = 8, then 24;
  * batch sizes (eval, rs, RMs, PPO mini-batches): divided by ceil(r), never below a floor;
  * LoRA layers: 8 / sqrt(r), at least 2, at most the model's layers;
  * RM backbone: the model itself, as in the preset (heads on the mean of its lower layers, frozen): the same
    share of its layers as the preset's 22 of SmolLM2's 30, so the RMs cost as the rest does, about r times.
The estimate before the run: the smollm2 run's stage times as measured on the reference machine
(demo_real.ESTIMATES and REFERENCE, from bench/smollm2_demo.py) times r and the token ratio (generation and
training cost both go as parameters x tokens), scaled to this machine by three 0.1-second probes of its fp32
matrix-product speed at the run's threads (`core.precision.matmul_gflops`), and for the generating stages by
whether it generates in bf16 (the reference did): a guess to within about 2x. Once stages finish, the run's ETA
follows their measured times instead (demo_real.Progress).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

SMOLLM2_PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct (tied embeddings): the preset's sizes are for it
SMOLLM2_LAYERS, PRESET_RM_LAYERS = 30, 22  # the preset's model.reward_model_layers of SmolLM2's layers
PRESET_TOKENS = 48


@dataclass
class DemoPlan:
    """What `demo --model` will run: the local checkpoint, what it is, the preset overrides and the estimate."""
    model: str
    policy: Path
    info: dict
    overrides: dict = field(default_factory=dict)
    ratio: float = 1.0  # estimated cost relative to the smollm2 run
    estimates: dict = field(default_factory=dict)


def workspace_name(model: str) -> str:
    """The default demo workspace: demo-smollm2, else demo-<the model's name>."""
    from saferounds.pipeline.model_eval import model_label

    return "demo-smollm2" if model == "smollm2" else f"demo-{model_label(model)}"


def tokens_for(r: float) -> int:
    return PRESET_TOKENS if r <= 2 else 32 if r <= 8 else 24


def scaled_sizes(info: dict, size: str, policy: Path, base: dict) -> tuple[dict, float]:
    """(preset overrides for a model of info["parameters"] and info["layers"], its cost ratio to SmolLM2-135M).
    `base`: the size's own overrides (demo_real.SIZES[size]), kept where they are smaller (mini)."""
    r = max(info["parameters"], 1) / SMOLLM2_PARAMETERS
    div = max(1, math.ceil(r))
    mini = size == "mini"
    tokens = 8 if mini else tokens_for(r)
    layers = max(2, min(info.get("layers") or 2, round((2 if mini else 8) / math.sqrt(r))))
    model = {**(base.get("model") or {}), "policy": str(policy), "v0": "given",
             "reward_model_layers": max(1, round((info.get("layers") or SMOLLM2_LAYERS) * PRESET_RM_LAYERS
                                                 / SMOLLM2_LAYERS))}
    model["lora"] = {**(base.get("model", {}).get("lora") or
                        {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]}),
                     "layers": layers}
    rs, ev, ppo = (dict(base.get(k) or {}) for k in ("rejection_sampling", "eval", "ppo"))
    out = {**base, "model": model,
           "rejection_sampling": {**rs, "max_new_tokens": tokens, "batch_size": max(4, (rs.get("batch_size") or 16) // div)},
           "eval": {**ev, "max_new_tokens": tokens, "batch_size": max(8, (ev.get("batch_size") or 64) // div)},
           "ppo": {**ppo, "max_new_tokens": tokens, "mini_batch_size": max(2, (ppo.get("mini_batch_size") or 8) // div)},
           "reward_models": {**(base.get("reward_models") or {}),
                             "batch_size": max(2, (base.get("reward_models") or {}).get("batch_size", 8) // div)}}
    return out, r * tokens / (8 if mini else PRESET_TOKENS)


@dataclass(frozen=True)
class MachineSpeed:
    """What the estimate scales by: fp32 matrix products in GFLOP per wall second at the run's threads
    (`core.precision.matmul_gflops`), and whether the policy generates in bf16 there (`generation_dtype: auto`)."""
    fp32_gflops: float
    bf16_generation: bool


# The machine demo_real.ESTIMATES were measured on: the session 11 acceptance run (bench/README.md), a 2-core
# Intel Xeon with AMX, 2 threads, the probe taken there on a quiet machine (median of 5).
REFERENCE = MachineSpeed(fp32_gflops=228.0, bf16_generation=True)
# the eval decoder in bf16 against fp32 on the reference (bench/results/eval_greedy_s11.json)
BF16_GENERATION_SPEEDUP = 2.33
# the share of each stage's time that is generation, on the reference (the stages' own logs): the rest is
# fp32 training, scoring and encoding, which scale with the probe alone
GENERATION_SHARE = {"eval": 1.0, "rs": 0.3, "ppo": 0.5}


def measure_machine() -> MachineSpeed:
    """This machine, now: the median of three short fp32 probes, and `generation_dtype: auto`'s choice."""
    import statistics

    import torch

    from saferounds.core.precision import generation_dtype, matmul_gflops

    return MachineSpeed(statistics.median(matmul_gflops(seconds=0.1) for _ in range(3)),
                        generation_dtype("auto") == torch.bfloat16)


def machine_scaled(estimates: dict[str, float], here: MachineSpeed,
                   reference: MachineSpeed = REFERENCE) -> dict[str, float]:
    """The reference machine's stage seconds on `here`: every stage by the fp32 probes' ratio (clipped to
    [0.1, 30]), a stage's generating share also by the bf16 speed-up that one machine has and the other lacks."""
    base = min(30.0, max(0.1, reference.fp32_gflops / max(here.fp32_gflops, 1e-6)))
    gen = 1.0 if here.bf16_generation == reference.bf16_generation else \
        BF16_GENERATION_SPEEDUP if reference.bf16_generation else 1 / BF16_GENERATION_SPEEDUP
    return {k: v * base * (1 - GENERATION_SHARE.get(k, 0.0) + GENERATION_SHARE.get(k, 0.0) * gen)
            for k, v in estimates.items()}


def plan(model: str, size: str, base: dict, estimates: dict[str, float], models_dir: Path | None = None,
         machine: MachineSpeed | None = None) -> DemoPlan:
    """Resolve and check the model (InputError, exit 2, before anything is written to the workspace), then scale
    the preset and the stage estimates to it and to this machine (`machine`: measured when not given)."""
    from saferounds.pipeline.model_eval import default_models_dir
    from saferounds.pipeline.models import check_chat_model, resolve_source

    policy = resolve_source(model, models_dir or default_models_dir())
    info = check_chat_model(policy)
    overrides, ratio = scaled_sizes(info, size, policy, base)
    scaled = machine_scaled(estimates, machine or measure_machine())
    return DemoPlan(model, Path(policy), info, overrides, ratio, {k: v * ratio for k, v in scaled.items()})


def estimate_line(p: DemoPlan, steps: list[str], clock) -> str:
    """The line shown before the run starts: the estimate over `steps` and where it comes from."""
    kind = lambda s: s.split(" ")[-1]  # noqa: E731 ("v1 rm" -> "rm")
    total = sum(p.estimates.get(kind(s), 60) for s in steps)
    m = p.overrides["model"]
    return (f"{p.model}: {p.info['parameters'] / 1e6:.3g}M parameters, {p.info.get('layers')} layers -> "
            f"{p.overrides['eval']['max_new_tokens']} new tokens, LoRA on {m['lora']['layers']} layers, RMs from "
            f"{m.get('reward_model', 'its own lower ' + str(m['reward_model_layers']) + ' layers (frozen, heads on the mean)')}; estimated {clock(total)} on this machine for {len(steps)} steps (the smollm2 "
            f"run's measured stage times x {p.ratio:.3g} for parameters x tokens, scaled to this machine's speed; "
            "REAL_MODEL_NOTES.md, bench/smollm2_demo.py; a guess within ~2x)")
