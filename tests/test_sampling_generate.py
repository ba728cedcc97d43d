"""Batched K-sample generation: the seeded sampler's distribution, determinism under a seed,
independence from batching, EOS stop, and resume after a real SIGKILL with nothing duplicated or lost."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from saferounds.core.io import recover_jsonl
from saferounds.sampling.generate import SeededSampler, generate_samples, plan_batches, row_seed, uniform_noise

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saferounds.data.tiny import build_tiny

    path = build_tiny(tmp_path_factory.mktemp("tiny"))["policy"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return path, model, AutoTokenizer.from_pretrained(path)


def prompts(n):
    return [{"id": f"p{i}", "messages": [{"role": "user", "content": "tell me " * (1 + i % 5) + str(i)}],
             "is_safety": i % 3 == 0} for i in range(n)]


def test_seeded_sampler_draws_from_softmax_with_top_p():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    rows = 20000
    seeds = torch.tensor([row_seed(7, "x", i) for i in range(rows)], dtype=torch.long)
    sampler = SeededSampler(seeds, temperature=0.8, top_p=1.0, prompt_length=3)
    onehot = sampler(torch.zeros(rows, 4, dtype=torch.long), logits.repeat(rows, 1))
    assert torch.equal((onehot == 0).sum(-1), torch.ones(rows, dtype=torch.long))  # exactly one token
    freq = (onehot == 0).float().mean(0)
    assert torch.allclose(freq, torch.softmax(logits / 0.8, -1), atol=0.012)
    # top_p = 0.8: softmax(logits/0.8) = .743 .215 .034 ... -> the nucleus is tokens {0, 1}
    nucleus = SeededSampler(seeds, 0.8, 0.8, 3)(torch.zeros(rows, 4, dtype=torch.long), logits.repeat(rows, 1))
    freq = (nucleus == 0).float().mean(0)
    p = torch.softmax(logits / 0.8, -1)[:2]
    assert freq[2:].sum() == 0
    assert torch.allclose(freq[:2], p / p.sum(), atol=0.012)
    # the noise is a pure function of (seed, step): same call, same numbers; another step, others
    u = uniform_noise(seeds, 5)
    assert torch.equal(u, uniform_noise(seeds, 5)) and not torch.equal(u, uniform_noise(seeds, 6))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    # temperature 0 is greedy; a token without mass (-inf logit) is never drawn
    greedy = SeededSampler(seeds[:4], 0.0, 1.0, 3)(torch.zeros(4, 4, dtype=torch.long), logits.repeat(4, 1))
    assert (greedy.argmax(-1) == 0).all()
    masked = logits.clone()
    masked[0] = float("-inf")
    draw = SeededSampler(seeds, 1.0, 1.0, 3)(torch.zeros(rows, 4, dtype=torch.long), masked.repeat(rows, 1))
    assert (draw[:, 0] != 0).all() and (draw == 0).sum() == rows


def test_plan_batches_groups_by_length():
    assert plan_batches([5, 1, 3, 1, 9], 2) == [[1, 3], [2, 0], [4]]


def test_deterministic_and_independent_of_batching(tiny):
    _, model, tok = tiny
    ps = prompts(6)
    kw = dict(k=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=11)
    a = generate_samples(model, tok, ps, batch_size=2, **kw)
    b = generate_samples(model, tok, ps, batch_size=2, **kw)
    c = generate_samples(model, tok, ps, batch_size=5, **kw)
    d = generate_samples(model, tok, list(reversed(ps)), batch_size=1, **kw)
    other = generate_samples(model, tok, ps, batch_size=2, **dict(kw, seed=12))
    key = lambda rows: {(r["prompt_id"], r["sample_index"]): r["response"] for r in rows}
    assert len(a) == 18 and [(r["prompt_id"], r["sample_index"]) for r in a[:4]] == [
        ("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0)]
    assert a == b  # same batch plan: bit for bit
    # another batching pads differently; the per-sample seeds give the same samples up to float rounding
    # in padded attention, which can flip a rare token that sits on a sampling boundary
    for other_plan in (c, d):
        assert sum(key(a)[x] == key(other_plan)[x] for x in key(a)) >= len(a) - 1
    assert len(set(key(a).values())) > 9  # K samples differ from each other
    assert sum(key(a)[x] == key(other)[x] for x in key(a)) < 3  # another seed, other samples
    assert {r["is_safety"] for r in a if r["prompt_id"] == "p3"} == {True}


def test_shared_prompt_prefill_draws_the_same_samples(tiny, monkeypatch):
    """K samples of a prompt share one prefill of it (its KV cache repeated K times): the samples are those
    of K separate prefills, token for token, and the model sees 1/K of the prompt tokens."""
    import saferounds.sampling.generate as gen

    _, model, tok = tiny
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        shared = generate_samples(model, tok, prompts(6), k=4, temperature=1.0, top_p=0.9, max_new_tokens=10,
                                  batch_size=3, seed=5, show_progress=False)
        shared_tokens, seen[:] = sum(seen), []
        monkeypatch.setattr(gen, "shared_prompt_cache", lambda *a: None)
        separate = generate_samples(model, tok, prompts(6), k=4, temperature=1.0, top_p=0.9, max_new_tokens=10,
                                    batch_size=3, seed=5, show_progress=False)
        separate_tokens = sum(seen)
    finally:
        hook.remove()
    assert [s["response"] for s in shared] == [s["response"] for s in separate]
    assert len({s["response"] for s in shared}) > 12  # real sampling, not one answer repeated
    assert shared_tokens < 0.6 * separate_tokens


def test_eos_stops_a_sample(tiny):
    _, model, tok = tiny
    eos = tok.eos_token_id
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 4.0)))
    try:
        rows = generate_samples(model, tok, prompts(4), k=4, temperature=1.0, max_new_tokens=10, seed=0)
    finally:
        hook.remove()
    stopped = [r for r in rows if r["finish_reason"] == "eos"]
    assert any(r["num_tokens"] < 10 for r in stopped)  # the EOS bias makes most samples stop early
    for r in rows:
        assert r["finish_reason"] in ("eos", "length")
        assert 1 <= r["num_tokens"] <= 10
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == 10
        assert tok.eos_token not in r["response"]


WORKER = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from saferounds.sampling.generate import generate_samples
    model = AutoModelForCausalLM.from_pretrained({model!r}).eval()
    tok = AutoTokenizer.from_pretrained({model!r})
    ps = [{{"id": f"p{{i}}", "messages": [{{"role": "user", "content": "tell me " * (1 + i % 5) + str(i)}}]}}
          for i in range({n})]
    print("ready", flush=True)
    generate_samples(model, tok, ps, k=2, temperature=0.9, max_new_tokens=6, batch_size=2, seed=3,
                     out_path={out!r}, origin_version=1,
                     on_batch=lambda done, total: time.sleep({pause}))
""")


