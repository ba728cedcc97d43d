"""What makes CPU generation fast on this machine (`model.generation_quantize`, the seeded sampler's nucleus).

Measured on SmolLM2-135M (bench/fast_generate.py, bench/README.md): a CPU decode step at batch 32 is
bound by the Linear layers' matrix products (the 576x49152 LM head alone is a fifth of them) and, at
top-p < 1, by sorting the 49k-token vocabulary of every row. Two levers were measured:

- int8 dynamic quantisation of every nn.Linear (per-output-channel int8 weights, activations quantised
  per call; fbgemm/x86 kernels on AVX2): about 2x the fp32 matrix throughput where the CPU lacks native
  bf16 (CPUs with avx512_bf16/AMX keep the bf16 path of sampling.precision under `auto`). It is opt-in
  (`model.generation_quantize: int8`): on SmolLM2-135M it moves the next-token distribution by 2.2 nats
  of KL (per-tensor activation scales cannot hold its outlier activations; bench/int8_kl.py).
- an int8 LM head re-scored in fp32 (`model.generation_quantize: lm_head`): the 576x49152 LM head is a
  third of a decode step at batch 32 (it reads 113 MB of weights per step); int8 logits over the whole
  vocabulary find each row's 256 candidates, and their logits are then recomputed exactly in fp32. Only
  the tail beyond the candidates is approximate (int8): next-token KL vs fp32 ~2e-3 nats on sampled text.
- the nucleus from a top-k: the smallest prefix of the descending probabilities whose mass reaches top_p
  almost always lies within the 256 most likely tokens, so `torch.topk` replaces a full sort of the
  vocabulary; rows whose nucleus is larger fall back to the full sort. Same tokens as the full sort
  (up to the order of exactly tied probabilities).
"""
from __future__ import annotations

import functools

import torch

QUANTIZE_SETTINGS = ("auto", "none", "int8", "lm_head")
TOPK_FIRST = 256


@functools.lru_cache(maxsize=1)
def int8_engine() -> str | None:
    """The quantized engine torch has for int8 Linear on this CPU (x86 or fbgemm), None where there is none."""
    engines = set(getattr(torch.backends.quantized, "supported_engines", []))
    for name in ("x86", "fbgemm"):
        if name in engines:
            return name
    return None


def quantize_mode(setting: str = "auto", native_bf16: bool | None = None, engine: str | None = "detect") -> str | None:
    """What `model.generation_quantize` means here: "int8" (every Linear), "lm_head" (the re-scored int8
    LM head) or None (no quantisation: the generation_dtype path). `none` never quantises, `int8` and
    `lm_head` do where an int8 engine exists, `auto` chooses `lm_head` on CPUs with an int8 engine and
    without native bf16 (where bf16 is the better path)."""
    if setting not in QUANTIZE_SETTINGS:
        raise ValueError(f"generation_quantize: expected one of {', '.join(QUANTIZE_SETTINGS)}, got {setting!r}")
    engine = int8_engine() if engine == "detect" else engine
    if setting == "none" or engine is None:
        return None
    if setting in ("int8", "lm_head"):
        return setting
    if native_bf16 is None:
        from sampling.precision import _cpu_bf16

        native_bf16 = _cpu_bf16()
    return None if native_bf16 else "lm_head"


def wants_int8(setting: str = "auto", native_bf16: bool | None = None, engine: str | None = "detect") -> bool:
    """Whether `model.generation_quantize` quantises anything here (see quantize_mode)."""
    return quantize_mode(setting, native_bf16, engine) is not None


def quantize_for_generation(model, mode: str):
    """The model prepared for generation by quantize_mode's answer ("int8" or "lm_head")."""
    return quantize_int8(model) if mode == "int8" else quantize_lm_head(model)


