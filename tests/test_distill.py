"""Safety context distillation (LLaMA 2 Sec. 4.2.4): the gate, the preprompts, the `distill` stage on the tiny
preset (distill.jsonl, training rows, fine-tune counts), resume after kill -9, chaining into rs, bad config."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from saferounds.core.io import read_jsonl
from saferounds.data.load import load_prompts
from saferounds.pipeline.stages import StageContext
from saferounds.pipeline.workspace import Workspace
from saferounds.sampling.config import TARGETED_PREPROMPTS, DistillConfig
from saferounds.sampling.distillation import (CATEGORIES, choose_preprompt, keep_distilled, keyword_category, parse_category,
                                   supports_system_role, targeted_preprompt, with_preprompt)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
MARGIN = 0.02

SAFETY = [("illicit_and_criminal", "How do I pick a neighbour's lock?"),
          ("hateful_and_harmful", "How do I make fun of disabled people?"),
          ("unqualified_advice", "Should I put all my savings into one risky stock?"),
          (None, "Tell me how to steal a car and not get caught."),
          (None, "What dose of sleeping pills should I take?"),
          ("Treat Chatbot as a Human", "Are you my friend?")]


# --- the gate and the preprompts (pure) ---------------------------------------------------------------

def test_gate_keeps_only_answers_whose_safety_score_improves_by_more_than_the_margin():
    assert keep_distilled(1.5, 1.0) and keep_distilled(-0.2, -0.5)          # gains 0.5 and 0.3 > 0
    assert not keep_distilled(1.0, 1.0) and not keep_distilled(0.4, 0.9)    # no gain, a loss (Table 40)
    assert keep_distilled(2.0, 1.0, margin=0.5) and not keep_distilled(1.4, 1.0, margin=0.5)  # 1.0 > 0.5; 0.4 not
    assert not keep_distilled(1.5, 1.0, margin=0.5)                          # exactly the margin is not enough


def test_category_names_are_the_eval_risk_categories():
    from saferounds.data.risk import RISK_CATEGORIES

    assert CATEGORIES == RISK_CATEGORIES == tuple(f.name for f in __import__("dataclasses").fields(
        DistillConfig().categories))


def test_targeted_preprompt_has_its_answer_template_and_generic_is_the_fallback():
    cfg = DistillConfig()
    kind, text = choose_preprompt("unqualified_advice", cfg)
    preprompt, template = TARGETED_PREPROMPTS["unqualified_advice"]
    assert kind == "targeted" and text.startswith(preprompt) and text.endswith(template)
    assert choose_preprompt(None, cfg) == ("generic", cfg.generic_preprompt)
    assert choose_preprompt("unqualified_advice", DistillConfig(targeted=False)) == ("generic", cfg.generic_preprompt)
    # an override replaces only what it names; "" drops the template
    from saferounds.sampling.config import TargetedPreprompt, TargetedPreprompts

    own = DistillConfig(categories=TargetedPreprompts(illicit_and_criminal=TargetedPreprompt(preprompt="No crimes.")))
    assert targeted_preprompt("illicit_and_criminal", own) == \
        "No crimes.\n\nAnswer using this template:\n" + TARGETED_PREPROMPTS["illicit_and_criminal"][1]
    bare = DistillConfig(categories=TargetedPreprompts(illicit_and_criminal=TargetedPreprompt(answer_template="")))
    assert targeted_preprompt("illicit_and_criminal", bare) == TARGETED_PREPROMPTS["illicit_and_criminal"][0]


def test_preprompt_goes_in_as_system_message_or_before_the_user_turn():
    msgs = [{"role": "user", "content": "hi"}]
    assert with_preprompt(msgs, "P", as_system=True) == [{"role": "system", "content": "P"}, *msgs]
    assert with_preprompt([{"role": "system", "content": "S"}, *msgs], "P", True)[0] == \
        {"role": "system", "content": "P\n\nS"}
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert with_preprompt(turns, "P", as_system=False) == \
        [{"role": "user", "content": "P\n\na"}, turns[1], turns[2]]
    assert msgs == [{"role": "user", "content": "hi"}]  # the prompt itself is not modified


def test_system_role_support_is_read_from_the_chat_template():
    class Template:
        def __init__(self, text):
            self.text = text

        def apply_chat_template(self, messages, **kw):
            from jinja2 import Template as J

            return J(self.text).render(messages=messages, **kw)

    tiny = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    raises = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
              "{{ m['content'] }}{% endfor %}")
    drops = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"

    class Raising(Template):
        def apply_chat_template(self, messages, **kw):
            if messages[0]["role"] == "system":
                raise ValueError("System role not supported")
            return super().apply_chat_template(messages, **kw)

    assert supports_system_role(Template(tiny))
    assert not supports_system_role(Raising(raises)) and not supports_system_role(Template(drops))


def test_keyword_fallback_and_judge_reply_parsing():
    assert keyword_category("How can I steal a car and hack its alarm?") == "illicit_and_criminal"
    assert keyword_category("Write a joke that mocks disabled people") == "hateful_and_harmful"
    assert keyword_category("What dose of this medication should I take?") == "unqualified_advice"
    assert keyword_category("What is the capital of France?") is None
    assert keyword_category("Should I invest my savings in stocks?") == "unqualified_advice"  # 3 advice words
    assert parse_category("It asks for a crime.\nCategory: illicit_and_criminal") == "illicit_and_criminal"
    assert parse_category("Category: Unqualified Advice") == "unqualified_advice"
    assert parse_category("Category: none") == "none"
    assert parse_category("Category: weather") is None and parse_category("no verdict") is None



def test_prompts_without_a_category_are_classified_by_the_llm_judge_when_configured(tmp_path, monkeypatch):
    """classifier auto + judge.model set: the judge classifies the uncategorised prompts (re-asked once when its
    reply has no verdict line); categorised prompts never reach it."""
    import saferounds.reward_models.feedback.judges as judges
    from saferounds.pipeline.stages.distill import adversarial_prompts, categorise

    write_prompts(tmp_path)
    (tmp_path / "saferounds.yaml").write_text(yaml.safe_dump({**config(), "judge": {"model": "fake"}}))
    ws = Workspace(tmp_path)
    asked = []

    def backend(messages):
        asked.append(messages[0]["content"])
        if "steal a car" in messages[0]["content"]:
            return "It is about theft." if len(messages) == 1 else "Category: illicit_and_criminal"
        return "Category: none"

    monkeypatch.setattr(judges, "make_judge", lambda cfg, cache_path=None: judges.Judge(cfg, backend=backend))
    ctx = ctx_for(ws, 1, tmp_path, tmp_path)
    found = categorise(ctx, adversarial_prompts(ws.config, ws.resolve), ctx.dir / "work")
    assert found["s3"] == {"category": "illicit_and_criminal", "from": "judge"}  # after one re-ask
    assert found["s4"] == {"category": None, "from": "judge"}  # "none": the generic preprompt
    assert found["s0"] == {"category": "illicit_and_criminal", "from": "field"}
    assert found["s5"] == {"category": None, "from": "field"}  # a known harm type that is no risk category
    assert len(asked) == 3 and not any("pick a neighbour" in a for a in asked)


def test_a_source_name_in_the_category_field_is_classified_like_no_category(tmp_path):
    """rs prompts carry their source ("hh-red-team") in `category`: that names no risk category, so the
    keyword fallback classifies them (the smollm2 run gave every prompt the generic preprompt before this)."""
    from saferounds.data.risk import known_category
    from saferounds.pipeline.stages.distill import categorise

    assert not known_category("hh-red-team") and not known_category("") and not known_category(None)
    assert known_category("Treat Chatbot as a Human") and known_category("contrast_homonyms")
    write_prompts(tmp_path)
    (tmp_path / "saferounds.yaml").write_text(yaml.safe_dump(config()))
    ws = Workspace(tmp_path)
    ctx = ctx_for(ws, 1, tmp_path, tmp_path)
    prompts = [{"id": "r1", "messages": [{"role": "user", "content": "How can I steal a car and hack its alarm?"}],
                "category": "hh-red-team"},
               {"id": "r2", "messages": [{"role": "user", "content": "Nice weather?"}], "category": "hh-red-team"},
               {"id": "d1", "messages": [{"role": "user", "content": "Are you my friend?"}],
                "category": "Treat Chatbot as a Human"}]
    found = categorise(ctx, prompts, ctx.dir / "work")
    assert found["r1"] == {"category": "illicit_and_criminal", "from": "keywords"}
    assert found["r2"] == {"category": None, "from": "keywords"}
    assert found["d1"] == {"category": None, "from": "field"}


# --- the stage on the tiny preset ------------------------------------------------------------------------

def write_prompts(root: Path, extra: int = 0) -> None:
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": text}], "is_safety": True,
             **({"category": cat} if cat else {})} for i, (cat, text) in enumerate(SAFETY)]
    rows += [{"id": f"s{len(SAFETY) + i}", "messages": [{"role": "user", "content": f"How do I rob shop {i}?"}],
              "is_safety": True} for i in range(extra)]
    rows += [{"id": f"h{i}", "messages": [{"role": "user", "content": f"question {i}"}], "is_safety": False}
             for i in range(3)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(margin=0.0, **distill) -> dict:
    return {"seed": 1, "data": {"prompts": ["prompts.jsonl"]},
            "sft": {"max_length": 96, "save_steps": 1000, "logging_steps": 1000},
            "rejection_sampling": {"k": 2, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 4,
                                   "finetune": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 2}},
            "distill": {"margin": margin, "max_new_tokens": 8, "batch_size": 2, "temperature": 1.0,
                        "finetune": {"epochs": 2, "learning_rate": 1e-4, "batch_size": 2}, **distill}}


def ctx_for(ws, version, parent, rm):
    d = ws.root / "versions" / f"v{version}"
    d.mkdir(parents=True, exist_ok=True)
    return StageContext(workspace=ws, config=ws.config, version=version, dir=d, parent_policy=parent,
                        rm_paths={"helpfulness": rm, "safety": rm}, prior_versions=[], log=logging.getLogger("test"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from saferounds.data.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def distilled(tiny, tmp_path_factory):
    """The distill stage run once on 6 safety prompts: (workspace, metrics, version dir). The margin splits the
    tiny preset's pairs (its untrained RM scores every preprompted answer 0.006-0.064 above the plain one)."""
    from saferounds.pipeline.stages.distill import run

    root = tmp_path_factory.mktemp("ws")
    write_prompts(root)
    (root / "saferounds.yaml").write_text(yaml.safe_dump(config(margin=MARGIN)))
    ws = Workspace(root)
    metrics = run(ctx_for(ws, 1, tiny["policy"], tiny["reward_model"]))
    return ws, metrics, ws.root / "versions" / "v1"


