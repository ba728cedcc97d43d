"""Version 0 as given (`model.v0: given`): an already instruction-tuned chat model is the starting
policy, as LLaMA 2's safety RLHF starts from its SFT chat model. No pretraining or SFT runs.

versions/v0/policy holds the model's files (hard links to a local checkpoint, e.g. the conversion of
a GGUF in WORKSPACE/models/, else a copy; a hub model is saved as safetensors). The v0 manifest
records where it came from, with the GGUF's sha256 when the source is one.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from saferounds.core.errors import InputError
from saferounds.pipeline.gguf import ensure_converted, is_gguf_source
from saferounds.pipeline.workspace import Workspace, now

MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "tokenizer*")


def model_source(ws: Workspace, key: str = "policy") -> dict:
    """Provenance of model.<key>: the GGUF record (path, sha256, checkpoint) or the path / hub id."""
    name = getattr(ws.config.model, key)
    if is_gguf_source(name):
        _, record = ensure_converted(name, ws.root / "models", base=ws.root, key=f"model.{key}")
        return record
    from saferounds.pipeline.training.base_policy import resolve_model

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


def run_given(ws: Workspace) -> dict:
    """Make versions/v0 from model.policy as it is; returns the v0 metrics (the source record)."""
    cfg = ws.config
    if ws.version_dir(0).exists():
        raise InputError("v0: already finished; a finished version is never modified")
    if cfg.data.pretrain_text or cfg.data.sft:
        raise InputError(f"{ws.config_path}: model.v0 is 'given' but data.pretrain_text / data.sft list files; "
                         "remove them, or set model.v0: sft to fine-tune the model first")
    d = ws.begin_version(0, None, ["given"], [])
    started = time.time()
    ws.set_stage(0, "given", status="running", started=now())
    source = model_source(ws, "policy")
    checkpoint = source["checkpoint"]
    policy = d / "policy"
    if not policy.exists():
        if Path(checkpoint).is_dir():
            _link_tree(Path(checkpoint), policy)
        else:  # a hub id: download once and keep it as safetensors in the version
            from saferounds.core.accelerator import save_pretrained_atomic
            from saferounds.pipeline.models import load_policy

            model, tok = load_policy(checkpoint, cfg.model)
            save_pretrained_atomic(model, tok, policy)
    seconds = round(time.time() - started, 2)
    metrics = {"source": source}
    ws.set_stage(0, "given", status="done", finished=now(), seconds=seconds, metrics=metrics)
    ws.update_manifest(0, metrics={"given": metrics}, timings={"given": seconds}, model_source=source)
    ws.finish_version(0)
    return metrics
