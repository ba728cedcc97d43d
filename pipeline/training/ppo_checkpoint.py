"""What PPO keeps on disk: checkpoints to resume from, the JSONL step log (cut back to the checkpoint on
resume), and the trained policy.

A checkpoint work_dir/step_N holds state.pt (the trainable weights of policy, critic or value head, the
optimizer, the running score statistics and N; written by the main process) and rng_R.pt for every
process R; `latest` names the newest complete one. A torn state.pt is set aside and an older one used.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
from torch import nn

from saferounds.core.errors import InputError
from saferounds.pipeline.training.ppo_model import PolicyAndValue, is_peft


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(work_dir: Path, step: int, model: PolicyAndValue, optimizer, whitener,
                    accelerator, keep: int = 1) -> None:
    """policy/critic/head trainable weights, optimizer, running whitening stats and step (main
    process), the RNG state of every process; `latest` names the newest complete checkpoint."""
    ckpt = work_dir / f"step_{step:06d}"
    if accelerator.is_main_process:
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step, "model": _trainable(model), "optimizer": optimizer.state_dict(),
                    "whitener": whitener.state_dict() if whitener else None}, ckpt / "state.pt")
    accelerator.wait_for_everyone()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, ckpt / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = work_dir / "latest.tmp"
        tmp.write_text(ckpt.name)
        tmp.replace(work_dir / "latest")
        old = sorted(p for p in work_dir.glob("step_*") if p.name != ckpt.name and p.name[5:].isdigit())
        for p in old[: max(len(old) - keep + 1, 0)]:
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
    accelerator.wait_for_everyone()


def _readable_state(work_dir: Path, logger=None) -> tuple[Path, dict] | None:
    """(checkpoint dir, state) of the newest PPO checkpoint whose state.pt loads; a torn one (a kill or a
    full disk in the middle of torch.save) is set aside as step_N.torn with a note, and an older one used.
    Under a launch rank 0 alone decides (and renames) and every rank loads the one it chose: two ranks
    renaming the same torn directory would race."""
    from saferounds.core.distributed import run_on_main

    chosen = run_on_main(_newest_readable, work_dir, logger)
    if chosen is None:
        return None
    ckpt = Path(chosen)
    return ckpt, torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)


def _newest_readable(work_dir: Path, logger=None) -> str | None:
    from saferounds.core.checkpoints import set_aside

    latest = work_dir / "latest"
    named = [work_dir / latest.read_text().strip()] if latest.exists() else []
    for ckpt in named + sorted(work_dir.glob("step_[0-9]*[0-9]"), reverse=True):
        if not ckpt.is_dir():
            continue
        try:
            torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
            return str(ckpt)
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            set_aside(ckpt, f"state.pt unreadable ({type(e).__name__})", logger)
    return None


def load_checkpoint(work_dir: Path, model: PolicyAndValue, optimizer, whitener, accelerator, logger=None) -> int:
    """Restore the newest complete checkpoint; returns the step to continue from (0 when there is none)."""
    if not (work_dir / "latest").exists() and not any(work_dir.glob("step_*")):
        return 0
    found = _readable_state(work_dir, logger)
    if found is None:
        return 0
    ckpt, state = found
    params = dict(model.named_parameters())
    missing = set(state["model"]) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise InputError(f"{ckpt}: checkpoint does not match the model (parameters differ: "
                         f"{sorted(missing)[:5]}); delete {work_dir} to start PPO afresh")
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    if whitener is not None and state["whitener"] is not None:
        whitener.load_state_dict(state["whitener"])
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])


class StepLog:
    """Console (logger), JSONL (main process) and accelerate trackers."""

    def __init__(self, path: Path | None, accelerator, logger: logging.Logger, resume_step: int):
        self.path, self.acc, self.logger = path, accelerator, logger
        if path is not None and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.exists():  # drop lines past the checkpoint we resume from: they will be redone
                kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            path.write_text("".join(l + "\n" for l in kept))

    def __call__(self, metrics: dict) -> None:
        if not self.acc.is_main_process:
            return
        self.logger.info("ppo step %d  " % metrics["step"] + "  ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k != "step" and isinstance(v, float)))
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                         step=metrics["step"])


def save_policy(policy, tokenizer, out_dir: Path, accelerator=None) -> Path:
    """save_pretrained (safetensors) of the trained policy; a LoRA adapter is merged into its base
    first (unless quantised) so the result loads without knowing where the base lived."""
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return out_dir
    if is_peft(policy) and not getattr(policy, "is_loaded_in_4bit", False) \
            and not getattr(policy, "is_loaded_in_8bit", False):
        policy = policy.merge_and_unload()
    from saferounds.core.accelerator import save_pretrained_atomic

    return save_pretrained_atomic(policy, tokenizer, out_dir)