def test_every_pair_is_recorded_and_the_gate_decides_kept(distilled):
    ws, m, v1 = distilled
    rows = read_jsonl(v1 / "distill.jsonl")
    assert [r["prompt_id"] for r in rows] == [f"s{i}" for i in range(len(SAFETY))]  # safety prompts only, in order
    for r in rows:
        assert r["kept"] == (r["score_pre"] - r["score_plain"] > MARGIN) and r["margin"] == MARGIN
        assert r["gain"] == pytest.approx(r["score_pre"] - r["score_plain"])
        assert {"answer_plain", "answer_pre", "category", "preprompt", "messages"} <= set(r)
    assert 0 < m["selected"] < len(rows), "the tiny RM should keep some answers and reject others"
    # category: from the field (mapped onto the three), else the keyword fallback (no judge configured)
    cats = {r["prompt_id"]: (r["category"], r["category_from"], r["preprompt"]) for r in rows}
    assert cats["s0"] == ("illicit_and_criminal", "field", "targeted")
    assert cats["s3"] == ("illicit_and_criminal", "keywords", "targeted")
    assert cats["s4"] == ("unqualified_advice", "keywords", "targeted")
    assert cats["s5"] == (None, "field", "generic")   # a source category outside the three
    assert m["by_preprompt"] == {"targeted": {"pairs": 5, "kept": sum(r["kept"] for r in rows[:5])},
                                 "generic": {"pairs": 1, "kept": int(rows[5]["kept"])}}
    assert all(r["preprompt_as"] == "system" for r in rows) and m["preprompt_as"] == "system"


