"""Training curves in TensorBoard, when it is installed (`pip install saferounds[track]`).

Every training stage writes its curves under WORKSPACE/runs/<vN>/<stage> (pretrain, sft,
rm-helpfulness, rm-safety, rs, ppo): supervised stages through the Trainer's own TensorBoard
callback (report_to=["tensorboard"]), PPO through accelerate's tracker. Without tensorboard nothing
is written and nothing breaks. View them with `tensorboard --logdir WORKSPACE/runs`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

RUNS = "runs"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def runs_root(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / RUNS


def runs_dir(workspace_root: str | Path, run: str, stage: str) -> Path:
    """WORKSPACE/runs/<run>/<stage>; `run` is the version (v3) or, outside rounds, the output's name."""
    return runs_root(workspace_root) / run / stage


def report_to(log_dir: str | Path | None) -> list[str]:
    """TrainingArguments.report_to: TensorBoard when a directory is given and tensorboard is installed."""
    return ["tensorboard"] if log_dir is not None and tensorboard_available() else []


def point_tensorboard(trainer, log_dir: str | Path | None) -> None:
    """Send the Trainer's TensorBoard callback to `log_dir` (transformers reads its directory from the
    TENSORBOARD_LOGGING_DIR variable otherwise, which is global to the process)."""
    if log_dir is None:
        return
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            cb.logging_dir = str(log_dir)
