"""The round's `rm` stage: train the helpfulness and the safety reward model for version N
(LLaMA 2 Sec. 3.2.2).

  1. the preference data: data.helpfulness_preferences, data.safety_preferences, data.rankings, plus the
     AI-labelled pairs (ai_preferences.jsonl) of earlier versions
  2. for each kind: reuse the RM already finished for vN (resume, or `saferounds rm train`), provided it
     was trained under this config; else train it (reward_models.training.train_reward_model). Either way
     its held-out accuracy (reward_models.heldout_*: pairs split by prompt, never trained on) is in its
     manifest, scored once per RM and held-out set (cached by their sha256)
  3. the gold helpfulness RM (reward_models.gold, when set): the same training code on pairs whose prompts
     the proxy RMs never see (checked), into reward_models/gold_helpfulness/vN; never in the round's RM
     paths, so selection and PPO cannot use it (Gao et al. 2022: proxy vs gold)

Outputs WORKSPACE/reward_models/{kind}/vN (weights + tokenizer + manifest.json), built under
.vN.partial and renamed when complete; Trainer checkpoints live in the version's work/rm/{kind} so an
interrupted stage resumes. An RM already finished for vN (e.g. from `saferounds rm train`) is reused.
"""
from __future__ import annotations

import json
from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.core.io import read_json
from saferounds.core.records import GOLD_RM_KIND, RM_KINDS, normalise_prompt
from saferounds.core.tracking import runs_dir
from saferounds.data.load import load_preferences, load_rankings
from saferounds.pipeline.gguf import check_source
from saferounds.pipeline.models import resolve_model
from saferounds.pipeline.stages.context import StageContext
from saferounds.pipeline.workspace import Workspace
from saferounds.reward_models.training import MANIFEST, train_reward_model

# Pairs the `label` stage (RLAIF) leaves in a finished version; later rounds train on them like human pairs.
PRIOR_PAIR_FILES = ("ai_preferences.jsonl",)  # written by the `label` stage (pipeline.stages.label)


def load_rm_records(ws: Workspace, prior_versions: list[Path] = (), files: list[str] | None = None) -> list[dict]:
    """Preference pairs and rankings from the config's data section (or `files`, as preferences),
    plus AI-labelled pairs of earlier versions. Bad files raise InputError naming file:line."""
    data = ws.config.data
    if files:
        records = [r for f in files for r in load_preferences(ws.resolve(f))]
    else:
        records = [r for f in data.helpfulness_preferences for r in load_preferences(ws.resolve(f), "helpfulness")]
        records += [r for f in data.safety_preferences for r in load_preferences(ws.resolve(f), "safety")]
        records += [r for f in data.rankings for r in load_rankings(ws.resolve(f))]
    for d in prior_versions:
        for name in PRIOR_PAIR_FILES:
            if (Path(d) / name).exists():
                records += load_preferences(Path(d) / name)
    return records


def load_heldout(ws: Workspace, kind: str) -> list[dict] | None:
    """The held-out pairs configured for `kind` (reward_models.heldout_{kind}), None when none is set (then
    eval_fraction of the training data is held out). Bad files raise InputError naming file:line."""
    files = getattr(ws.config.reward_models, f"heldout_{kind}")
    return [r for f in files for r in load_preferences(ws.resolve(f), kind)] if files else None


def heldout_block(ws: Workspace, kind: str, n: int, log=None) -> dict | None:
    """The held-out accuracy of reward_models/{kind}/vN on the configured held-out pairs: the block in its
    manifest when that scored these pairs with this RM (sha256 of both), else scored now and written back
    into the manifest (`metrics.heldout`), so rs, `rm eval`, status and the report read one measurement.
    None when no held-out file is configured."""
    from saferounds.core.distributed import run_on_main
    from saferounds.core.io import write_json
    from saferounds.reward_models.evaluation import heldout_accuracy

    pairs = load_heldout(ws, kind)
    if pairs is None:
        return None
    done = ws.rm_dir(kind, n)
    manifest = read_json(done / MANIFEST) if (done / MANIFEST).exists() else {}
    metrics = manifest.setdefault("metrics", {})
    block = heldout_accuracy(done, pairs, ws.config.reward_models, metrics.get("heldout"), model_cfg=ws.config.model)
    if not block["cached"]:
        if log:
            log.info("%s RM v%d: scored %d held-out pairs", kind, n, block["n"])
        metrics["heldout"] = block
        run_on_main(write_json, done / MANIFEST, manifest)
    return block


def backbone(ws: Workspace) -> str:
    return resolve_model(ws, "reward_model")


