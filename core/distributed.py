"""The processes of one launch (`accelerate launch`, torchrun): who we are, and how ranks meet.

Without a launcher (WORLD_SIZE unset or 1) every function is a no-op for one process, so all code
calls these unconditionally. Under a launcher the process group is accelerate's `PartialState`
(NCCL on GPUs, gloo on CPUs), created on first use; transformers.Trainer reuses the same state.

One writer: the workspace (manifests, JSONL, reports, the lock) is written by rank 0 alone, inside
`run_on_main` (or a `main_only` function); the other ranks wait there and receive its result.

Failures: every meeting point (`barrier`, `broadcast_object`, `gather_object`, `run_on_main`,
`all_ranks`) is the same collective, an all-gather of (status, payload). A rank that fails sends
its error to the next meeting point instead of its payload; there every rank raises: the failing
rank its own exception, the others `RankFailed` (an `InputError` when the failing rank's was one,
so every rank exits 2) naming the rank and its message. An exception that has been through a
meeting point is marked as known to all ranks, so enclosing `all_ranks`/`run_on_main` re-raise it
without meeting again, and every rank reaches the round manager's failure handling in step (which
records the error through rank 0). Not covered: a failure inside a collective of the training
engine itself (DDP/FSDP/DeepSpeed gradient all-reduce) ends the launch through the launcher, which
stops the other ranks; the version stays resumable all the same.

The workspace must be on a filesystem every rank sees (one machine, or a shared mount): ranks read
what rank 0 wrote after meeting it, and Trainer checkpoints are written by the training engine.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
from datetime import timedelta
from typing import Any, Callable, TypeVar

from saferounds.core.errors import InputError

T = TypeVar("T")
TIMEOUT_ENV = "SAFEROUNDS_DIST_TIMEOUT"  # seconds a rank waits at a meeting point (default 3 hours)
_SYNCED = "_saferounds_synced"  # attribute on an exception every rank already knows about
_state: dict[str, Any] = {"main_section": 0}


class RankFailed(RuntimeError):
    """Another rank failed; its message is in ours."""


class RankInputError(InputError):
    """Another rank rejected its input (exit 2 on every rank)."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True under a launcher with more than one process."""
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def launch_name() -> str:
    """Who holds the workspace: this process, or the launch (id, size, rank-0 pid) it belongs to."""
    if not active():
        return f"pid {os.getpid()} on {socket.gethostname()}"
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "?")
    return (f"launch {launch} ({world_size()} processes, rank-0 pid {os.getpid()}) "
            f"on {socket.gethostname()}")


def _group():
    """Initialise the process group once (accelerate's PartialState), return torch.distributed."""
    import torch
    import torch.distributed as td

    if not td.is_initialized():
        from accelerate import PartialState

        seconds = float(os.environ.get(TIMEOUT_ENV, 3 * 3600))  # 10800 s
        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=seconds))
    return td


def _mark(exc: BaseException) -> BaseException:
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _SYNCED, True)
    return exc


def synced(exc: BaseException) -> bool:
    """True when every rank already knows of this failure (raised at a meeting point)."""
    return bool(getattr(exc, _SYNCED, False))


def _describe(exc: BaseException) -> tuple[str, str, bool]:
    return type(exc).__name__, str(exc), isinstance(exc, InputError)


def _meet(payload: Any = None, error: BaseException | None = None) -> list[Any]:
    """The one collective: every rank sends (error or None, payload); raises if any rank failed.
    Returns every rank's payload (rank order)."""
    if _state["main_section"]:
        raise RuntimeError("core.distributed: a meeting point inside a rank-0-only section would deadlock")
    td = _group()
    sent = (None if error is None else _describe(error), None if error is not None else payload)
    got: list = [None] * world_size()
    td.all_gather_object(got, sent)
    failed = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
    if failed:
        if error is not None:
            raise _mark(error)
        r, (kind, message, bad_input) = failed[0]
        cls = RankInputError if bad_input else RankFailed
        raise _mark(cls(f"rank {r}: {message}" if bad_input else f"rank {r}: {kind}: {message}"))
    return [p for _, p in got]


