"""The one live view of a command: a rich progress display, one line per stage of the running work.

Each open stage shows its name, a bar with counts (steps, samples, prompts), the current loss or
score, elapsed time and ETA; when it ends the line is replaced by a one-line summary, e.g.
`v1 rm helpfulness  acc 0.71 (held-out)  42 s`. Everything else (Trainer dicts, shard bars, load
reports, warnings) goes to the log file (core.logs); `-v/--verbose` shows it live instead.

SAFEROUNDS_QUIET=1, a stream that is not a terminal (CI, pipes) and --verbose give plain lines
(core.progress.PlainProgress) without control characters.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Iterator, TextIO

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from saferounds.core.logs import capture, current_log, log_to
from saferounds.core.progress import (PlainProgress, Progress, format_metrics, format_seconds, full_name, reporting,
                                      round_numbers)

VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose",
                                          help="Show the full log live (Trainer logs, load reports, warnings) "
                                               "instead of the progress view.")]


class RichProgress:
    """core.progress.Progress drawn with rich: finished stages print above the live bars."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = RichBars(TextColumn("{task.description:<24}"), BarColumn(bar_width=28), MofNCompleteColumn(),
                             TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[figures]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                             redirect_stdout=False, redirect_stderr=False, refresh_per_second=4)
        self._task = None
        self._name, self._started, self._metrics, self._done, self._unit = "", 0.0, {}, 0, ""

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        self.done()
        self.bars.stop()

    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> None:
        self.done()
        self._name, self._started, self._metrics, self._done = full_name(name), time.monotonic(), {}, 0
        self._unit = unit
        self._task = self.bars.add_task(self._name, total=total, unit=unit, figures="")

    def advance(self, n: int = 1, **metrics: float) -> None:
        if self._task is None:
            return
        self._metrics.update(metrics)
        self._done += n
        self.bars.update(self._task, advance=n, figures=format_metrics(self._metrics))

    def done(self, summary: str = "") -> None:
        if self._task is None:
            return
        self.bars.remove_task(self._task)
        self._task = None
        what = summary or (f"{self._done} {self._unit}" if self._done else "done")
        self.console.print(f"[bold]{self._name}[/]  {what}  [dim]{format_seconds(time.monotonic() - self._started)}[/]",
                           highlight=False)

    def note(self, message: str) -> None:
        self.console.print(round_numbers(message), markup=False, highlight=False)


def log_message(message: str) -> None:
    """The library's `progress=` messages ("v1 rs: sampling 8/40 prompts"): detail for the log; the
    live view shows the same progress as bars."""
    logging.getLogger("saferounds").info(message)


# A run's own progress messages that repeat what its stages already report to the view (core.progress):
# counts ("v1 rs: sampling 16/152 prompts", "helpfulness RM step 5/40 (loss ...)", "eval: v1 xstest 8/450"), and
# a round's or eval's per-stage messages ("v1 rs: scoring 640 samples", "eval: scoring 96 answers ...").
_STAGE_DETAIL = re.compile(r"^(?:\[[^\]]*\] )?(?:v[1-9]\d*\b|eval:|ppo step|\w+ RM step|.*\b\d+/\d+\b)")
_STEP_BOUNDARY = re.compile(r"^(?:\[[^\]]*\] )?[^:]+: (?:started|done in \S+)")


def step_lines(view: Progress) -> Callable[[str], None]:
    """A `print_line` for a run that reports its steps in lines of its own (`demo --model smollm2`: elapsed
    time, run ETA) while its stages report to `view`: each event is shown once. A step's start and end
    lines, and lines no stage reports (judges' results), go to the view; a message that repeats a stage's
    event (a count, a stage's own detail) goes to the log."""

    def print_line(message: str) -> None:
        if _STAGE_DETAIL.match(message) and not _STEP_BOUNDARY.match(message):
            log_message(message)
        else:
            view.note(message)

    return print_line


def plain_wanted(stream: TextIO, verbose: bool = False) -> bool:
    return verbose or os.environ.get("SAFEROUNDS_QUIET") == "1" or not stream.isatty()


@contextlib.contextmanager
def live(log_path: Path, verbose: bool = False, quiet: bool = False) -> Iterator[Progress]:
    """Run a command's library calls inside: progress on stderr, the rest into `log_path` (or the
    innermost log file the library opens, e.g. a version's logs/stage.log). `quiet` (--json): no
    progress lines at all."""
    stream = sys.stderr
    if quiet:
        from saferounds.core.progress import NullProgress

        view, cm = NullProgress(), contextlib.nullcontext()
    elif plain_wanted(stream, verbose):
        view = PlainProgress(stream)
        cm = contextlib.nullcontext()
    else:
        view = RichProgress(Console(file=stream))
        cm = view
    failed = False
    try:
        with log_to(log_path), capture(echo=stream if verbose else None), reporting(view), cm:
            yield view
    except BaseException:
        failed = True
        raise
    finally:
        where = current_log()
        if failed and where is not None and not verbose:
            stream.write(f"log: {where}\n")
