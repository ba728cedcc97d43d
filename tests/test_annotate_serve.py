"""`saferounds annotate serve` and `annotate stats`: the durable judgement log, agreement maths, and the
page driven in headless Chromium (mouse + keyboard, kill -9, restart, XSS samples, 403s, screenshot)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from saferounds.reward_models.feedback.agreement import kendall_tau, pairwise_agreement, safety_agreement
from saferounds.reward_models.feedback.annotate_server import RANKINGS_FILE, SKIPPED_FILE, AnnotationSession, Conflict
from saferounds.reward_models.feedback.annotation import annotation_pairs, import_rankings

REPO = Path(__file__).resolve().parents[1]
XSS_SCRIPT = "<script>window.__xss = 1</script>Use a tension wrench."
XSS_IMG = '<img src=x onerror="window.__xss = 2"> I cannot help with breaking into homes.'
PROMPTS = [  # (id, prompt, is_safety, K responses)
    ("p1", "Name a prime number.", False, ["7", "9 is prime", "2, the smallest prime"]),
    ("p2", "How do I pick my neighbour's lock?", True, [XSS_SCRIPT, XSS_IMG, "Call a locksmith with proof you live there."]),
    ("p3", "What is the capital of France?", False, ["Paris.", "Lyon.", "Paris, on the Seine."]),
]


def make_workspace(root: Path) -> Path:
    """A workspace with one finished version holding samples.jsonl (one row per sample, as rs writes it)."""
    (root / "versions" / "v1").mkdir(parents=True)
    rows = [{"prompt_id": pid, "sample_index": j, "messages": [{"role": "user", "content": q}], "is_safety": s,
             "category": "illicit" if s else None, "response": r}
            for pid, q, s, rs in PROMPTS for j, r in enumerate(rs)]
    (root / "versions" / "v1" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "saferounds.yaml").write_text(f"data:\n  rankings: [{RANKINGS_FILE}]\n")
    return root


def session(root: Path, who: str = "alice") -> AnnotationSession:
    return AnnotationSession(root, 1, root / "versions" / "v1" / "samples.jsonl", who)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# --- agreement: pure functions, hand-computed ----------------------------------------------------------

def test_kendall_tau_by_hand():
    assert kendall_tau([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == -1.0
    # pairs (0,1) discordant, (0,2) and (1,2) concordant: (2 - 1) / 3
    assert kendall_tau([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
    # K=4, one adjacent swap at the bottom: 5 concordant, 1 discordant -> 4/6
    assert kendall_tau([3, 1, 0, 2], [3, 1, 2, 0]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        kendall_tau([0, 1], [0, 2])


def test_safety_agreement_and_kappa_by_hand():
    # p_o = 3/4; P_a(safe) = 3/4, P_b(safe) = 1/2 -> p_e = 3/8 + 1/8 = 1/2; kappa = (3/4 - 1/2) / (1/2) = 1/2
    out = safety_agreement([(True, True), (True, False), (False, False), (True, True)])
    assert out == {"labels": 4, "agreement": 0.75, "kappa": pytest.approx(0.5)}
    assert safety_agreement([(True, True)] * 3)["kappa"] is None  # p_e = 1: undefined
    assert safety_agreement([])["agreement"] is None


def test_pairwise_agreement_over_shared_prompts():
    def rec(who, pid, ranking, safety=None):
        return {"version": "v1", "id": pid, "annotator": who, "responses": ["a", "b", "c"], "ranking": ranking,
                "safety": safety}
    records = [rec("alice", "p1", [0, 1, 2], [True, True, False]), rec("bob", "p1", [0, 1, 2], [True, False, False]),
               rec("alice", "p2", [0, 1, 2]), rec("bob", "p2", [1, 0, 2]),
               rec("carol", "p3", [2, 1, 0])]  # carol shares no prompt with anyone
    (pair,) = pairwise_agreement(records)
    assert pair["annotators"] == ["alice", "bob"] and pair["prompts"] == 2
    assert pair["kendall_tau"] == pytest.approx((1 + 1 / 3) / 2)
    assert pair["same_best"] == 0.5
    # labels (T,T) (T,F) (F,F): p_o = 2/3; P_a(safe) = 2/3, P_b(safe) = 1/3 -> p_e = 2/9 + 2/9 = 4/9
    assert pair["safety"]["labels"] == 3 and pair["safety"]["agreement"] == pytest.approx(2 / 3)
    assert pair["safety"]["kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))


# --- the judgement log -----------------------------------------------------------------------------------

def test_two_annotators_in_two_servers_never_interleave(tmp_path):
    ws = make_workspace(tmp_path)
    a, b = session(ws, "alice"), session(ws, "bob")  # two stores = two lock holders, like two processes
    errors, conflicts = [], []

    def judge(s, who, index, pid):
        try:
            s.judge({"annotator": who, "index": index, "id": pid, "ranking": [2, 0, 1], "top_rating": "better",
                     "safety": [False, True, True] if pid == "p2" else None})
        except Conflict:
            conflicts.append(who)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    jobs = [(s, f"ann{n}", i, pid) for n in range(12) for s in (a, b) for i, (pid, *_) in enumerate(PROMPTS)]
    threads = [threading.Thread(target=judge, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = lines(ws / RANKINGS_FILE)
    # each (annotator, prompt) was sent by both servers: exactly one landed, the other got 409
    assert len(rows) == 12 * 3 and len(conflicts) == 12 * 3
    assert len({(r["annotator"], r["id"]) for r in rows}) == 36
    assert a.state("ann3")["done"]["ranked"] == 3 and b.state("ann3")["next"] is None
    assert b.state("ann3")["annotators"] == {f"ann{n}": 3 for n in range(12)}


def test_torn_line_is_cut_and_restart_resumes(tmp_path):
    ws = make_workspace(tmp_path)
    s = session(ws)
    s.judge({"index": 0, "id": "p1", "ranking": [0, 1, 2], "top_rating": "slightly_better"})
    with open(ws / RANKINGS_FILE, "ab") as f:  # a writer killed mid-line
        f.write(b'{"id": "p2", "ranki')
    s2 = session(ws)  # a restarted server
    assert s2.state("alice")["next"] == 1
    s2.skip({"index": 1, "id": "p2", "action": "flag", "note": "prompt is cut off"})
    s2.judge({"index": 2, "id": "p3", "ranking": [2, 0, 1], "top_rating": "significantly_better"})
    rows = lines(ws / RANKINGS_FILE)
    assert [r["id"] for r in rows] == ["p1", "p3"]
    assert lines(ws / SKIPPED_FILE)[0]["action"] == "flagged"
    assert s2.state("alice")["next"] is None and s2.state("bob")["next"] == 0
    with pytest.raises(ValueError, match="safety prompt"):
        session(ws, "bob").judge({"index": 1, "id": "p2", "ranking": [0, 1, 2], "top_rating": "better"})
    with pytest.raises(ValueError, match="permutation"):
        s2.judge({"annotator": "bob", "index": 0, "id": "p1", "ranking": [0, 0, 1], "top_rating": "better"})


def test_served_rankings_read_like_imported_ones(tmp_path):
    from saferounds.data.load import load_rankings
    from saferounds.pipeline.stages.rm import load_rm_records
    from saferounds.pipeline.workspace import Workspace

    ws = make_workspace(tmp_path)
    s = session(ws)
    s.judge({"index": 1, "id": "p2", "ranking": [2, 1, 0], "top_rating": "significantly_better",
             "safety": [False, True, True]})
    (rec,) = load_rankings(ws / RANKINGS_FILE)
    assert rec["ranking"] == [2, 1, 0] and rec["source"] == "safety" and rec["responses"][0] == XSS_SCRIPT
    assert load_rm_records(Workspace(ws)) == [rec]  # saferounds.yaml lists annotations/rankings.jsonl
    (imported,) = import_rankings(ws / RANKINGS_FILE)
    pairs = annotation_pairs(imported)
    # #1 (resp 3) >> #2 (resp 2) as rated; #1 over #3 is at least as strong; #2 > #3 from the rank distance
    assert [p["rating"] for p in pairs] == ["significantly_better", "significantly_better", "slightly_better"]
    assert [p["safety_label"] for p in pairs] == ["both_safe", "chosen_safe_rejected_unsafe",
                                                  "chosen_safe_rejected_unsafe"]


def test_stats_cli(tmp_path, capsys):
    from saferounds.pipeline.cli import main

    ws = make_workspace(tmp_path)
    for who, ranking, safety in (("alice", [0, 1, 2], [False, True, True]), ("bob", [1, 0, 2], [False, True, False])):
        session(ws, who).judge({"index": 1, "id": "p2", "ranking": ranking, "top_rating": "better", "safety": safety})
    session(ws, "bob").skip({"index": 0, "id": "p1"})
    assert main(["annotate", "stats", "-w", str(ws), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["annotators"] == {"alice": {"ranked": 1, "skipped": 0, "flagged": 0},
                                  "bob": {"ranked": 1, "skipped": 1, "flagged": 0}}
    (pair,) = info["pairs"]
    assert pair["kendall_tau"] == pytest.approx(1 / 3) and pair["safety"]["agreement"] == pytest.approx(2 / 3)


def test_serve_input_errors_exit_2(tmp_path, capsys):
    import socket

    from saferounds.pipeline.cli import main

    assert main(["annotate", "serve", "-w", str(tmp_path), "--port", "0"]) == 2
    assert "no finished version has samples.jsonl" in capsys.readouterr().err
    ws = make_workspace(tmp_path / "ws")
    assert main(["annotate", "serve", "-w", str(ws), "--version", "v2"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["annotate", "serve", "-w", str(ws), "--port", str(port), "--annotator", "a"]) == 2
    assert "cannot listen there" in capsys.readouterr().err


# --- the page in headless Chromium -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def start_server(ws: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "saferounds.pipeline.cli", "annotate", "serve", "-w", str(ws), "--port", "0",
                             "--annotator", "alice"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
    return proc, url


def status(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright")
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    ws = make_workspace(tmp_path / "ws")
    proc, url = start_server(ws)
    procs = [proc]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            item_id = page.locator("#item-id")
            item_id.get_by_text("id p1").wait_for()
            assert page.locator("#count").inner_text().startswith("prompt 1 of 3")
            assert page.locator("#submit").is_disabled()

            # p1 by keyboard: responses 3 then 1 (2 falls into place), "better" (W), Enter
            for key in ("3", "1", "w"):
                page.keyboard.press(key)
            assert [c.inner_text().split("\n")[0] for c in page.locator(".card .label").all()] == [
                "Response 3", "Response 1", "Response 2"]
            page.keyboard.press("Enter")
            item_id.get_by_text("id p2").wait_for()
            assert lines(ws / RANKINGS_FILE)[0]["ranking"] == [2, 0, 1]  # on disk the moment it was submitted

            # p2 (model text with <script> and <img onerror>) by mouse: drag response 3 above response 1
            cards = page.locator(".card")
            src, dst = cards.nth(2).bounding_box(), cards.nth(0).bounding_box()
            page.mouse.move(src["x"] + 20, src["y"] + src["height"] / 2)
            page.mouse.down()
            for step in range(1, 11):
                page.mouse.move(src["x"] + 20, src["y"] + (dst["y"] + 4 - src["y"]) * step / 10)
            page.mouse.up()
            assert [int(c.get_attribute("data-idx")) for c in cards.all()] == [2, 0, 1]
            page.locator('.card[data-idx="0"] button[data-safety="unsafe"]').click()
            page.locator('.card[data-idx="1"] button[data-safety="safe"]').click()
            page.keyboard.press("Shift+Digit3")  # response 3 safe
            page.locator('#levels button[data-level="slightly_better"]').click()
            # the samples are shown as text, nothing of them ran or became an element
            assert page.evaluate("window.__xss") is None and not dialogs
            assert page.locator("#cards img, #cards script").count() == 0
            texts = page.locator(".card .text").all_inner_texts()
            assert XSS_SCRIPT in texts and XSS_IMG in texts
            shot = tmp_path / "annotate_page.png"
            page.screenshot(path=str(shot), full_page=True)
            page.locator("#submit").click()
            item_id.get_by_text("id p3").wait_for()
            assert page.evaluate("window.__xss") is None

            rows = lines(ws / RANKINGS_FILE)
            assert [(r["id"], r["ranking"], r["top_rating"], r["safety"], r["annotator"]) for r in rows] == [
                ("p1", [2, 0, 1], "better", None, "alice"),
                ("p2", [2, 0, 1], "slightly_better", [False, True, True], "alice")]

            # kill -9: nothing submitted is lost, and a new server resumes at p3
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert lines(ws / RANKINGS_FILE) == rows
            proc, url = start_server(ws)
            procs.append(proc)
            page.goto(url)
            page.locator("#item-id").get_by_text("id p3").wait_for()
            assert page.locator("#count").inner_text().startswith("prompt 3 of 3 · ranked 2")
            page.keyboard.press("s")  # skip the last one
            page.locator("#finished").get_by_text("All 3 prompts").wait_for()
            assert lines(ws / SKIPPED_FILE)[0]["id"] == "p3"
            browser.close()

        # the token, the Host and the Origin
        base, token = url.split("/?")[0], url.split("token=")[1].split("&")[0]
        post = {"Content-Type": "application/json", "X-Annotate-Token": token}
        assert status(base + "/") == 403 and status(base + "/api/state") == 403
        assert status(base + "/api/state?token=wrong") == 403
        assert status(base + f"/api/state?token={token}") == 200
        assert status(base + "/api/skip", "POST", {**post, "Origin": "http://evil.example"}, b"{}") == 403
        assert status(base + "/api/skip", "POST", {**post, "Host": "evil.example"}, b"{}") == 403  # DNS rebinding
        assert status(base + "/api/skip", "POST", {"X-Annotate-Token": token, "Content-Type": "text/plain"}, b"{}") == 403
        assert status(base + "/api/skip", "POST", {**post, "Origin": base}, b'{"index": 0, "id": "p1"}') == 409

        # the screenshot is a rendered page, not a blank one
        grey = np.asarray(Image.open(shot).convert("L"), dtype=float)
        assert grey.shape[1] == 1280 and grey.var() > 100  # a blank page has variance 0
        if os.environ.get("SAFEROUNDS_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["SAFEROUNDS_KEEP_SCREENSHOT"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


# --- the HTTP edges (issue 32 item 7): bodies, depth, backlog, --host 0.0.0.0 --------------------------

def raw_request(port: int, head: str, body: bytes = b"", half_close: bool = False) -> tuple[int, dict]:
    """Send one hand-written request to 127.0.0.1:port; (status, JSON body) of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:  # a server that refuses at the headers may close (even reset) before the whole body is sent
            s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:  # the answer arrived before the reset
            pass
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1] or b"null")


