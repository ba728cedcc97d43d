"""An exact screened LM head for greedy decoding: the fp32 head's argmax from a bf16 product and a proof.

A greedy decoder needs only the argmax of each row's fp32 logits `f = W h` (W: the LM head's [V, n] fp32
weight, h: the row's final hidden state), not the logits. On CPUs with native bf16 units (AMX / AVX512-BF16) a
bf16 product runs several times faster than the fp32 one, and the LM head is a fifth of a SmolLM2 decode step's
matrix FLOPs. `ScreenedHead.argmax` computes approximate logits `a = bf16(bf16(W) bf16(h))`, bounds every
token's |f_j - a_j| rigorously with no further product over the vocabulary, keeps the tokens that the bound
cannot rule out (about 4 per row on SmolLM2), rescores those exactly and proves which one the fp32 head
would pick. Where it cannot (too many candidates, a near-tie below fp32's own rounding, a non-finite value) it
computes the model's full fp32 head on the same batch, so the tokens are always those of the unscreened path.
On SmolLM2-135M (576 x 49,152) at 64 rows the screen costs ~7 ms where the fp32 head and its argmax cost ~44.

**The bound.** Notation: n the inner dimension (hidden size), u = 2^-24 and v = 2^-8 the unit roundoffs of
fp32 and bf16, g = n u / (1 - n u) (Higham's gamma_n), ||.|| the 2-norm. For a row h and a token's weight row
w: x = sum_i h_i w_i the exact logit; f the full fp32 head's value, summed in any order (blocked, FMA or not);
hb = bf16(h), wb = bf16(w) with residuals r_h = hb - h, r_w = wb - w (exact in fp32, whatever rounding the
casts used); y = sum_i hb_i wb_i exactly; y^ the kernel's fp32 accumulation of the (exact) bf16 products;
a = bf16(y^) the stored approximation. Then |f - a| <= |f - x| + |x - y| + |y - y^| + |y^ - a|, and

- |f - x| <= g sum_i |h_i w_i| <= g ||h|| ||w||                  (fp32 summation; Cauchy-Schwarz)
- y - x = r_h . w + hb . r_w exactly, so |y - x| <= ||r_h|| ||w|| + ||hb|| ||r_w||
- |y - y^| <= g' sum_i |hb_i wb_i| <= g' ||hb|| ||wb||          (bf16 x bf16 products are exact in fp32;
                                                                  g' = gamma_n at 2u, any rounding direction)
- |y^ - a| <= v |y^| <= v / (1 - v) |a|                         (one round-to-nearest to bf16)

so |f_j - a_j| <= e_j = (||r_h|| + g ||h||) ||w_j|| + ||hb|| (||r_w_j|| + g' ||wb_j||) + k |a_j| + eta, with
k = v / (1 - v) and eta = 2^-120 (sqrt(n) (||h|| + ||hb|| + max ||w|| + max ||wb||) + 4n + 4) covering
underflow (the bf16 units flush subnormal inputs and results). Rows with ||h|| max ||w|| or ||hb|| max ||wb||
at 2^100 or more (or not finite) take the full head: below that no partial sum can overflow. The residual
norms are what make it tight: ||r_h|| is about 0.4 v ||h|| rather than the worst case v ||h|| (Cauchy-Schwarz
on ||h|| ||w|| (2v + v^2) would be ~2.5x looser). The per-token norms enter only through their
maxima over the vocabulary (E below), computed once per weight in fp32 and inflated by 1 + 2 gamma_(n+2) for
their own rounding, with ||wb_j|| <= ||w_j|| + ||r_w_j||. Assumed of the bf16 kernel, and checked
once per process by `kernel_accumulates_in_fp32` (a cancellation-heavy integer product that any rounding of
partial sums to bf16, or a truncating output conversion, gets wrong): it multiplies bf16 exactly, accumulates
in fp32 and rounds its output once to nearest. The fp32 head must run at full precision
(`torch.get_float32_matmul_precision() == "highest"`, no bf16 fp32-math mode).

**The screen.** With m = max_j a_j and E = (||r_h|| + g ||h||) max ||w|| + ||hb|| max (||r_w|| + g' ||wb||) + eta
(so e_j <= E + k |a_j|), the token j0 = argmax a has f_j0 >= L = m - E - k |m|. A token j with f_j >= f_j0 (the
argmax must have that) satisfies a_j + E + k |a_j| >= L, i.e. a_j >= thr = D / (1 + k) if D = L - E >= 0, else
D / (1 - k). `a >= thr` is found from per-block maxima of `a` (blocks of 128 tokens), so the vocabulary is
reduced once, not compared twice.

**The exact rescoring.** For each candidate, s_j = sum_i h_i w_ji and t_j = sum_i |h_i w_ji| in fp64 (the
products are exact in fp64, the sums err by at most g64 t_j, g64 = n 2^-53 / (1 - n 2^-53)). Any fp32
evaluation satisfies |f_j - s_j| <= d_j = (g + 2 g64) t_j + eta (inflated a little for the fp64 arithmetic of
the test itself). If the candidate c with the largest s_c - d_c has s_c - d_c > s_b + d_b for every other
candidate b, then f_c > f_b for all of them, hence for every token (the others were ruled out above), so
c is the unique maximum and torch.argmax of the full fp32 logits (first index among equal maxima) is c.
Otherwise the row is ambiguous (its two best logits within fp32 rounding of each other: 1 row in ~1,000 on
SmolLM2): the full fp32 head is computed on the batch, the same call the model's forward makes, and decides
that row (so it gets exactly the unscreened path's token even where fp32 rounding alone decides).
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Callable

import torch

BLOCK = 128  # tokens per block of the screen's per-block maxima
MAX_CANDIDATES = 32  # mean candidates per row above which a batch takes the full fp32 head
SCREENED_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")  # logits =
# lm_head(hidden[:, -logits_to_keep:]) and nothing after it (no scaling, no soft-capping)
U32, U64, UBF16 = 2.0 ** -24, 2.0 ** -53, 2.0 ** -8
STATS: dict[str, int] = {}  # process-wide counters (bench/fast_generate.py reports them); reset_stats() clears


def reset_stats() -> None:
    STATS.clear()
    STATS.update(steps=0, rows=0, candidates=0, fallback_steps=0, fallback_rows=0, fallback_candidates=0,
                 fallback_ambiguous=0, fallback_nonfinite=0)


reset_stats()


def gamma(n: int, unit: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum of products in any order."""
    if n * unit >= 0.5:
        raise ValueError(f"screened head: an inner dimension of {n} is too large for the error bound")
    return n * unit / (1 - n * unit)