def run_worker(model_path, out, n, pause=0.0):
    code = WORKER.format(root=str(ROOT), model=str(model_path), out=str(out), n=n, pause=pause)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(path):
    return Path(path).read_text().splitlines() if Path(path).exists() else []


def test_resume_after_sigkill_loses_and_duplicates_nothing(tiny, tmp_path):
    model_path, model, tok = tiny
    n = 12
    full = tmp_path / "uninterrupted.jsonl"
    killed = tmp_path / "samples.jsonl"
    victim = run_worker(model_path, killed, n, pause=0.3)
    deadline = time.time() + 120
    while len(lines(killed)) < 4 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    written = lines(killed)
    assert 4 <= len(written) < 2 * n, "the kill must land mid-run"
    # Make it worse: keep one line of the last batch and a torn half line, as a kill inside a write would.
    keep = len(written) - len(written) % 4
    text = "\n".join(written[:keep - 3]) + "\n" + written[keep - 3][:17]
    killed.write_text(text)

    same_prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": "tell me " * (1 + i % 5) + str(i)}]}
                    for i in range(n)]
    kw = dict(k=2, temperature=0.9, max_new_tokens=6, batch_size=2, seed=3, origin_version=1)
    generate_samples(model, tok, same_prompts, out_path=full, **kw)  # the uninterrupted run
    generate_samples(model, tok, same_prompts, out_path=killed, **kw)  # the resumed run

    got, want = lines(killed), lines(full)
    keys = [(json.loads(x)["prompt_id"], json.loads(x)["sample_index"]) for x in got]
    assert len(keys) == len(set(keys)) == 2 * n  # nothing duplicated, nothing lost
    assert sorted(got) == sorted(want)  # byte-identical records to the uninterrupted run
    # a finished file is left alone by another run: nothing is regenerated or appended
    again = generate_samples(model, tok, same_prompts, out_path=killed, stats=(stats := {}), **kw)
    assert stats["new_samples"] == 0 and lines(killed) == got and len(again) == 2 * n


def test_resume_refuses_changed_settings(tiny, tmp_path):
    _, model, tok = tiny
    out = tmp_path / "s.jsonl"
    generate_samples(model, tok, prompts(2), k=1, temperature=1.0, max_new_tokens=3, seed=0, out_path=out)
    with pytest.raises(ValueError, match="temperature"):
        generate_samples(model, tok, prompts(2), k=1, temperature=0.5, max_new_tokens=3, seed=0, out_path=out)


def test_recover_jsonl_cuts_a_torn_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert recover_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'
