"""Public data from the hub (data/hub.py, issue 29 item 1), offline: `datasets` reads local directories
shaped like the hub repositories (Anthropic/hh-rlhf, LibrAI/do-not-answer, Paul/XSTest,
natolambert/xstest-v2-copy) through the same code a download takes, and the smollm2 preset's split from
them is identical, file for file, to the split from the --data-root directory."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED_DATA / "hh-rlhf" / "helpful-online").is_dir(),
                                reason="no ../shared/data (the hub-shaped files are made from it)")
HH_DIRS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")
HH_ROWS = 600  # pairs per HH split: enough for every bucket of the mini size, fast to prepare
MODELS = ("llama2orig", "llama2new", "mistralinstruct")


def _head_gz(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.write_bytes(gzip.compress("".join(lines).encode("utf-8")))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """(data_root, mirror): the same rows as a --data-root directory and as hub-shaped repositories."""
    import pandas as pd

    base = tmp_path_factory.mktemp("hub")
    root, mirror = base / "root", base / "mirror"
    for d in HH_DIRS:  # the hub repository keeps the same paths as upstream's git repository
        _head_gz(SHARED_DATA / "hh-rlhf" / d / "test.jsonl.gz", root / "hh-rlhf" / d / "test.jsonl.gz", HH_ROWS)
        shutil.copy(root / "hh-rlhf" / d / "test.jsonl.gz", _mk(mirror / "Anthropic/hh-rlhf" / d) / "test.jsonl.gz")
    for rel in ("do-not-answer/data_en.csv", "xstest/xstest_prompts.csv",
                *(f"xstest/model_completions/xstest_v2_completions_{m}.csv" for m in MODELS)):
        shutil.copy(SHARED_DATA / rel, _mk((root / rel).parent) / Path(rel).name)
    # LibrAI/do-not-answer: one parquet under data/ (push_to_hub's layout), ints for the labels
    pd.read_csv(SHARED_DATA / "do-not-answer/data_en.csv").to_parquet(
        _mk(mirror / "LibrAI/do-not-answer/data") / "train-00000-of-00001.parquet")
    shutil.copy(SHARED_DATA / "xstest/xstest_prompts.csv", _mk(mirror / "Paul/XSTest") / "xstest_prompts.csv")
    # natolambert/xstest-v2-copy: one parquet per split, named in the card's configs
    repo = _mk(mirror / "natolambert/xstest-v2-copy/data")
    for m in MODELS:
        pd.read_csv(SHARED_DATA / f"xstest/model_completions/xstest_v2_completions_{m}.csv").to_parquet(
            repo / f"{m}-00000-of-00001.parquet")
    (repo.parent / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {m}\n    path: data/{m}-*\n" for m in MODELS) + "---\n", encoding="utf-8")
    return root, mirror


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="module")
def cache(roots, tmp_path_factory):
    from saferounds.data.hub import download_public_data

    return download_public_data(tmp_path_factory.mktemp("home") / "data" / "hub", mirror=roots[1])


def test_hub_rows_give_the_same_split_as_the_data_root(roots, cache, tmp_path):
    from saferounds.data.public import build

    a, b = tmp_path / "from_root", tmp_path / "from_hub"
    rec_root, rec_hub = build(roots[0], a, "mini"), build(cache, b, "mini")
    names = sorted(p.name for p in a.iterdir() if p.name != "SOURCES.json")
    assert names == sorted(p.name for p in b.iterdir() if p.name != "SOURCES.json") and len(names) >= 10
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert rec_root["counts"] == rec_hub["counts"] and sum(rec_hub["counts"].values()) > 40
    # the workspace's SOURCES.json says where the rows came from
    assert rec_hub["sources"]["hh_harmless"]["dataset"] == "Anthropic/hh-rlhf"
    assert rec_hub["sources"]["xstest"]["dataset"] == "Paul/XSTest" and "dataset" not in rec_root["sources"]["xstest"]


def test_sources_record_dataset_ids_rows_and_sha256(cache):
    from saferounds.core.io import read_json, sha256_file

    rec = read_json(cache / "SOURCES.json")
    assert rec["hh_harmless"]["dataset"] == "Anthropic/hh-rlhf"
    assert rec["hh_harmless"]["data_files"] == "harmless-base/test.jsonl.gz"
    assert rec["hh_harmless"]["rows"] == HH_ROWS
    assert rec["do_not_answer"]["dataset"] == "LibrAI/do-not-answer" and rec["do_not_answer"]["rows"] == 939
    assert rec["xstest"]["rows"] == 450 and rec["xstest_llama2orig"]["rows"] == 450
    for key, r in rec.items():
        assert r["sha256"] == sha256_file(cache / r["file"]), key
    # the labelled answers read back with the columns the judges use
    from saferounds.eval.classifier_data import load_examples

    assert len(load_examples(cache)) == len(load_examples(SHARED_DATA)) > 1000


def test_a_second_call_downloads_nothing(cache, roots, monkeypatch):
    import saferounds.data.hub as hub

    def fail(*a, **k):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(hub, "load_hub_rows", fail)
    assert hub.download_public_data(cache, mirror=roots[1]) == cache


def test_an_unreachable_dataset_is_exit_2_naming_it_and_the_offline_way(tmp_path):
    from saferounds.core.errors import InputError
    from saferounds.data.hub import HubSet, download_public_data

    with pytest.raises(InputError) as e:
        download_public_data(tmp_path / "c", mirror=tmp_path / "empty",
                             sets={"xstest": HubSet("Paul/XSTest", "train", "xstest_prompts.csv")})
    assert "Paul/XSTest" in str(e.value) and "--data-root" in str(e.value)
    assert not (tmp_path / "c" / "xstest").exists()


def test_init_smollm2_without_data_root_reads_the_hub_sets(roots, cache, cli_main, tmp_path, monkeypatch):
    """The CLI path: no --data-root -> data.hub (here SAFEROUNDS_HUB_MIRROR stands in for the hub; the sets
    are in $SAFEROUNDS_HOME's cache already, as after a first run)."""
    from saferounds.core.io import read_json

    monkeypatch.setenv("SAFEROUNDS_HOME", str(cache.parents[1]))
    monkeypatch.setenv("SAFEROUNDS_HUB_MIRROR", str(roots[1]))
    assert cli_main(["init", str(tmp_path / "ws"), "--preset", "smollm2", "--size", "mini"]) == 0
    sources = read_json(tmp_path / "ws" / "data" / "SOURCES.json")["sources"]
    assert sources["do_not_answer"]["dataset"] == "LibrAI/do-not-answer"
    assert sources["hh_helpful"]["path"].startswith(str(cache))
    # a set that cannot be had: exit 2 naming it, and no workspace written
    monkeypatch.setenv("SAFEROUNDS_HOME", str(tmp_path / "home2"))
    monkeypatch.setenv("SAFEROUNDS_HUB_MIRROR", str(tmp_path / "empty"))
    assert cli_main(["init", str(tmp_path / "ws2"), "--preset", "smollm2", "--size", "mini"]) == 2
    assert not (tmp_path / "ws2" / "saferounds.yaml").exists()


def test_data_convert_reads_a_folder_of_a_hub_repository(cli_main, tmp_path, monkeypatch):
    """hub:OWNER/NAME/DATA_DIR:SPLIT -> datasets.load_dataset(OWNER/NAME, data_dir=DATA_DIR, split=SPLIT)."""
    import contextlib
    import json

    import datasets

    import saferounds.core.io as io_mod

    with gzip.open(SHARED_DATA / "hh-rlhf/harmless-base/test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(20)]
    asked = []
    monkeypatch.setattr(io_mod, "offline_unless_reachable", contextlib.nullcontext)  # no network probe
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: asked.append((name, kw)) or rows)
    out = tmp_path / "pairs.jsonl"
    assert cli_main(["data", "convert", "hub:Anthropic/hh-rlhf/harmless-base:test", "--to", "preferences",
                     "-o", str(out)]) == 0
    want = ("Anthropic/hh-rlhf", {"data_dir": "harmless-base", "split": "test"})
    assert asked and all(a == want for a in asked)  # (read once to detect the format, once to convert)
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(pairs) <= 20 and all(p["chosen"] != p["rejected"] for p in pairs)
