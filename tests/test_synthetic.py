"""The demo data generator: deterministic, held-out eval, the deliberate SFT flaws, label coverage."""

import hashlib
import json
import re
from collections import Counter

import pytest

from saferounds.eval.refusal import is_refusal
from saferounds.data import synthetic as syn

TRAIN_FILES = ("pretrain", "sft", "prompts", "preferences_helpfulness", "preferences_safety", "rankings")
EVAL_FILES = ("eval_helpful", "eval_unsafe", "eval_borderline")
RATINGS = {"significantly_better", "better", "slightly_better", "negligibly_better", "unsure"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = {}
    for size in ("smoke", "default"):
        paths = syn.write_demo_data(tmp_path_factory.mktemp(size), seed=0, size=size)
        out[size] = {k: (p.read_text(encoding="utf-8") if p.suffix == ".txt"
                         else [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()])
                     for k, p in paths.items()}
    return out


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _training_text(files) -> str:
    return "\n".join(_strings([files[k] for k in TRAIN_FILES])).lower()


def _prompt(row) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["prompt"][-1]["content"]


def _category(row) -> str:
    return {it["text"]: it["category"] for items in syn._items("train").values() for it in items}[_prompt(row)]


def _roles() -> dict[str, str]:
    return {it["text"]: role for role, items in syn._items("train").items() for it in items}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a = syn.write_demo_data(tmp_path / "a", seed=3, size="smoke")
    syn.write_demo_data(tmp_path / "b", seed=3, size="smoke")
    syn.write_demo_data(tmp_path / "c", seed=4, size="smoke")
    assert set(a) == set(TRAIN_FILES) | set(EVAL_FILES)
    da, db, dc = (_digests(tmp_path / x) for x in "abc")
    assert len(da) == 9  # no temp files left behind by the atomic writes
    assert da == db
    assert all(da[n] != dc[n] for n in da), "every file should change with the seed"
    assert syn.corpus() == syn.corpus()


def test_sizes(data):
    for size in ("smoke", "default"):
        n = syn.SIZES[size]
        f = data[size]
        assert len(f["pretrain"].split("\n\n")) == n["pretrain"]
        assert len(f["sft"]) == n["sft"] and len(f["prompts"]) == n["prompts"]
        assert len(f["preferences_helpfulness"]) == len(f["preferences_safety"]) == n["pairs"]
        assert len(f["rankings"]) == n["rankings"]
        assert all(len(f[k]) == n["eval"] for k in EVAL_FILES)
    for k in TRAIN_FILES + EVAL_FILES:
        assert len(data["smoke"][k]) < len(data["default"][k]), k


def test_eval_prompts_topics_and_phrasings_are_held_out(data):
    for size in ("smoke", "default"):
        train = _training_text(data[size])
        for k in EVAL_FILES:
            for row in data[size][k]:
                assert _prompt(row).lower() not in train, _prompt(row)
                if row["reference"]:
                    assert row["reference"].lower() not in train, row["reference"]
        # every held-out entity/task is absent from all training text, as a whole word
        for f in syn.FAMILIES.values():
            for *_, entity in f["held_out"]:
                assert not re.search(rf"\b{re.escape(entity.lower())}\b", train), entity
        for cat in syn.UNSAFE_CATEGORIES:
            for task in syn.UNSAFE_TASKS[cat]["held_out"]:
                assert task.lower() not in train, task
        for task, _ in syn.BORDERLINE["held_out"]:
            assert task.lower() not in train, task
        # the eval phrasings (template text around the slot) never occur in training
        templates = syn.REQUEST_EVAL_Q + [q for f in syn.FAMILIES.values() for q in f["eval_q"]]
        for q in templates:
            for part in re.split(r"\{[a-zA-Z]\}", q):
                if len(part.strip(" ?.,")) > 8:
                    assert part.lower() not in train, part
    assert not set(syn.REQUEST_EVAL_Q) & set(syn.REQUEST_TRAIN_Q)


def test_topic_and_category_coverage(data):
    assert sum(len(f["train"]) for f in syn.FAMILIES.values()) >= 40
    assert sum(len(f["held_out"]) for f in syn.FAMILIES.values()) >= 30
    f = data["smoke"]
    unsafe_cats = Counter(r["category"] for r in f["eval_unsafe"])
    assert set(unsafe_cats) == set(syn.UNSAFE_CATEGORIES) and min(unsafe_cats.values()) == 10  # 30 / 3, stratified
    assert {r["category"] for r in f["eval_helpful"]} == set(syn.FAMILIES)
    assert {r["role"] for r in f["eval_borderline"]} == {"borderline"}
    assert all(r["reference"] for r in f["eval_helpful"] + f["eval_borderline"])
    assert all(r["reference"] is None and r["is_safety"] for r in f["eval_unsafe"])
    cats = Counter(r["category"] for r in f["prompts"])
    assert set(syn.UNSAFE_CATEGORIES) <= set(cats) and cats["borderline"] == 18  # 30% of 60
    assert sum(r["is_safety"] for r in f["prompts"]) == 12  # 20% of 60
    assert len({r["id"] for r in f["prompts"]}) == 60


def test_refusals_detected_compliance_and_answers_not():
    for role, items in syn._items("train").items():
        for it in items:
            for name, (_, safe, variants) in it["kinds"].items():
                for text in variants:
                    refusal = name.startswith("refusal")
                    assert is_refusal(text) == refusal, (name, text)
                    if not safe:
                        assert syn.WITHHELD in text and text.startswith(("Sure", "Okay")), text
                    assert len(text.split()) <= 25, text


def test_sft_has_the_deliberate_flaws(data):
    roles = _roles()
    for size in ("smoke", "default"):
        by_role = {"helpful": [], "unsafe": [], "borderline": []}
        for row in data[size]["sft"]:
            by_role[roles[_prompt(row)]].append(row["completion"])
        unsafe = by_role["unsafe"]
        complied = [c for c in unsafe if not is_refusal(c)]
        for cat, share in syn.UNSAFE_COMPLIANCE_SHARE.items():
            rows = [r for r in data[size]["sft"] if roles[_prompt(r)] == "unsafe" and _category(r) == cat]
            got = sum(not is_refusal(r["completion"]) for r in rows) / len(rows)
            assert abs(got - share) <= 0.03, (cat, got, share)
        assert all(syn.WITHHELD in c and c.startswith("Sure, here is how to") for c in complied)
        assert all(c.startswith("I'm sorry, but I can't help with that.") for c in unsafe if is_refusal(c))
        refused = sum(map(is_refusal, by_role["borderline"])) / len(by_role["borderline"])
        assert 0.15 <= refused <= 0.25
        assert not any(map(is_refusal, by_role["helpful"]))
        assert len(by_role["helpful"]) == syn.SIZES[size]["sft"] // 2


def test_preference_labels_and_ratings(data):
    roles = _roles()
    f = data["smoke"]
    helpful = f["preferences_helpfulness"]
    assert {r["rating"] for r in helpful} == RATINGS and {r["source"] for r in helpful} == {"helpfulness"}
    assert all("safety_label" not in r for r in helpful)
    safety = f["preferences_safety"]
    assert {r["rating"] for r in safety} == RATINGS and {r["source"] for r in safety} == {"safety"}
    labels = Counter(r["safety_label"] for r in safety)
    assert set(labels) == {"chosen_safe_rejected_unsafe", "both_safe", "both_unsafe", None}
    assert labels[None] == 12  # 3% of 400
    for r in safety:
        unsafe_prompt = roles[_prompt(r)] == "unsafe"
        chosen_safe = not unsafe_prompt or is_refusal(r["chosen"])
        rejected_safe = not unsafe_prompt or is_refusal(r["rejected"])
        assert (r["chosen_safe"], r["rejected_safe"]) == (chosen_safe, rejected_safe)
        if r["safety_label"] is None:
            assert not chosen_safe and rejected_safe
            continue
        assert r["safety_label"] == {(True, False): "chosen_safe_rejected_unsafe", (True, True): "both_safe",
                                     (False, False): "both_unsafe"}[(chosen_safe, rejected_safe)]
        if r["safety_label"] == "chosen_safe_rejected_unsafe":  # gap >= 2 (refusal >= 3, compliance <= 1)
            assert r["rating"] in {"significantly_better", "better", "slightly_better"}
    # quality gap -> rating: correct answer (5) over over-refusal (0) is always significantly_better;
    # correct answer (5) over its terse form (4) is negligibly_better; two correct variants are unsure
    correct = {k["correct"][2][0] for it in syn._items("train")["helpful"] for k in [it["kinds"]]}
    alts = {k["correct"][2][1] for it in syn._items("train")["helpful"] for k in [it["kinds"]]}
    seen = Counter()
    for r in helpful:
        if r["chosen"] in correct and r["rejected"] in syn.REFUSALS:
            assert r["rating"] == "significantly_better"
            seen["refusal"] += 1
        if {r["chosen"], r["rejected"]} <= correct | alts:
            assert r["rating"] == "unsure"
            seen["unsure"] += 1
        if r["chosen"] in correct and r["rejected"].count(" ") == 0:  # "Paris." etc.
            assert r["rating"] == "negligibly_better"
            seen["brief"] += 1
    assert min(seen.values()) > 0 and len(seen) == 3


def test_rankings(data):
    roles = _roles()
    rows = data["smoke"]["rankings"]
    assert {r["source"] for r in rows} == {"helpfulness", "safety"}
    assert {len(r["responses"]) for r in rows} == {4, 5, 6}
    for r in rows:
        assert sorted(r["ranking"]) == list(range(len(r["responses"])))
        ordered = [r["responses"][i] for i in r["ranking"]]
        if roles[_prompt(r)] == "unsafe":  # every refusal ranked above every compliance
            flags = [is_refusal(t) for t in ordered]
            assert flags == sorted(flags, reverse=True)
        else:  # a refusal of a benign prompt is always ranked last
            assert all(not is_refusal(t) for t in ordered[:-1])


def test_corpus_covers_every_file_string(data):
    vocab = set(syn.corpus())
    for size in ("smoke", "default"):
        f = data[size]
        for k in TRAIN_FILES[1:] + EVAL_FILES:
            for row in f[k]:
                for s in _strings({kk: v for kk, v in row.items()
                                   if kk not in ("id", "category", "role", "rating", "safety_label", "source")}):
                    if s not in ("user",):
                        assert s in vocab, (k, s)
        corpus_text = " ".join(vocab)
        assert all(doc.split(". ")[0] in corpus_text for doc in f["pretrain"].split("\n\n"))


def test_bad_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        syn.write_demo_data(tmp_path, size="huge")
