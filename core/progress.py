"""Progress reporting from library code, rendered by whoever runs it (the CLI draws a live view).

Library code never prints progress and never imports a terminal library; it asks for the active
reporter and tells it what is happening:

    p = current()
    p.stage("rm helpfulness", total=120, unit="steps")   # a new line in the live view
    p.advance(1, loss=0.41)                               # bar +1, current figure shown beside it
    p.done("acc 0.71 (held-out)")                         # the line becomes a one-line summary
    p.note("safety RM: new scalar head on v0's backbone (expected)")   # one line worth reading

`current()` is a no-op reporter unless a caller installed one with `reporting(progress)`. A
`scope("v1")` labels the stages opened inside it (the round runner scopes each version).
Renderers: PlainProgress here (plain lines, no control characters: CI, pipes, SAFEROUNDS_QUIET=1);
the rich live view in pipeline/cli/live.py.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
import time
from typing import Callable, Iterator, Protocol, TextIO, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> None:
        """Open a stage (replacing any stage left open): `total` units of work, None when unknown."""

    def advance(self, n: int = 1, **metrics: float) -> None:
        """`n` more units done; `metrics` (loss, score, ...) are the current figures to show."""

    def done(self, summary: str = "") -> None:
        """Close the open stage; `summary` is what its line says from now on (elapsed time is added)."""

    def note(self, message: str) -> None:
        """A line for the reader between stages (an expected event said once in our own words)."""


class NullProgress:
    """The default reporter: nothing is shown (library use, tests)."""

    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> None:
        pass

    def advance(self, n: int = 1, **metrics: float) -> None:
        pass

    def done(self, summary: str = "") -> None:
        pass

    def note(self, message: str) -> None:
        pass


_CURRENT: contextvars.ContextVar[Progress] = contextvars.ContextVar("saferounds_progress", default=NullProgress())
_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("saferounds_progress_label", default="")


def current() -> Progress:
    """The reporter installed by the caller (a no-op one when none is)."""
    return _CURRENT.get()


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Make `progress` the reporter of everything run inside the block."""
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)


def label() -> str:
    return _LABEL.get()


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Stages opened inside the block are shown as `name stage` (e.g. `v1 rm helpfulness`)."""
    token = _LABEL.set(name)
    try:
        yield
    finally:
        _LABEL.reset(token)


def full_name(name: str) -> str:
    return f"{label()} {name}" if label() else name


def counter(name: str, unit: str, summary: Callable[[int], str] | None = None,
            progress: Progress | None = None) -> Callable[[int, int], None]:
    """An `on_batch(done, total)` callback for loops that report cumulative counts: opens the stage
    on the first call, advances by the difference, closes it when done == total."""
    p = progress or current()
    seen = {"done": None}

    def report(done: int, total: int) -> None:
        if seen["done"] is None:
            p.stage(name, total=total, unit=unit)
            seen["done"] = 0
        if done > seen["done"]:
            p.advance(done - seen["done"])
            seen["done"] = done
        if done >= total:
            p.done(summary(total) if summary else f"{total} {unit}")
            seen["done"] = None

    return report


SIGNIFICANT = 4  # digits a person reads: "loss 0.6512", not "loss 0.6512109756469726"
_LONG_NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d{%d,}(?:[eE][-+]?\d+)?(?![\w.])" % SIGNIFICANT)


def format_number(x: float) -> str:
    return f"{x:.{SIGNIFICANT}g}"


def round_numbers(text: str) -> str:
    """Every decimal number in `text` with more than SIGNIFICANT digits after the point, rounded to SIGNIFICANT
    significant digits (a message formatted elsewhere, e.g. a Trainer loss, reads like ours)."""
    return _LONG_NUMBER.sub(lambda m: format_number(float(m.group())), text)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {format_number(v)}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


class PlainProgress:
    """Plain lines on a stream: one when a stage opens, one at each quarter of its total (with the time left at
    the rate so far), its summary. Each event once, numbers to SIGNIFICANT digits. No carriage returns, no
    colours, no cursor movement: what CI logs and pipes want."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic):
        self.stream, self.clock = stream, clock
        self._open: dict | None = None

    def _line(self, text: str) -> None:
        self.stream.write(round_numbers(text) + "\n")
        self.stream.flush()

    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> None:
        if self._open is not None:
            self.done()
        self._open = {"name": full_name(name), "total": total, "unit": unit, "done": 0, "metrics": {},
                      "started": self.clock(), "quarter": 0}
        self._line(f"{self._open['name']}: started" + (f" ({total} {unit})" if total else ""))

    def advance(self, n: int = 1, **metrics: float) -> None:
        s = self._open
        if s is None:
            return
        s["done"] += n
        s["metrics"].update(metrics)
        if s["total"]:
            quarter = min(4, 4 * s["done"] // s["total"])
            if 0 < quarter < 4 and quarter > s["quarter"]:
                s["quarter"] = quarter
                extra = format_metrics(s["metrics"])
                spent = self.clock() - s["started"]
                left = f"  ~{format_seconds(spent / s['done'] * (s['total'] - s['done']))} left" if spent >= 1 else ""
                self._line(f"{s['name']}: {s['done']}/{s['total']} {s['unit']}" + (f"  {extra}" if extra else "")
                           + left)

    def done(self, summary: str = "") -> None:
        s, self._open = self._open, None
        if s is None:
            return
        what = summary or (f"{s['done']} {s['unit']}" if s["done"] else "done")
        self._line(f"{s['name']}  {what}  {format_seconds(self.clock() - s['started'])}")

    def note(self, message: str) -> None:
        self._line(message)


def trainer_callback(name: str, progress: Progress | None = None):
    """A transformers TrainerCallback: opens stage `name` with the run's optimiser steps, advances per
    step with the latest logged loss. The caller closes the stage (it knows the held-out figures)."""
    from transformers import TrainerCallback

    p = progress or current()

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                p.stage(name, total=state.max_steps, unit="steps")
                if state.global_step:  # resumed from a checkpoint
                    p.advance(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                p.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                p.advance(0, loss=float(logs["loss"]))

    return ProgressCallback()


def log_callback(logger, name: str):
    """A TrainerCallback that writes the Trainer's log dicts to `logger` (the stage log), in place of
    the Trainer's own printing to stdout."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                logger.info("%s step %d/%d: %s", name, state.global_step, state.max_steps, logs)

    return LogCallback()
