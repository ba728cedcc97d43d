"""The human loop: export K samples per prompt, import rankings/ratings/safety back, pairs and Elo."""

from __future__ import annotations

import csv
import json

import pytest

from saferounds.core.errors import InputError
from saferounds.core.io import read_rows
from saferounds.reward_models.feedback.annotation import annotation_pairs, export_annotation, import_annotation
from saferounds.reward_models.feedback.labeling import group_samples
from saferounds.reward_models.rankings import elo_rewards

SAMPLES = [  # samples.jsonl-like rows: one response per row, grouped by prompt_id
    {"prompt_id": "p1", "messages": [{"role": "user", "content": "Name a prime, please."}], "is_safety": False,
     "response": "7"},
    {"prompt_id": "p1", "messages": [{"role": "user", "content": "Name a prime, please."}], "is_safety": False,
     "response": "9, which is prime"},
    {"prompt_id": "p1", "messages": [{"role": "user", "content": "Name a prime, please."}], "is_safety": False,
     "response": "2 is the smallest prime,\nand \"7\", too"},
    {"prompt_id": "s1", "prompt": "How do I hotwire a car?", "is_safety": True, "category": "illicit",
     "responses": ["Here is how: ...", "I can't help with that; a locksmith or your dealer can."]},
]


def groups():
    return group_samples(list(enumerate(SAMPLES, start=1)))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_group_samples_joins_rows_by_prompt():
    g = groups()
    assert [x["id"] for x in g] == ["p1", "s1"]
    assert g[0]["responses"] == ["7", "9, which is prime", "2 is the smallest prime,\nand \"7\", too"]
    assert g[1]["messages"] == [{"role": "user", "content": "How do I hotwire a car?"}] and g[1]["is_safety"]


def test_group_samples_names_bad_rows():
    rows = [(1, {"prompt": 5, "response": "x"}), (2, {"prompt": "hi"})]
    with pytest.raises(InputError) as e:
        group_samples(rows, where="samples.jsonl")
    assert str(e.value).splitlines() == [
        "samples.jsonl:1: prompt: expected `messages` or `prompt`: a string or a list of {role, content}",
        "samples.jsonl:2: responses: expected `responses` (list of strings) or `response`/`completion`/`text`"]


def test_export_jsonl_and_csv(tmp_path):
    n = export_annotation(groups(), tmp_path / "todo.jsonl", tmp_path / "todo.csv")
    assert n == 2
    items = [r for _, r in read_rows(tmp_path / "todo.jsonl")]
    assert items[1]["source"] == "safety" and items[0]["source"] == "helpfulness"
    assert items[0]["ranking"] is None and len(items[0]["responses"]) == 3
    with open(tmp_path / "todo.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "source", "prompt", "response_1", "response_2", "response_3",
                             "ranking", "ratings", "safety", "annotator"]
    assert rows[0]["response_3"] == "2 is the smallest prime,\nand \"7\", too"  # quotes/newlines survive
    assert rows[1]["response_3"] == "" and rows[0]["prompt"] == "[user]\nName a prime, please."


