"""LLM judges for AI feedback (RLAIF): a chat model behind one `Judge.chat(messages) -> str`.

Two backends: any OpenAI-compatible chat-completions endpoint over plain HTTP (vLLM, TGI,
llama.cpp server, hosted APIs) and a local Hugging Face chat model (transformers). Around the
backend: a persistent sqlite cache keyed by the judge's identity and the exact messages (a resumed
job never pays twice), retries with exponential backoff on 429/5xx/timeouts, a request-rate limit
and a thread pool (`Judge.map`). The API key is read from the environment variable named in the
config at request time; it is never stored, cached or logged.

What the judge is asked and how its answer is read lives in reward_models/feedback/labeling.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, TypeVar

from saferounds.core.errors import InputError
from saferounds.reward_models.config import JudgeConfig, base_url_problem

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# what an endpoint may echo back of a request's credentials: "Bearer X", OpenAI-style "sk-..." keys,
# "api_key": "X" / api-key=X, and user:password@ in URLs
_SECRET_PATTERNS = (re.compile(r"(?i)(bearer\s+)[^\s\"',;}]+"), re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
                    re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+"),
                    re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@"))


class JudgeError(RuntimeError):
    """The judge could not be reached or refused the request (after retries, or not retryable)."""


def redact(text: str, key: str = "") -> str:
    """`text` with the API key's value and anything shaped like a credential replaced by [redacted]."""
    if len(key) >= 3:
        text = text.replace(key, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]"
                           + ("@" if m.group(0).endswith("@") else ""), text)
    return text


class TransientError(JudgeError):
    """A failure worth retrying (HTTP 429/5xx, timeout, connection reset)."""

    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


def parse_judge_spec(spec: str, base: JudgeConfig | None = None) -> JudgeConfig:
    """`--judge SPEC` -> JudgeConfig (other fields from `base`).

    openai:MODEL@BASE_URL      e.g. openai:gpt-4o-mini@https://api.openai.com/v1
    openai:MODEL               keeps base.base_url
    hf:MODEL_ID_OR_PATH        a local transformers chat model
    Any SPEC may end with `#ENV_VAR` naming the variable that holds the API key.
    """
    base = base or JudgeConfig()
    backend, sep, rest = spec.partition(":")
    if not sep or backend not in ("openai", "hf") or not rest:
        raise ValueError(
            f"--judge {spec!r}: expected openai:MODEL[@BASE_URL][#KEY_ENV] or hf:MODEL_ID_OR_PATH"
        )
    rest, _, key_env = rest.partition("#")
    out = replace(base, backend=backend, api_key_env=key_env or base.api_key_env)
    if backend == "openai":
        model, _, url = rest.partition("@")
        problem = base_url_problem(url or base.base_url)
        if not model or problem:
            raise ValueError(f"--judge {spec!r}: " + (problem or "no MODEL before @") + "; expected "
                             "openai:MODEL[@BASE_URL][#KEY_ENV], e.g. openai:gpt-4o-mini@https://api.openai.com/v1")
        return replace(out, model=model, base_url=url or base.base_url)
    return replace(out, model=rest)