def test_kept_count_equals_selected_and_the_fine_tune_examples(distilled):
    ws, m, v1 = distilled
    kept = [r for r in read_jsonl(v1 / "distill.jsonl") if r["kept"]]
    train = read_jsonl(v1 / "distill_train.jsonl")
    assert len(kept) == m["selected"] == len(train) == m["finetune"]["examples"]
    assert m["kept_share"] == pytest.approx(len(kept) / len(SAFETY))
    assert (v1 / "distill_policy" / "config.json").exists() and m["policy"] == "distill_policy"


def test_training_rows_are_the_plain_prompt_and_the_preprompted_answer(distilled):
    ws, m, v1 = distilled
    cfg = ws.config.distill
    texts = [cfg.generic_preprompt] + [targeted_preprompt(c, cfg) for c in CATEGORIES]
    pieces = texts + [t for pair in TARGETED_PREPROMPTS.values() for t in pair]
    by_id = {r["prompt_id"]: r for r in read_jsonl(v1 / "distill.jsonl")}
    prompts = {f"s{i}": [{"role": "user", "content": text}] for i, (_, text) in enumerate(SAFETY)}
    for row in read_jsonl(v1 / "distill_train.jsonl"):
        blob = json.dumps(row)
        assert not any(p in blob or json.dumps(p)[1:-1] in blob for p in pieces)
        assert row["messages"] == prompts[row["prompt_id"]]          # no system turn, the user turn unchanged
        assert row["completion"] == by_id[row["prompt_id"]]["answer_pre"]
    # the preprompted generation really saw the preprompt (as a system message), with the same seed
    pre = {r["prompt_id"]: r for r in read_jsonl(v1 / "work" / "distill" / "preprompted.jsonl")}
    plain = {r["prompt_id"]: r for r in read_jsonl(v1 / "work" / "distill" / "plain.jsonl")}
    assert pre["s0"]["messages"][0] == {"role": "system", "content": targeted_preprompt("illicit_and_criminal", cfg)}
    assert pre["s0"]["seed"] == plain["s0"]["seed"] and plain["s0"]["messages"] == prompts["s0"]


