"""`saferounds annotate serve`: a local page on which people rank the K samples of each prompt.

LLaMA 2's annotators ranked responses, rated how much better the preferred one was on four levels
(significantly better, better, slightly better, negligibly better / unsure) and labelled each
response's safety. This server shows one prompt of a version's samples.jsonl at a time and writes
each judgement the moment it is made:

  WORKSPACE/annotations/rankings.jsonl   one ranking record per judgement, the format `annotate import`
                                         writes (0-based `ranking`, `responses`, `prompt`, `source`,
                                         `safety`, `annotator`) + `version`, `top_rating`, `ts`; list it
                                         under data.rankings and the rm stage trains on it
  WORKSPACE/annotations/skipped.jsonl    prompts skipped or flagged (no ranking), per annotator

Durability: every append is one write of whole lines, flushed and fsynced, under an fcntl lock
(annotations/.lock) that every server process takes, so two annotators (one server or several) never
interleave or overwrite; a line torn by a kill is cut off by the next writer. A restart resumes each
annotator at the first prompt they have neither ranked nor skipped.

Safety of the page: requests need the random token printed in the URL (403 otherwise); the Host
header must name the server (loopback names; with --host 0.0.0.0 also this machine's name and
addresses, and --allow-host names) and a POST's Origin must be the server's own (403 otherwise; DNS
rebinding and cross-site requests); a POST needs a Content-Length of at most 1 MiB (411/400/413); model text reaches the page as JSON and is rendered with
textContent, under a Content-Security-Policy that allows only the page's own nonce'd script.
Items are read from samples.jsonl one prompt at a time through a byte-offset index.

The machinery is shared: `AnnotateServer` serves any session with `annotator`, `get(path, query, annotator)`
and `post_action(path)`, and `JudgementStore` any set of append-only files under one lock. `saferounds audit vN
--serve` (eval.audit_server, page audit_page.html) is the second user.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from saferounds.core.errors import InputError, not_writable
from saferounds.reward_models.feedback.annotation import RATINGS, annotation_items
from saferounds.reward_models.feedback.labeling import group_samples

RANKINGS_FILE = "annotations/rankings.jsonl"
SKIPPED_FILE = "annotations/skipped.jsonl"
LOCK_FILE = "annotations/.lock"
LEVELS = RATINGS[:4]  # LLaMA 2's four levels, strongest first ("negligibly_better" also means unsure)
PAGE = Path(__file__).with_name("annotate_page.html")
AUDIT_PAGE = Path(__file__).with_name("audit_page.html")  # `audit vN --serve` (eval.audit_server); in the wheel
MAX_BODY = 1 << 20
_LENGTH_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only (int() also takes "١٢", "+1", " 1_0")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "", "::")
_NAME_RE = re.compile(r"^[\w.@ -]{1,64}$")


class SampleIndex:
    """Byte offsets of each prompt's rows in a samples file, so one item is read at a time.

    Rows of a prompt are joined like reward_models.feedback.labeling.group_samples (by prompt_id / id, else by the
    prompt); every row is validated once when the index is built (bad rows raise InputError file:line)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: file not found")
        self._rows: dict[str, list[tuple[int, int]]] = {}  # key -> [(line, byte offset)]
        self.ids: list[str] = []  # the item ids, in file order
        with open(self.path, "rb") as f:
            offset = 0
            for line, raw in enumerate(f, 1):
                if raw.strip():
                    try:
                        row = json.loads(raw)
                    except ValueError as e:
                        raise InputError(f"{self.path}:{line}: not valid JSON ({e})") from None
                    group_samples([(line, row)], where=str(self.path))  # validates the row
                    key = _group_key(row)
                    if key not in self._rows:
                        self.ids.append(str(row.get("prompt_id", row.get("id", key))))
                    self._rows.setdefault(key, []).append((line, offset))
                offset += len(raw)
        self.keys = list(self._rows)
        if not self.keys:
            raise InputError(f"{self.path}: no samples")

    def __len__(self) -> int:
        return len(self.keys)

    def item(self, index: int) -> dict:
        """The export item (reward_models.feedback.annotation.annotation_items) of the index-th prompt."""
        rows = []
        with open(self.path, "rb") as f:
            for line, offset in self._rows[self.keys[index]]:
                f.seek(offset)
                rows.append((line, json.loads(f.readline())))
        return annotation_items(group_samples(rows, where=str(self.path)))[0]