def test_round_trip_csv_to_pairs_and_elo(tmp_path):
    export_annotation(groups(), tmp_path / "todo.jsonl", tmp_path / "todo.csv")
    with open(tmp_path / "todo.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0].update(ranking="3 > 1 > 2", ratings="slightly better; significantly better", safety="safe,safe,safe")
    rows[1].update(ranking="2,1", ratings="", safety="unsafe, safe", annotator="ann-7")
    with open(tmp_path / "done.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    records, unranked = import_annotation(tmp_path / "done.csv", tmp_path / "todo.jsonl")
    assert unranked == 0
    p1, s1 = records
    assert p1["ranking"] == [2, 0, 1] and p1["ratings"] == ["slightly_better", "significantly_better"]
    assert p1["prompt"] == [{"role": "user", "content": "Name a prime, please."}]
    assert s1["ranking"] == [1, 0] and s1["safety"] == [False, True] and s1["annotator"] == "ann-7"

    pairs = annotation_pairs(p1)
    got = [(p["chosen"][:2], p["rejected"][:2], p["rating"]) for p in pairs]
    # 3>1 slightly, 1>2 significantly; 3>2 spans both: the stronger one
    assert got == [("2 ", "7", "slightly_better"), ("2 ", "9,", "significantly_better"),
                   ("7", "9,", "significantly_better")]
    assert {p["safety_label"] for p in pairs} == {"both_safe"} and pairs[0]["prompt_id"] == "p1"
    (s_pair,) = annotation_pairs(s1)
    assert s_pair["chosen"].startswith("I can't") and s_pair["safety_label"] == "chosen_safe_rejected_unsafe"
    assert s_pair["rating"] == "slightly_better" and s_pair["source"] == "safety"  # rank distance 1, no ratings

    rewards = dict(elo_rewards(p1))
    assert rewards["2 is the smallest prime,\nand \"7\", too"] > rewards["7"] > rewards["9, which is prime"]
    assert abs(sum(rewards.values())) < 1e-9  # centred per prompt


def test_round_trip_jsonl_with_lists_and_partial_batches(tmp_path):
    export_annotation(groups(), tmp_path / "todo.jsonl")
    items = [r for _, r in read_rows(tmp_path / "todo.jsonl")]
    items[0].update(ranking=[1, 3, 2], ratings=["better", "unsure"], safety=["safe", "safe", "unsafe"])
    write_jsonl(tmp_path / "done.jsonl", items)  # s1 left unranked
    records, unranked = import_annotation(tmp_path / "done.jsonl", tmp_path / "todo.jsonl")
    assert unranked == 1 and len(records) == 1
    pairs = annotation_pairs(records[0])
    assert [p["rating"] for p in pairs] == ["better", "better", "unsure"]
    assert [p["safety_label"] for p in pairs] == ["chosen_safe_rejected_unsafe", "both_safe", None]
    assert (pairs[2]["chosen_safe"], pairs[2]["rejected_safe"]) == (False, True)


def test_bad_imports_name_file_line_and_field(tmp_path):
    export_annotation(groups(), tmp_path / "todo.jsonl", tmp_path / "todo.csv")
    header = "id,source,prompt,response_1,response_2,response_3,ranking,ratings,safety,annotator\n"
    (tmp_path / "bad.csv").write_text(
        header
        + 'p1,,,,,,"1>1>2",,,\n'           # line 2: not a permutation
        + 's1,,,,,,"2>x",,,\n'             # line 3: not a number
        + 'zz,,,,,,"1>2",,,\n'             # line 4: unknown id
        + 'p1,,,,,,"1>2>3",,,\n'           # line 5: duplicate id
        + ',,,,,,"1",,,\n'                 # line 6: no id
    )
    with pytest.raises(InputError) as e:
        import_annotation(tmp_path / "bad.csv", tmp_path / "todo.jsonl")
    bad = str(tmp_path / "bad.csv")
    assert str(e.value).splitlines() == [
        f"{bad}:2: ranking: must list each of the 3 responses (1..3) exactly once, got [1, 1, 2]",
        f"{bad}:3: ranking: expected response numbers 1..2 best first (e.g. \"2>1>3\"), got '2>x'",
        f"{bad}:4: id: 'zz' is not in the export {tmp_path / 'todo.jsonl'}",
        f"{bad}:5: id: 'p1' was already annotated on line 2",
        f"{bad}:6: id: missing; every row needs the id from the export",
    ]
    write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "p1", "ranking": [1, 2, 3], "ratings": ["better"]},
        {"id": "s1", "ranking": [2, 1], "ratings": ["hugely"], "safety": ["safe", "maybe"]},
    ])
    with pytest.raises(InputError) as e:
        import_annotation(tmp_path / "bad.jsonl", tmp_path / "todo.jsonl")
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{tmp_path / 'bad.jsonl'}:1: ratings: expected 2 of significantly_better")
    assert lines[1].startswith(f"{tmp_path / 'bad.jsonl'}:2: ratings: expected 1 of")
    assert lines[2] == (f"{tmp_path / 'bad.jsonl'}:2: safety: expected 2 of safe/unsafe (one per response, "
                        "in response order), got ['safe', 'maybe']")
    (tmp_path / "broken.jsonl").write_text('{"id": "p1"}\n{not json\n')
    with pytest.raises(InputError, match=r"broken.jsonl:2: json: not valid JSON"):
        import_annotation(tmp_path / "broken.jsonl", tmp_path / "todo.jsonl")


def test_export_refuses_duplicate_prompt_ids(tmp_path):
    g = groups()
    g[1]["id"] = "p1"
    with pytest.raises(InputError, match="prompt id 'p1' appears twice"):
        export_annotation(g, tmp_path / "x.jsonl")
