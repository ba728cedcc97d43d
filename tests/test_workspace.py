"""The workspace registry: versions appear only when complete, manifests are replaced atomically,
finished versions are never modified, and the lock keeps a second process out (and is taken over
when its holder was killed)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saferounds.core.errors import InputError
from saferounds.core.io import read_json, write_json
from saferounds.pipeline import workspace as workspace_module
from saferounds.pipeline.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_version(ws: Workspace, n: int, finish: bool = True) -> Path:
    d = ws.begin_version(n, n - 1 if n else None, ["rs"], ["data/prompts.jsonl"])
    (d / "policy").mkdir()
    (d / "policy" / "weights.bin").write_bytes(bytes([n]) * 16)
    ws.set_stage(n, "rs", status="done", seconds=1.0)
    return ws.finish_version(n) if finish else d


def test_a_version_is_built_under_a_temporary_name_and_renamed_when_complete(tiny_workspace):
    ws = Workspace(tiny_workspace)
    d = ws.begin_version(0, None, ["pretrain", "sft"], ["data/sft.jsonl", "data/missing.jsonl"])
    assert d == ws.versions_dir / ".v0.partial"
    assert ws.finished_versions() == [] and ws.partial_versions() == [0]
    m = ws.manifest(0)
    assert (m["version"], m["parent"], m["status"], m["finished"]) == ("v0", None, "running", None)
    assert m["stages"] == {"pretrain": {"status": "pending"}, "sft": {"status": "pending"}}
    assert m["config_hash"] == ws.config.hash()
    # inputs: sha256 of every existing input file (a missing one is not listed)
    assert m["inputs"] == {"data/sft.jsonl": hashlib.sha256((tiny_workspace / "data/sft.jsonl").read_bytes()).hexdigest()}
    assert "torch" in m["packages"] and "transformers" in m["packages"]
    (d / "work" / "sft").mkdir(parents=True)
    (d / "work" / "sft" / "checkpoint-1").write_text("x")
    assert ws.finish_version(0) == ws.versions_dir / "v0"
    assert ws.finished_versions() == [0] and ws.partial_versions() == [] and ws.latest() == 0
    m = ws.manifest(0)
    assert m["status"] == "complete" and m["finished"] is not None
    assert not (ws.version_dir(0) / "work").exists()  # resume checkpoints are not part of a version


def test_a_crash_while_writing_a_version_leaves_no_finished_version(tiny_workspace):
    ws = Workspace(tiny_workspace)
    make_version(ws, 0)
    before = tree_digest(ws.version_dir(0))
    proc = python("""
        import os, signal, sys
        from saferounds.pipeline.workspace import Workspace
        ws = Workspace(sys.argv[1])
        d = ws.begin_version(1, 0, ["rm", "rs", "eval"], [])
        ws.set_stage(1, "rm", status="done")
        (d / "samples.jsonl").write_text('{"a": 1}\\n')
        (d / "rs_policy").mkdir()
        (d / "rs_policy" / "model.safetensors").write_bytes(b"half a model")
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: as after a power cut or OOM kill
        ws.finish_version(1)  # never reached
        """, str(tiny_workspace))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert not ws.version_dir(1).exists()
    assert ws.finished_versions() == [0] and ws.latest() == 0
    assert ws.partial_versions() == [1]
    assert (ws.partial_dir(1) / "rs_policy" / "model.safetensors").exists()
    assert ws.manifest(1)["stages"]["rm"] == {"status": "done"}  # the partial one is readable
    with pytest.raises(InputError, match="v1: no such finished version"):
        ws.policy_path(1)
    assert tree_digest(ws.version_dir(0)) == before
    # re-running resumes the same partial directory (its manifest is kept, not rewritten)
    assert ws.begin_version(1, 0, ["rm", "rs", "eval"], []) == ws.partial_dir(1)
    assert ws.manifest(1)["stages"]["rm"] == {"status": "done"}
    ws.finish_version(1)
    assert ws.finished_versions() == [0, 1] and ws.partial_versions() == []


def test_a_version_that_cannot_start_leaves_nothing_behind(tiny_workspace, monkeypatch):
    def unreadable(path):
        raise PermissionError(f"{path}: permission denied")

    monkeypatch.setattr(workspace_module, "sha256_file", unreadable)
    ws = Workspace(tiny_workspace)
    with pytest.raises(PermissionError):
        ws.begin_version(0, None, ["sft"], ["data/sft.jsonl"])
    monkeypatch.undo()
    assert ws.partial_versions() == [] and not ws.versions_dir.exists()
    (tiny_workspace / "saferounds.yaml").write_text("seed: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        Workspace(tiny_workspace).begin_version(0, None, ["sft"], [])
    assert not ws.versions_dir.exists()


def test_manifest_writes_are_atomic_and_leave_no_temporary_files(tiny_workspace, monkeypatch):
    ws = Workspace(tiny_workspace)
    d = make_version(ws, 0, finish=False)
    for i in range(5):
        ws.update_manifest(0, metrics={f"m{i}": i})
    assert ws.manifest(0)["metrics"] == {f"m{i}": i for i in range(5)}  # dict values merge
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "policy"]
    good = (d / "manifest.json").read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(workspace_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ws.update_manifest(0, status="failed")
    monkeypatch.undo()
    assert (d / "manifest.json").read_text() == good  # the old manifest is intact
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "policy"]  # temp file removed


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert read_json(tmp_path / "m.json") == {"a": 1}


def test_a_finished_version_is_never_modified(tiny_workspace):
    ws = Workspace(tiny_workspace)
    make_version(ws, 0)
    before = tree_digest(ws.version_dir(0))
    with pytest.raises(InputError, match="v0: not under construction; finished versions are never modified"):
        ws.update_manifest(0, status="running")
    with pytest.raises(InputError, match="v0: not under construction"):
        ws.set_stage(0, "rs", status="failed")
    with pytest.raises(InputError, match="v0: already finished"):
        ws.begin_version(0, None, ["rs"], [])
    with pytest.raises(InputError, match="v0: not under construction"):
        ws.finish_version(0)
    assert tree_digest(ws.version_dir(0)) == before
    assert ws.partial_versions() == []


def test_a_stage_is_recorded_running_then_done_with_its_metrics(tiny_workspace, monkeypatch):
    ws = Workspace(tiny_workspace)
    ws.begin_version(1, 0, ["rs", "eval"], [])
    clock = [100.0, 112.25]  # the start, then every later reading
    monkeypatch.setattr(workspace_module.time, "time", lambda: clock.pop(0) if len(clock) > 1 else clock[0])
    with ws.stage(1, "rs") as done:
        assert ws.manifest(1)["stages"]["rs"]["status"] == "running"
        done.metrics = {"selected": 7}
        done.manifest["reward_models"] = {"safety": "v1"}
    m = ws.manifest(1)
    assert {k: m["stages"]["rs"][k] for k in ("status", "seconds", "metrics", "error")} == \
        {"status": "done", "seconds": 12.25, "metrics": {"selected": 7}, "error": None}
    assert m["metrics"] == {"rs": {"selected": 7}} and m["timings"] == {"rs": 12.25}
    assert m["reward_models"] == {"safety": "v1"} and m["stages"]["eval"] == {"status": "pending"}


@pytest.mark.parametrize("error, status", [(ValueError("bad row"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_a_stage_that_raises_is_recorded_and_the_error_passes(tiny_workspace, error, status):
    ws = Workspace(tiny_workspace)
    ws.begin_version(1, 0, ["rs"], [])
    with pytest.raises(type(error)):
        with ws.stage(1, "rs") as done:
            done.metrics = {"selected": 7}
            raise error
    m = ws.manifest(1)
    rs = m["stages"]["rs"]
    assert (m["status"], rs["status"], rs["pid"]) == (status, status, os.getpid())
    assert rs["error"] == ("interrupted" if status == "interrupted" else "ValueError: bad row")
    assert "raise error" in rs["traceback"] and "metrics" not in rs and m["metrics"] == {}


def test_a_failure_that_cannot_be_recorded_still_reaches_the_caller(tiny_workspace, monkeypatch):
    """On a full disk even the manifest may not fit: the stage's own error is what the user sees."""
    ws = Workspace(tiny_workspace)
    ws.begin_version(1, 0, ["rs"], [])
    with pytest.raises(ValueError, match="bad row"):
        with ws.stage(1, "rs"):
            monkeypatch.setattr(workspace_module, "write_json", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
            raise ValueError("bad row")
    monkeypatch.undo()
    assert ws.manifest(1)["stages"]["rs"]["status"] == "running"


def test_discard_rules(tiny_workspace):
    ws = Workspace(tiny_workspace)
    for n in (0, 1, 2):
        make_version(ws, n)
    make_version(ws, 3, finish=False)
    with pytest.raises(InputError, match=r"v1: only the newest version can be discarded \(newest: v2\)"):
        ws.discard(1)
    with pytest.raises(InputError, match="v2: v3 is being built on it; discard v3 first"):
        ws.discard(2)
    with pytest.raises(InputError, match="v7: no such version"):
        ws.discard(7)
    ws.discard(3)  # any unfinished version
    assert ws.partial_versions() == [] and ws.finished_versions() == [0, 1, 2]
    ws.discard(2)  # the newest finished one
    assert ws.finished_versions() == [0, 1]
    assert sorted(p.name for p in ws.versions_dir.iterdir()) == ["v0", "v1"]  # nothing left behind
    ws.discard(1)
    assert ws.finished_versions() == [0]
    # a discard killed between its rename and its delete leaves .vN.discarded; the next one still works
    make_version(ws, 1)
    (ws.versions_dir / ".v1.discarded" / "policy").mkdir(parents=True)
    ws.discard(1)
    assert sorted(p.name for p in ws.versions_dir.iterdir()) == ["v0"]


def test_discard_takes_the_versions_reward_models_and_reports_with_it(tiny_workspace):
    ws = Workspace(tiny_workspace)
    for n in (0, 1, 2):
        make_version(ws, n)
    for n in (1, 2):
        for kind in ("helpfulness", "safety"):
            ws.rm_dir(kind, n).mkdir(parents=True)
    (ws.root / "reports" / "v2").mkdir(parents=True)
    (ws.root / "reports" / "v1" / "generations" / "v2").mkdir(parents=True)  # v2's answers cached elsewhere
    (ws.root / "reports" / "v1" / "generations" / "v0").mkdir(parents=True)
    ws.discard(2)
    assert ws.rm_versions("helpfulness") == ws.rm_versions("safety") == [1]
    assert sorted(p.name for p in (ws.root / "reports").iterdir()) == ["v1"]
    assert sorted(p.name for p in (ws.root / "reports" / "v1" / "generations").iterdir()) == ["v0"]
    assert not list(ws.root.rglob("*.discarded"))


def test_reward_model_versions(tiny_workspace):
    ws = Workspace(tiny_workspace)
    for n in (1, 3):
        ws.rm_partial_dir("safety", n).mkdir(parents=True)
        ws.finish_rm("safety", n)
    ws.rm_partial_dir("safety", 4).mkdir(parents=True)  # unfinished: not a version
    assert ws.rm_versions("safety") == [1, 3] and ws.rm_versions("helpfulness") == []
    assert (ws.latest_rm("safety"), ws.latest_rm("safety", at_most=2), ws.latest_rm("safety", at_most=0)) == (3, 1, None)


# --- the lock, between real processes -----------------------------------------------------------

HOLDER = """
    import sys
    from saferounds.pipeline.workspace import Workspace
    lock = Workspace(sys.argv[1]).lock().acquire()
    print("locked", lock.stale_from, flush=True)
    sys.stdin.readline()  # hold the lock until told to let go (or killed)
    lock.release()
    print("released", flush=True)
    """


def start_holder(root: Path) -> subprocess.Popen:
    proc = python(HOLDER, str(root), stdin=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line == "locked None\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def test_a_second_process_is_kept_out_and_told_the_holders_pid(tiny_workspace):
    holder = start_holder(tiny_workspace)
    try:
        exe = Path(sys.executable).with_name("saferounds")
        other = subprocess.run([str(exe), "round", "discard", "v0", "-w", str(tiny_workspace)],
                               capture_output=True, text=True, timeout=120, env=ENV)
        assert other.returncode == 2, other.stderr
        assert f"the workspace is in use by pid {holder.pid} on {socket.gethostname()}" in other.stderr
        assert "Traceback" not in other.stderr
        with pytest.raises(InputError, match=f"in use by pid {holder.pid} "):
            Workspace(tiny_workspace).lock().acquire()  # and so is this process
        holder.stdin.write("\n")  # a holder that finishes normally leaves no stale note
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert holder.wait(timeout=60) == 0
        with Workspace(tiny_workspace).lock() as lock:
            assert lock.stale_from is None
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_taken_over_and_reported(tiny_workspace, capsys, cli_main):
    for via_cli in (False, True):
        holder = start_holder(tiny_workspace)
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=60) == -signal.SIGKILL
        if not via_cli:
            ws = Workspace(tiny_workspace)
            with ws.lock() as lock:
                assert lock.stale_from == f"pid {holder.pid} on {socket.gethostname()}"
                with pytest.raises(InputError, match=f"in use by pid {os.getpid()} "):
                    ws.lock().acquire()  # the new holder's note replaced the dead one's
        else:  # a writing command says so too (here one with nothing to discard)
            assert cli_main(["round", "discard", "v5", "-w", str(tiny_workspace)]) == 2
            err = " ".join(capsys.readouterr().err.split())
            assert f"took over a stale lock left by pid {holder.pid}" in err
            assert "error: v5: no such version" in err
