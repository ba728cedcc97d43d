"""Best-of-K sampling sharded across the ranks of a launch (core.distributed), gathered by rank 0.

The prompts are grouped into batches exactly as one process groups them (generate.plan_batches);
batch b goes to rank b % world size. Every sample's tokens come from its per-prompt seeds and its
batch is the same one a single process would run, so the samples are identical for any number of
processes. Each rank appends its batches to its own shard file (SHARD_DIR/samples.rankR.jsonl,
flushed and fsynced per batch); rank 0 merges the shards into samples.jsonl, which it alone writes.

Resume after a kill: rank 0 first merges whatever shard files a killed launch left (torn last lines
cut off, rows already in samples.jsonl skipped), deletes them, and every rank then skips the prompts
that are complete. A kill between the merge's append and the deletion leaves rows in both places;
the next merge skips them, so no sample is lost or duplicated, whatever the number of processes of
the new launch.
"""
from __future__ import annotations

from pathlib import Path

from saferounds.core import distributed as dist
from saferounds.core.io import merge_jsonl_shards
from saferounds.sampling.generate import generate_samples


def _key(row: dict) -> tuple[str, int]:
    return str(row["prompt_id"]), int(row["sample_index"])


def shard_files(out_path: Path, shard_dir: Path) -> list[Path]:
    return sorted(Path(shard_dir).glob(f"{Path(out_path).stem}.rank*.jsonl"))


def merge_shards(out_path: Path, shard_dir: Path) -> int:
    """Append the shards' rows missing from out_path to it, then delete the shards (rank 0 only).
    Returns the number of rows added."""
    return merge_jsonl_shards(out_path, shard_files(out_path, shard_dir), _key)


def generate_sharded(model, tokenizer, prompts: list[dict], *, out_path: Path, shard_dir: Path,
                     **kwargs) -> list[dict] | None:
    """generate_samples over the ranks of a launch: on rank 0 every sample in prompt order (as
    generate_samples returns them), None on the others. Without a launcher: generate_samples."""
    out_path = Path(out_path)
    if not dist.active():
        return generate_samples(model, tokenizer, prompts, out_path=out_path, **kwargs)
    shard_dir = Path(shard_dir)
    dist.run_on_main(merge_shards, out_path, shard_dir)  # what a killed launch left
    mine = shard_dir / f"{out_path.stem}.rank{dist.rank()}.jsonl"
    shard_dir.mkdir(parents=True, exist_ok=True)
    stats = kwargs.pop("stats", None)
    own: dict = {}
    dist.all_ranks(generate_samples, model, tokenizer, prompts, out_path=mine, resume_from=[out_path],
                   shard=(dist.rank(), dist.world_size()), stats=own, **kwargs)
    counts = dist.gather_object({k: own.get(k, 0) for k in ("new_tokens", "new_samples")})
    gathered: dict = {}

    def gather() -> None:
        merge_shards(out_path, shard_dir)
        # every sample is now in out_path: this reads them back in prompt order and generates nothing
        kw = {k: v for k, v in kwargs.items() if k not in ("on_batch", "show_progress")}
        gathered["samples"] = generate_samples(model, tokenizer, prompts, out_path=out_path, show_progress=False,
                                               **kw)

    dist.run_on_main(gather)
    if stats is not None:
        stats.update(generate_s=own.get("generate_s", 0.0), new_tokens=sum(c["new_tokens"] for c in counts),
                     new_samples=sum(c["new_samples"] for c in counts))
    return gathered.get("samples")