def _group_key(row: dict) -> str:
    """The prompt key group_samples joins rows by."""
    messages = row.get("messages") if isinstance(row.get("messages"), list) else row.get("prompt")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return str(row.get("prompt_id", row.get("id", ""))) or json.dumps(messages, sort_keys=True)


class JudgementStore:
    """Append-only JSONL files (by default annotate's two), shared by every server process on the workspace.

    Each process keeps what it has read of each file (rows + byte offset) and reads what others appended
    whenever it takes the lock; a file replaced whole (another inode, or shorter than what was read) is
    read again from the start."""

    def __init__(self, root: Path, files: dict[str, str] | None = None, lock: str = LOCK_FILE):
        self.root = Path(root)
        files = files or {"rankings": RANKINGS_FILE, "skipped": SKIPPED_FILE}
        self.files = {kind: self.root / rel for kind, rel in files.items()}
        self.lock_path = self.root / lock
        self.rows: dict[str, list[dict]] = {k: [] for k in self.files}
        self._offset = {k: 0 for k in self.files}
        self._inode: dict[str, int | None] = {k: None for k in self.files}
        self._mutex = threading.Lock()

    @contextlib.contextmanager
    def locked(self):
        """Threads of this process and other processes, one at a time; the files read up to date."""
        lock = self.lock_path
        lock.parent.mkdir(parents=True, exist_ok=True)
        with self._mutex:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # freed by the kernel if the holder is killed
                for kind in self.files:
                    self._read_new(kind)
                yield self
            finally:
                os.close(fd)

    def _read_new(self, kind: str) -> None:
        path = self.files[kind]
        if not path.exists():
            return
        with open(path, "r+b") as f:
            st = os.fstat(f.fileno())
            if st.st_ino != self._inode[kind] or st.st_size < self._offset[kind]:  # new or replaced whole
                self._inode[kind], self._offset[kind], self.rows[kind] = st.st_ino, 0, []
            f.seek(self._offset[kind])
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a writer was killed mid-line; under the lock nobody else is writing
                f.truncate(self._offset[kind] + end)
                f.flush()
                os.fsync(f.fileno())
        for raw in data[:end].splitlines():
            if raw.strip():
                try:
                    self.rows[kind].append(json.loads(raw))
                except ValueError:
                    raise InputError(f"{path}: a line after byte {self._offset[kind]} is not valid JSON; "
                                     "fix or remove it") from None
        self._offset[kind] += end

    def append(self, kind: str, row: dict) -> None:
        """Append one judgement (call under `locked`): one write, flush, fsync."""
        path = self.files[kind]
        created = not path.exists()
        blob = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with open(path, "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if created:  # make the new directory entry durable too
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self.rows[kind].append(row)
        self._offset[kind] += len(blob)
        self._inode[kind] = os.stat(path).st_ino


def page_get(session, path: str, query: dict, annotator: str):
    """The GET routes every labelling page shares (ranking and audit): /api/state, and /api/item — the item
    at ?index=, or the annotator's next unlabelled one ({"done": true} when none is left); None is 404."""
    if path == "/api/state":
        return session.state(annotator)
    if path != "/api/item":
        return None
    index = (query.get("index") or [None])[0]
    if index is None:
        index = session.state(annotator)["next"]
        if index is None:
            return {"done": True}
    try:
        index = int(index)
    except ValueError:
        raise ValueError(f"index: expected 0..{len(session.items) - 1}, got {index!r}") from None
    return session.item(index, annotator)


class AnnotationSession:
    """One version's items and the judgements on them; the HTTP layer only calls these methods."""

    def __init__(self, root: Path, version: int, samples: Path, annotator: str):
        self.root, self.version = Path(root), f"v{version}"
        self.items = SampleIndex(samples)
        self.store = JudgementStore(self.root)
        self.annotator = check_name(annotator)

    def _done(self, annotator: str) -> dict[str, str]:
        """id -> ranked | skipped | flagged, for this annotator and version (call under the lock)."""
        done = {}
        for kind in ("skipped", "rankings"):  # a ranking wins over an earlier skip
            for r in self.store.rows[kind]:
                if r.get("version") == self.version and r.get("annotator") == annotator:
                    done[str(r.get("id"))] = "ranked" if kind == "rankings" else r.get("action", "skipped")
        return done

    def get(self, path: str, query: dict, annotator: str):
        """The JSON answer to GET `path`, or None (404)."""
        return page_get(self, path, query, annotator)

    def post_action(self, path: str):
        """What POST `path` calls with the request's JSON body, or None (404, the body unread)."""
        return {"/api/judgement": self.judge, "/api/skip": self.skip}.get(path)

    def state(self, annotator: str) -> dict:
        annotator = check_name(annotator)
        with self.store.locked():
            done = self._done(annotator)
            per: dict[str, int] = {}
            for r in self.store.rows["rankings"]:
                if r.get("version") == self.version:
                    per[r.get("annotator") or "?"] = per.get(r.get("annotator") or "?", 0) + 1
        nxt = next((i for i, item_id in enumerate(self.items.ids) if item_id not in done), None)
        counts = {s: sum(v == s for v in done.values()) for s in ("ranked", "skipped", "flagged")}
        return {"version": self.version, "total": len(self.items), "annotator": annotator, "next": nxt,
                "done": counts, "annotators": dict(sorted(per.items())), "levels": LEVELS}

    def item(self, index: int, annotator: str) -> dict:
        if not 0 <= index < len(self.items):
            raise ValueError(f"index: expected 0..{len(self.items) - 1}, got {index}")
        item = self.items.item(index)
        with self.store.locked():
            status = self._done(check_name(annotator)).get(str(item["id"]))
        return {"index": index, "id": item["id"], "prompt": item["prompt"], "responses": item["responses"],
                "is_safety": item["is_safety"], "category": item["category"], "source": item["source"],
                "status": status}

    def judge(self, body: dict) -> dict:
        """A ranking (best first, 0-based), the top preference's rating and optional safety labels."""
        annotator, index, item = self._target(body)
        k = len(item["responses"])
        ranking = body.get("ranking")
        if not isinstance(ranking, list) or any(type(r) is not int for r in ranking) \
                or sorted(ranking) != list(range(k)):
            raise ValueError(f"ranking: expected a permutation of 0..{k - 1}, got {ranking!r}")
        rating = body.get("top_rating")
        if rating not in LEVELS:
            raise ValueError(f"top_rating: expected one of {', '.join(LEVELS)}, got {rating!r}")
        safety = body.get("safety")
        if safety is not None and (not isinstance(safety, list) or len(safety) != k
                                   or any(not isinstance(s, bool) for s in safety)):
            raise ValueError(f"safety: expected {k} true/false (one per response, in response order) or null")
        if safety is None and item["is_safety"]:
            raise ValueError("safety: a safety prompt needs every response marked safe or unsafe")
        record = {"id": item["id"], "prompt": item["prompt"], "responses": item["responses"], "ranking": ranking,
                  "source": item["source"], "ratings": None, "safety": safety, "annotator": annotator,
                  "top_rating": rating, "version": self.version, "is_safety": item["is_safety"],
                  "category": item["category"], "note": _note(body), "ts": _now()}
        return self._append("rankings", record, annotator, index)

    def skip(self, body: dict) -> dict:
        annotator, index, item = self._target(body)
        action = body.get("action", "skip")
        if action not in ("skip", "flag"):
            raise ValueError(f"action: expected skip or flag, got {action!r}")
        record = {"id": item["id"], "version": self.version, "annotator": annotator,
                  "action": "flagged" if action == "flag" else "skipped", "note": _note(body), "ts": _now()}
        return self._append("skipped", record, annotator, index)

    def _target(self, body: dict) -> tuple[str, int, dict]:
        annotator = check_name(body.get("annotator") or self.annotator)
        index = body.get("index")
        if type(index) is not int or not 0 <= index < len(self.items):
            raise ValueError(f"index: expected 0..{len(self.items) - 1}, got {index!r}")
        item = self.items.item(index)
        if str(body.get("id")) != str(item["id"]):
            raise ValueError(f"id: item {index} is {item['id']!r}, not {body.get('id')!r}")
        return annotator, index, item

    def _append(self, kind: str, record: dict, annotator: str, index: int) -> dict:
        with self.store.locked():
            before = self._done(annotator).get(str(record["id"]))
            if before:  # two tabs, or a double submit: the first judgement stands
                raise Conflict(f"{annotator} already {before} {record['id']!r} in {self.version}")
            self.store.append(kind, record)
        return self.state(annotator)


class Conflict(ValueError):
    pass


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name.strip()):
        raise ValueError(f"annotator: expected 1-64 letters, digits, spaces or . @ _ -, got {name!r}")
    return name.strip()