@pytest.fixture
def served(tmp_path):
    from saferounds.reward_models.feedback.annotate_server import make_server

    ws = make_workspace(tmp_path / "ws")
    server = make_server(ws, 1, ws / "versions" / "v1" / "samples.jsonl", "alice", port=0, token="tok")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ws, server
    server.shutdown()
    server.server_close()


def post_head(port: int, length: str | None, path: str = "/api/skip") -> str:
    head = (f"POST {path}?token=tok HTTP/1.1\nHost: 127.0.0.1:{port}\n"
            "Content-Type: application/json\n")
    return head + (f"Content-Length: {length}\n" if length is not None else "")


def test_post_bodies_are_bounded_and_checked(served):
    ws, server = served
    port = server.port
    big = json.dumps({"index": 0, "id": "p1", "note": "x" * (3 << 20)}).encode()
    # a negative, a non-numeric, a non-ASCII-digit and a missing length: refused before any byte is read
    assert raw_request(port, post_head(port, "-1"), big, half_close=True)[0] == 400
    assert raw_request(port, post_head(port, "12abc"), b"{}")[0] == 400
    assert raw_request(port, post_head(port, "\u0661\u0662".encode().decode("latin-1")), b"{}")[0] == 400
    code, answer = raw_request(port, post_head(port, None), b'{"index": 0, "id": "p1"}', half_close=True)
    assert code == 411 and "Content-Length" in answer["error"]
    code, answer = raw_request(port, post_head(port, str(len(big))), big)
    assert code == 413 and str(1 << 20) in answer["error"]
    # a body shorter than announced, a 100k-deep body, a lone surrogate: 400, and the server still answers
    assert raw_request(port, post_head(port, "50"), b'{"index": 0}', half_close=True)[0] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    code, answer = raw_request(port, post_head(port, str(len(deep))), deep)
    assert code == 400 and "deep" in answer["error"]
    lone = b'{"index": 0, "id": "p1", "note": "\\ud800"}'
    assert raw_request(port, post_head(port, str(len(lone))), lone)[0] == 400
    assert not (ws / SKIPPED_FILE).exists() and not (ws / RANKINGS_FILE).exists()  # nothing was recorded
    ok = b'{"index": 0, "id": "p1"}'
    assert raw_request(port, post_head(port, str(len(ok))), ok)[0] == 200
    assert len(lines(ws / SKIPPED_FILE)) == 1


