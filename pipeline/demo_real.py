"""`saferounds demo --model smollm2`: the method on a real chat model, in one command.

init the `smollm2` preset (SmolLM2-135M-Instruct, public data: data/public.py) -> v0 = the
model as given (GGUF converted once) -> the learned refusal and harm judges (eval/judges/,
trained once into WS/judges on XSTest + Do-Not-Answer labels minus every eval-suite prompt; not for
`mini`, where the patterns and the safety RM judge) -> helpfulness and safety RMs from v0 (LoRA) -> rejection
sampling with safe demonstrations in the pool -> eval on held-out XSTest, Do-Not-Answer and HH
helpful prompts against v0 -> report with both versions' answers side by side.

Sizes: `full` (the acceptance run, bench/smollm2_demo.py), `quarter` (a quarter of the prompts and
pairs, for estimates) and `mini` (a few prompts, K=2, a few tokens: tests/test_smollm2_mini.py).
Progress: one line per step with the elapsed time and an ETA (within a step from its done/total
counts, over the run from ESTIMATES scaled by how fast the finished stages went). Re-running resumes
where the run stopped: finished stages are skipped, the running one continues from its checkpoints.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

from saferounds.core.errors import InputError
from saferounds.pipeline.presets import init_workspace
from saferounds.pipeline.rounds import run_round
from saferounds.pipeline.workspace import Workspace

_SHORT = {"reward_models": {"max_length": 96, "batch_size": 4, "save_steps": 1000, "logging_steps": 1,
                            "eval_fraction": 0.2},
          "sft": {"max_length": 96, "save_steps": 1000, "logging_steps": 1}}
SIZES: dict[str, dict] = {
    "full": {},
    "quarter": {},
    "mini": {**_SHORT,
             "model": {"policy": "smollm2-135m", "v0": "given", "dtype": "float32",
                       "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                                "target_modules": ["q_proj", "v_proj"], "layers": 2}},
             "rejection_sampling": {"k": 2, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "batch_size": 8,
                                    "demonstrations": ["data/rs_demonstrations.jsonl"], "demonstrations_use": "pool",
                                    "finetune": {"epochs": 1, "learning_rate": 2.0e-4, "batch_size": 4}},
             "ppo": {"steps": 2, "batch_size": 4, "mini_batch_size": 2, "rollout_batch_size": 4, "max_new_tokens": 8,
                     "save_every": 1},
             "eval": {"max_new_tokens": 8, "batch_size": 8, "examples_per_suite": 2}},
}
# Expected seconds per step on the reference machine (demo_model.REFERENCE: 2 Xeon cores with AMX, 2 threads),
# for the ETA; demo_model.machine_scaled scales them to the machine the run is on. `full`: the stage times of the
# session 12 acceptance run (bench/README.md, "Session 12: the whole plan with RMs from the chat model"; rm: 226 s
# with the backbone in bf16 (reward_model_dtype: native; 933 s in fp32); eval: the mean of v1-v3, v1's includes v0's answers;
# ppo: 8 steps of 16, stopped on max_kl). distill was not run there: a fifth of rs, as on the older machine.
# `quarter`: `full` times each stage's quarter/full ratio measured on the older machine.
RS_FULL = 260
ESTIMATES: dict[str, dict[str, float]] = {
    "full": {"v0": 26, "judges": 94, "rm": 230, "rs": RS_FULL, "distill": RS_FULL // 5, "ppo": 140, "eval": 255},
    "quarter": {"v0": 15, "judges": 94, "rm": 40, "rs": RS_FULL * 280 // 1500, "distill": RS_FULL // 15,
                "ppo": 23, "eval": 82},
    "mini": {"v0": 30, "rm": 30, "rs": 30, "distill": 30, "ppo": 30, "eval": 30},
}
_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Per-step lines with elapsed time and an ETA; `say(message)` is the stages' progress callback."""

    def __init__(self, print_line: Callable[[str], None], steps: list[str], estimates: dict[str, float]):
        self.print_line, self.steps, self.estimates = print_line, steps, estimates
        self.t0 = time.time()
        self.done: dict[str, float] = {}  # step -> seconds it took (this run)
        self.step, self.step_t0 = None, self.t0
        self.counter: tuple[str, int, float] | None = None  # (message head, first count seen, when)

    def begin(self, step: str) -> None:
        self.step, self.step_t0, self.counter = step, time.time(), None
        self.say(f"{step}: started")

    def end(self, step: str) -> None:
        self.done[step] = time.time() - self.step_t0
        self.say(f"{step}: done in {_clock(self.done[step])}")

    def remaining(self) -> float:
        """Seconds left over the run: the estimates of the steps not done, scaled by actual/estimated so far."""
        kind = lambda s: s.split(" ")[-1]  # noqa: E731 ("v1 rm" -> "rm")
        est_done = sum(self.estimates.get(kind(s), 60) for s in self.done)
        scale = (sum(self.done.values()) / est_done) if est_done and sum(self.done.values()) > 5 else 1.0
        left = [s for s in self.steps if s not in self.done]
        rest = sum(self.estimates.get(kind(s), 60) for s in left) * scale
        if self.step in left:  # the running step: its estimate minus what it has used
            rest -= min(time.time() - self.step_t0, self.estimates.get(kind(self.step), 60) * scale * 0.9)
        return max(rest, 0.0)

    def say(self, message: str) -> None:
        now = time.time()
        eta = ""
        m = _COUNT.search(message)
        if m:
            head, d, n = message[:m.start()], int(m.group(1)), int(m.group(2))
            if self.counter is None or self.counter[0] != head or d < self.counter[1]:
                self.counter = (head, d, now)
            _, d0, t0 = self.counter
            if d > d0 and n > d:
                eta = f", this step ~{_clock((now - t0) / (d - d0) * (n - d))} left"
        self.print_line(f"[{_clock(now - self.t0)}] {message}{eta} · run ETA {_clock(self.remaining())}")


