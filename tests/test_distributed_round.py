"""A round under `accelerate launch` with 2 CPU processes (gloo) on the tiny preset: the same samples,
selection and metrics as one process; a kill -9 mid-sampling resumes with every sample exactly once;
bad input fails before any rank writes. The CLI runs as a subprocess (`-m saferounds.pipeline.cli`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(ws: Path, processes: int, *args: str) -> list[str]:
    cli = ["-m", "saferounds.pipeline.cli", *args, "-w", str(ws)]
    if processes == 1:
        return [sys.executable, *cli]
    # --multi_gpu starts torchrun's workers; without CUDA core.distributed puts them on gloo
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *cli]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SAFEROUNDS_THREADS": "1",
            "SAFEROUNDS_QUIET": "1"}


def run_cli(ws: Path, processes: int, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command(ws, processes, *args), env=env(), capture_output=True, text=True, timeout=timeout)


def edit_config(ws: Path, **sections) -> None:
    path = ws / "saferounds.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def small_round(ws: Path, prompts: int, plan: list[str], k: int = 2, tokens: int = 6) -> None:
    """Few prompts, K=2, few tokens, a fixed temperature: a round that runs in about a minute."""
    rows = (ws / "data" / "prompts.jsonl").read_text().splitlines()
    safety = [r for r in rows if json.loads(r).get("is_safety")]
    other = [r for r in rows if not json.loads(r).get("is_safety")]
    pick = [x for pair in zip(safety, other) for x in pair][:prompts]
    (ws / "data" / "prompts_small.jsonl").write_text("\n".join(pick) + "\n")
    edit_config(ws, data={"prompts": ["data/prompts_small.jsonl"]},
                rejection_sampling={"k": k, "temperature": 0.8, "max_new_tokens": tokens, "batch_size": 2,
                                    "finetune": {"epochs": 1, "learning_rate": 0.0005, "batch_size": 4}},
                reward_models={"epochs": 1, "batch_size": 8},
                eval={"max_new_tokens": tokens, "batch_size": 4, "max_prompts_per_suite": 4},
                rounds={"plan": [{"versions": "1+", "stages": plan}], "max_version": 1})


@pytest.fixture(scope="module")
def with_v0(tmp_path_factory) -> Path:
    """A tiny workspace with v0 (a short SFT) and the v1 reward models, built in-process once."""
    import logging

    from saferounds.pipeline.presets import init_workspace
    from saferounds.pipeline.stages.rm import load_rm_records, train_kind
    from saferounds.pipeline.v0 import run_sft
    from saferounds.pipeline.workspace import Workspace

    root = tmp_path_factory.mktemp("dist") / "ws"
    init_workspace(root, "tiny", data_size="smoke", overrides={"sft": {"epochs": 2}})
    small_round(root, prompts=8, plan=["rm", "rs", "eval"])
    ws = Workspace(root)
    run_sft(ws)
    records = load_rm_records(ws)
    for kind in ("helpfulness", "safety"):  # reused by the round's rm stage (same config)
        train_kind(Workspace(root), kind, 1, records, root / "work-rm" / kind, logging.getLogger("t"), max_steps=2)
    shutil.rmtree(root / "work-rm")
    return root


def descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def copy_ws(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("timings", "finetune")}


def test_two_process_rs_selects_what_one_process_selects(with_v0, tmp_path):
    one, two = copy_ws(with_v0, tmp_path / "one"), copy_ws(with_v0, tmp_path / "two")
    r1 = run_cli(one, 1, "round", "run", "--until", "rs", "--json")
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_cli(two, 2, "round", "run", "--until", "rs", "--json")
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-5000:]
    assert json.loads(r2.stdout) == {"version": 1, "status": "partial", "stopped_after": "rs"}  # printed once
    a, b = one / "versions" / ".v1.partial", two / "versions" / ".v1.partial"
    samples = read_rows(b / "samples.jsonl")
    assert len(samples) == 8 * 2 and len({(s["prompt_id"], s["sample_index"]) for s in samples}) == 16
    assert samples == read_rows(a / "samples.jsonl")  # same tokens, scores and file order
    assert read_rows(b / "selected.jsonl") == read_rows(a / "selected.jsonl")
    assert not (b / "work" / "rs" / "shards").exists() or not any((b / "work" / "rs" / "shards").iterdir())
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert without_timings(m2["metrics"]["rs"]) == without_timings(m1["metrics"]["rs"])
    assert m2["stages"]["rs"]["status"] == "done"
    ft1, ft2 = m1["metrics"]["rs"]["finetune"], m2["metrics"]["rs"]["finetune"]
    assert ft2["steps"] == ft1["steps"]  # split batches: the same optimizer steps as one process
    assert ft2["train_loss"] == pytest.approx(ft1["train_loss"], rel=1e-4)
    assert (two / ".saferounds.lock").read_text() == ""  # released by rank 0


def test_bad_input_fails_on_every_rank_before_anything_is_written(with_v0, tmp_path):
    ws = copy_ws(with_v0, tmp_path / "bad")
    with open(ws / "data" / "prompts_small.jsonl", "a") as f:
        f.write('{"id": "broken"}\n')  # no prompt
    before = sorted(p.name for p in (ws / "versions").iterdir())
    r = run_cli(ws, 2, "round", "run")
    assert r.returncode != 0 and "exitcode: 2" in r.stderr, r.stderr[-3000:]  # torchrun exits 1; the ranks 2
    assert r.stderr.count("prompts_small.jsonl:9: prompt: missing") == 2, r.stderr[-3000:]  # each rank names the row
    assert sorted(p.name for p in (ws / "versions").iterdir()) == before  # no .v1.partial


@pytest.mark.slow
def test_full_round_two_processes_equals_one_process(with_v0, tmp_path):
    one, two = copy_ws(with_v0, tmp_path / "one"), copy_ws(with_v0, tmp_path / "two")
    for ws in (one, two):  # the rm stage trains here (no reused reward models)
        shutil.rmtree(ws / "reward_models")
    r1 = run_cli(one, 1, "round", "run")
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_cli(two, 2, "round", "run")
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-5000:]
    a, b = one / "versions" / "v1", two / "versions" / "v1"
    gen = ("prompt_id", "sample_index", "response", "num_tokens")
    assert [[r[k] for k in gen] for r in read_rows(b / "samples.jsonl")] == \
        [[r[k] for k in gen] for r in read_rows(a / "samples.jsonl")]  # the same samples, token for token
    rm1, rm2 = (json.loads((d / "manifest.json").read_text())["metrics"]["rm"] for d in (a, b))
    for kind in ("helpfulness", "safety"):
        assert rm2[kind]["steps"] == rm1[kind]["steps"]
        # (train_loss is what rank 0 saw: the mean over its half of each batch, so it is not compared)
        assert rm2[kind]["heldout_accuracy"] == rm1[kind]["heldout_accuracy"], (rm1, rm2)
    # the RMs trained on 2 ranks sum their gradients in another order: scores agree to float rounding,
    # and the same sample wins every prompt
    s1, s2 = read_rows(a / "selected.jsonl"), read_rows(b / "selected.jsonl")
    assert _close([r["score"] for r in s2], [r["score"] for r in s1])
    pick = ("prompt_id", "sample_index", "completion")
    assert [[r[k] for k in pick] for r in s2] == [[r[k] for k in pick] for r in s1]
    m1, m2 = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (a, b))
    for block in ("safety", "helpfulness"):
        assert _close(m2[block], m1[block])


def _close(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return x == pytest.approx(y, rel=1e-4, abs=1e-6)
    return x == y


@pytest.mark.slow
def test_kill_9_mid_sampling_then_rerun_keeps_every_sample_once(with_v0, tmp_path):
    ws = copy_ws(with_v0, tmp_path / "kill")
    shutil.rmtree(ws / "reward_models")  # the config changes below: the rm stage trains them again
    small_round(ws, prompts=24, plan=["rm", "rs", "eval"], k=4, tokens=24)
    proc = subprocess.Popen(command(ws, 2, "round", "run", "--until", "rs"), env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = ws / "versions" / ".v1.partial" / "work" / "rs" / "shards"
    deadline = time.time() + 600
    while time.time() < deadline:  # both ranks have written part of their shard
        files = list(shards.glob("samples.rank*.jsonl")) if shards.exists() else []
        if len(files) == 2 and all(f.stat().st_size > 0 for f in files):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the shards never appeared")
    # kill -9 the launch: the ranks (torchrun starts each in its own session) and the launcher at once
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    partial = ws / "versions" / ".v1.partial"
    assert not (partial / "selected.jsonl").exists()
    r = run_cli(ws, 2, "round", "run", "--until", "rs")
    assert r.returncode == 0, r.stderr[-5000:]
    assert "stale lock" in r.stderr  # the killed launch's lock note, taken over
    samples = read_rows(partial / "samples.jsonl")
    keys = [(s["prompt_id"], s["sample_index"]) for s in samples]
    assert len(keys) == 24 * 4 and len(set(keys)) == len(keys)
    assert not list(shards.glob("*.jsonl"))
    # equal to one uninterrupted process
    ref = copy_ws(with_v0, tmp_path / "ref")
    shutil.rmtree(ref / "reward_models")
    small_round(ref, prompts=24, plan=["rm", "rs", "eval"], k=4, tokens=24)
    r1 = run_cli(ref, 1, "round", "run", "--until", "rs")
    assert r1.returncode == 0, r1.stderr[-3000:]
    fields = ("prompt_id", "sample_index", "response", "num_tokens", "finish_reason")
    generated = [{f: s[f] for f in fields} for s in samples]
    assert [{f: s[f] for f in fields} for s in read_rows(ref / "versions" / ".v1.partial" / "samples.jsonl")] \
        == generated


@pytest.mark.parametrize("world", ["1", "2"])
def test_a_rank_exits_with_its_code_and_its_output_flushed(world, tmp_path):
    """core.distributed.exit_process: a rank of a launch leaves by os._exit (no interpreter teardown, where a
    thread left by gloo could abort a finished command) with its code, after flushing what it printed and
    logged; a single process exits normally (atexit handlers run)."""
    log = tmp_path / "log.txt"
    script = ("import atexit, logging, sys\n"
              f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
              "atexit.register(lambda: print('atexit ran'))\n"
              "from saferounds.core.distributed import exit_process\n"
              "sys.stdout.write('result'); logging.info('logged')\n"
              "exit_process(3)\n")
    r = subprocess.run([sys.executable, "-c", script], env={**env(), "WORLD_SIZE": world}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("result") and "logged" in log.read_text()
    assert ("atexit ran" in r.stdout) == (world == "1")
