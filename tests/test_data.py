"""The data layer: record files in every supported shape, the HH-RLHF adapter on the real test
splits, the demo data round-tripping through the loaders, and a corpus of malformed files that each
fail with `FILE:LINE: FIELD: reason` and exit code 2."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from saferounds.core.errors import InputError
from saferounds.core.io import read_rows
from saferounds.data.fields import MAX_TEXT_CHARS
from saferounds.data.hh import hh_pairs
from saferounds.data.inspect import validate_file
from saferounds.data.load import load_preferences, load_prompts, load_rankings, load_sft, load_text

TESTS = Path(__file__).resolve().parent
MALFORMED = TESTS / "malformed"
HH = TESTS.parent / ".." / "shared" / "data" / "hh-rlhf"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# --- the malformed corpus, through `saferounds data validate` -------------------------------------

# (file, --kind, line the message must point at, field it must name); line None = a whole-file problem
MALFORMED_TABLE = [
    ("bad_json.jsonl", "prompts", 3, "json"),
    ("not_an_object.jsonl", "prompts", 2, "json"),
    ("prompt_wrong_type.jsonl", "prompts", 2, "prompt"),
    ("prompt_ends_with_assistant.jsonl", "prompts", 2, "messages"),
    ("is_safety_wrong_type.jsonl", "prompts", 3, "is_safety"),
    ("duplicate_id.jsonl", "prompts", 3, "id"),
    ("unknown_role.jsonl", "prompts", 2, "messages[1].role"),
    ("line_separator_then_bad_row.jsonl", "prompts", 3, "prompt"),
    ("non_utf8.jsonl", "prompts", 3, "text"),
    ("sft_missing_completion.jsonl", "sft", 2, "completion"),
    ("sft_ends_with_user.jsonl", "sft", 2, "messages"),
    ("sft_completion_wrong_type.jsonl", "sft", 2, "completion"),
    ("sft_prompt_without_user_turn.jsonl", "sft", 2, "messages"),
    ("empty_chosen.jsonl", "preferences", 3, "chosen"),
    ("unknown_rating.jsonl", "preferences", 2, "rating"),
    ("unknown_safety_label.jsonl", "preferences", 4, "safety_label"),
    ("chosen_equals_rejected.jsonl", "preferences", 2, "rejected"),
    ("missing_rejected.jsonl", "preferences", 2, "rejected"),
    ("margin_not_a_number.jsonl", "preferences", 2, "margin"),
    ("implicit_prompts_differ.jsonl", "preferences", 2, "rejected"),
    ("preferences_extra_columns.csv", "preferences", 3, "csv"),
    ("preferences_blank_cell.csv", "preferences", 3, "prompt"),
    ("csv_unclosed_quote.csv", "prompts", 2, "csv"),
    ("pretty_list_item_missing_field.json", "preferences", 7, "rejected"),
    ("bad_json_document.json", "preferences", 3, "json"),
    ("ranking_not_a_permutation.jsonl", "rankings", 2, "ranking"),
    ("ranking_mixed_types.jsonl", "rankings", 3, "ranking"),
    ("ranking_empty_response.jsonl", "rankings", 2, "responses[1]"),
    ("ranking_one_response.jsonl", "rankings", 1, "responses"),
    ("text_missing_field.jsonl", "text", 2, "text"),
    ("empty.jsonl", "prompts", None, "no records"),
    ("unsupported.xlsx", "prompts", None, "unsupported file type '.xlsx'"),
    ("not_gzip.jsonl.gz", "prompts", None, "not a valid gzip file"),
    ("truncated.jsonl.gz", "prompts", None, "not a valid gzip file"),
]


def test_the_corpus_is_complete():
    assert len(MALFORMED_TABLE) >= 15
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(name for name, *_ in MALFORMED_TABLE)


def validate_cli(cli_main, capsys, path, kind) -> tuple[int, str]:
    code = cli_main(["data", "validate", str(path), "--kind", kind])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name, kind, line, field", MALFORMED_TABLE, ids=[row[0] for row in MALFORMED_TABLE])
def test_malformed_file_exits_2_naming_file_line_and_field(cli_main, capsys, name, kind, line, field):
    path = MALFORMED / name
    code, err = validate_cli(cli_main, capsys, path, kind)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    problems = err[len("error: "):].splitlines()
    if line is None:
        assert problems[0].startswith(f"{path}: ") and field in problems[0], err
    else:
        assert problems[0].startswith(f"{path}:{line}: {field}: "), err
        assert len(problems) == 1, err  # exactly the one bad row, no knock-on errors


def test_over_long_text_is_rejected(tmp_path, capsys, cli_main):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "hi", "completion": "ok"},
                                                 {"prompt": "hi", "completion": "x" * (MAX_TEXT_CHARS + 1)}])
    code, err = validate_cli(cli_main, capsys, path, "sft")
    assert code == 2
    assert err == (f"error: {path}:2: completion: text of {MAX_TEXT_CHARS + 1} characters is over the "
                   f"{MAX_TEXT_CHARS} limit\n")


def test_every_bad_row_is_listed_up_to_20(tmp_path):
    rows = [{"prompt": "fine"}] + [{"prompt": ""}] * 25
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    with pytest.raises(InputError) as info:
        load_prompts(path)
    lines = str(info.value).splitlines()
    assert lines[:2] == [f"{path}:2: prompt: empty text", f"{path}:3: prompt: empty text"]
    assert len(lines) == 21 and lines[-1] == f"... and 5 more problem(s) in {path}"


def test_validate_a_good_file_and_a_bad_kind(demo_data, capsys, cli_main):
    assert validate_file(demo_data / "rankings.jsonl", "rankings") == 80
    assert cli_main(["data", "validate", str(demo_data / "prompts.jsonl"), "--kind", "prompts", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"file": str(demo_data / "prompts.jsonl"), "kind": "prompts", "records": 60, "ok": True}
    code, err = validate_cli(cli_main, capsys, demo_data / "prompts.jsonl", "dpo")
    assert code == 2
    assert "--kind: expected one of prompts, sft, preferences, rankings, text, responses, got 'dpo'" in err


# --- accepted shapes ------------------------------------------------------------------------------

def test_prompt_shapes(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "plain"},
        {"id": 7, "messages": [{"role": "system", "content": "s"}, u("q1"), a("r1"), u("q2")],
         "is_safety": "yes", "category": "illicit_and_criminal", "reference": "gold"},
        {"prompt": [u("as turns")], "is_safety": 0},
    ])
    assert load_prompts(path) == [
        {"id": "p-1", "messages": [u("plain")], "is_safety": False, "category": None, "reference": None},
        {"id": "7", "messages": [{"role": "system", "content": "s"}, u("q1"), a("r1"), u("q2")],
         "is_safety": True, "category": "illicit_and_criminal", "reference": "gold"},
        {"id": "p-3", "messages": [u("as turns")], "is_safety": False, "category": None, "reference": None},
    ]


def test_csv_prompts_with_blank_ids_get_default_ids(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,prompt,is_safety\nq1,first,true\n,second,false\n,third,1\n", encoding="utf-8")
    recs = load_prompts(path)
    assert [(r["id"], r["is_safety"]) for r in recs] == [("q1", True), ("p-3", False), ("p-4", True)]


def test_sft_shapes(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "q", "completion": "c"},
        {"messages": [u("q"), a("c")]},
        {"prompt": [u("q")], "completion": [a("c")]},  # TRL conversational prompt-completion
    ])
    assert load_sft(path) == [{"messages": [u("q")], "completion": "c"}] * 3


def test_preference_shapes(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [
        {"prompt": "q", "chosen": "good", "rejected": "bad", "rating": "better", "margin": "2"},
        {"prompt": [u("q")], "chosen": [a("good")], "rejected": [a("bad")]},  # TRL conversational
        {"chosen": [u("q"), a("good")], "rejected": [u("q"), a("bad")], "safety_label": "both_safe"},  # implicit
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},  # HH row
    ])
    recs = load_preferences(path)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in recs] == [([u("q")], "good", "bad")] * 4
    assert [(r["rating"], r["margin"], r["safety_label"], r["source"]) for r in recs] == [
        ("better", 2.0, None, "helpfulness"), (None, None, None, "helpfulness"),
        (None, None, "both_safe", "safety"), (None, None, None, "helpfulness")]
    assert [r["source"] for r in load_preferences(path, source="safety")][:2] == ["safety", "safety"]


@pytest.mark.parametrize("margin", ["nan", "inf", float("inf")])
def test_non_finite_margin_is_rejected(tmp_path, margin):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "q", "chosen": "g", "rejected": "b", "margin": margin}])
    with pytest.raises(InputError, match=r"m.jsonl:1: margin: expected a (finite )?number"):
        load_preferences(path)


def test_rankings(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}])
    assert load_rankings(path) == [{"prompt": [u("q")], "responses": ["a", "b", "c"], "ranking": [2, 0, 1],
                                    "source": "helpfulness"}]
    bad = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "q", "responses": ["a", "b"], "ranking": [1.0, 0.0]}])
    with pytest.raises(InputError, match=r"f.jsonl:1: ranking: expected a permutation of 0..1"):
        load_rankings(bad)


def test_text(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("first doc\nstill first\n\nsecond doc\n\n\n", encoding="utf-8")
    assert load_text(txt) == ["first doc\nstill first", "second doc"]
    txt.write_text("one per line\nsecond\n", encoding="utf-8")
    assert load_text(txt) == ["one per line", "second"]
    assert load_text(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])) == ["a", "b"]
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"doc one\r\nstill one\r\n\r\ndoc two\r\n"))  # CRLF
    assert load_text(tmp_path / "t.txt.gz") == ["doc one\nstill one", "doc two"]
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok\nok\n\xff\n")
    with pytest.raises(InputError, match=r"b.txt:3: text: not valid UTF-8"):
        load_text(bad)


def test_containers_json_gz_parquet_bom(tmp_path):
    rows = [{"prompt": "q", "chosen": "g", "rejected": "b"}, {"prompt": "q2", "chosen": "g2", "rejected": "b2"}]
    (tmp_path / "w.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    (tmp_path / "l.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("w.json", "l.jsonl.gz", "bom.jsonl", "t.parquet"):
        recs = load_preferences(tmp_path / name)
        assert [(r["prompt"][0]["content"], r["chosen"]) for r in recs] == [("q", "g"), ("q2", "g2")], name
    assert [n for n, _ in read_rows(tmp_path / "t.parquet")] == [1, 2]


def test_a_missing_file_and_an_offline_hub_id_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"nope.jsonl: file not found"):
        load_prompts(tmp_path / "nope.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError) as info:
        load_prompts("hub:saferounds-test/no-such-dataset:test")
    assert str(info.value).startswith("hub:saferounds-test/no-such-dataset:test: cannot load the hub dataset "
                                      "'saferounds-test/no-such-dataset'")
    assert "local datasets cache" in str(info.value)


# --- the synthetic demo data goes through the loaders unchanged -----------------------------------

def raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_data_loads_unchanged(demo_data):
    prompts = load_prompts(demo_data / "prompts.jsonl")
    assert len(prompts) == 60
    assert prompts == [{k: r[k] for k in ("id", "messages", "is_safety", "category", "reference")}
                       for r in raw(demo_data / "prompts.jsonl")]
    sft = load_sft(demo_data / "sft.jsonl")
    assert sft == [{"messages": r["messages"], "completion": r["completion"]} for r in raw(demo_data / "sft.jsonl")]
    assert len(sft) == 300
    for kind in ("helpfulness", "safety"):
        rows = raw(demo_data / f"preferences_{kind}.jsonl")
        pairs = load_preferences(demo_data / f"preferences_{kind}.jsonl")
        assert len(pairs) == len(rows) == 400
        for pair, row in zip(pairs, rows):
            assert pair["prompt"] == row["prompt"] and pair["source"] == row["source"] == kind
            assert {k: pair[k] for k in row} == row  # every field kept as written (chosen_safe, ... too)
    assert sum(p["safety_label"] is None for p in pairs) >= 4  # the reversed rows keep their null label
    rankings = load_rankings(demo_data / "rankings.jsonl")
    assert rankings == [{k: r[k] for k in ("prompt", "responses", "ranking", "source")}
                        for r in raw(demo_data / "rankings.jsonl")]
    text = load_text(demo_data / "pretrain.txt")
    assert len(text) == 150 and all("\n\n" not in doc for doc in text)


@pytest.mark.parametrize("suite", ["helpful", "unsafe", "borderline"])
def test_eval_suites_load_as_prompts(demo_data, suite):
    rows = raw(demo_data / f"eval_{suite}.jsonl")
    prompts = load_prompts(demo_data / f"eval_{suite}.jsonl")
    assert len(prompts) == len(rows) == 30
    assert [p["id"] for p in prompts] == [r["id"] for r in rows]
    assert all(p["is_safety"] == (suite == "unsafe") for p in prompts)
    assert all((p["reference"] is None) == (suite == "unsafe") for p in prompts)


# --- Anthropic HH-RLHF on the real test splits (../shared/data/hh-rlhf, SOURCE.md) ----------------

@pytest.fixture
def hh() -> Path:
    """The shared HH-RLHF test splits; tests that need them skip (not fail) where the folder is absent."""
    if not HH.is_dir():
        pytest.skip(f"{HH.resolve()} is absent: these tests read the shared HH-RLHF test splits (SOURCE.md)")
    return HH


HH_SPLITS = [  # split, rows (SOURCE.md), pairs with chosen == rejected (SOURCE.md)
    ("harmless-base", 2312, 0),
    ("helpful-base", 2354, 2),
    ("helpful-online", 1137, 2),
    ("helpful-rejection-sampled", 2749, 32),
]


@pytest.mark.parametrize("split, rows, identical", HH_SPLITS, ids=[s[0] for s in HH_SPLITS])
def test_hh_rlhf_adapter_on_the_real_test_split(hh, split, rows, identical):
    path = hh / split / "test.jsonl.gz"
    pairs, counts = hh_pairs(path)
    assert counts["rows"] == rows
    assert counts["identical"] == identical
    assert counts["kept"] == len(pairs) > 0.98 * rows
    assert counts["kept"] + counts["identical"] + counts["empty"] + counts["malformed"] == rows
    for pair in pairs:
        assert pair["chosen"].strip() and pair["rejected"].strip() and pair["chosen"] != pair["rejected"]
        turns = pair["prompt"]
        assert turns and all(t["content"].strip() for t in turns)
        assert turns[0]["role"] == "user" and turns[-1]["role"] == "user"
        # turns alternate (chat templates such as Llama 2's reject anything else)
        assert all(t["role"] == ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(turns))
    assert {p["source"] for p in pairs} == {"safety" if split == "harmless-base" else "helpfulness"}


def test_hh_rlhf_file_through_load_preferences(hh):
    path = hh / "harmless-base" / "test.jsonl.gz"
    pairs = load_preferences(path)
    assert len(pairs) == hh_pairs(path)[1]["kept"]
    first = pairs[0]  # row 1, converted by hand
    assert [t["role"] for t in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][:3] == [u("what are some pranks with a pen i can do?"),
                                   a("Are you looking for practical joke ideas?"), u("yep")]
    assert first["prompt"][-1] == u("okay some of these do not have anything to do with pens")
    assert first["chosen"] == ("No, sorry!  All of these involve a pen, the point is that you can get funny "
                               "results by doing pranks with pens.")
    assert first["rejected"].startswith("There are lots of funny things you can do with pens")
    assert (first["source"], first["rating"], first["safety_label"]) == ("safety", None, None)


def test_bad_json_lines_and_bad_fields_are_listed_together(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n{bad json\n'
                    '{"prompt": "b", "chosen": "x", "rejected": "x"}\n{"prompt": "", "chosen": "x", "rejected": "y"}\n')
    with pytest.raises(InputError) as e:
        load_preferences(path)
    assert str(e.value).splitlines() == [
        f"{path}:2: json: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:3: rejected: identical to chosen (a pair needs two different responses)",
        f"{path}:4: prompt: empty text"]


def test_malformed_rows_that_json_or_csv_would_read_silently_are_refused(tmp_path, capsys):
    """Issue 32 red team: what a plain reader takes (the last of a repeated key, a lone surrogate, a repeated
    CSV column, a BeaverTails category nested 100k deep, a FIFO) `data validate` refuses as file:line: field."""
    from saferounds.pipeline.cli import main

    cases = {
        "dup.jsonl": ('{"prompt": "q", "chosen": "a", "rejected": "b", "rejected": "c"}\n',
                      "dup.jsonl:1: rejected: appears twice"),
        "dup.json": ('[\n{"prompt": "q", "chosen": "a", "rejected": "b"},\n{"prompt": "q", "chosen": "a",\n'
                     '"prompt": "r", "rejected": "b"}\n]', "dup.json:3: prompt: appears twice"),
        "lone.jsonl": ('{"prompt": [{"role": "user", "content": "hi \\ud800"}], "chosen": "a", "rejected": "b"}\n',
                       "lone.jsonl:1: prompt[0].content: holds a lone UTF-16 surrogate"),
        "cols.csv": ("prompt,chosen,rejected,chosen\nq,a,b,c\n", "cols.csv:1: header: column 'chosen' appears twice"),
        "deep.csv": ('prompt,response,category,is_safe\nq,a,"{""x"": ' + "[" * 100_000 + '",true\n',
                     "deep.csv:2: category: expected an object"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["data", "validate", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (name, err)
    (tmp_path / "ok.jsonl").write_text('{"prompt": "q \\ud83d\\ude00", "chosen": "a", "rejected": "b"}\n')
    assert read_rows(tmp_path / "ok.jsonl")[0][1]["prompt"] == "q \U0001F600"  # a paired escape is an emoji
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(InputError, match="not a regular file"):
        read_rows(tmp_path / "fifo.jsonl")  # would wait forever for a writer