def barrier() -> None:
    """Every rank waits here; raises on all ranks if one of them failed."""
    if active():
        _meet()


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` of rank `src`, on every rank (picklable)."""
    return _meet(obj)[src] if active() else obj


def gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    return _meet(obj) if active() else [obj]


def run_on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Rank 0 runs fn (it may write the workspace); the others wait; all return rank 0's result or
    raise its error. Nested calls on rank 0 just run."""
    if not active() or _state["main_section"]:
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        _state["main_section"] += 1
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            if synced(e):
                raise
            error = e
        finally:
            _state["main_section"] -= 1
    return _meet(result, error)[0]


def main_only(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: the function writes, so rank 0 alone runs it (see run_on_main)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run_on_main(fn, *args, **kwargs)

    return wrapper


def all_ranks(fn: Callable[..., T], *args, **kwargs) -> T:
    """Every rank runs fn, then they meet: a failure on any rank fails all of them (with that rank's
    error). Returns this rank's own result. Inside a rank-0-only section it just runs."""
    if not active() or _state["main_section"]:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        if synced(e):
            raise
        _meet(error=e)
        raise  # (not reached: _meet raises)
    _meet()
    return result


def shutdown(meet: bool) -> None:
    """Tear the process group down before the process exits, so every rank ends with its own exit code.
    Left to interpreter exit, gloo's threads can outlive their group and abort the process (SIGABRT,
    "terminate called without an active exception") instead of exiting 2. `meet`: every rank is known
    to be here too (the command succeeded, or failed at a meeting point), so they first wait for each
    other and no rank closes its connections while another still uses them; a rank that failed alone
    does not wait (the others may be inside another collective)."""
    td = sys.modules.get("torch.distributed")  # never imported: there is no group to tear down
    if td is None or not active() or not (td.is_available() and td.is_initialized()):
        return
    if meet and not _state["main_section"]:
        with contextlib.suppress(Exception):  # a rank that has already gone: nothing to wait for
            td.barrier()
    with contextlib.suppress(Exception):
        td.destroy_process_group()


def exit_process(code: int) -> None:
    """End the process with `code`. Under a launcher (after shutdown), a rank leaves by os._exit once its output
    and logs are flushed: even with the group destroyed, a thread left by gloo or a Trainer can still abort the
    interpreter's teardown ("terminate called without an active exception", SIGABRT) after the command
    succeeded, which turned a finished 2-rank round into a failed launch now and then. Every file the pipeline
    writes is closed (atomic writes) before this point; a single process exits normally."""
    if not active():
        sys.exit(code)
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code if isinstance(code, int) else 1)


def shard(n: int) -> list[int]:
    """This rank's indices of n items dealt round-robin (item i goes to rank i % world size)."""
    return list(range(rank(), n, world_size())) if active() else list(range(n))


def device():
    """This rank's device: cuda:LOCAL_RANK under a launcher with GPUs, else cuda / cpu."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank()) if active() else torch.device("cuda")


def sharded_engine(trainer) -> bool:
    """True when the Trainer's model is sharded across ranks (FSDP, DeepSpeed): saving it is then
    a collective (Trainer.save_model gathers it and writes from rank 0)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


def trainer_kwargs(batch_size: int, key: str) -> dict:
    """TrainingArguments for a launch: each global batch of `batch_size` (the config's) is split
    across the ranks (accelerate's split_batches), so the optimizer takes the same steps on the same
    batches as one process would; the batch size must divide by the number of processes."""
    if not active():
        return {}
    if batch_size % world_size():
        raise InputError(f"{key}: {batch_size} does not divide among the {world_size()} processes of this "
                         "launch (each global batch is split across them); use a multiple of it")
    return {"accelerator_config": {"split_batches": True}}


def save_trained(trainer, save: Callable[[], Any], out_dir, tokenizer=None) -> None:
    """Save a model trained by `trainer`: rank 0 runs `save` (DDP replicas are identical), or under
    FSDP/DeepSpeed every rank takes part in Trainer.save_model (it gathers the shards; rank 0 writes)."""
    if not active() or not sharded_engine(trainer):
        run_on_main(save)
        return
    all_ranks(trainer.save_model, str(out_dir))
    if tokenizer is not None:
        run_on_main(tokenizer.save_pretrained, str(out_dir))
