"""Where the detail goes: log files beside what they describe (a version's `logs/stage.log`).

`log_to(path)` sends Python logging records (ours and, once captured, transformers', datasets' and
accelerate's, and warnings) to `path` for the duration of a block; blocks nest and the innermost
file wins. Library code uses it to put a version's log in the version.

`capture(echo=None)` is for a command line: for the duration of the block everything that would
otherwise reach the terminal from library code — the Trainer's loss dicts, tqdm bars such as
"Writing model shards", transformers' load reports, warnings, stray prints — goes to the current
log file instead (and is echoed to `echo` as well, for `--verbose`). The caller writes its own output
to the streams it held before the block (rich consoles bound to them, print_json after the block).
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRARY_LOGGERS = ("transformers", "datasets", "accelerate", "peft", "torch", "huggingface_hub")


class _Sink(io.TextIOBase):
    """A text stream writing to the innermost open log file (opened on first write), and echoing."""

    def __init__(self):
        super().__init__()
        self._paths: list[Path] = []
        self._files: dict[Path, TextIO] = {}
        self.echo: TextIO | None = None
        self.last_path: Path | None = None

    def push(self, path: Path) -> None:
        self._paths.append(Path(path))

    def pop(self, path: Path) -> None:
        path = Path(path)
        self._paths.reverse()
        self._paths.remove(path)
        self._paths.reverse()
        if path not in self._paths and path in self._files:
            self._files.pop(path).close()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # tqdm and friends must not draw for a terminal here
        return False

    def write(self, text: str) -> int:
        if self._paths:
            path = self._paths[-1]
            f = self._files.get(path)
            if f is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = self._files[path] = open(path, "a", encoding="utf-8")
            f.write(text)
            self.last_path = path
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
        if self.echo is not None:
            self.echo.flush()


SINK = _Sink()
_HANDLER = logging.StreamHandler(SINK)
_HANDLER.setFormatter(logging.Formatter(FORMAT))
_HANDLER.set_name("saferounds.logs")


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[Path]:
    """Logging records (INFO and up from our loggers) go to `path` while the block runs."""
    path = Path(path)
    SINK.push(path)
    root = logging.getLogger()
    attached = _HANDLER not in root.handlers
    if attached:
        root.addHandler(_HANDLER)
    ours = logging.getLogger("saferounds")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    try:
        yield path
    finally:
        SINK.flush()
        SINK.pop(path)
        ours.setLevel(level)
        if attached:
            root.removeHandler(_HANDLER)


def current_log() -> Path | None:
    """The log file written last (where to look after a failure)."""
    return SINK.last_path


@contextlib.contextmanager
def capture(echo: TextIO | None = None, level: int = logging.INFO) -> Iterator[None]:
    """Library output -> the current log file (see the module docstring); restored afterwards."""
    import transformers

    tf_logging = transformers.utils.logging
    tf_logging.get_logger("transformers")  # configure it now, or it would reinstall its handler later
    try:
        import datasets

        datasets.utils.logging.get_logger("datasets")
    except ImportError:
        pass
    saved = {"stdout": sys.stdout, "stderr": sys.stderr, "echo": SINK.echo}
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_propagate = {name: logging.getLogger(name).propagate for name in LIBRARY_LOGGERS}
    saved_library_handlers = {name: list(logging.getLogger(name).handlers) for name in LIBRARY_LOGGERS}
    SINK.echo = echo
    root.handlers = [_HANDLER]
    root.setLevel(min(level, saved_level) if saved_level else level)
    for name in LIBRARY_LOGGERS:  # their own stderr handlers would bypass the log file
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    bars_were_on = tf_logging.is_progress_bar_enabled()
    tf_logging.enable_progress_bar()  # bars too go to the log (they say how far a save got)
    logging.captureWarnings(True)
    sys.stdout = sys.stderr = SINK
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        SINK.flush()
        sys.stdout, sys.stderr = saved["stdout"], saved["stderr"]
        logging.captureWarnings(False)
        if not bars_were_on:
            tf_logging.disable_progress_bar()
        root.handlers, SINK.echo = saved_handlers, saved["echo"]
        root.setLevel(saved_level)
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            lg.handlers = saved_library_handlers[name]
            lg.propagate = saved_propagate[name]