def train_kind(ws: Workspace, kind: str, version: int, records: list[dict], work_dir: Path, log=None,
               objective: str | None = None, max_steps: int | None = None) -> dict:
    """Train one RM into reward_models/{kind}/v{version} (partial dir, then renamed). Returns its metrics."""
    import dataclasses

    cfg = ws.config
    rm_cfg = cfg.reward_models if objective is None else dataclasses.replace(cfg.reward_models, objective=objective)
    partial = ws.rm_partial_dir(kind, version)
    metrics = train_reward_model(kind, records, backbone(ws), partial, rm_cfg, cfg.model, work_dir=work_dir,
                                 seed=cfg.seed, log=log, max_steps=max_steps,
                                 extra={"kind": kind, "version": f"v{version}", "config_hash": cfg.hash(),
                                        "inputs_sha256": inputs_digest(records, rm_cfg)},
                                 runs=runs_dir(ws.root, f"v{version}", f"rm-{kind}"), heldout=load_heldout(ws, kind))
    ws.finish_rm(kind, version)
    return metrics


def inputs_digest(records: list[dict], rm_cfg) -> str:
    """sha256 of what an RM is trained on: every preference record (in order) and the reward_models config."""
    import dataclasses
    import hashlib

    config = {k: v for k, v in dataclasses.asdict(rm_cfg).items() if k != "gold"}  # the gold RM's own settings
    blob = json.dumps({"records": records, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_reusable(ws: Workspace, done: Path, n: int, records: list[dict], rm_cfg=None) -> None:
    """An RM already in reward_models/{kind}/vN is reused only when it was trained on exactly the current
    preference data and config; otherwise the round refuses (it never trains on stale data silently)."""
    manifest = read_json(done / MANIFEST) if (done / MANIFEST).exists() else {}
    if manifest.get("config_hash") != ws.config.hash():
        raise InputError(f"{done}: trained under a different saferounds.yaml than v{n} runs with; "
                         f"delete it (or `saferounds round discard v{n}`) to retrain")
    if manifest.get("inputs_sha256") != inputs_digest(records, rm_cfg or ws.config.reward_models):
        raise InputError(f"{done}: trained on different preference data than v{n} has now (sha256 of the "
                         f"records differs); delete it (or `saferounds round discard v{n}`) to retrain")


def summary(metrics: dict) -> dict:
    """The few numbers the version manifest keeps per RM (the full block is in the RM's own manifest)."""
    held = metrics.get("heldout") or {}
    return {"train_items": metrics.get("train_items"), "steps": metrics.get("steps"),
            "train_loss": metrics.get("train_loss"), "heldout_accuracy": held.get("accuracy"),
            "heldout_n": held.get("n"), "heldout_ci95": held.get("ci95"), "heldout_by_origin": held.get("by_origin"),
            "unsafe_recall": held.get("unsafe_recall"), "mix": metrics.get("mix"),
            **{k: metrics[k] for k in ("train_head_only", "head_fit", "head_l2", "seconds") if k in metrics}}


def _first_turns(records: list[dict]) -> set[str]:
    return {normalise_prompt(next((m["content"] for m in r["prompt"] if m.get("role") == "user"), ""))
            for r in records}


def load_gold(ws: Workspace) -> tuple[list[dict], list[dict] | None] | None:
    """(training pairs, held-out pairs or None) of the gold helpfulness RM; None when reward_models.gold is
    off. InputError when a gold pair's first user turn is one the proxy RMs train or are held out on: the gold
    RM must judge from pairs the proxy never saw (Gao et al. 2022)."""
    gold = ws.config.reward_models.gold
    if not gold.preferences:
        return None
    records = [r for f in gold.preferences for r in load_preferences(ws.resolve(f), "helpfulness")]
    held = [r for f in gold.heldout for r in load_preferences(ws.resolve(f), "helpfulness")] or None
    proxy = load_rm_records(ws) + [r for kind in RM_KINDS for r in (load_heldout(ws, kind) or [])]
    shared = _first_turns(records + (held or [])) & _first_turns(proxy)
    if shared:
        raise InputError(f"reward_models.gold.preferences: {len(shared)} prompt(s) also in the proxy RMs' pairs "
                         f"(e.g. {sorted(shared)[0][:60]!r}); the gold RM needs prompts of its own")
    return records, held


def gold_settings(ws: Workspace):
    """(backbone, reward_models config, model config) the gold RM trains and scores with: its own backbone
    fully fine-tuned, or model.reward_model with model.lora like the proxies."""
    import dataclasses

    from saferounds.reward_models.modeling import resolve_packaged

    cfg, gold = ws.config, ws.config.reward_models.gold
    rm_cfg = dataclasses.replace(cfg.reward_models, learning_rate=gold.learning_rate or cfg.reward_models.learning_rate,
                                 epochs=cfg.reward_models.epochs if gold.epochs is None else gold.epochs)
    if not gold.backbone:
        return backbone(ws), rm_cfg, cfg.model
    name = resolve_packaged(gold.backbone, "reward_models.gold.backbone")
    local = Path(str(ws.resolve(name)))
    model_cfg = dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora, enabled=False))
    return (str(local) if local.exists() else name), rm_cfg, model_cfg