def _note(body: dict) -> str | None:
    note = body.get("note")
    return str(note)[:2000] if note else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- HTTP -------------------------------------------------------------------------------------------

class AnnotateServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: socketserver's 5 reset simultaneous POSTs of a team

    def __init__(self, session, host: str, port: int, token: str | None = None,
                 allow_hosts: tuple[str, ...] = (), page: Path = PAGE):
        """`session`: an AnnotationSession, or any object with `annotator`, `get(path, query, annotator)`
        and `post_action(path)` (eval.audit_server's audit mode)."""
        self.session = session
        self.token = token or secrets.token_urlsafe(24)
        super().__init__((host, port), _Handler)
        self.port = self.server_address[1]
        self.exposed = host not in LOOPBACK
        self.host_names = host_names(host, allow_hosts)
        self.allowed_hosts = {f"{n}:{self.port}" for n in self.host_names}
        if self.port == 80:  # browsers leave the default port out of Host
            self.allowed_hosts |= self.host_names
        self.page = Path(page).read_text(encoding="utf-8")

    @property
    def url(self) -> str:
        host = self.server_address[0]
        if host in WILDCARD:  # an address others can reach, not 0.0.0.0
            host = _route_address() or socket.gethostname() or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}&annotator={self.session.annotator.replace(' ', '+')}"

    def warning(self) -> str | None:
        """What binding beyond loopback means, or None on 127.0.0.1."""
        if not self.exposed:
            return None
        return (f"--host {self.server_address[0]}: the page is reachable from other machines; anyone with the URL "
                "(its token) can read these samples and add judgements. Requests must name this server in their "
                f"Host header: {', '.join(sorted(self.host_names))}; add another name with --allow-host NAME")


