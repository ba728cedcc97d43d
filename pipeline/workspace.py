"""The workspace on disk: numbered versions, their manifests, reward-model versions, and the lock.

    WORKSPACE/saferounds.yaml
    WORKSPACE/versions/vN/            a finished version (never modified again)
    WORKSPACE/versions/.vN.partial/   a version under construction, or one that failed
    WORKSPACE/reward_models/{helpfulness,safety}/vN/

A version is built under its temporary name and renamed when complete, so a crash never leaves a
half-written `vN`. Manifests are replaced atomically (temporary file + os.replace). An advisory
`fcntl` lock keeps a second process out; the kernel drops it when its holder dies (kill -9
included), and the next process takes the stale lock over and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.errors import InputError, not_writable
from saferounds.core.io import read_json, sha256_file, write_json
from saferounds.core.records import GOLD_RM_KIND, RM_KINDS
from saferounds.core.tracking import tracking
from saferounds.core.versions import dir_version, partial_dir_version
from saferounds.pipeline.config import CONFIG_NAME, Config, load_config

LOCK_NAME = ".saferounds.lock"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("saferounds", "torch", "transformers", "accelerate", "datasets", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@dataclass
class StageRecord:
    """What a stage hands `Workspace.stage` to record when it is done: its metrics, and more top-level
    manifest keys (e.g. v0's model_source)."""
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


class WorkspaceLock:
    """Advisory exclusive lock on WORKSPACE/.saferounds.lock; `held_by` says who holds it."""

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME
        self.fd: int | None = None
        self.stale_from: str | None = None

    def _open(self, flags: int) -> int:
        """Open the lock file, never through a symlink (a symlinked lock would truncate its target)."""
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK) or self.path.is_symlink():
                raise InputError(f"{self.path}: the workspace lock is a symlink (to {os.readlink(self.path)}); "
                                 "remove it (it is recreated as a plain file)") from None
            refused = not_writable(self.path.parent, e, f"every command that changes the workspace writes its "
                                   f"lock ({LOCK_NAME}) there")
            if refused:
                raise refused from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{self.path}: the workspace lock is not a regular file; remove it")
        return fd

    def holder(self) -> str | None:
        """Who holds the lock now ("pid N on HOST"), or None when no live process does (read-only)."""
        if not self.path.exists() or self.path.is_symlink():
            return None
        fd = self._open(os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> "WorkspaceLock":
        # Under a launcher rank 0 holds the lock for the whole launch; every rank hears a refusal.
        self.stale_from = dist.run_on_main(self._take)
        return self

    def _take(self) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"{self.path.parent}: the workspace is in use by {holder}; wait for it to "
                             "finish (the lock frees itself when that process exits)") from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:  # the holder died without releasing: the kernel freed the flock, the note stayed
            self.stale_from = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, dist.launch_name().encode(), 0)  # this pid, or the launch it leads
        os.fsync(fd)
        self.fd = fd
        return self.stale_from

    @dist.main_only
    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.config_path = self.root / CONFIG_NAME
        self.versions_dir = self.root / "versions"
        self._config: Config | None = None

    # -- config -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.exists()

    @property
    def config(self) -> Config:
        if self._config is None:
            if not self.exists():
                raise InputError(f"{self.root}: not a saferounds workspace (no {CONFIG_NAME}); "
                                 "run `saferounds init` first or pass -w DIR")
            self._config = load_config(self.config_path)
        return self._config

    def resolve(self, path: str) -> str | Path:
        """Config paths are relative to the workspace; hub ids and `tiny` pass through."""
        if path.startswith("hub:"):
            return path
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def lock(self) -> WorkspaceLock:
        return WorkspaceLock(self.root)

    # -- versions ---------------------------------------------------------------------------
    def version_dir(self, n: int) -> Path:
        return self.versions_dir / f"v{n}"

    def partial_dir(self, n: int) -> Path:
        return self.versions_dir / f".v{n}.partial"

    def finished_versions(self) -> list[int]:
        if not self.versions_dir.exists():
            return []
        return sorted(n for p in self.versions_dir.iterdir() if p.is_dir() and (n := dir_version(p)) is not None)

    def partial_versions(self) -> list[int]:
        if not self.versions_dir.exists():
            return []
        return sorted(n for p in self.versions_dir.iterdir()
                      if p.is_dir() and (n := partial_dir_version(p)) is not None)

    def latest(self) -> int | None:
        done = self.finished_versions()
        return done[-1] if done else None

    def require_finished(self, n: int) -> Path:
        d = self.version_dir(n)
        if not d.is_dir():
            have = ", ".join(f"v{v}" for v in self.finished_versions()) or "none"
            raise InputError(f"v{n}: no such finished version in {self.versions_dir} (finished: {have})")
        return d

    def dir_of(self, n: int) -> Path:
        """The finished directory of vN, or its partial one while it is being built."""
        return self.version_dir(n) if self.version_dir(n).is_dir() else self.partial_dir(n)

    def manifest(self, n: int) -> dict:
        path = self.dir_of(n) / "manifest.json"
        if not path.exists():
            have = ", ".join(f"v{v}" for v in self.finished_versions()) or "none"
            building = "".join(f"; unfinished: v{v}" for v in self.partial_versions())
            raise InputError(f"v{n}: no such version in {self.versions_dir} (finished: {have}{building})")
        manifest = read_json(path)  # InputError naming the file when it is cut short
        if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), str) \
                or not isinstance(manifest.get("stages", {}), dict):
            raise InputError(f"{path}: not a version manifest (expected an object with `version` and a `stages` "
                             "mapping); the file was damaged or replaced: restore it from a backup, or "
                             f"`saferounds round discard v{n}`")
        return manifest

    def policy_path(self, n: int) -> Path:
        return self.require_finished(n) / "policy"

    @dist.main_only  # rank 0 writes; the other ranks wait and get its result
    def begin_version(self, n: int, parent: int | None, stages: list[str], inputs: list[str | Path]) -> Path:
        """Create (or reopen, to resume) the partial directory of version n."""
        if self.version_dir(n).exists():
            raise InputError(f"v{n}: already finished; a finished version is never modified")
        d = self.partial_dir(n)
        manifest_path = d / "manifest.json"
        if manifest_path.exists():
            return d
        cfg = self.config  # may fail (bad config, unreadable input): before anything is created
        manifest = {
            "version": f"v{n}", "number": n, "parent": None if parent is None else f"v{parent}",
            "status": "running", "created": now(), "finished": None,
            "plan": list(stages), "stages": {s: {"status": "pending"} for s in stages},
            "config_hash": cfg.hash(), "config": cfg.to_dict(),
            "inputs": self.hash_inputs(inputs), "reward_models": {}, "metrics": {}, "timings": {},
            "packages": package_versions(),
        }
        # A .vN.partial without its manifest would be listed but unreadable (status and resume fail),
        # so the directory appears only with its manifest inside.
        new = self.versions_dir / f".v{n}.new"
        if new.exists():
            shutil.rmtree(new)
        new.mkdir(parents=True)
        write_json(new / "manifest.json", manifest)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
        os.replace(new, d)
        return d

    def hash_inputs(self, inputs: list[str | Path]) -> dict[str, str]:
        out = {}
        for item in inputs:
            p = self.resolve(str(item))
            if isinstance(p, Path) and p.is_file():
                out[str(item)] = sha256_file(p)
        return out

    @dist.main_only
    def update_manifest(self, n: int, **changes) -> dict:
        """Merge `changes` into the partial version's manifest (dict values merge one level)."""
        d = self._partial_or_fail(n)
        manifest = read_json(d / "manifest.json")
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key].update(value)
            else:
                manifest[key] = value
        write_json(d / "manifest.json", manifest)
        return manifest

    @dist.main_only
    def set_stage(self, n: int, stage: str, **fields) -> None:
        d = self._partial_or_fail(n)
        manifest = read_json(d / "manifest.json")
        manifest["stages"].setdefault(stage, {}).update(fields)
        write_json(d / "manifest.json", manifest)

    @contextlib.contextmanager
    def stage(self, n: int, name: str) -> Iterator[StageRecord]:
        """One stage of the partial vN, recorded in its manifest: `running` on entry; on success `done`
        with its seconds and the metrics the body leaves in the yielded record (also under the manifest's
        metrics and timings); on an exception `failed` or `interrupted` (record_failure), re-raised."""
        started = time.time()
        self.set_stage(n, name, status="running", started=now(), error=None)
        record = StageRecord()
        try:
            with tracking(self.config.tracking.report_to, self.root):  # the stage's curves: run vN/<stage>
                yield record
        except BaseException as e:
            self.record_failure(n, name, e)
            raise
        seconds = round(time.time() - started, 2)
        self.set_stage(n, name, status="done", finished=now(), seconds=seconds, metrics=record.metrics)
        self.update_manifest(n, metrics={name: record.metrics}, timings={name: seconds}, **record.manifest)

    def record_failure(self, n: int, stage: str, e: BaseException) -> None:
        """The stage's failure in vN's manifest (status interrupted for Ctrl-C, else failed). Best effort: on a
        full disk even the manifest may not fit, and the cause must still reach the user."""
        interrupted = isinstance(e, KeyboardInterrupt)
        reason = "interrupted" if interrupted else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):
            self.set_stage(n, stage, status="interrupted" if interrupted else "failed", error=reason[:2000],
                           traceback=traceback.format_exc()[-4000:], pid=os.getpid())
            self.update_manifest(n, status="interrupted" if interrupted else "failed")

    def _partial_or_fail(self, n: int) -> Path:
        d = self.partial_dir(n)
        if not d.is_dir():
            raise InputError(f"v{n}: not under construction; finished versions are never modified")
        return d

    @dist.main_only
    def finish_version(self, n: int) -> Path:
        """Mark complete and rename the partial directory into place (atomic on one filesystem)."""
        self.update_manifest(n, status="complete", finished=now())
        work = self.partial_dir(n) / "work"
        if work.exists():  # checkpoints kept for resuming are not part of a finished version
            shutil.rmtree(work)
        os.replace(self.partial_dir(n), self.version_dir(n))
        return self.version_dir(n)

    def _remove(self, path: Path) -> None:
        """Delete a directory so that it disappears at once: rename to a hidden name, then delete."""
        if not path.exists():
            return
        trash = path.with_name(f".{path.name.lstrip('.')}.discarded")
        if trash.exists():  # left by a delete that was killed half-way
            shutil.rmtree(trash)
        os.replace(path, trash)
        shutil.rmtree(trash)

    def _discard_targets(self, n: int) -> list[Path]:
        """Everything vN owns, the version itself first: its directory (finished or partial), its reward
        models (finished, partial and their work dirs) and its reports (and cached answers of vN in other
        reports), so a rebuilt vN never reuses any of them."""
        out = [self.version_dir(n), self.partial_dir(n)]
        for kind in (*RM_KINDS, GOLD_RM_KIND):
            out += [self.rm_dir(kind, n), self.rm_partial_dir(kind, n), self.rm_dir(kind, n).parent / f".v{n}.work"]
        out.append(self.root / "reports" / f"v{n}")
        out += sorted([*self.root.glob(f"reports/*/generations/v{n}"),
                       *self.root.glob(f"reports/*/*/generations/v{n}")])  # reports/vM/{eval,report}/
        return out + [t.with_name(f".{t.name.lstrip('.')}.discarded") for t in out]  # left by older versions

    def discarding_dir(self, n: int) -> Path:
        return self.root / f".discarding-v{n}"

    def interrupted_discards(self) -> list[int]:
        return sorted(int(p.name[len(".discarding-v"):]) for p in self.root.glob(".discarding-v*")
                      if p.name[len(".discarding-v"):].isdigit())

    def _discard_all(self, n: int) -> None:
        """Discard vN across its version, RMs and reports, resumable from any point: the staging
        directory .discarding-vN is created first (from then on the discard is decided), each target is
        renamed into it (the version first, so it disappears at once), then the staging directory is
        deleted. A run killed anywhere leaves .discarding-vN, and the next discard, `round run` or
        `rm train` finishes it before doing anything else."""
        stage = self.discarding_dir(n)
        stage.mkdir(exist_ok=True)
        for i, target in enumerate(self._discard_targets(n)):
            if os.path.lexists(target):
                rel = str(target.relative_to(self.root)).replace(os.sep, "__")
                os.replace(target, stage / f"{i:03d}-{rel}")
        trash = stage.with_name(stage.name + ".deleting")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(stage, trash)  # once renamed, nothing of vN is reachable: deleting is only cleanup
        shutil.rmtree(trash)

    def finish_interrupted_discards(self) -> list[int]:
        """Complete every discard that was killed part-way; returns their versions."""
        done = self.interrupted_discards()
        for n in done:
            self._discard_all(n)
        self.completed_discards = getattr(self, "completed_discards", []) + done
        for leftover in self.root.glob(".discarding-v*.deleting"):
            shutil.rmtree(leftover)
        return done

    @dist.main_only
    def discard(self, n: int) -> None:
        """Remove an unfinished version, or the newest finished one, with its reward models and reports."""
        if n in self.interrupted_discards():  # a discard of vN was killed part-way: finish it
            self._discard_all(n)
            return
        if n in getattr(self, "completed_discards", []):  # finished just now, when the lock was taken
            return
        self.finish_interrupted_discards()
        if self.partial_dir(n).exists():
            self._discard_all(n)
            return
        done = self.finished_versions()
        if n not in done:
            raise InputError(f"v{n}: no such version")
        if n != done[-1]:
            raise InputError(f"v{n}: only the newest version can be discarded (newest: v{done[-1]})")
        building = [p for p in self.partial_versions() if p > n]
        if building:
            raise InputError(f"v{n}: v{building[0]} is being built on it; discard v{building[0]} first")
        self._discard_all(n)

    # -- reward models ----------------------------------------------------------------------
    def rm_dir(self, kind: str, n: int) -> Path:
        return self.root / "reward_models" / kind / f"v{n}"

    def rm_partial_dir(self, kind: str, n: int) -> Path:
        return self.root / "reward_models" / kind / f".v{n}.partial"

    def rm_versions(self, kind: str) -> list[int]:
        base = self.root / "reward_models" / kind
        if not base.exists():
            return []
        return sorted(n for p in base.iterdir() if p.is_dir() and (n := dir_version(p)) is not None)

    def latest_rm(self, kind: str, at_most: int | None = None) -> int | None:
        vs = [v for v in self.rm_versions(kind) if at_most is None or v <= at_most]
        return vs[-1] if vs else None

    def rm_paths(self, at_most: int | None = None) -> dict[str, Path]:
        """{kind: directory} of the newest reward model of each kind (up to version `at_most`)."""
        found = {kind: self.latest_rm(kind, at_most) for kind in RM_KINDS}
        return {kind: self.rm_dir(kind, v) for kind, v in found.items() if v is not None}

    @dist.main_only
    def finish_rm(self, kind: str, n: int) -> Path:
        os.replace(self.rm_partial_dir(kind, n), self.rm_dir(kind, n))
        return self.rm_dir(kind, n)
