"""Version 0: the starting policy. Step 0 domain pretraining (optional), then SFT.

Both write into the partial directory of v0; SFT finishes the version, which renames it into
place. Running `pretrain` or `sft` again after an interruption resumes from the last Trainer
checkpoint.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.errors import InputError
from saferounds.core.logs import log_to
from saferounds.core.progress import scope
from saferounds.core.tracking import runs_dir
from saferounds.pipeline.data import load_sft, load_text
from saferounds.pipeline.tiny import build_tiny
from saferounds.pipeline.training.sft import finetune, pretrain
from saferounds.pipeline.workspace import Workspace, now

HELDOUT_FRACTION = 0.05


def resolve_model(ws: Workspace, key: str) -> str:
    """Path or hub id of the base `policy` or `reward_model` named in the config.

    `tiny` builds the tiny preset inside the workspace; `v0` (reward models only) means the SFT
    policy with a scalar head added, as LLaMA 2 initialises its reward models from the chat model.
    """
    cfg = ws.config
    name = getattr(cfg.model, key)
    if name == "tiny":
        return str(dist.run_on_main(build_tiny, ws.root / "models" / "tiny", seed=cfg.seed)[key])  # rank 0 writes
    from saferounds.pipeline.gguf import ensure_converted, is_gguf_source

    if is_gguf_source(name):  # a .gguf file or a packaged alias: converted once into WORKSPACE/models/
        return str(dist.run_on_main(ensure_converted, name, ws.root / "models", base=ws.root, key=f"model.{key}")[0])
    if name == "v0":
        if key != "reward_model":
            raise InputError("model.policy: 'v0' is only meaningful for model.reward_model")
        return str(ws.policy_path(0))
    local = Path(str(ws.resolve(name)))
    return str(local) if local.exists() else name  # else a hub id


def split_heldout(items: list, seed: int, fraction: float = HELDOUT_FRACTION) -> tuple[list, list]:
    """A deterministic held-out slice (at least one item when there are two or more)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(items) * fraction)) if len(items) > 1 else 0
    held = set(order[:n_held])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _files(ws: Workspace, key: str) -> list[str]:
    files = getattr(ws.config.data, key)
    if not files:
        raise InputError(f"{ws.config_path}: data.{key}: no files listed; add at least one")
    return files


def _open_v0(ws: Workspace) -> Path:
    if ws.version_dir(0).exists():
        raise InputError("v0: already finished; a finished version is never modified "
                         "(start a new workspace to redo SFT)")
    if not ws.partial_dir(0).exists():  # a model that would be refused fails before .v0.partial exists
        from saferounds.pipeline.models import check_loadable

        check_loadable(resolve_model(ws, "policy"), "model.policy")
    inputs = ws.config.data.pretrain_text + ws.config.data.sft
    return ws.begin_version(0, None, ["pretrain", "sft"], inputs)


@contextlib.contextmanager
def _recorded(ws: Workspace, stage: str):
    """A v0 stage that fails (diverged, full disk, Ctrl-C) says so in v0's manifest, as round stages do."""
    from saferounds.pipeline.rounds import record_failure

    try:
        yield
    except BaseException as e:
        record_failure(ws, 0, stage, e)
        raise


def run_pretrain(ws: Workspace) -> dict:
    cfg = ws.config
    if cfg.model.v0 == "given":
        raise InputError(f"{ws.config_path}: model.v0 is 'given' (v0 is model.policy as it is): nothing to pretrain")
    texts = [t for f in _files(ws, "pretrain_text") for t in load_text(ws.resolve(f))]
    d = _open_v0(ws)
    train, held = split_heldout(texts, cfg.seed)
    started = time.time()
    ws.set_stage(0, "pretrain", status="running", started=now())
    with _recorded(ws, "pretrain"), log_to(d / "logs" / "stage.log"), scope("v0"):
        metrics = pretrain(resolve_model(ws, "policy"), train, cfg.pretrain, cfg.model, d / "pretrain",
                           d / "work" / "pretrain", seed=cfg.seed, heldout_texts=held,
                           runs=runs_dir(ws.root, "v0", "pretrain"))
    seconds = round(time.time() - started, 2)
    ws.set_stage(0, "pretrain", status="done", finished=now(), seconds=seconds, metrics=metrics)
    ws.update_manifest(0, metrics={"pretrain": metrics}, timings={"pretrain": seconds})
    return metrics


def run_sft(ws: Workspace) -> dict:
    cfg = ws.config
    if cfg.model.v0 == "given":  # v0 is the given chat model: no SFT
        from saferounds.pipeline.given_policy import run_given

        return dist.run_on_main(run_given, ws)
    examples = [x for f in _files(ws, "sft") for x in load_sft(ws.resolve(f))]
    d = _open_v0(ws)
    pretrain_status = ws.manifest(0)["stages"].get("pretrain", {}).get("status")
    if pretrain_status in ("running", "failed"):
        raise InputError("v0: step 0 pretraining did not finish; run `saferounds pretrain` again to "
                         "resume it (or `saferounds round discard v0` to start v0 over)")
    pretrained = pretrain_status == "done"
    base = str(d / "pretrain") if pretrained else resolve_model(ws, "policy")
    if not pretrained:
        ws.set_stage(0, "pretrain", status="skipped")
    train, held = split_heldout(examples, cfg.seed)
    started = time.time()
    ws.set_stage(0, "sft", status="running", started=now())
    with _recorded(ws, "sft"), log_to(d / "logs" / "stage.log"), scope("v0"):
        metrics = finetune(base, train, cfg.sft, cfg.model, d / "policy", d / "work" / "sft",
                           seed=cfg.seed, heldout=held, runs=runs_dir(ws.root, "v0", "sft"))
    ws.set_stage(0, "sft", status="done", finished=now(), seconds=round(time.time() - started, 2),
                 metrics=metrics)
    ws.update_manifest(0, metrics={"sft": metrics}, timings={"sft": round(time.time() - started, 2)})
    ws.finish_version(0)
    return metrics
