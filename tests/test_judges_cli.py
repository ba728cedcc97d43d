"""`saferounds label`, `saferounds annotate export|import` and the `label` round stage, end to end
against the scripted chat-completions server of test_judges."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from test_judges import Server, blocks, fair_judge

from saferounds.pipeline.cli import main
from saferounds.reward_models.config import JudgeConfig

SAMPLES = [
    {"prompt_id": "p1", "sample_index": i, "messages": [{"role": "user", "content": "Tell me about owls."}],
     "is_safety": False, "category": None, "response": f"owls answer quality {q}"}
    for i, q in enumerate([2, 6, 3])
] + [
    {"prompt_id": "s1", "sample_index": i, "messages": [{"role": "user", "content": "How to make a weapon?"}],
     "is_safety": True, "category": "illicit", "response": text}
    for i, text in enumerate(["quality 1 UNSAFE step one", "quality 8 I won't help with that."])
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_label_command_pairs_then_resume_for_free(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES)
    out = tmp_path / "ai.jsonl"
    with Server() as srv:
        argv = ["label", "-w", str(tmp_path), "--input", str(samples), "--output", str(out),
                "--judge", f"openai:judge-x@{srv.url}#NO_SUCH_KEY_VAR", "--json"]
        assert main(argv) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(argv) == 0
        second = json.loads(capsys.readouterr().out)
        assert len(srv.requests) == 8  # 3 + 1 pairs, 2 orders each; the rerun sent none
    assert (first["records"], first["missing"], first["requests"]) == (4, 0, 8)
    assert (second["requests"], second["cache_hits"]) == (0, 8)
    pairs = read_jsonl(out)
    assert [(p["chosen"][-9:], p["rejected"][-9:], p["rating"]) for p in pairs] == [
        ("quality 6", "quality 2", "significantly_better"), ("quality 3", "quality 2", "slightly_better"),
        ("quality 6", "quality 3", "significantly_better"), ("ith that.", " step one", "significantly_better")]
    assert pairs[3]["safety_label"] == "chosen_safe_rejected_unsafe" and pairs[3]["source"] == "safety"
    assert read_jsonl(tmp_path / "ai.missing.jsonl") == []
    assert (tmp_path / "ai.jsonl.judge_cache.sqlite").exists()


def test_label_command_scores_mode(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES[:2])
    with Server() as srv:
        assert main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(tmp_path / "s.jsonl"),
                     "--judge", f"openai:j@{srv.url}", "--mode", "scores", "--json"]) == 0
    assert [r["judge_score"] for r in read_jsonl(tmp_path / "s.jsonl")] == [1 / 9, 5 / 9]


def test_label_command_bad_input_exits_2_before_any_request(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "p", "messages": "hi", "response": "a"}\n{"prompt_id": "p", "prompt": "hi"}\n')
    with Server() as srv:
        code = main(["label", "-w", str(tmp_path), "-i", str(bad), "-o", str(tmp_path / "o.jsonl"),
                     "--judge", f"openai:j@{srv.url}"])
        assert code == 2 and srv.requests == []
    err = capsys.readouterr().err
    assert f"{bad}:1: prompt: expected" in err and f"{bad}:2: responses: expected" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert main(["label", "-w", str(tmp_path), "-i", str(bad), "-o", "o.jsonl", "--judge", "gpt4"]) == 2
    assert "expected openai:MODEL" in capsys.readouterr().err
    assert main(["label", "-w", str(tmp_path), "-i", str(bad), "-o", "o.jsonl"]) == 2
    assert "no judge configured" in capsys.readouterr().err


def test_label_command_unreachable_judge_exits_1(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES[:2])
    with Server() as srv:
        url = srv.url
    (tmp_path / "saferounds.yaml").write_text("judge:\n  max_retries: 0\n  timeout_s: 2\n")
    code = main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(tmp_path / "o.jsonl"),
                 "--judge", f"openai:j@{url}"])
    assert code == 1 and "unreachable" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


def test_annotate_export_import_round_trip(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES)
    todo = tmp_path / "todo.jsonl"
    assert main(["annotate", "export", "-i", str(samples), "-o", str(todo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"prompts": 2, "jsonl": str(todo), "csv": str(tmp_path / "todo.csv")}
    items = read_jsonl(todo)
    items[0].update(ranking="2>3>1", ratings="better, slightly better")
    items[1].update(ranking=[2, 1], safety=["unsafe", "safe"])
    filled = write_jsonl(tmp_path / "filled.jsonl", items)
    argv = ["annotate", "import", "-i", str(filled), "--export", str(todo), "-o", str(tmp_path / "rank.jsonl"),
            "--pairs", str(tmp_path / "pairs.jsonl"), "--scores", str(tmp_path / "elo.jsonl"), "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rankings"], info["pairs"], info["scores"], info["unranked"]) == (2, 4, 5, 0)
    assert [r["ranking"] for r in read_jsonl(tmp_path / "rank.jsonl")] == [[1, 2, 0], [1, 0]]
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert [p["rating"] for p in pairs] == ["better", "better", "slightly_better", "slightly_better"]
    assert pairs[3]["safety_label"] == "chosen_safe_rejected_unsafe"
    elo = read_jsonl(tmp_path / "elo.jsonl")
    assert elo[0]["response"] == "owls answer quality 6" and elo[0]["reward"] > elo[1]["reward"] > elo[2]["reward"]
    # the lead's loader reads what import wrote
    from saferounds.data.load import load_preferences, load_rankings

    assert len(load_rankings(tmp_path / "rank.jsonl")) == 2 and len(load_preferences(tmp_path / "pairs.jsonl")) == 4

    items[1]["ranking"] = [1, 1]
    write_jsonl(filled, items)
    assert main(argv) == 2
    assert f"{filled}:2: ranking: must list each of the 2 responses" in capsys.readouterr().err


def test_label_stage_writes_ai_preferences_and_resumes(tmp_path):
    prior = tmp_path / "versions" / "v1"
    prior.mkdir(parents=True)
    write_jsonl(prior / "samples.jsonl", SAMPLES)
    vdir = tmp_path / "versions" / ".v2.partial"
    vdir.mkdir()
    lines = []
    from saferounds.pipeline.stages import label as stage_label

    with Server(fair_judge) as srv:
        ctx = SimpleNamespace(
            config=SimpleNamespace(judge=JudgeConfig(model="j", base_url=srv.url, concurrency=2)),
            workspace=SimpleNamespace(resolve=lambda p: tmp_path / p), version=2, dir=vdir,
            prior_versions=[tmp_path / "versions" / "v0", prior], progress=lines.append,
            log=logging.getLogger("test"))
        metrics = stage_label.run(ctx)
        again = stage_label.run(ctx)  # an interrupted stage re-run: answers come from the cache
        assert len(srv.requests) == 8
    assert metrics["pairs"] == 4 and metrics["missing"] == 0 and metrics["samples"] == str(prior / "samples.jsonl")
    assert again["judge_requests"] == 0 and again["judge_cache_hits"] == 8
    assert (vdir / "work" / "label" / "judge_cache.sqlite").exists()
    assert len(read_jsonl(vdir / "ai_preferences.jsonl")) == 4 and lines[-1] == "label: 4/4 pairs judged"
    from saferounds.data.load import load_preferences

    assert len(load_preferences(vdir / "ai_preferences.jsonl")) == 4
    # this version's own samples win over earlier ones
    write_jsonl(vdir / "samples.jsonl", SAMPLES[3:])
    with Server(fair_judge) as srv:
        ctx.config.judge.base_url = srv.url
        assert stage_label.run(ctx)["pairs"] == 1
    assert "UNSAFE" not in blocks(srv.requests[0]["body"]["messages"][1]["content"])[1]


# --- issue 32 item 8: secrets in error bodies, bad judge specs, unreadable verdicts -----------------------

class EchoHeaders400:
    """An endpoint that answers every POST with HTTP 400 and echoes the request's headers and body back,
    as some proxies do."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                data = f"bad request; you sent:\n{self.headers}\n".encode() + body
                self.send_response(400)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_label_error_body_never_shows_the_api_key(tmp_path, capsys, monkeypatch):
    key = "sk-test-Zq8vN3xYp1Lw7Kt2"
    monkeypatch.setenv("SAFEROUNDS_TEST_KEY", key)
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES[:2])
    with EchoHeaders400() as srv:
        code = main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(tmp_path / "o.jsonl"),
                     "--judge", f"openai:j@{srv.url}#SAFEROUNDS_TEST_KEY"])
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert code == 1 and "HTTP 400" in err and "Bearer [redacted]" in err
    assert key not in err and "Zq8vN3" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_label_bad_judge_specs_exit_2_at_once(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES[:2])
    out = tmp_path / "o.jsonl"
    assert main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(out),
                 "--judge", "hf:/nonexistent/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hf:/nonexistent/model: no such directory" in err  # one line, no traceback
    for spec in ("openai:m@ftp://x", "openai:m@http://", "openai:m@http://h:99999/v1"):
        assert main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(out), "--judge", spec]) == 2
        err = capsys.readouterr().err
        assert "http:// or https://" in err or "not a URL" in err, spec
    (tmp_path / "saferounds.yaml").write_text("judge:\n  model: m\n  base_url: ftp://x\n")
    assert main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(out)]) == 2
    assert "judge: base_url: expected an http:// or https:// URL" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "o.jsonl.judge_cache.sqlite").exists()


def test_label_with_every_verdict_unreadable_exits_1_and_writes_no_output(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "samples.jsonl", SAMPLES)
    out = tmp_path / "o.jsonl"
    (tmp_path / "saferounds.yaml").write_text("judge:\n  parse_retries: 0\n")
    for mode in ("pairs", "scores"):
        with Server(lambda messages: "I would rather not say.") as srv:
            code = main(["label", "-w", str(tmp_path), "-i", str(samples), "-o", str(out), "--mode", mode,
                         "--judge", f"openai:j@{srv.url}"])
            assert len(srv.requests) == (8 if mode == "pairs" else 5)
        err = capsys.readouterr().err
        assert code == 1 and "none of the judge's" in err and "was not written" in err, err
        assert not out.exists()
    assert len(read_jsonl(tmp_path / "o.missing.jsonl")) == 4  # the 4 unjudged pairs, for a rerun