class _TrainerLogs(logging.Handler):
    """Sends reward-model training logs ("helpfulness RM step 5/40: {...}") to the progress lines."""

    def __init__(self, say: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.say, self.busy = say, False

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " RM step " in msg and not self.busy:  # busy: its own line, logged back by the CLI's print_line
            self.busy = True
            try:
                self.say(msg.split(": {")[0] + (f" (loss {m.group(1)})" if (m := re.search(r"'loss': ([0-9.]+)", msg))
                                                else ""))
            finally:
                self.busy = False


JUDGED_SIZES = ("full", "quarter")  # sizes whose run trains the learned judges (mini: CI, minutes matter)


def planned_steps(ws: Workspace, judges: bool = False, until: int | None = None) -> list[str]:
    cfg = ws.config
    last = cfg.rounds.max_version if until is None else min(until, cfg.rounds.max_version)
    return ["v0"] + (["judges"] if judges else []) + \
        [f"v{n} {s}" for n in range(1, last + 1) for s in cfg.stages_for(n)]


def train_workspace_judges(ws: Workspace, data_root: str | Path | None, say: Callable[[str], None]) -> dict | None:
    """The learned refusal and harm judges of the workspace, trained once (skipped when both exist), on the
    labelled data minus every prompt of the workspace's eval suites. Returns {kind: held-out metrics}."""
    import json

    from saferounds.eval.judges.artifact import KINDS, workspace_judges_dir
    from saferounds.pipeline.stages.eval import train_learned_judges

    root = workspace_judges_dir(ws.root)
    if all((root / k / "config.json").exists() for k in KINDS):
        return None
    saved = train_learned_judges(ws, root, list(KINDS), Path(data_root) if data_root else None, progress=say)
    return {k: json.loads((p / "config.json").read_text(encoding="utf-8"))["metrics"]["heldout"]["all"]
            for k, p in saved.items()}


def plan_model(model: str, size: str = "full"):
    """`demo --model ID|PATH|GGUF`: the model resolved, checked (a chat template, a causal LM) and the preset
    scaled to it (pipeline.demo_model.DemoPlan); InputError (exit 2) before anything is written."""
    from saferounds.pipeline import demo_model

    if size not in SIZES:
        raise InputError(f"--size: expected one of {', '.join(SIZES)}, got {size!r}")
    return demo_model.plan(model, size, SIZES[size], ESTIMATES[size])


def run_real_demo(directory: str | Path, size: str = "full", data_root: str | Path | None = None,
                  print_line: Callable[[str], None] = print, until: int | None = None, model=None) -> dict:
    """Build or resume the smollm2 demo workspace, run v0 and the planned rounds (up to v``until`` when given;
    a later call without it goes on from there); return the headline. ``model``: plan_model's DemoPlan (or its
    ID|PATH|GGUF): the smollm2 plan on that chat model, its sizes scaled to it, the estimate shown first."""
    from saferounds.pipeline.demo import summary
    from saferounds.pipeline.v0 import run_given

    if size not in SIZES:
        raise InputError(f"--size: expected one of {', '.join(SIZES)}, got {size!r}")
    if "SAFEROUNDS_THREADS" in os.environ:
        import torch

        torch.set_num_threads(int(os.environ["SAFEROUNDS_THREADS"]))
    directory = Path(directory)
    started = time.time()
    ws = Workspace(directory)
    plan = plan_model(model, size) if isinstance(model, str) else model
    if plan is not None:
        overrides, estimates = plan.overrides, plan.estimates
    else:
        from saferounds.pipeline.demo_model import machine_scaled, measure_machine

        overrides, estimates = SIZES[size], machine_scaled(ESTIMATES[size], measure_machine())
    if not ws.exists():
        print_line(f"writing the smollm2 preset ({size}{', for ' + plan.model if plan else ''}) and its data from "
                   f"{data_root} to {directory}")
        init_workspace(directory, "smollm2", data_size=size, overrides=overrides, data_root=data_root)
        ws = Workspace(directory)
    judged = size in JUDGED_SIZES
    steps = planned_steps(ws, judged, until)
    if plan is not None:
        from saferounds.pipeline.demo_model import estimate_line

        print_line(estimate_line(plan, steps, _clock))
    progress = Progress(print_line, steps, estimates)
    handler = _TrainerLogs(progress.say)
    log = logging.getLogger("saferounds")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with ws.lock():
            if 0 not in ws.finished_versions():
                progress.begin("v0")
                progress.say("v0: the model as given (a GGUF converted once)")
                run_given(ws)  # the preset's model.v0: given
                progress.end("v0")
            else:
                progress.done["v0"] = 0.0
            if judged:
                progress.begin("judges")
                got = train_workspace_judges(ws, data_root, progress.say)
                for kind, m in (got or {}).items():
                    progress.say(f"judges: {kind} held-out agreement {m['agreement']:.3f} (n={m['n']}, "
                                 f"models {', '.join(m['models'])})")
                progress.end("judges")
            for n in ws.finished_versions():  # resumed: finished versions count as done
                for s in (ws.manifest(n).get("plan") or []) if n > 0 else []:
                    progress.done[f"v{n} {s}"] = 0.0
            last = ws.config.rounds.max_version if until is None else min(until, ws.config.rounds.max_version)
            while ws.partial_versions() or (ws.latest() or 0) < last:
                _round(ws, progress)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    out = summary(ws, seconds=time.time() - started)
    out["stage_seconds"] = stage_seconds(ws)
    return out


def _round(ws: Workspace, progress: Progress) -> None:
    """run_round, with begin/end lines per stage (run_round reports 'vN: stage' when a stage starts)."""
    current: list[str] = []

    def say(message: str) -> None:
        m = re.fullmatch(r"v(\d+): (rm|label|distill|rs|ppo|eval)", message)
        if m:
            if current:
                progress.end(current.pop())
            step = f"v{m.group(1)} {m.group(2)}"
            current.append(step)
            progress.begin(step)
            return
        progress.say(message)

    run_round(ws, progress=say)
    if current:
        progress.end(current.pop())


def stage_seconds(ws: Workspace) -> dict[str, float]:
    """Seconds per stage as the manifests recorded them (over every run that built them)."""
    out = {}
    for n in ws.finished_versions():
        for stage, seconds in ws.manifest(n).get("timings", {}).items():
            out[f"v{n} {stage}"] = seconds
    return out
