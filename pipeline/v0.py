"""Version 0, the starting policy, one of two ways (the CLI chooses by model.v0):

- `sft` (default): step 0 domain pretraining (optional, `run_pretrain`), then SFT (`run_sft`). Both write
  into the partial directory of v0; SFT finishes the version, which renames it into place. Running
  `pretrain` or `sft` again after an interruption resumes from the last Trainer checkpoint.
- `given` (`run_given`): an already instruction-tuned chat model is the starting policy, as LLaMA 2's
  safety RLHF starts from its SFT chat model; no pretraining or SFT runs. versions/v0/policy holds the
  model's files (hard links to a local checkpoint, e.g. the conversion of a GGUF in WORKSPACE/models/,
  else a copy; a hub model is saved as safetensors). The v0 manifest records where it came from, with
  the GGUF's sha256 when the source is one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.accelerator import save_pretrained_atomic
from saferounds.core.errors import InputError
from saferounds.core.logs import log_to
from saferounds.core.progress import scope
from saferounds.core.tracking import runs_dir
from saferounds.data.load import load_sft, load_text
from saferounds.pipeline.gguf import check_source, ensure_converted, is_gguf_source
from saferounds.pipeline.models import check_loadable, load_policy, resolve_model
from saferounds.pipeline.training.sft import finetune, pretrain
from saferounds.pipeline.workspace import Workspace

HELDOUT_FRACTION = 0.05
MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "tokenizer*")


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


def _refuse_given(ws: Workspace, step: str) -> None:
    if ws.config.model.v0 == "given":
        raise InputError(f"{ws.config_path}: model.v0 is 'given' (v0 is model.policy as it is): nothing to {step}")


def _open_v0(ws: Workspace) -> Path:
    if ws.version_dir(0).exists():
        raise InputError("v0: already finished; a finished version is never modified "
                         "(start a new workspace to redo SFT)")
    if not ws.partial_dir(0).exists():  # a model that would be refused fails before .v0.partial exists
        check_loadable(resolve_model(ws, "policy"), "model.policy")
    inputs = ws.config.data.pretrain_text + ws.config.data.sft
    return ws.begin_version(0, None, ["pretrain", "sft"], inputs)


def run_pretrain(ws: Workspace) -> dict:
    """Step 0: domain pretraining on data.pretrain_text into the unfinished v0 (its pretrain/)."""
    cfg = ws.config
    _refuse_given(ws, "pretrain")
    texts = [t for f in _files(ws, "pretrain_text") for t in load_text(ws.resolve(f))]
    d = _open_v0(ws)
    train, held = split_heldout(texts, cfg.seed)
    with ws.stage(0, "pretrain") as done, log_to(d / "logs" / "stage.log"), scope("v0"):
        done.metrics = pretrain(resolve_model(ws, "policy"), train, cfg.pretrain, cfg.model, d / "pretrain",
                                d / "work" / "pretrain", seed=cfg.seed, heldout_texts=held,
                                runs=runs_dir(ws.root, "v0", "pretrain"))
    return done.metrics


def run_sft(ws: Workspace) -> dict:
    """Step 1: supervised fine-tuning on data.sft (from pretrain/ when step 0 ran); finishes v0."""
    cfg = ws.config
    _refuse_given(ws, "fine-tune")
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
    with ws.stage(0, "sft") as done, log_to(d / "logs" / "stage.log"), scope("v0"):
        done.metrics = finetune(base, train, cfg.sft, cfg.model, d / "policy", d / "work" / "sft",
                                seed=cfg.seed, heldout=held, runs=runs_dir(ws.root, "v0", "sft"))
    ws.finish_version(0)
    return done.metrics


def model_source(ws: Workspace, key: str = "policy") -> dict:
    """Provenance of model.<key>: the GGUF record (path, sha256, checkpoint) or the path / hub id."""
    name = getattr(ws.config.model, key)
    if is_gguf_source(name):
        _, record = ensure_converted(name, ws.root / "models", base=ws.root, key=f"model.{key}")
        return record
    return {"source": name, "checkpoint": resolve_model(ws, key)}


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across filesystems) a checkpoint's files into dst, under a temporary name."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = sorted({f for pattern in MODEL_FILES for f in src.glob(pattern) if f.is_file()})
    if not any(f.suffix == ".safetensors" for f in files):
        raise InputError(f"model.policy: {src} has no .safetensors weights (saferounds loads safetensors only)")
    for f in files:
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    os.replace(tmp, dst)


@dist.main_only  # rank 0 writes v0; the other ranks get its metrics
def run_given(ws: Workspace) -> dict:
    """Make versions/v0 from model.policy as it is (model.v0: given); returns the v0 metrics (the source record)."""
    cfg = ws.config
    if ws.version_dir(0).exists():
        raise InputError("v0: already finished; a finished version is never modified")
    if cfg.data.pretrain_text or cfg.data.sft:
        raise InputError(f"{ws.config_path}: model.v0 is 'given' but data.pretrain_text / data.sft list files; "
                         "remove them, or set model.v0: sft to fine-tune the model first")
    check_source(cfg.model.policy, ws.root, "model.policy")  # an unreadable GGUF fails before v0 starts
    d = ws.begin_version(0, None, ["given"], [])
    with ws.stage(0, "given") as done:
        source = model_source(ws, "policy")
        checkpoint = source["checkpoint"]
        policy = d / "policy"
        if not policy.exists():
            if Path(checkpoint).is_dir():
                _link_tree(Path(checkpoint), policy)
            else:  # a hub id: download once and keep it as safetensors in the version
                model, tok = load_policy(checkpoint, cfg.model)
                save_pretrained_atomic(model, tok, policy)
        done.metrics = {"source": source}
        done.manifest["model_source"] = source
    ws.finish_version(0)
    return done.metrics
