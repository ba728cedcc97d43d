"""Plain progress (CI, pipes; issue 29 item 5): each event once, in one format, numbers to 4 significant digits.
On the session's tiny smoke demo (its captured output) and on the smollm2 demo's two channels (its own step
lines and the stages' events) replayed through the CLI's view without a model."""
from __future__ import annotations

import io
import re
from collections import Counter

from conftest import DEMO_OUTPUT
from saferounds.core.progress import PlainProgress, reporting, round_numbers, scope



def _long_numbers(line: str) -> list[str]:
    """Decimal numbers in `line` with more than 4 significant digits ("0.6512109756", not "-0.04576")."""
    return [m for m in re.findall(r"\d+\.\d+", line) if len(m.replace(".", "").lstrip("0")) > 4]


def _events(lines: list[str]) -> Counter:
    """Progress events by what they say, whatever the format: (stage, 'started' | 'd/n')."""
    events = Counter()
    for line in lines:
        body = re.sub(r"^\[[^\]]*\] ", "", line)  # an elapsed-time prefix
        if m := re.match(r"(.+?):? (?:(started)|(?:\w+ )?(\d+/\d+))\b", body):
            stage = re.sub(r"[: ]+", " ", m.group(1)).strip()
            events[(stage, m.group(2) or m.group(3))] += 1
    return events


def test_the_tiny_demo_log_has_each_progress_event_once_and_short_numbers(demo_smoke):
    lines = (demo_smoke.parent / DEMO_OUTPUT).read_text().splitlines()
    started = [l for l in lines if l.endswith(" started") or ": started (" in l]
    assert len(started) >= 12  # pretrain, sft, two RMs, three rs rounds' sampling/scoring/fine-tune, ppo, evals
    twice = {e: n for e, n in _events(lines).items() if n > 1}
    assert not twice, twice
    assert not [l for l in lines if _long_numbers(l)]


def test_the_smollm2_demo_lines_and_the_stage_events_show_each_event_once(monkeypatch):
    """What demo --model smollm2 sends: its own lines through print_line (step_lines) and the stages' events
    through core.progress, for one rs stage with an RM before it."""
    import importlib

    live = importlib.import_module("saferounds.pipeline.cli.live")  # the module (the package exports `live()`)
    out = io.StringIO()
    view = PlainProgress(out)
    logged = []
    monkeypatch.setattr(live, "log_message", logged.append)
    say = live.step_lines(view)
    with reporting(view), scope("v1"):
        say("[0m01s] v1 rm: started · run ETA 30m00s")
        say("[0m01s] v1: training the helpfulness reward model · run ETA 30m00s")
        view.stage("rm helpfulness", total=4)
        for i in range(4):
            say(f"[0m0{i + 2}s] helpfulness RM step {i + 1}/4 (loss 0.65121097564697{i}) · run ETA 29m00s")
            view.advance(1, loss=0.6512109756469726 - i / 100)
        view.done("acc 0.7123456 (held-out)")
        say("[0m09s] v1 rm: done in 0m08s · run ETA 29m00s")
        say("[0m10s] v1 rs: started · run ETA 29m00s")
        view.stage("rs sampling", total=152, unit="prompts")
        for d in (16, 40, 80, 120, 152):
            say(f"[6m22s] v1 rs: sampling {d}/152 prompts, this step ~3m00s left · run ETA 20m00s")
            view.advance(d - (view._open["done"] if view._open else 0))
        view.done()
        say("[9m00s] judges: refusal held-out agreement 0.838 (n=100, models a) · run ETA 2m00s")
    lines = out.getvalue().splitlines()
    twice = {e: n for e, n in _events(lines).items() if n > 1}
    assert not twice, twice
    assert "v1 rs sampling: started (152 prompts)" in lines and "v1 rm helpfulness: started (4 steps)" in lines
    assert [l for l in lines if "v1 rs: started" in l or "v1 rm: done in 0m08s" in l]  # the steps' own lines stay
    assert any("judges: refusal held-out agreement 0.838" in l for l in lines)
    assert len(logged) == 4 + 5 + 1  # the counts and the stage's own detail went to the log, not twice on screen
    assert "v1 rm helpfulness  acc 0.7123 (held-out)" in out.getvalue() and "loss 0.6412" in out.getvalue()
    assert not [l for l in lines if _long_numbers(l)]


def test_numbers_are_rounded_to_four_significant_digits():
    assert _long_numbers("kl -0.04576 loss 0.6512109756") == ["0.6512109756"]
    assert round_numbers("loss 0.6512109756469726") == "loss 0.6512"
    assert round_numbers("kl 12.3456789 lr 3e-05 step 16/152 v1.2345678") == "kl 12.35 lr 3e-05 step 16/152 v1.2345678"
    assert round_numbers("acc 0.71, 0.7125") == "acc 0.71, 0.7125"
