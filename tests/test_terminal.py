"""The terminal: one progress view per command, the detail in log files, TensorBoard runs (issue 17)."""
import io
import json
import logging
import re
import warnings

import pytest

from conftest import DEMO_OUTPUT
from saferounds.core.logs import capture, log_to
from saferounds.core.progress import NullProgress, PlainProgress, counter, current, reporting, scope

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_progress_prints_start_quarters_and_summary_without_control_characters():
    out, clock = io.StringIO(), Clock()
    p = PlainProgress(out, clock=clock)
    with scope("v1"):
        p.stage("rm helpfulness", total=8, unit="steps")
        for i in range(8):
            p.advance(1, loss=1.0 / (i + 1))
        clock.t = 42.4
        p.done("acc 0.71 (held-out)")
    lines = out.getvalue().splitlines()
    assert lines[0] == "v1 rm helpfulness: started (8 steps)"
    assert lines[1:4] == ["v1 rm helpfulness: 2/8 steps  loss 0.5", "v1 rm helpfulness: 4/8 steps  loss 0.25",
                          "v1 rm helpfulness: 6/8 steps  loss 0.1667"]
    assert lines[4] == "v1 rm helpfulness  acc 0.71 (held-out)  42 s"
    assert len(lines) == 5 and not CONTROL.search(out.getvalue())


def test_counter_turns_cumulative_counts_into_one_stage():
    out = io.StringIO()
    with reporting(PlainProgress(out)):
        report = counter("rs sampling", "prompts")
        for done in (3, 6, 10):
            report(done, 10)
    lines = out.getvalue().splitlines()
    assert lines[0] == "rs sampling: started (10 prompts)" and lines[-1].startswith("rs sampling  10 prompts  ")
    assert isinstance(current(), NullProgress)  # reporting() is scoped


def test_capture_sends_library_output_to_the_log_and_nothing_to_the_terminal(tmp_path, capsys):
    import transformers

    log = tmp_path / "logs" / "stage.log"
    with log_to(log), capture():
        print({"loss": 0.1234})
        import sys

        sys.stderr.write("Writing model shards: 100%|#####| 1/1\r")
        transformers.utils.logging.get_logger("transformers.modeling_utils").warning("X LOAD REPORT from: v0")
        logging.getLogger("saferounds.rm").info("helpfulness RM step 3")
        warnings.warn("a deprecation nobody asked for")
    got = capsys.readouterr()
    assert got.out == "" and got.err == ""
    text = log.read_text()
    for expected in ("{'loss': 0.1234}", "Writing model shards", "LOAD REPORT", "helpfulness RM step 3",
                     "a deprecation nobody asked for"):
        assert expected in text
    print("after")  # restored
    assert capsys.readouterr().out == "after\n"


def test_verbose_echoes_the_log_live(tmp_path):
    echo = io.StringIO()
    with log_to(tmp_path / "a.log"), capture(echo=echo):
        print("a trainer dict")
    assert "a trainer dict" in echo.getvalue() and "a trainer dict" in (tmp_path / "a.log").read_text()


def test_innermost_log_file_wins_and_is_closed(tmp_path):
    with log_to(tmp_path / "cmd.log"), capture():
        print("before")
        with log_to(tmp_path / "v1" / "logs" / "stage.log"):
            print("inside v1")
        print("after")
    assert (tmp_path / "cmd.log").read_text() == "before\nafter\n"
    assert (tmp_path / "v1" / "logs" / "stage.log").read_text() == "inside v1\n"


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_live_view_is_rich_on_a_terminal_and_plain_otherwise(tmp_path, monkeypatch):
    import sys

    from saferounds.pipeline.cli.live import RichProgress, live

    monkeypatch.delenv("SAFEROUNDS_QUIET", raising=False)
    for stream, quiet, kind in [(io.StringIO(), None, PlainProgress), (FakeTTY(), None, RichProgress),
                                (FakeTTY(), "1", PlainProgress)]:
        if quiet:
            monkeypatch.setenv("SAFEROUNDS_QUIET", quiet)
        monkeypatch.setattr(sys, "stderr", stream)
        with live(tmp_path / "x.log") as view:
            assert isinstance(view, kind) and current() is view
            view.stage("sft", total=4)
            view.advance(4, loss=0.5)
            view.done("loss 2.0 -> 1.0 (held-out)")
        assert "sft" in stream.getvalue() and "loss 2.0 -> 1.0 (held-out)" in stream.getvalue()


def test_status_json_gives_the_tensorboard_runs_directory(tiny_workspace, cli_main, capsys):
    assert cli_main(["status", "-w", str(tiny_workspace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == str(tiny_workspace / "runs") and out["logs"] == str(tiny_workspace / "logs")


# --- the acceptance checks, on the session's one smoke demo ----------------------------------------------

NOISE = ("{'loss':", "Writing model shards", "LOAD REPORT", "MISSING")


def test_demo_terminal_holds_the_progress_view_and_not_the_library_noise(demo_smoke):
    out = (demo_smoke.parent / DEMO_OUTPUT).read_text()
    for noise in NOISE:
        assert noise not in out, noise
    assert not CONTROL.search(out)  # a pipe: plain lines
    # one summary line per stage, the expected new RM heads said once each in our words, the final table
    for line in ("v0 sft  loss ", "v1 rm helpfulness  acc ", "v1 rm safety  acc ", "v1 rs fine-tune  ",
                 "v3 ppo  score ", "helpfulness RM: new scalar head on v0's backbone (expected)",
                 "safety RM: new scalar head on v0's backbone (expected)", "report: "):
        assert line in out, line
    assert out.count("new scalar head") == 2
    logs = "".join(p.read_text() for p in sorted(demo_smoke.glob("versions/v*/logs/stage.log")))
    for noise in NOISE:
        assert noise in logs, noise


def test_demo_writes_tensorboard_curves_for_every_training_stage(demo_smoke):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (the [dev] and [track] extras have it)")
    runs = demo_smoke / "runs"
    for stage in ("v0/pretrain", "v0/sft", "v1/rm-helpfulness", "v1/rm-safety", "v1/rs", "v2/rs", "v3/rs",
                  "v3/ppo"):
        assert list((runs / stage).rglob("events.out.tfevents.*")), stage