class OpenAIChat:
    """POST {base_url}/chat/completions with the OpenAI request/response shape; one call per try."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.identity = {"backend": "openai", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}

    def __call__(self, messages: list[dict]) -> str:
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read(4096).decode("utf-8", "replace")  # whole enough to redact, then cut
            msg = redact(f"judge endpoint {self.url} answered HTTP {e.code}: {redact(detail, key)[:300]}", key)
            if e.code in RETRYABLE_STATUS:
                retry_after = _retry_after(e.headers.get("Retry-After"))
                raise TransientError(msg, retry_after) from None
            raise JudgeError(msg) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise TransientError(redact(f"judge endpoint {self.url} unreachable: {e}", key)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TransientError(redact(f"judge endpoint {self.url} sent invalid JSON: {e}", key)) from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}: no choices[0].message.content in reply") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HFChat:
    """A local transformers chat model, greedy (or sampled when temperature > 0); one call at a time."""

    def __init__(self, cfg: JudgeConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        where = f"judge model hf:{cfg.model}"
        if cfg.model.startswith(("/", "./", "../", "~")) and not Path(cfg.model).expanduser().is_dir():
            raise InputError(f"{where}: no such directory; give a local model directory or a hub id")
        dtype = cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype, None)
        if not (dtype == "auto" or isinstance(dtype, torch.dtype)):
            raise InputError(f"judge.dtype: expected auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                cfg.model, dtype=dtype, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
            ).eval()
        except (OSError, ValueError, KeyError) as e:  # not found offline, no weights, not a causal LM
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"{where}: cannot load it ({first})") from None
        self.lock = threading.Lock()
        self.identity = {"backend": "hf", "model": str(cfg.model), "revision": _local_revision(cfg.model)}

    def __call__(self, messages: list[dict]) -> str:
        import torch

        tok = self.tokenizer
        with self.lock, torch.no_grad():
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            sample = self.cfg.temperature > 0
            out = self.model.generate(
                **ids,
                max_new_tokens=self.cfg.max_tokens,
                do_sample=sample,
                temperature=self.cfg.temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def _local_revision(model: str) -> str:
    """For a local model directory, a fingerprint of its weights' sizes and mtimes (new weights, new cache key)."""
    p = Path(model)
    if not p.is_dir():
        return ""
    files = sorted(p.glob("*.safetensors"))
    return hashlib.sha256(json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()[:16]


class ChatCache:
    """sqlite: key -> completion text. Thread-safe; every put is committed at once (crash-safe resume)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self.db.execute("CREATE TABLE IF NOT EXISTS chat (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        self.db.commit()
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT text FROM chat WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, text: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO chat (key, text) VALUES (?, ?)", (key, text))
            self.db.commit()

    def close(self) -> None:
        with self.lock:
            self.db.close()


class RateLimit:
    """At most `per_minute` request starts per minute, spaced evenly, shared by all threads."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic, sleep=time.sleep):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()
        self.clock, self.sleep = clock, sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = self.clock()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            self.sleep(start - now)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff: base * 2^attempt (attempt 0 = first retry), capped; a server's Retry-After wins."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return min(base * (2**attempt), cap)


class Judge:
    """A chat backend with cache, retries, rate limit and a thread pool. Counters: requests, cache_hits."""

    def __init__(self, cfg: JudgeConfig, backend: Callable[[list[dict]], str] | None = None,
                 cache_path: str | Path | None = None):
        self.cfg = cfg
        self.backend = backend or (HFChat(cfg) if cfg.backend == "hf" else OpenAIChat(cfg))
        identity = getattr(self.backend, "identity", {"backend": type(self.backend).__name__})
        # sampling settings change the answer, so they are part of the judge's identity
        self.identity = {**identity, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        path = cache_path if cache_path is not None else cfg.cache_path
        self.cache = ChatCache(path) if path else None
        self.rate = RateLimit(cfg.requests_per_minute)
        self.workers = 1 if cfg.backend == "hf" else cfg.concurrency
        self.requests = 0
        self.cache_hits = 0
        self._count = threading.Lock()

    def key(self, messages: list[dict]) -> str:
        blob = json.dumps({"judge": self.identity, "messages": messages}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def chat(self, messages: list[dict]) -> str:
        key = self.key(messages)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._count:
                    self.cache_hits += 1
                return hit
        text = self._call_with_retries(messages)
        if self.cache is not None:
            self.cache.put(key, text)
        return text

    def _call_with_retries(self, messages: list[dict]) -> str:
        for attempt in range(self.cfg.max_retries + 1):
            self.rate.wait()
            with self._count:
                self.requests += 1
            try:
                return self.backend(messages)
            except TransientError as e:
                if attempt == self.cfg.max_retries:
                    raise JudgeError(f"{e} (gave up after {attempt + 1} tries)") from None
                delay = backoff_delay(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s, e.retry_after)
                log.warning("judge: %s; retry %d/%d in %.1fs", e, attempt + 1, self.cfg.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def map(self, fn: Callable[[T], R], items: list[T], progress: Callable[[int, int], None] | None = None) -> list[R]:
        """[fn(x) for x in items] on the judge's thread pool, results in input order."""
        if self.workers == 1 or len(items) <= 1:
            out = []
            for i, x in enumerate(items):
                out.append(fn(x))
                if progress:
                    progress(i + 1, len(items))
            return out
        pool = ThreadPoolExecutor(self.workers)
        try:
            futures = [pool.submit(fn, x) for x in items]
            out = []
            for i, f in enumerate(futures):
                out.append(f.result())
                if progress:
                    progress(i + 1, len(items))
            return out
        finally:  # on a failure, drop the queued work (the cache keeps what was paid for)
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_judge(cfg: JudgeConfig, cache_path: str | Path | None = None) -> Judge:
    """The judge a config describes (loads the HF model for backend hf)."""
    if not cfg.model:
        raise ValueError("judge.model is empty: set it in the `judge` section or pass --judge SPEC")
    return Judge(cfg, cache_path=cache_path)

