"""Resume from the newest COMPLETE Trainer checkpoint; set torn ones aside.

A `kill -9` in the middle of a checkpoint save (or a full disk) leaves `checkpoint-N` empty or half
written, and transformers' get_last_checkpoint would pick it and fail on every later run. Trainer
writes the weights, optimizer, scheduler and RNG state first and trainer_state.json last, so a
checkpoint is complete when trainer_state.json parses and every weight file is whole (a safetensors
file is as long as its header says; other files are non-empty). A torn one is renamed to
`checkpoint-N.torn` (never matched as a checkpoint again) with a note beside it and in
`torn_checkpoints.jsonl` of the work directory.
"""
from __future__ import annotations

import gc
import json
import os
import re
import shutil
import struct
import time
from pathlib import Path

from saferounds.core.distributed import run_on_main
from saferounds.core.errors import as_disk_full, no_space

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
NOTES = "torn_checkpoints.jsonl"


def safetensors_whole(path: Path) -> bool:
    """The file holds its 8-byte header length, the JSON header and every tensor's bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def checkpoint_problem(d: Path) -> str | None:
    """Why checkpoint directory `d` cannot be resumed from, or None when it is complete."""
    state = d / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (the save was cut short)"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({type(e).__name__})"
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return "model.safetensors.index.json unreadable"
        weights = [d / s for s in sorted(shards)]
    else:
        weights = [d / w for w in WEIGHTS if (d / w).exists()]
        if not weights:
            return "no weights file"
    for w in weights:
        if not w.exists():
            return f"{w.name} missing"
        if w.suffix == ".safetensors" and not safetensors_whole(w):
            return f"{w.name} truncated"
        if w.stat().st_size == 0:
            return f"{w.name} empty"
    for other in ("optimizer.pt", "scheduler.pt"):
        if (d / other).exists() and (d / other).stat().st_size == 0:
            return f"{other} empty"
    return None


def last_complete_checkpoint(work_dir: str | Path, log=None) -> str | None:
    """Path of the newest complete checkpoint-N in work_dir (None when there is none); every newer,
    torn one is renamed to checkpoint-N.torn with a note."""
    for _, d in _checkpoints(Path(work_dir)):
        problem = checkpoint_problem(d)
        if problem is None:
            return str(d)
        set_aside(d, problem, log)
    return None


def train(trainer, work_dir: str | Path, log=None):
    """(trainer.train's result, the checkpoint it resumed from): resumed from the newest complete
    checkpoint in work_dir, torn ones set aside.

    A checkpoint save that runs out of space (torch's writer says only `[enforce fail at
    inline_container.cc] unexpected pos`) deletes the checkpoint it left half written, so the stage's
    failure still fits in the manifest and a rerun resumes from the checkpoint before, then raises
    DiskFullError naming that checkpoint and the space left.

    Under `accelerate launch` rank 0 alone looks for the checkpoint and sets torn ones aside, and every rank
    waits for its answer: a rank that looked on its own could rename a checkpoint that rank 0 is still
    writing (the ranks do not meet before the first optimizer step), or two ranks could both rename the
    same torn one."""
    last = run_on_main(last_complete_checkpoint, work_dir, log)
    if last and log is not None:
        log.info("resuming training from %s", last)
    try:
        return trainer.train(resume_from_checkpoint=last), last
    except Exception as e:
        if not (no_space(e) or _writer_failed_on_a_full_disk(e, Path(work_dir))):
            raise
        full = as_disk_full(e, work_dir)
        e.__traceback__ = None  # its frames hold the half-written files open: their space frees once closed
    gc.collect()
    torn = [d for _, d in _checkpoints(Path(work_dir)) if checkpoint_problem(d) is not None]
    for d in torn:
        shutil.rmtree(d, ignore_errors=True)
    raise as_disk_full(OSError(full.errno, full.strerror, str(torn[0] if torn else full.path)))


def _writer_failed_on_a_full_disk(e: BaseException, work_dir: Path) -> bool:
    """torch.save's zip writer failed (its message names no errno) while work_dir's filesystem is
    (nearly) full."""
    failed = any(marker in str(x) for x in (e, e.__cause__ or e.__context__) if x is not None
                 for marker in ("inline_container.cc", "PytorchStreamWriter failed"))
    try:
        return failed and shutil.disk_usage(work_dir).free < 16 * 2**20
    except OSError:
        return False


def _checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint-N in work_dir, newest first."""
    if not work_dir.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in work_dir.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))), reverse=True)


def set_aside(d: Path, problem: str, log=None) -> Path:
    torn = d.with_name(d.name + ".torn")
    k = 1
    while torn.exists():
        k += 1
        torn = d.with_name(f"{d.name}.torn{k}")
    os.replace(d, torn)
    note = {"checkpoint": d.name, "moved_to": torn.name, "problem": problem,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (torn / "TORN.txt").write_text(f"{d.name}: {problem}; set aside, resumed from an earlier checkpoint\n")
    with open(d.parent / NOTES, "a", encoding="utf-8") as f:
        f.write(json.dumps(note) + "\n")
    if log is not None:
        log.warning("%s: torn checkpoint (%s), set aside as %s", d, problem, torn.name)
    return torn


def torn_notes(work_dir: str | Path) -> list[dict]:
    path = Path(work_dir) / NOTES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
