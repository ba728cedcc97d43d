"""Reward models that train the chat model's top layers (issue 27's last lever): does fine-tuning the backbone lift
the held-out accuracy that a linear head on frozen SmolLM2 features stops at (bench/rm_features.py: ~0.61 on HH
helpful, ~0.63 on HH harmless, flat from 1,200 pairs on)?

The layout is the smollm2 preset's RM (v0's lower 22 layers, its final norm, the mean over tokens, one linear head)
with the top `--train-layers` of those 22 layers trained (full weights, AdamW) and the layers below frozen:
  1. the frozen lower layers run once per text (bf16, inference) and their output is cached: every epoch then
     runs only the trained layers (issue 27's "frozen lower blocks computed once per text and cached");
  2. linear probe first (LP-FT, Kumar et al. 2022): the head is fitted on the frozen model's pooled features by
     bench/rm_features.py's L-BFGS logistic fit with its L2 by 4-fold CV over training prompts, so epoch 0 is the
     preset's RM; then the trained layers and the head are fine-tuned with the pairwise loss (LLaMA 2 Eq. 2
     without a margin), `--epochs` passes, lr `--lr`, batch `--batch` pairs, fp32 weights with bf16 autocast.
Data: bench/rm_features.py's split (the preset's held-out pairs, never trained on; training pairs capped per
origin in hash order). Held-out accuracy is printed after every epoch; the figure to read is the last epoch's
(the settings are fixed in advance, not chosen by the held-out pairs).

    PYTHONHASHSEED=0 OMP_NUM_THREADS=2 .venv/bin/python bench/rm_top_layers.py --rm helpfulness \
        --out bench/results/rm_top_layers_helpfulness.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rm_features import (DATA, ORIGINS, RM_ORIGINS, ROOT, cpu_seconds, evaluate, fit_head,  # noqa: E402
                         load_pairs, pair_rows, texts_of)


@torch.inference_mode()
def lower_states(model, tok, texts: list[tuple], low: int, max_length: int, batch: int = 32) -> list[torch.Tensor]:
    """The output of the frozen layers [0, low) for each text: [tokens, hidden] bf16, no padding."""
    from saferounds.reward_models.scoring import encode, format_sample

    ids = encode(tok, [format_sample(tok, *t) for t in texts], max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list = [None] * len(ids)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        enc = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model(**enc, output_hidden_states=True).hidden_states[low]
        for j, i in enumerate(idx):
            out[i] = h[j, :len(ids[i])].to(torch.bfloat16).clone()
        if s % (batch * 20) == 0:
            print(f"  lower layers {s}/{len(order)}", flush=True)
    return out


def upper_pooled(model, states: list[torch.Tensor], low: int) -> torch.Tensor:
    """[len(states), hidden]: layers [low, top) over the cached states (right padded: causal attention keeps
    every real token blind to the padding after it), the final norm, the mean over real tokens."""
    width = max(s.shape[0] for s in states)
    h = torch.zeros(len(states), width, states[0].shape[1])
    mask = torch.zeros(len(states), width)
    for i, s in enumerate(states):
        h[i, :s.shape[0]] = s.float()
        mask[i, :s.shape[0]] = 1
    pos = torch.arange(width).unsqueeze(0)
    emb = model.rotary_emb(h, position_ids=pos)
    for layer in model.layers[low:]:
        h = layer(h, attention_mask=None, position_embeddings=emb, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
    h = model.norm(h)
    return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def pooled_all(model, states, low: int, batch: int = 32) -> np.ndarray:
    order = sorted(range(len(states)), key=lambda i: -states[i].shape[0])
    out = [None] * len(states)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            for i, row in zip(idx, upper_pooled(model, [states[i] for i in idx], low).float()):
                out[i] = row.numpy()
    return np.stack(out)


def held_out(model, head, states, where, held, low) -> dict:
    """Held-out accuracy of the RM as it is now; only the held-out texts go through the trained layers."""
    c, r = pair_rows(where, held)
    rows = sorted(set(c + r))
    at = {row: i for i, row in enumerate(rows)}
    feats = pooled_all(model, [states[row] for row in rows], low)
    diffs = feats[[at[row] for row in c]] - feats[[at[row] for row in r]]
    return evaluate(SimpleNamespace(coef_=head.weight.detach().float().numpy()), diffs, held)


def train(args) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from saferounds.pipeline.gguf import ensure_converted

    torch.manual_seed(0)
    backbone = str(ensure_converted("smollm2-135m", ROOT / ".bench-models", key="model.reward_model")[0])
    caps = dict(zip(ORIGINS, map(int, args.caps.split(","))))
    with tempfile.TemporaryDirectory(prefix="rm_top_") as tmp:
        train_pairs, held_pairs = load_pairs(DATA, caps, Path(tmp))
    tr = [p for o in RM_ORIGINS[args.rm] for p in train_pairs[o]]
    if args.rm == "safety":  # LLaMA 2's 90/10 mix, as bench/rm_features.py
        tr += train_pairs["hh_helpful"][:len(tr) // 9]
    ho = [p for o in RM_ORIGINS[args.rm] for p in held_pairs[o]]
    texts = texts_of(tr + ho)
    keys = list(texts)
    where = {k: i for i, k in enumerate(keys)}
    tok = AutoTokenizer.from_pretrained(backbone)
    tok.padding_side = "right"
    model = AutoModel.from_pretrained(backbone, dtype=torch.float32, num_hidden_layers=args.layers).eval()
    low = args.layers - args.train_layers
    t0, c0 = time.time(), cpu_seconds()
    states = lower_states(model, tok, [texts[k] for k in keys], low, args.max_length)
    cost = {"lower_cpu_s": round(cpu_seconds() - c0, 1), "lower_wall_s": round(time.time() - t0, 1)}

    feats = pooled_all(model, states, low)  # the frozen model's pooled features: the linear probe's input
    c, r = pair_rows(where, tr)
    groups = np.array([int(hashlib.sha256(json.dumps(p["prompt"][0]).encode()).hexdigest()[:8], 16) for p in tr])
    probe = fit_head(feats[c] - feats[r], groups)
    head = torch.nn.Linear(feats.shape[1], 1, bias=False)
    head.weight.data = torch.tensor(probe.coef_, dtype=torch.float32)
    epochs = [{"epoch": 0, "held_out": held_out(model, head, states, where, ho, low), "C": float(probe.C_[0])}]
    print("epoch 0 (linear probe)", json.dumps(epochs[0]["held_out"]["by_origin"]), flush=True)
    params = [p for layer in model.layers[low:] for p in layer.parameters()] + list(model.norm.parameters())
    opt = torch.optim.AdamW([{"params": params, "lr": args.lr}, {"params": head.parameters(), "lr": args.lr * 10}],
                            weight_decay=0.0)
    rng = np.random.default_rng(0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        t1, c1, losses = time.time(), cpu_seconds(), []
        perm = rng.permutation(len(tr))
        for s in range(0, len(perm), args.batch):
            idx = perm[s:s + args.batch]
            rows = [c[i] for i in idx] + [r[i] for i in idx]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pooled = upper_pooled(model, [states[i] for i in rows], low)
            score = head(pooled.float())[:, 0]
            n = len(idx)
            loss = -torch.nn.functional.logsigmoid(score[:n] - score[n:]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        ev = held_out(model, head, states, where, ho, low)
        epochs.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "held_out": ev,
                       "train_cpu_s": round(cpu_seconds() - c1, 1), "train_wall_s": round(time.time() - t1, 1)})
        print(f"epoch {epoch} loss {np.mean(losses):.4f}", json.dumps(ev["by_origin"]),
              f"{epochs[-1]['train_cpu_s']} CPU-s", flush=True)
    return {"rm": args.rm, "train_pairs": len(tr), "held_out_pairs": len(ho), "texts": len(keys),
            "layers": args.layers, "train_layers": args.train_layers, "lr": args.lr, "batch": args.batch,
            "max_length": args.max_length, **cost, "epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rm", choices=("helpfulness", "safety"), default="helpfulness")
    ap.add_argument("--caps", default="1200,700,400", help="training pairs: HH helpful, HH harmless, DNA")
    ap.add_argument("--layers", type=int, default=22, help="the RM's backbone: v0's lower N layers (the preset's)")
    ap.add_argument("--train-layers", type=int, default=4, help="the top layers of those that train")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rm_top_layers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    record = {"command": " ".join(sys.argv), "threads": args.threads, "load1_start": round(load, 2), **train(args),
              "load1_end": round(os.getloadavg()[0], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