def gold_rm_path(ws: Workspace, n: int) -> Path | None:
    """The newest finished gold helpfulness RM up to version n (None when there is none)."""
    v = ws.latest_rm(GOLD_RM_KIND, at_most=n)
    return ws.rm_dir(GOLD_RM_KIND, v) if v is not None else None


def gold_scores(ws: Workspace, n: int, prompts: list[list[dict]], responses: list[str]) -> tuple[Path, list[float]] | None:
    """(its path, raw scores) of the newest gold helpfulness RM up to vN on (prompt messages, response);
    None when there is none. Callers score only after their decision is fixed (rs: after best-of-K)."""
    path = gold_rm_path(ws, n)
    if path is None or not responses:
        return None
    from saferounds.core.accelerator import to_accelerator
    from saferounds.core.finite import check_scores
    from saferounds.reward_models.modeling import load_reward_model
    from saferounds.reward_models.scoring import score

    _, rm_cfg, model_cfg = gold_settings(ws)
    model, tok = load_reward_model(path, model_cfg)
    out = score(to_accelerator(model), tok, prompts, responses, batch_size=rm_cfg.score_batch_size,
                max_length=rm_cfg.max_length)
    check_scores(out, f"v{n}", "the gold helpfulness RM's score")
    return path, out


def train_gold(ws: Workspace, n: int, work_dir: Path, log=None, progress=lambda m: None) -> dict | None:
    """Step 3: the gold helpfulness RM of vN, reused when finished under this config and data, else trained
    with reward_models.training (manifested and hashed like the proxies); its summary, or None when off."""
    loaded = load_gold(ws)
    if loaded is None:
        return None
    records, held = loaded
    gold_backbone, rm_cfg, model_cfg = gold_settings(ws)
    done = ws.rm_dir(GOLD_RM_KIND, n)
    if done.exists():
        check_reusable(ws, done, n, records, rm_cfg)
        return summary(read_json(done / MANIFEST).get("metrics", {}))
    progress(f"v{n}: training the gold helpfulness reward model (never used for selection or PPO)")
    metrics = train_reward_model("helpfulness", records, gold_backbone, ws.rm_partial_dir(GOLD_RM_KIND, n), rm_cfg,
                                 model_cfg, work_dir=work_dir, seed=ws.config.seed, log=log, heldout=held,
                                 extra={"kind": GOLD_RM_KIND, "version": f"v{n}", "config_hash": ws.config.hash(),
                                        "inputs_sha256": inputs_digest(records, rm_cfg),
                                        "role": "gold: scores after selection, never a reward (reward_models.gold)"},
                                 runs=runs_dir(ws.root, f"v{n}", f"rm-{GOLD_RM_KIND}"))
    ws.finish_rm(GOLD_RM_KIND, n)
    if log:
        log.info("gold helpfulness RM v%d: %s", n, json.dumps(summary(metrics)))
    return summary(metrics)


def validate(ws: Workspace, n: int, plan: list[str]) -> None:
    """Every preference, ranking and held-out file loads (the gold RM's too, on prompts of its own); a GGUF
    model.reward_model reads."""
    load_rm_records(ws)
    for kind in RM_KINDS:
        load_heldout(ws, kind)
    load_gold(ws)
    check_source(ws.config.model.reward_model, ws.root, "model.reward_model")


def run(ctx: StageContext) -> dict:
    ws, n = ctx.workspace, ctx.version
    # step 1: the preference data
    records = load_rm_records(ws, ctx.prior_versions)
    # step 2: each reward model, reused or trained
    out = {}
    for kind in RM_KINDS:
        done = ws.rm_dir(kind, n)
        if done.exists():  # trained earlier (resume, or `saferounds rm train` before the round)
            check_reusable(ws, done, n, records)
            ctx.log.info("reusing %s", done)
            heldout_block(ws, kind, n, ctx.log)  # scored once per RM and held-out set (cached by their sha256)
            out[kind] = summary(read_json(done / MANIFEST).get("metrics", {})) if (done / MANIFEST).exists() else {}
            continue
        ctx.progress(f"v{n}: training the {kind} reward model")
        metrics = train_kind(ws, kind, n, records, ctx.dir / "work" / "rm" / kind, ctx.log)
        ctx.log.info("%s RM v%d: %s", kind, n, json.dumps(summary(metrics)))
        out[kind] = summary(metrics)
    # step 3: the gold helpfulness RM (reward_models.gold), a gauge never handed to rs or PPO
    gold = train_gold(ws, n, ctx.dir / "work" / "rm" / GOLD_RM_KIND, ctx.log, ctx.progress)
    if gold is not None:
        out[GOLD_RM_KIND] = gold
    return out