def quantize_int8(model):
    """The model with every nn.Linear replaced by a dynamically quantised int8 one (per-channel weights).
    For generation only: the result cannot be trained. The model must be fp32 and on the CPU."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engine = int8_engine()
    if engine is None:
        raise RuntimeError("generation_quantize=int8: this torch build has no x86/fbgemm quantized engine")
    torch.backends.quantized.engine = engine
    import warnings

    with warnings.catch_warnings():  # torch.ao's eager quantisation API announces its move to torchao
        warnings.simplefilter("ignore")
        q = quantize_dynamic(model.float(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                             dtype=torch.qint8, inplace=True)
    q.generation_quantized = "int8"
    return q


class RescoredInt8Head(torch.nn.Module):
    """An LM head for sampling: int8 logits over the vocabulary pick each row's k candidates, whose logits
    are then recomputed in fp32 from the original weight. The candidates' logits are exact (the nucleus
    at top-p almost always lies among the 256 most likely tokens, sampling.fast_generate's premise); the
    tail's are int8 approximations. Rows whose k candidates hold under 99% of the probability (flat
    distributions, where a top-p nucleus can reach past them) get 8k re-scored candidates. On SmolLM2-135M:
    next-token KL vs fp32 ~1e-4 nats (bench/README.md)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, k: int = TOPK_FIRST):
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        self.weight, self.bias = weight.detach().float(), None if bias is None else bias.detach().float()
        self.k, self.wide = min(k, weight.shape[0]), min(8 * k, weight.shape[0])
        fp32 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        fp32.weight = torch.nn.Parameter(self.weight, requires_grad=False)
        if bias is not None:
            fp32.bias = torch.nn.Parameter(self.bias, requires_grad=False)
        fp32.qconfig = per_channel_dynamic_qconfig
        self.approx = DynamicLinear.from_float(fp32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape[:-1]
        x = hidden.reshape(-1, hidden.shape[-1]).float()
        logits = self.approx(x)
        top = self._rescore(x, logits, self.k)
        # flat rows (candidates under 99% of the mass at T = 1): 8x as many candidates, for those rows only
        mass = (top.logsumexp(-1) - logits.logsumexp(-1)).exp()
        flat = (mass < 0.99).nonzero().flatten()
        if len(flat) and self.wide > self.k:
            rows = logits[flat]
            self._rescore(x[flat], rows, self.wide)
            logits[flat] = rows
        return logits.view(*shape, -1)

    def _rescore(self, x: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
        """Replace, in place, the int8 logits of each row's k most likely tokens by their fp32 values (returned)."""
        cand = logits.topk(k, dim=-1).indices
        union, where = torch.unique(cand, return_inverse=True)  # rows of one prompt share most candidates
        exact = x @ self.weight[union].t()
        if self.bias is not None:
            exact = exact + self.bias[union]
        exact = exact.gather(-1, where)
        logits.scatter_(-1, cand, exact)
        return exact


def quantize_lm_head(model, k: int = TOPK_FIRST):
    """The model with its output embedding replaced by a RescoredInt8Head (for generation only; the other
    layers keep their weights and dtype). The model must be fp32 and on the CPU. A vocabulary of at most
    4k tokens keeps its fp32 head: the candidates would be most of it."""
    head = model.get_output_embeddings()
    if head is None or head.weight.shape[0] <= 4 * k:
        return model
    engine = int8_engine()
    if engine is None:
        raise RuntimeError("generation_quantize=lm_head: this torch build has no x86/fbgemm quantized engine")
    torch.backends.quantized.engine = engine
    import warnings

    with warnings.catch_warnings():  # torch.ao's eager quantisation API announces its move to torchao
        warnings.simplefilter("ignore")
        model.set_output_embeddings(RescoredInt8Head(head.weight, getattr(head, "bias", None), k=k))
    model.generation_quantized = "lm_head"
    return model


def nucleus_choice(probs: torch.Tensor, top_p: float, u: torch.Tensor, k: int = TOPK_FIRST) -> torch.Tensor:
    """Token ids [rows, 1] drawn by inverse CDF at u (one uniform per row) from the top-p nucleus of probs.

    The nucleus is the smallest prefix of the descending probabilities whose mass reaches top_p (a token
    is in it when the mass before it is < top_p). It is searched among the k most likely tokens first;
    rows whose top-k mass is below top_p take the full sort."""
    k = min(k, probs.shape[-1])
    vals, order = probs.topk(k, dim=-1)  # sorted, descending
    full = (vals.sum(-1) < top_p).nonzero().flatten()
    if len(full):
        svals, sorder = probs[full].sort(dim=-1, descending=True)
    rows = [(vals, order, slice(None))]
    if len(full):
        rows.append((svals, sorder, full))
    choice = torch.empty(probs.shape[0], 1, dtype=torch.long, device=probs.device)
    for v, o, where in rows:
        v = v * ((v.cumsum(-1) - v) < top_p)
        cdf = v.cumsum(-1)
        uu = u[where].to(cdf.dtype)
        pick = torch.searchsorted(cdf, (uu * cdf[:, -1])[:, None], right=True)
        last = (v > 0).cumsum(-1).argmax(-1, keepdim=True)  # u * total rounded up: the last token with mass
        pick = torch.where(pick >= cdf.shape[-1], last, pick)
        choice[where] = o.gather(-1, pick)
    return choice
