"""Training curves in the trackers a team uses: config key `tracking.report_to`.

Every training stage (pretrain, sft, rm-helpfulness, rm-safety, rs, ppo) logs under one run per version
and stage, named `vN/<stage>`: supervised stages through the Trainer's own integrations
(TrainingArguments.report_to and run_name), PPO through accelerate's trackers. TensorBoard writes
WORKSPACE/runs/vN/<stage> (`tensorboard --logdir WORKSPACE/runs`); without tensorboard installed it is
skipped and nothing breaks. MLflow logs to $MLFLOW_TRACKING_URI, else the workspace's own file store
WORKSPACE/runs/mlruns (`mlflow ui --backend-store-uri WORKSPACE/runs/mlruns`), experiment
$MLFLOW_EXPERIMENT_NAME, else the workspace's name; W&B to $WANDB_PROJECT, else the workspace's name
(PPO: project `ppo`, accelerate names it). A tracker asked for but not installed is an InputError
naming the key.

The pipeline installs the workspace's list around each stage (`tracking(...)`, in Workspace.stage);
library code asks `report_to(log_dir)` / `accelerate_trackers(log_dir)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from pathlib import Path
from typing import Iterator, Sequence

from saferounds.core.errors import InputError

RUNS = "runs"
# trackers that both transformers' Trainer (report_to) and accelerate (log_with) speak -> their module
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "clearml": "clearml", "dvclive": "dvclive", "trackio": "trackio", "swanlab": "swanlab"}
KEY = "tracking.report_to"
_REPORT_TO: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("saferounds_report_to",
                                                                              default=("tensorboard",))


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def runs_root(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / RUNS


def runs_dir(workspace_root: str | Path, run: str, stage: str) -> Path:
    """WORKSPACE/runs/<run>/<stage>; `run` is the version (v3) or, outside rounds, the output's name."""
    return runs_root(workspace_root) / run / stage


def run_name(log_dir: str | Path) -> str:
    """The tracker run of a stage: `vN/<stage>` from its runs directory."""
    p = Path(log_dir)
    return f"{p.parent.name}/{p.name}"


@contextlib.contextmanager
def tracking(report_to: Sequence[str], workspace_root: str | Path) -> Iterator[None]:
    """The trackers of everything trained inside the block, with the workspace's defaults for MLflow and W&B
    (only where the environment names none)."""
    unknown = [t for t in report_to if t not in TRACKERS]
    if unknown:
        raise InputError(f"{KEY}: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                         f"expected some of {', '.join(TRACKERS)}")
    root = Path(workspace_root).resolve()
    env = {}
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in os.environ:
        # MLflow 3 keeps its file store only on request; the workspace's own store needs no server
        env |= {"MLFLOW_TRACKING_URI": (runs_root(root) / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    if "mlflow" in report_to:
        env.setdefault("MLFLOW_EXPERIMENT_NAME", os.environ.get("MLFLOW_EXPERIMENT_NAME", root.name))
    if "wandb" in report_to:
        env.setdefault("WANDB_PROJECT", os.environ.get("WANDB_PROJECT", root.name))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    token = _REPORT_TO.set(tuple(report_to))
    try:
        yield
    finally:
        _REPORT_TO.reset(token)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trackers() -> list[str]:
    """The installed trackers asked for (tensorboard dropped silently when absent; any other absent one is
    an InputError naming tracking.report_to and the package to install)."""
    out = []
    for t in _REPORT_TO.get():
        if t == "tensorboard":
            if tensorboard_available():
                out.append(t)
        elif importlib.util.find_spec(TRACKERS[t]) is None:
            raise InputError(f"{KEY}: {t} is not installed (pip install {t.replace('_', '-')}"
                             + (", or pip install -e '.[trackers]'" if t == "mlflow" else "") + ")")
        else:
            out.append(t)
    return out


def report_to(log_dir: str | Path | None) -> list[str]:
    """TrainingArguments.report_to of a stage whose curves go to `log_dir` (none without one)."""
    return trackers() if log_dir is not None else []


def trainer_kwargs(log_dir: str | Path | None) -> dict:
    """TrainingArguments' report_to and run_name (`vN/<stage>`) of a stage whose curves go to `log_dir`."""
    return {"report_to": report_to(log_dir) or "none", "run_name": run_name(log_dir) if log_dir else None}


def accelerate_init_kwargs(log_dir: str | Path) -> dict:
    """accelerate's init_trackers(init_kwargs=...): the stage's run name for the trackers that take one."""
    name = run_name(log_dir)
    return {"wandb": {"name": name}, "mlflow": {"run_name": name}}


def point_tensorboard(trainer, log_dir: str | Path | None) -> None:
    """Send the Trainer's TensorBoard callback to `log_dir` (transformers reads its directory from the
    TENSORBOARD_LOGGING_DIR variable otherwise, which is global to the process)."""
    if log_dir is None:
        return
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            cb.logging_dir = str(log_dir)
