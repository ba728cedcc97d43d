"""What makes CPU generation fast on this machine (`model.generation_quantize`, the seeded sampler's nucleus).

Measured on SmolLM2-135M (bench/fast_generate.py, bench/README.md): a CPU decode step at batch 32 is
bound by the Linear layers' matrix products (the 576x49152 LM head alone is a fifth of them) and, at
top-p < 1, by sorting the 49k-token vocabulary of every row. Two levers were measured:

- int8 dynamic quantisation of every nn.Linear (per-output-channel int8 weights, activations quantised
  per call; fbgemm/x86 kernels on AVX2): about 2x the fp32 matrix throughput where the CPU lacks native
  bf16 (CPUs with avx512_bf16/AMX keep the bf16 path of core.precision under `auto`). It is opt-in
  (`model.generation_quantize: int8`): on SmolLM2-135M it moves the next-token distribution by 2.2 nats
  of KL (per-tensor activation scales cannot hold its outlier activations; bench/int8_kl.py).
- one prefill per prompt, not per sample (sampling.generate.shared_prompt_cache): the K samples of a prompt
  start from one KV cache of it, repeated K times; at K = 4 on XSTest prompts this alone took the sampler
  from 1.3x to 1.8x plain `generate` (bench/README.md), the same tokens.
- the nucleus from a top-k: the smallest prefix of the descending probabilities whose mass reaches top_p
  almost always lies within the 256 most likely tokens, so `torch.topk` replaces a full sort of the
  vocabulary; rows whose nucleus is larger fall back to the full sort. Same tokens as the full sort
  (up to the order of exactly tied probabilities).
"""
from __future__ import annotations

import functools

import torch

QUANTIZE_SETTINGS = ("auto", "none", "int8")
TOPK_FIRST = 256


@functools.lru_cache(maxsize=1)
def int8_engine() -> str | None:
    """The quantized engine torch has for int8 Linear on this CPU (x86 or fbgemm), None where there is none."""
    engines = set(getattr(torch.backends.quantized, "supported_engines", []))
    for name in ("x86", "fbgemm"):
        if name in engines:
            return name
    return None


def wants_int8(setting: str = "auto", native_bf16: bool | None = None, engine: str | None = "detect") -> bool:
    """Whether `model.generation_quantize` means int8 here: `int8` does (if an engine exists), `none` does
    not, `auto` does on CPUs with an int8 engine and without native bf16 (where bf16 is the better path)."""
    if setting not in QUANTIZE_SETTINGS:
        raise ValueError(f"generation_quantize: expected one of {', '.join(QUANTIZE_SETTINGS)}, got {setting!r}")
    engine = int8_engine() if engine == "detect" else engine
    if setting == "none" or engine is None:
        return False
    if setting == "int8":
        return True
    if native_bf16 is None:
        from saferounds.core.precision import _cpu_bf16

        native_bf16 = _cpu_bf16()
    return not native_bf16


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