def fp32_matmul_is_exact_fp32() -> bool:
    """Whether torch's fp32 matrix products run in fp32 (no TF32/bf16 fp32-math mode) here."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee")


@functools.lru_cache(maxsize=8)
def kernel_accumulates_in_fp32(n: int) -> bool:
    """The bound's assumption about the bf16 product, checked on this machine at inner dimension n: integer
    operands (exact in bf16) whose products and partial sums are exact in fp32 in any order, so an exact
    fp32 accumulation rounded once to nearest bf16 reproduces the exact sum rounded to bf16, while partial
    sums rounded to bf16 (or a truncating output conversion) do not. Rows 1, 3 and 64, the screen's layout."""
    gen = torch.Generator().manual_seed(12345)
    w = torch.randint(-15, 16, (1024, n), generator=gen).float()
    w[:, : n // 2] = w[:, : n // 2].abs()  # large positive partial sums first, then cancellation
    w[:, n // 2:] = -w[:, n // 2:].abs()
    w[:, 0] += torch.arange(1024) % 7  # varied low bits
    for rows in (1, 3, 64):
        h = torch.randint(1, 16, (rows, n), generator=gen).float()
        exact = (w.double() @ h.double().t())  # integers below 2^24: exact
        got = torch.mm(w.to(torch.bfloat16), h.to(torch.bfloat16).t())
        if not torch.equal(got, exact.float().to(torch.bfloat16)):
            return False
    return True


class ScreenedHead:
    """The screen of one fp32 LM head weight [V, n]: its bf16 copy (padded to whole blocks) and the maxima of
    the per-token norms the bound needs."""

    def __init__(self, weight: torch.Tensor, max_candidates: int = MAX_CANDIDATES):
        if weight.dtype != torch.float32 or weight.dim() != 2:
            raise ValueError("screened head: expected a 2-D fp32 weight")
        self.weight, self.max_candidates = weight, max_candidates
        self.vocab, self.n = weight.shape
        self.blocks = -(-self.vocab // BLOCK)
        self.g32, self.g64 = gamma(self.n, U32), gamma(self.n, U64)
        self.gacc = gamma(self.n, 2 * U32)  # the bf16 kernel's fp32 accumulation: 2u covers directed rounding too
        with torch.inference_mode():
            w = weight.detach()
            self.wb = torch.zeros((self.blocks * BLOCK, self.n), dtype=torch.bfloat16)
            self.wb[: self.vocab] = w  # round to nearest
            w_max = torch.linalg.vector_norm(w, dim=1).max().item()
            wb = self.wb[: self.vocab]
            r_max = max(torch.linalg.vector_norm(torch.sub(wb[s:s + 8192], w[s:s + 8192]), dim=1).max().item()
                        for s in range(0, self.vocab, 8192))  # r_w = bf16(w) - w, exact in fp32
        up = 1 + 2 * gamma(self.n + 2, U32)  # fp32 norms: the sum of n squares errs by < gamma_(n+1) of it
        self.w_max, r_max = w_max * up + 2.0 ** -60, r_max * up + 2.0 ** -60
        self.wb_max = self.w_max + r_max  # ||wb|| <= ||w|| + ||r_w||
        self.rho_max = r_max + self.gacc * self.wb_max  # max_j ||r_w_j|| + g ||wb_j||

    def _row_terms(self, h: torch.Tensor, hb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """(E [B], eta [B], h in fp64, whether every row is far from overflow) of the module docstring: with
        ||h|| max ||w|| and ||hb|| max ||wb|| below 2^100 no partial sum of either product can overflow, so every
        approximate and fp32 logit is finite (a NaN or infinite h fails it too)."""
        h64 = h.double()
        hb64 = hb.double()
        hn, hbn, rhn = h64.norm(dim=1), hb64.norm(dim=1), (hb64 - h64).norm(dim=1)
        eta = 2.0 ** -120 * (math.sqrt(self.n) * (hn + hbn + self.w_max + self.wb_max) + 4 * self.n + 4)
        big_e = ((rhn + self.g32 * hn) * self.w_max + hbn * self.rho_max) * (1 + 2.0 ** -30) + eta
        safe = bool(((hn * self.w_max < 2.0 ** 100) & (hbn * self.wb_max < 2.0 ** 100)).all())
        return big_e, eta, h64, safe

    def candidates(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | str:
        """(row, token) pairs of every token each row's fp32 argmax could be, with eta and h in fp64; or the
        reason for the full head ("nonfinite", "candidates")."""
        rows = h.shape[0]
        hb = h.to(torch.bfloat16)
        approx = torch.mm(self.wb, hb.t()).view(self.blocks, BLOCK, rows)  # [blocks, BLOCK, B], bf16
        block_max = approx.amax(1)
        if self.vocab % BLOCK:  # the last block's padding (zero rows, a = 0) must not raise the maximum
            block_max[-1] = approx[-1, : self.vocab % BLOCK].amax(0)
        big_e, eta, h64, safe = self._row_terms(h, hb)
        m = block_max.amax(0).double()
        if not (safe and bool(torch.isfinite(m).all())):
            return "nonfinite"
        k = UBF16 / (1 - UBF16)
        d = m - big_e - k * m.abs() - big_e
        thr = torch.where(d >= 0, d / (1 + k), d / (1 - k))
        thr = thr - 2.0 ** -40 * (m.abs() + 2 * big_e + 1)  # the fp64 rounding of the lines above
        blk, row = (block_max >= thr).nonzero(as_tuple=True)
        if len(blk) > self.max_candidates * rows:
            return "candidates"
        hit, off = (approx[blk, :, row] >= thr[row, None]).nonzero(as_tuple=True)
        token, row = blk[hit] * BLOCK + off, row[hit]
        keep = token < self.vocab
        token, row = token[keep], row[keep]
        if len(token) > self.max_candidates * rows:
            return "candidates"
        return row, token, eta, h64

    def decide(self, row: torch.Tensor, token: torch.Tensor, eta: torch.Tensor, h64: torch.Tensor,
               rows: int) -> torch.Tensor:
        """Each row's fp32 argmax among its candidates, proved by the exact rescoring; -1 for a row where no
        candidate is proved the best (a near-tie, or no candidate)."""
        prod = self.weight[token].detach().double() * h64[row]
        s, t = prod.sum(1), prod.abs().sum(1)
        d = ((self.g32 + 2 * self.g64) * t + eta[row]) * (1 + 2.0 ** -30) + 2.0 ** -40 * s.abs()
        lo, hi = s - d, s + d
        lo_max = torch.full((rows,), -math.inf, dtype=torch.float64).scatter_reduce(0, row, lo, "amax")
        reach = torch.zeros(rows, dtype=torch.float64).index_add_(0, row, (hi >= lo_max[row]).double())
        best = (lo == lo_max[row]) & (reach[row] == 1)  # the only candidate reaching the best lower bound
        out = torch.full((rows,), -1, dtype=torch.long)
        out[row[best]] = token[best]
        return out

    def argmax(self, h: torch.Tensor, full: Callable[[], torch.Tensor]) -> torch.Tensor:
        """torch.argmax(-1) of the full fp32 logits of the rows h [B, n] (fp32, CPU). `full()` computes those
        logits [B, V] (the model's own head on the same batch) where the screen cannot decide: every row's
        argmax from them when the screen fails as a whole, the undecided rows' alone otherwise (the others'
        are proved equal to theirs)."""
        h = h.contiguous()
        rows = h.shape[0]
        STATS["steps"] += 1
        STATS["rows"] += rows
        found = self.candidates(h)
        if isinstance(found, str):
            STATS["fallback_steps"] += 1
            STATS["fallback_rows"] += rows
            STATS["fallback_" + found] += 1
            return full().argmax(-1)
        STATS["candidates"] += len(found[1])
        picked = self.decide(*found, rows=rows)
        open_rows = (picked < 0).nonzero().flatten()
        if len(open_rows):
            STATS["fallback_steps"] += 1
            STATS["fallback_rows"] += len(open_rows)
            STATS["fallback_ambiguous"] += 1
            picked[open_rows] = full()[open_rows].argmax(-1)
        return picked


_LAST: list = []  # [(weakref to the weight, its storage and version, ScreenedHead)]: the last model's screen


def screened_head(weight: torch.Tensor) -> ScreenedHead:
    """The weight's ScreenedHead, reused while it is the same live tensor with the same storage and version
    counter (every in-place write through autograd-visible ops bumps it: optimizer steps, copy_ under
    no_grad). Writes through `.data` bypass the counter: after such an edit pass `screen_head=False` or
    call `forget_screens()`."""
    try:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    except RuntimeError:  # an inference-mode tensor has no version counter: no reuse
        return ScreenedHead(weight)
    if _LAST and _LAST[0][0]() is weight and _LAST[0][1] == key:
        return _LAST[0][2]
    screen = ScreenedHead(weight)
    _LAST[:] = [(weakref.ref(weight), key, screen)]
    return screen


def forget_screens() -> None:
    _LAST.clear()


def screen_parts(model):
    """(the decoder stack, the LM head) of a transformers causal LM whose forward ends in `logits =
    lm_head(hidden)` (SCREENED_CLASSES) with a bias-free fp32 nn.Linear head on the CPU, PEFT-wrapped or not
    (not a prompt-learning adapter), with no hooks on the model or its head (the screen would bypass them);
    None for any other model."""
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls = type(base)
    if cls.__name__ not in SCREENED_CLASSES or not cls.__module__.startswith("transformers.models."):
        return None
    if any(getattr(base.config, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale",
                                                                       "logits_scaling")):
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.dtype != torch.float32 \
            or head.weight.device.type != "cpu":
        return None
    hooked = [m for m in {id(model): model, id(base): base, id(head): head}.values()
              if m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook")]
    return None if hooked else (base.get_decoder(), head)