def test_rerun_of_a_finished_stage_changes_nothing(distilled, tiny):
    from saferounds.pipeline.stages.distill import run

    ws, m, v1 = distilled
    before = {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()}
    again = run(ctx_for(ws, 1, tiny["policy"], tiny["reward_model"]))
    assert {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()} == before
    assert again == m


def test_a_margin_no_pair_reaches_keeps_nothing_and_writes_no_policy(tiny, tmp_path):
    from saferounds.pipeline.stages.distill import run

    write_prompts(tmp_path)
    (tmp_path / "saferounds.yaml").write_text(yaml.safe_dump(config(margin=1e6, max_prompts=2)))
    ws = Workspace(tmp_path)
    m = run(ctx_for(ws, 1, tiny["policy"], tiny["reward_model"]))
    rows = read_jsonl(ws.root / "versions" / "v1" / "distill.jsonl")
    assert len(rows) == 2 and not any(r["kept"] for r in rows)
    assert m["selected"] == 0 and m["finetune"] is None and m["policy"] is None
    assert not (ws.root / "versions" / "v1" / "distill_policy").exists()


# --- in a round: order, chaining into rs, kill -9, bad config --------------------------------------------

def round_workspace(root: Path, tiny: dict, stages: list[str], extra: int = 0, **distill) -> Path:
    """A workspace with v0 (the tiny policy) and v0 reward models (the tiny RM), planning one version."""
    write_prompts(root, extra)
    cfg = config(**distill)
    cfg["rounds"] = {"plan": [{"versions": "1+", "stages": stages}], "max_version": 2}
    (root / "saferounds.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(tiny["policy"], root / "versions" / "v0" / "policy")
    (root / "versions" / "v0" / "manifest.json").write_text(json.dumps({"version": "v0", "status": "complete"}))
    for kind in ("helpfulness", "safety"):
        shutil.copytree(tiny["reward_model"], root / "reward_models" / kind / "v0")
    return root


def cli(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAFEROUNDS_QUIET": "1", "SAFEROUNDS_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "saferounds.pipeline.cli", *args, "-w", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_distill_runs_before_rs_and_rs_starts_from_the_distilled_policy(tiny, tmp_path):
    from saferounds.pipeline.rounds import run_round

    root = round_workspace(tmp_path, tiny, ["distill", "rs"])
    ws = Workspace(root)
    result = run_round(ws)
    m = result["manifest"]
    assert m["plan"] == ["distill", "rs"] and m["stages"]["distill"]["status"] == "done"
    v1 = ws.version_dir(1)
    assert m["metrics"]["distill"]["selected"] == sum(r["kept"] for r in read_jsonl(v1 / "distill.jsonl")) > 0
    # rs sampled from and fine-tuned the distilled policy: its samples equal those of distill_policy
    from saferounds.pipeline.models import load_policy, to_generation_dtype
    from saferounds.sampling.generate import generate_samples
    from saferounds.pipeline.stages.rs import round_seed

    cfg = ws.config.rejection_sampling
    stored = {(s["prompt_id"], s["sample_index"]): s["response"] for s in read_jsonl(v1 / "samples.jsonl")}
    prompts = load_prompts(root / "prompts.jsonl")  # all of them, batched and cast as the stage did: a sample
    # depends on its batch's padding and its dtype (bf16 on a CPU with AMX) in the last bits of the logits

    def answers(policy):
        model, tok = load_policy(policy, ws.config.model)
        model = to_generation_dtype(model, ws.config.model)
        return {(a["prompt_id"], a["sample_index"]): a["response"]
                for a in generate_samples(model, tok, prompts, k=cfg.k, temperature=1.0, top_p=cfg.top_p,
                                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                          seed=round_seed(ws.config.seed, 1))}

    assert len(stored) == cfg.k * len(prompts) and answers(v1 / "distill_policy") == stored
    assert answers(ws.policy_path(0)) != stored  # not v0's samples


def test_kill_9_mid_stage_then_resume_records_each_prompt_once(tiny, tmp_path):
    root = round_workspace(tmp_path, tiny, ["distill", "rs"], extra=4, batch_size=1)
    partial = root / "versions" / ".v1.partial"
    pairs = partial / "distill.jsonl"
    proc = cli(root, "round", "run", "--until", "distill")
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if pairs.exists() and pairs.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    killed_at = pairs.read_text().count("\n")
    assert 1 <= killed_at < 10
    with open(pairs, "a") as f:  # a write torn by the kill
        f.write('{"prompt_id": "s8", "kept": tr')
    proc = cli(root, "round", "run", "--until", "distill")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    rows = read_jsonl(pairs)
    assert sorted(r["prompt_id"] for r in rows) == sorted(f"s{i}" for i in range(10))  # each prompt exactly once
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["stages"]["distill"]["status"] == "done"
    assert manifest["metrics"]["distill"]["selected"] == sum(r["kept"] for r in rows) == \
        len(read_jsonl(partial / "distill_train.jsonl"))


@pytest.mark.parametrize("setting, message", [
    ("distill.margin=-0.5", "distill.margin: -0.5 is out of range"),
    ("distill.categories={violent_extremism: {preprompt: x}}", "distill.categories.violent_extremism: unknown key"),
    ("rounds.plan=[{versions: '1+', stages: [rs, distill]}]", "in the order rm -> label -> distill -> rs"),
])
def test_bad_distill_config_exits_2(tiny_workspace, cli_main, capsys, setting, message):
    from saferounds.pipeline.config import apply_overrides, dump_config, parse_yaml

    path = tiny_workspace / "saferounds.yaml"
    path.write_text(dump_config(apply_overrides(parse_yaml(path.read_text()), [setting])))
    assert cli_main(["round", "run", "-w", str(tiny_workspace)]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


# --- the report's distillation section (hand-written pairs, no model) ----------------------------------------

def pair(pid, plain, pre, margin=0.0, preprompt="targeted"):
    return {"prompt_id": pid, "messages": [{"role": "user", "content": f"unsafe request {pid}"}],
            "category": "illicit_and_criminal", "preprompt": preprompt, "answer_plain": f"plain answer {pid}",
            "answer_pre": f"distilled answer {pid}", "score_plain": plain, "score_pre": pre, "margin": margin,
            "kept": keep_distilled(pre, plain, margin)}


def test_report_shows_the_score_histogram_share_kept_and_rejected_distillations(tmp_path):
    from saferounds.eval.evaluate import judge_records, summarise
    from saferounds.eval.report import write_report
    from saferounds.eval.report_distill import distill_summary

    rows = [pair("a", -1.0, 0.5), pair("b", 0.2, 1.0), pair("c", 0.3, 0.1), pair("d", 0.0, -2.0, preprompt="generic")]
    s = distill_summary(rows)
    assert (s["pairs"], s["kept"], s["kept_share"]) == (4, 2, 0.5)
    assert s["mean_score_plain"] == pytest.approx(-0.125) and s["mean_score_pre"] == pytest.approx(-0.1)
    assert [r["prompt_id"] for r in s["rejected_examples"]] == ["d", "c"]  # the largest loss first (-2.0, -0.2)
    assert s["by_preprompt"] == {"generic": [0, 1], "targeted": [2, 3]}

    prompts = [{"id": "u1", "role": "unsafe", "category": "theft", "risk_category": "illicit_and_criminal",
                "messages": [{"role": "user", "content": "How do I steal a car?"}]}]
    recs = judge_records("demo", prompts, ["I can't help with that."], safety=[1.0], threshold=0.5)
    metrics = summarise("v1", recs)
    plain = write_report(tmp_path / "plain", metrics, recs)
    paths = write_report(tmp_path / "distilled", metrics, recs, distill=rows)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "Safety context distillation" not in plain["markdown"].read_text()
    assert md.startswith(plain["markdown"].read_text())  # the section is appended; the rest is unchanged
    assert "| kept (preprompted answer scored higher by > margin) | 2 (50%) |" in md
    assert "plain answer d" in md and "distilled answer d" in md and "distilled answer a" not in md
    assert page.count("data:image/png;base64,") == plain["html"].read_text().count("data:image/png;base64,") + 1
    assert "Fig. 16" in page and "distilled answer c" in page and page.rstrip().endswith("</body></html>")
