"""eval.refusal_judge: llm (issue 26, part 5): the refusal and harm verdicts asked of the LLM judge, against a
scripted local OpenAI-compatible server (no network): replies read, ambiguous ones re-asked then left to the
patterns, a refusal never harmful, and its verdicts audited like any judge's."""
from __future__ import annotations

import pytest

from saferounds.eval.llm_verdicts import REASK, llm_verdicts, parse_verdict
from test_judges import Server, cfg_for


@pytest.mark.parametrize("reply, expected", [
    ("REFUSAL: yes\nHARMFUL: no", (True, False)),
    ("**Refusal:** No\n**Harmful:** Yes\nThe answer names a tool.", (False, True)),
    ("Reasoning first.\nrefused = false\nharm: false", (False, False)),
    ("REFUSAL: yes", None),  # harmful missing
    ("REFUSAL: yes\nREFUSAL: no\nHARMFUL: no", None),  # said both ways
    ("REFUSAL: maybe\nHARMFUL: no", None),
    ("The answer refuses: yes. It is not harmful.", None),  # prose, no lines
    ("", None),
    (None, None),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def _script(messages):
    """Reply by the answer's text: 'plain' clean lines, 'chatty' unreadable until re-asked, 'garbled' never
    readable, 'both' a refusal that the judge also calls harmful."""
    answer = messages[1]["content"]
    if "garbled" in answer:
        return "I would rather not say."
    if "chatty" in answer:
        return "REFUSAL: no\nHARMFUL: yes" if messages[-1]["content"] == REASK else "It complies, I think."
    if "both" in answer:
        return "REFUSAL: yes\nHARMFUL: yes"
    return "REFUSAL: no\nHARMFUL: no"


def test_verdicts_from_a_scripted_endpoint():
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    responses = ["plain answer", "chatty answer", "I'm sorry, but I can't help with that. garbled", "both", "  "]
    with Server(script=_script) as server:
        out = llm_verdicts_with(server, prompts, responses)
        # plain 1 + chatty 2 (re-asked once) + garbled 2 (parse_retries=1) + both 1; the empty answer: none
        assert len(server.requests) == 6
        sent = [r["body"]["messages"] for r in server.requests]
    assert all(m[0]["role"] == "system" and "REFUSAL: yes or no" in m[0]["content"] for m in sent)
    assert any("Request:\n<<<\np2\n>>>" in m[1]["content"] for m in sent)
    assert [(r["refusal"], r["harmful"], r["judge"]) for r in out] == [
        (False, False, "refusal=llm; harm=llm"),
        (False, True, "refusal=llm; harm=llm"),
        (True, None, "refusal=llm:unread->patterns; harm=none"),  # the patterns find "I'm sorry, but I can't"
        (True, False, "refusal=llm; harm=llm"),  # a refusal is never harmful
        (True, False, "refusal=empty; harm=none"),
    ]
    assert [r["refusal_patterns"] for r in out] == [False, False, True, False, True]


def llm_verdicts_with(server, prompts, responses, **kw):
    from saferounds.reward_models.feedback.judges import make_judge

    with make_judge(cfg_for(server, parse_retries=1, **kw)) as judge:
        return llm_verdicts(judge, prompts, responses)


def test_llm_verdicts_are_audited_like_any_judge():
    """The LLM's verdicts through eval's records and the audit: 4 unsafe answers judged (refusal, harmful)
    plain (F, F), chatty (F, T), both (T, F), plain2 (F, F); labels refusal F F T T, harmful F T F T.
    Refusal: TP 1 (both), FN 1 (plain2), TN 2 -> sensitivity 1/2, specificity 1. Harmful: TP 1 (chatty),
    FN 1 (plain2), TN 2 -> sensitivity 1/2, specificity 1."""
    from saferounds.eval.audit_labels import summarise
    from saferounds.eval.evaluate import judge_records

    responses = ["plain", "chatty", "both", "plain2"]
    rows = [{"id": f"u{i}", "messages": [{"role": "user", "content": f"bad {i}"}], "role": "unsafe"}
            for i in range(4)]
    with Server(script=_script) as server:
        learned = llm_verdicts_with(server, [f"bad {i}" for i in range(4)], responses)
    records = judge_records("dna", rows, responses, helpfulness=None, safety=None, learned=learned)
    labels = {f"u{i}": {"id": f"u{i}", "refusal": r, "harmful": h}
              for i, (r, h) in enumerate([(False, False), (False, True), (True, False), (True, True)])}
    acc = summarise(records, labels)["accuracy"]
    for q in ("refusal", "harmful"):
        assert (acc[q]["tp"], acc[q]["fn"], acc[q]["fp"], acc[q]["tn"]) == (1, 1, 0, 2), q
        assert (acc[q]["sensitivity"]["rate"], acc[q]["specificity"]["rate"]) == (0.5, 1.0)


def test_refusal_judge_llm_through_judges_score(tmp_path, capsys):
    """`eval.refusal_judge: llm` read from the workspace config, through load_judges and `judges score`; replies
    cached under the workspace's judges/ (a second run asks nothing); no judge.model is exit 2 naming the key."""
    import json

    from saferounds.eval.config import EvalConfig
    from saferounds.pipeline.cli import main

    assert "llm" in EvalConfig.__annotations__["refusal_judge"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}", "response": r}) + "\n"
                           for i, r in enumerate(["plain", "both", "chatty"])))
    ws = tmp_path / "ws"
    ws.mkdir()
    with Server(script=_script) as server:
        (ws / "saferounds.yaml").write_text(
            "model: {policy: tiny, reward_model: tiny}\neval: {refusal_judge: llm}\n"
            f"judge: {{model: scripted-judge, base_url: '{server.url}', api_key_env: '', backoff_s: 0.01}}\n")
        for run in range(2):
            out = tmp_path / f"out{run}.jsonl"
            assert main(["judges", "score", "--input", str(src), "--output", str(out), "-w", str(ws)]) == 0
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert [(r["refusal"], r["harmful"]) for r in rows] == [(False, False), (True, False), (False, True)]
            assert len(server.requests) == 4  # plain 1, both 1, chatty 2; the second run reads the cache
    assert (ws / "judges" / "llm_verdicts.sqlite").is_file()
    (ws / "saferounds.yaml").write_text("model: {policy: tiny, reward_model: tiny}\neval: {refusal_judge: llm}\n")
    capsys.readouterr()
    assert main(["judges", "score", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "-w", str(ws)]) == 2
    assert "eval.refusal_judge: llm needs an LLM judge: set judge.model" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_takes_the_llm_verdicts_and_says_which_judge(tmp_path):
    """eval.versions.learned_verdicts (eval's step 3) with refusal_judge llm: the LLM's verdicts per answer and
    the judge named in what metrics.json records (judges.refusal_judge, llm_verdict_judge)."""
    from saferounds.eval.config import EvalConfig
    from saferounds.eval.versions import learned_verdicts

    pairs = [([{"role": "user", "content": f"q{i}"}], r) for i, r in enumerate(["plain", "chatty", "both"])]
    with Server(script=_script) as server:
        verdicts, info = learned_verdicts(tmp_path, EvalConfig(refusal_judge="llm"), pairs, False, lambda *a: None,
                                          cfg_for(server))
    assert [(v["refusal"], v["harmful"]) for v in verdicts] == [(False, False), (False, True), (True, False)]
    assert (info["refusal"], info["refusal_judge"], info["llm_verdict_judge"]) == ("llm", "llm", "scripted-judge")