def test_twenty_simultaneous_posts_are_all_answered(served):
    ws, server = served
    assert server.request_queue_size >= 20  # the listen backlog (socketserver's default is 5)
    port, codes = server.port, []

    def one(i: int) -> None:
        body = json.dumps({"index": 0, "id": "p1", "annotator": f"a{i}"}).encode()
        codes.append(raw_request(port, post_head(port, str(len(body))), body)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 20
    assert sorted(r["annotator"] for r in lines(ws / SKIPPED_FILE)) == sorted(f"a{i}" for i in range(20))


def test_host_0000_warns_prints_a_reachable_url_and_keeps_the_host_check(tmp_path, capsys):
    import socket

    from saferounds.reward_models.feedback.annotate_server import make_server

    ws = make_workspace(tmp_path / "ws")
    server = make_server(ws, 1, ws / "versions" / "v1" / "samples.jsonl", "alice", host="0.0.0.0", port=0,
                         token="tok", allow_hosts=("Annotate.Example",))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert "reachable from other machines" in server.warning() and "--allow-host" in server.warning()
        url_host = urllib.parse.urlsplit(server.url).hostname
        assert url_host not in ("0.0.0.0", "127.0.0.1")
        port = server.port
        get = "GET /api/state?token=tok HTTP/1.1\nHost: {}\n"
        assert raw_request(port, get.format(f"evil.example:{port}"))[0] == 403  # DNS rebinding: still refused
        for name in (url_host, "127.0.0.1", socket.gethostname(), "annotate.example"):
            assert raw_request(port, get.format(f"{name}:{port}"))[0] == 200, name
    finally:
        server.shutdown()
        server.server_close()
    local = make_server(ws, 1, ws / "versions" / "v1" / "samples.jsonl", "alice", port=0)
    try:
        assert local.warning() is None and local.url.startswith("http://127.0.0.1:")
        assert f"{socket.gethostname()}:{local.port}" not in local.allowed_hosts  # loopback: loopback names only
    finally:
        local.server_close()
