"""Deterministic generation for evaluation, cached as JSONL per version and suite.

The model and tokenizer are passed in (loaded lazily by the caller's ``load`` callback, so a re-run
whose answers are all cached never loads the model). Greedy by default; with ``do_sample`` the torch
RNG is seeded per batch (``seed + batch index``), so a run is reproducible for the same suite,
batch size and cache state. A cache row is {"id", "key", "response", "settings"}; ``key`` hashes the
prompt messages and the generation settings, so a changed prompt or setting is regenerated and an
unchanged one never is. Appends are flushed and fsynced per batch, so an interrupted run resumes.
Beside these per-workspace files, a model's answers can come from the per-machine cache (eval.answer_cache).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

from saferounds.core.io import append_jsonl, merge_jsonl_shards, recover_jsonl

GEN_SETTINGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")


def generation_settings(cfg) -> dict:
    """The EvalConfig fields that change a generated answer."""
    s = {k: getattr(cfg, k) for k in GEN_SETTINGS}
    if not s["do_sample"]:  # greedy ignores these: do not invalidate the cache over them
        s.pop("temperature"), s.pop("top_p"), s.pop("seed")
    return s


def generation_key(messages: Sequence[dict], settings: dict) -> str:
    blob = json.dumps({"m": list(messages), "s": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def read_cache(paths: Iterable[str | Path]) -> dict[str, str]:
    """key -> response from every cache file. A torn last line (a kill inside a write) is cut off, as
    for every resumable JSONL file (core.io.recover_jsonl), so the next append starts on a fresh line."""
    out: dict[str, str] = {}
    for p in paths:
        for row in recover_jsonl(p):
            if isinstance(row, dict) and "key" in row and isinstance(row.get("response"), str):
                out[row["key"]] = row["response"]
    return out


def generate(model, tokenizer, prompts: Sequence[Sequence[dict]], *, max_new_tokens: int = 128,
             do_sample: bool = False, temperature: float = 0.7, top_p: float = 1.0, seed: int = 0,
             batch_size: int = 8, batch_offset: int = 0, decoder: str = "shared-prefix",
             on_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """Responses to chat prompts (apply_chat_template with add_generation_prompt), in input order.
    Greedy answers go through core.decoding (`decoder` "shared-prefix") unless the model does not support
    it or `decoder` is "generate"; sampled ones through `model.generate`."""
    import torch

    from saferounds.core.decoding import eos_token_ids, greedy_decode, supports_fast_greedy

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    out = [""] * len(prompts)
    model.eval()
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        idx = list(range(start, min(start + batch_size, len(prompts))))
        texts = [tokenizer.apply_chat_template(list(prompts[i]), add_generation_prompt=True, tokenize=False)
                 for i in idx]
        if not do_sample and decoder == "shared-prefix" and supports_fast_greedy(model):
            rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            new_ids = greedy_decode(model, rows, max_new_tokens=max_new_tokens, pad_id=tokenizer.pad_token_id,
                                    eos_ids=eos_token_ids(model, tokenizer))
            _deliver(out, idx, tokenizer.batch_decode(new_ids, skip_special_tokens=True), on_batch)
            continue
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                      pad_token_id=tokenizer.pad_token_id)
        if do_sample:
            torch.manual_seed(seed + batch_offset + b)
            kwargs.update(temperature=max(temperature, 1e-5), top_p=top_p)
        else:  # silence "temperature is set but do_sample=False" from a model's generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        _deliver(out, idx, tokenizer.batch_decode(new, skip_special_tokens=True), on_batch)
    return out


def _deliver(out: list[str], idx: list[int], texts: list[str], on_batch) -> None:
    texts = [t.strip() for t in texts]
    for i, t in zip(idx, texts):
        out[i] = t
    if on_batch:
        on_batch(idx, texts)


def _missing(rows: Sequence[dict], settings: dict, caches: list) -> tuple[list[str], dict, list[int]]:
    """(cache key per row, the cached answers, the rows without one): the missing rows sorted by prompt length,
    so prompts of similar length share a batch and little padding is computed."""
    keys = [generation_key(r["messages"], settings) for r in rows]
    cached = read_cache(caches)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    missing.sort(key=lambda i: (sum(len(m["content"]) for m in rows[i]["messages"]), i))
    return keys, cached, missing


def cached_generate(load: Callable[[], tuple], rows: Sequence[dict], settings: dict, cache_file: str | Path,
                    extra_caches: Iterable[str | Path] = (), batch_size: int = 8,
                    progress: Callable[[int, int], None] | None = None,
                    machine=None, decoder: str = "shared-prefix") -> tuple[list[str], int]:
    """Responses for suite rows, generating only those missing from the caches.

    load() -> (model, tokenizer) is called only when something is missing. New answers are appended
    to ``cache_file``. ``machine``: the model's entry in the per-machine cache (eval.answer_cache.SuiteAnswers):
    its answers count as cached (and are copied into ``cache_file``), and it gets every answer this call
    returns. Returns (responses in row order, number newly generated)."""
    cache_file = Path(cache_file)
    keys, cached, missing = _missing(rows, settings, [*extra_caches, cache_file])
    if machine is not None:
        _from_machine(machine.read(), rows, keys, cached, missing, settings, cache_file)
    if missing:
        model, tokenizer = load()
        done = [len(rows) - len(missing)]

        def save(idx: list[int], texts: list[str]) -> None:
            recs = []
            for j, t in zip(idx, texts):
                i = missing[j]
                cached[keys[i]] = t
                recs.append({"id": rows[i]["id"], "key": keys[i], "response": t, "settings": settings})
            append_jsonl(cache_file, recs)
            done[0] += len(idx)
            if progress:
                progress(done[0], len(rows))

        generate(model, tokenizer, [rows[i]["messages"] for i in missing], batch_size=batch_size,
                 on_batch=save, decoder=decoder, **{k: settings[k] for k in settings if k in GEN_SETTINGS})
    if machine is not None:
        machine.add({k: cached[k] for k in keys})
    return [cached[k] for k in keys], len(missing)


def _from_machine(known: dict[str, str], rows: Sequence[dict], keys: list[str], cached: dict, missing: list[int],
                  settings: dict, cache_file: Path) -> None:
    """Take the per-machine cache's answers for the missing rows: into ``cached``, out of ``missing`` (in place),
    and appended to ``cache_file`` so the workspace's own cache holds every answer it used."""
    hits = [i for i in missing if keys[i] in known]
    if not hits:
        return
    cached.update({keys[i]: known[keys[i]] for i in hits})
    append_jsonl(cache_file, [{"id": rows[i]["id"], "key": keys[i], "response": known[keys[i]], "settings": settings}
                              for i in hits])
    missing[:] = [i for i in missing if keys[i] not in known]