def host_names(host: str, extra=()) -> set[str]:
    """The names a request's Host header may use (lower case, IPv6 in brackets): loopback names when bound to
    loopback or every address; this machine's name and addresses when reachable from others; `extra`."""
    names = {n.strip().lower() for n in extra if n.strip()}
    if host in LOOPBACK or host in WILDCARD:
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if host not in LOOPBACK:
        names |= {host} if host not in WILDCARD else set()
        names |= machine_names()
    return {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}


def machine_names() -> set[str]:
    """This machine's host name, the addresses it resolves to, and the address of the default route."""
    name = socket.gethostname().lower()
    names = {name} if name else set()
    try:
        names |= {str(info[4][0]) for info in socket.getaddrinfo(name, None, socket.AF_INET)} if name else set()
    except OSError:
        pass
    route = _route_address()
    return names | ({route} if route else set())


def _route_address() -> str | None:
    """The local address of the default route (a UDP connect sends nothing), or None without one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never contacted
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr in ("0.0.0.0", "127.0.0.1") else addr


class HTTPRefused(ValueError):
    """A request the server answers with `code` without reading its body."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


class _Handler(BaseHTTPRequestHandler):
    server: AnnotateServer
    timeout = 60  # a client that stops sending mid-body frees its thread

    def version_string(self) -> str:
        return "saferounds-annotate"

    def log_message(self, fmt, *args):  # no per-request noise on the terminal (tokens are in URLs)
        pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _refuse(self, method: str, query: dict) -> str | None:
        """Why this request is refused (403), or None."""
        host = self.headers.get("Host", "")
        if host.lower() not in self.server.allowed_hosts:
            return f"Host {host!r} is not this server"
        token = self.headers.get("X-Annotate-Token") or (query.get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            return "missing or wrong token (use the URL the server printed when it started)"
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return f"Origin {origin!r} is not this server"
        if self.headers.get("Sec-Fetch-Site") == "cross-site":
            return "cross-site request"
        if method == "POST" and self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return "POST needs Content-Type: application/json"
        return None

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        why = self._refuse(method, query)
        if why:
            return self._json(403, {"error": why})
        session = self.server.session
        annotator = (query.get("annotator") or [session.annotator])[0]
        try:
            if method == "GET" and url.path in ("/", "/index.html"):
                return self._page()
            if method == "GET" and (answer := session.get(url.path, query, annotator)) is not None:
                return self._json(200, answer)
            if method == "POST" and (act := session.post_action(url.path)) is not None:
                return self._json(200, act(self._body()))
            return self._json(404, {"error": f"no {method} {url.path}"})
        except HTTPRefused as e:
            self.close_connection = True  # the unread body must not be parsed as a next request
            return self._json(e.code, {"error": str(e)})
        except Conflict as e:
            return self._json(409, {"error": str(e)})
        except (ValueError, InputError) as e:
            return self._json(400, {"error": str(e)})

    def _body(self) -> dict:
        """The POST's JSON object: exactly Content-Length bytes (at most MAX_BODY), never more."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths or self.headers.get("Transfer-Encoding"):
            raise HTTPRefused(411, "POST needs a Content-Length header (no chunked bodies)")
        if len(set(lengths)) > 1 or not _LENGTH_RE.fullmatch(lengths[0].strip()):
            raise HTTPRefused(400, f"Content-Length: expected one number of bytes, got {', '.join(lengths)!r}")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise HTTPRefused(413, f"request too large: {length} bytes, at most {MAX_BODY}")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise HTTPRefused(400, f"body: {len(raw)} bytes arrived, Content-Length said {length}")
        try:
            body = json.loads(raw or b"{}")
        except RecursionError:
            raise HTTPRefused(400, "body: JSON nested too deeply") from None
        except ValueError as e:
            raise HTTPRefused(400, f"body: not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPRefused(400, "body: a lone UTF-16 surrogate (\\udXXX) is not text") from None
        return body

    def _headers(self, code: int, ctype: str, length: int, csp: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token is in the URL
        self.send_header("X-Frame-Options", "DENY")
        if csp:
            self.send_header("Content-Security-Policy", csp)
        self.end_headers()

    def _json(self, code: int, obj) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._headers(code, "application/json; charset=utf-8", len(data))
        self.wfile.write(data)

    def _page(self) -> None:
        nonce = secrets.token_urlsafe(16)  # the page's one <script> and <style> run; nothing injected would
        html = self.server.page.replace("<script>", f'<script nonce="{nonce}">', 1).replace(
            "<style>", f'<style nonce="{nonce}">', 1)
        data = html.encode("utf-8")
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
               "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        self._headers(200, "text/html; charset=utf-8", len(data), csp)
        self.wfile.write(data)


# --- entry point ------------------------------------------------------------------------------------

def make_server(root: Path, version: int, samples: Path, annotator: str, host: str = "127.0.0.1",
                port: int = 8765, token: str | None = None, allow_hosts: tuple[str, ...] = ()) -> AnnotateServer:
    """A server for vN's samples (versions/vN/samples.jsonl, found by the caller) on host:port (0: any)."""
    refused = not_writable((Path(root) / RANKINGS_FILE).parent, None,
                           "`annotate serve` appends every judgement there")
    if refused:  # refuse to start rather than print a URL whose every judgement would fail
        raise refused
    try:
        session = AnnotationSession(Path(root), version, samples, annotator)
    except ValueError as e:
        raise InputError(f"--annotator: {e}") from None
    return bind(session, host, port, token, allow_hosts)


def bind(session, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
         allow_hosts: tuple[str, ...] = (), page: Path = PAGE) -> AnnotateServer:
    """An AnnotateServer for `session` on host:port; a port taken or out of range is an InputError."""
    try:
        return AnnotateServer(session, host, port, token, tuple(allow_hosts), page)
    except OverflowError:  # a port outside 0-65535
        raise InputError(f"--port {port}: expected 0-65535 (0: any free one)") from None
    except OSError as e:  # port taken, address not on this machine
        raise InputError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                         "pick another --port (0: any free one)") from None