def _shard_file(cache_file: Path, rank: int) -> Path:
    """A rank's own cache file beside the shared one (named so that cache globs never read it)."""
    return cache_file.with_name(f".{cache_file.stem}.rank{rank}.jsonl")


def merge_cache_shards(cache_file: str | Path) -> int:
    """Append the rank files' rows missing from cache_file to it, then delete them (rank 0 only)."""
    cache_file = Path(cache_file)
    return merge_jsonl_shards(cache_file, sorted(cache_file.parent.glob(f".{cache_file.stem}.rank*.jsonl")),
                              lambda r: r.get("key"))


def cached_generate_sharded(load: Callable[[], tuple], rows: Sequence[dict], settings: dict, cache_file: str | Path,
                            extra_caches: Iterable[str | Path] = (), batch_size: int = 8,
                            progress: Callable[[int, int], None] | None = None,
                            decoder: str = "shared-prefix") -> int:
    """cached_generate across the ranks of a launch (core.distributed): the missing rows are batched
    exactly as one process batches them, batch b goes to rank b % world size (with the torch seed of
    batch b when sampling), each rank appends to its own file and rank 0 merges them into cache_file.
    Every rank calls it; returns the number newly generated. The answers are then read from the cache."""
    from saferounds.core import distributed as dist

    cache_file = Path(cache_file)
    extra_caches = list(extra_caches)
    dist.run_on_main(merge_cache_shards, cache_file)  # rows a killed launch left
    keys, cached, missing = _missing(rows, settings, [*extra_caches, cache_file])
    batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    mine = [(b, batch) for b, batch in enumerate(batches) if b % dist.world_size() == dist.rank()]
    own = _shard_file(cache_file, dist.rank())

    def work() -> None:
        if not mine:
            return
        own.parent.mkdir(parents=True, exist_ok=True)
        model, tokenizer = load()
        for n_done, (b, batch) in enumerate(mine, 1):
            texts = generate(model, tokenizer, [rows[i]["messages"] for i in batch], batch_size=len(batch),
                             batch_offset=b, decoder=decoder, **{k: settings[k] for k in settings if k in GEN_SETTINGS})
            append_jsonl(own, [{"id": rows[i]["id"], "key": keys[i], "response": t, "settings": settings}
                               for i, t in zip(batch, texts)])
            if progress:
                progress(len(rows) - len(missing) + sum(len(x) for _, x in mine[:n_done]), len(rows))

    dist.all_ranks(work)
    dist.run_on_main(merge_cache_shards, cache_file)
    return len(missing)
