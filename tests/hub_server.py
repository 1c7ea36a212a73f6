"""A small in-memory, Hugging Face Hub-compatible HTTP server for tests (standard library only).

It speaks the subset of the Hub protocol that the real ``huggingface_hub`` 2.x client (httpx2 based)
uses for the calls below, with the same status codes and ``X-Error-Code`` / ``X-Error-Message``
headers that ``hf_raise_for_status`` maps to ``RepositoryNotFoundError``, ``GatedRepoError``,
``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``:

* ``HfApi.whoami``                      GET  /api/whoami-v2
* ``HfApi.create_repo`` / ``delete_repo``  POST /api/repos/create, DELETE /api/repos/delete
* ``HfApi.update_repo_settings``        PUT  /api/{type}s/{id}/settings  (visibility or the older
                                        private flag, gated; other values are a 400)
* ``model_info`` / ``repo_info`` / ``repo_exists`` / ``revision_exists``
                                        GET  /api/{type}s/{id}[/revision/{rev}]
* ``list_repo_tree`` / ``list_repo_files``  GET /api/{type}s/{id}/tree/{rev}[/{path}]
* ``list_repo_commits`` / ``list_repo_refs``  GET /api/{type}s/{id}/commits/{rev}, .../refs
* ``upload_file`` / ``upload_folder`` / ``create_commit``:
      POST /api/{type}s/{id}/preupload/{rev}           (decides "regular" vs "lfs")
      POST /{id}.git/info/lfs/objects/batch            (LFS "basic" transfer, hrefs point back here)
      PUT  /lfs-upload/{secret}, POST /{id}.git/info/lfs/objects/verify
      POST /api/{type}s/{id}/commit/{rev}              (ndjson; new 40-hex sha, history kept)
* ``hf_hub_download`` / ``snapshot_download`` / ``file_exists`` and everything built on them
  (transformers ``from_pretrained``): HEAD/GET /{id}/resolve/{rev}/{path} with ETag (git blob sha1
  for regular files, sha256 for LFS files), X-Repo-Commit, X-Linked-Etag / X-Linked-Size for LFS
  files, Content-Length and byte ranges.

Upload mode: "lfs" when the size is >= ``lfs_threshold`` (10 MiB), the suffix is in the Hub's default
.gitattributes (``LFS_SUFFIXES``: *.safetensors, *.bin, ...) or the 512-byte sample contains a NUL byte.
Auth: ``Authorization: Bearer <token>``, tokens given at start (token -> user). An unknown token is a 401
("Invalid credentials in Authorization header") everywhere; a write without a token is a 401, into a namespace
that is not yours (user or org you belong to) a 403. Private repos of others answer "RepoNotFound" (401 when
anonymous, 404 when authenticated) exactly like missing ones; gated repos answer "GatedRepo" on downloads.

Xet is never advertised (no X-Xet-* headers, no ``xetHash``): the client must also run with
``HF_HUB_DISABLE_XET=1`` because it picks the Xet upload path client-side when ``hf_xet`` is installed.
Only ``main`` and commit shas (full or a unique >=7 char prefix) are valid revisions; no PRs/tags.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import socket
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# Suffixes tracked by LFS in the .gitattributes the Hub puts in every new repo (abridged).
LFS_SUFFIXES = (".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel",
                ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl",
                ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME_RE = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class FileEntry:
    sha256: str
    size: int
    lfs: bool
    blob_id: str  # git oid: sha1 of the content (regular) or of the LFS pointer file (LFS)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    author: str
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: str | bool = False
    created_at: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


class HubServer:
    """The server and its state. ``tokens`` maps token -> user name; ``orgs`` maps org -> members."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None,
                 lfs_threshold: int = 10 * 1024 * 1024, host: str = "127.0.0.1", port: int = 0):
        self.tokens, self.orgs, self.lfs_threshold = dict(tokens), dict(orgs or {}), lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, for regular and LFS files alike
        self.pending_uploads: dict[str, tuple[str, int]] = {}  # upload secret -> (sha256, size)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for assertions
        self.errors: list[str] = []  # tracebacks of unexpected server exceptions (answered with a 500)
        self.lock = threading.RLock()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, close kept-alive client connections and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
        with self.lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---------------------------------------------------------------- state helpers
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return size >= self.lfs_threshold or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample

    def _read_repo(self, rtype: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((rtype, repo_id))
        if repo is None or (repo.private and not self._can_write(user, repo.namespace)):
            # The Hub does not reveal private repos: 401 when anonymous, 404 when authenticated.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _write_repo(self, rtype: str, repo_id: str, user: str | None) -> Repo:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repository")
        repo = self._read_repo(rtype, repo_id, user)
        if not self._can_write(user, repo.namespace):
            raise HubError(403, f"You don't have the rights to write to {rtype} {repo_id}")
        return repo

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        rev = rev.removeprefix("refs/heads/")
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            found = [c for oid, c in repo.commits.items() if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _new_commit(self, repo: Repo, branch: str, files: dict, title: str, message: str, author: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}\n{parent}\n{title}\n{len(repo.commits)}\n{secrets.token_hex(8)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, files, title, message, author)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _store(self, data: bytes) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return FileEntry(sha, len(data), False, git_blob_sha1(data))

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ---------------------------------------------------------------- routing
    def handle(self, method: str, segs: list[str], query: dict, body: bytes, user: str | None):
        """Return (status, headers, payload) where payload is bytes, a JSON-able object or None."""
        if segs[:1] == ["api"]:
            return self._api(method, segs[1:], query, body, user)
        if segs[:1] == ["lfs-upload"] and method == "PUT" and len(segs) == 2:
            return self._lfs_put(segs[1], body)
        rtype = REPO_TYPES.get(segs[0], "model") if segs[0] in ("datasets", "spaces") else "model"
        segs = segs[1:] if segs[0] in ("datasets", "spaces") else segs
        i = 2 if segs[2:3] == ["resolve"] else 1 if segs[1:2] == ["resolve"] else 0
        if i and method in ("GET", "HEAD"):
            if len(segs) < i + 3:
                raise HubError(404, "Entry not found", "EntryNotFound")
            return self._resolve(rtype, "/".join(segs[:i]), segs[i + 1], "/".join(segs[i + 2:]), user)
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            repo = self._write_repo(rtype, f"{segs[0]}/{segs[1][:-4]}", user)
            if segs[5] == "batch" and method == "POST":
                return self._lfs_batch(repo, json.loads(body))
            if segs[5] == "verify" and method == "POST":
                req = json.loads(body)
                if req["oid"] not in self.blobs or len(self.blobs[req["oid"]]) != req["size"]:
                    raise HubError(404, f"Object {req['oid']} not found in {repo.repo_id}")
                return 200, {}, {"success": True}
        raise HubError(404, f"Not Found: /{'/'.join(segs)}")

    def _api(self, method, segs, query, body, user):
        if segs == ["whoami-v2"]:
            if user is None:
                raise HubError(401, "Unauthorized")
            orgs = [{"type": "org", "name": o} for o, members in self.orgs.items() if user in members]
            return 200, {}, {"type": "user", "id": hashlib.md5(user.encode()).hexdigest()[:24], "name": user,
                             "fullname": user.title(), "email": f"{user}@example.com", "emailVerified": True,
                             "isPro": False, "canPay": False, "orgs": orgs,
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "test", "role": "write"}}}
        if segs == ["agent-harnesses"]:
            return 200, {}, {"standardEnvVars": [], "harnesses": {}}
        if segs == ["validate-yaml"] and method == "POST":
            return 200, {}, {"errors": [], "warnings": []}
        if segs in (["repos", "create"], ["repos", "delete"]) and method in ("POST", "DELETE"):
            return self._create_or_delete(segs[1], json.loads(body or b"{}"), user)
        if len(segs) < 3 or segs[0] not in REPO_TYPES:
            raise HubError(404, f"Not Found: /api/{'/'.join(segs)}")
        rtype, repo_id, rest = REPO_TYPES[segs[0]], f"{segs[1]}/{segs[2]}", segs[3:]
        if method == "GET" and (not rest or (rest[0] == "revision" and len(rest) == 2)):
            repo = self._read_repo(rtype, repo_id, user)
            return 200, {}, self._info(repo, self._commit(repo, rest[1] if rest else "main"), "blobs" in query)
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            repo = self._read_repo(rtype, repo_id, user)
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return 200, {}, self._tree(self._commit(repo, rest[1]), "/".join(rest[2:]).strip("/"), recursive)
        if method == "GET" and len(rest) == 2 and rest[0] == "commits":
            repo = self._read_repo(rtype, repo_id, user)
            commit, history = self._commit(repo, rest[1]), []
            while commit is not None:
                history.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                                "authors": [{"user": commit.author}], "date": commit.date})
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return 200, {}, history
        if method == "GET" and rest == ["refs"]:
            repo = self._read_repo(rtype, repo_id, user)
            return 200, {}, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                                          for b, oid in repo.branches.items()], "converts": [], "tags": []}
        if method == "PUT" and rest == ["settings"]:
            repo, settings = self._write_repo(rtype, repo_id, user), json.loads(body or b"{}")
            visibility = settings.get("visibility", {True: "private", False: "public"}.get(settings.get("private")))
            if visibility not in (None, "public", "private") or settings.get("gated", False) not in ("auto", "manual", False):
                raise HubError(400, f"Invalid settings: {settings}")
            if visibility is not None:
                repo.private = visibility == "private"
            repo.gated = settings.get("gated", repo.gated)
            return 200, {}, {}
        if method == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit"):
            repo = self._write_repo(rtype, repo_id, user)
            if query.get("create_pr"):
                raise HubError(400, "create_pr is not supported by the test hub")
            if rest[0] == "preupload":
                return self._preupload(repo, rest[1], json.loads(body))
            return self._commit_ndjson(repo, rest[1], body, user)
        raise HubError(404, f"Not Found: /api/{'/'.join(segs)}")

    def _create_or_delete(self, action: str, payload: dict, user: str | None):
        rtype, name = payload.get("type") or "model", payload.get("name", "")
        namespace = payload.get("organization") or user
        if user is None:
            raise HubError(401, "You must be authenticated to create or delete a repository")
        if not self._can_write(user, namespace):
            raise HubError(403, f'You don\'t have the rights to {action} a {rtype} under the namespace "{namespace}"')
        if rtype not in URL_PREFIX or not NAME_RE.match(name):
            raise HubError(400, f"Invalid repo type or name: {rtype!r} {name!r}")
        repo_id = f"{namespace}/{name}"
        if action == "delete":
            if self.repos.pop((rtype, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            return 200, {}, {}
        if (rtype, repo_id) in self.repos:
            raise HubError(409, f"You already created this {rtype} repo", url=self._url(self.repos[(rtype, repo_id)]))
        repo = Repo(rtype, repo_id, private=payload.get("visibility") == "private" or payload.get("private") is True)
        self._new_commit(repo, "main", {".gitattributes": self._store(GITATTRIBUTES.encode())},
                         "initial commit", "", user)
        self.repos[(rtype, repo_id)] = repo
        return 200, {}, {"url": self._url(repo), "name": repo_id, "id": repo_id}

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path, e in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=e.size, blobId=e.blob_id)
                if e.lfs:
                    sib["lfs"] = {"size": e.size, "sha256": e.sha256, "pointerSize": e.pointer_size}
            siblings.append(sib)
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.namespace, "sha": commit.oid, "lastModified": commit.date,
                "createdAt": repo.created_at, "private": repo.private, "gated": repo.gated, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.files.values())}

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        if prefix in commit.files:
            raise HubError(400, f"{prefix} is a file, not a directory")
        entries: dict[str, dict] = {}
        for path, e in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = (path[len(prefix) + 1:] if prefix else path).split("/")
            dirs = range(1, len(parts)) if recursive else range(1, min(len(parts), 2))
            for depth in dirs:
                d = "/".join(filter(None, [prefix, *parts[:depth]]))
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                       "size": 0, "path": d})
            if recursive or len(parts) == 1:
                item = {"type": "file", "oid": e.blob_id, "size": e.size, "path": path}
                if e.lfs:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
                entries[path] = item
        if prefix and not entries:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return list(entries.values())

    def _resolve(self, rtype, repo_id, rev, path, user):
        repo = self._read_repo(rtype, repo_id, user)
        if repo.gated and not self._can_write(user, repo.namespace):
            raise HubError(401 if user is None else 403, f"Access to {repo_id} is restricted", "GatedRepo")
        commit = self._commit(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.sha256 if entry.lfs else entry.blob_id}"',
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        return 200, headers, self.blobs[entry.sha256]

    def _preupload(self, repo: Repo, rev: str, payload: dict):
        commit, files = self._commit(repo, rev), []
        for f in payload["files"]:
            lfs = self._is_lfs(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
            old = commit.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": (old.sha256 if old.lfs else old.blob_id) if old else None})
        return 200, {}, {"files": files, "commitOid": commit.oid}

    def _lfs_batch(self, repo: Repo, payload: dict):
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if oid in self.blobs:  # already stored: no "actions" => the client skips the upload
                objects.append({"oid": oid, "size": size})
                continue
            secret = secrets.token_urlsafe(16)
            self.pending_uploads[secret] = (oid, size)
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.endpoint}/lfs-upload/{secret}"},
                "verify": {"href": f"{self._url(repo)}.git/info/lfs/objects/verify"}}})
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, secret: str, body: bytes):
        expected = self.pending_uploads.pop(secret, None)
        if expected is None:
            raise HubError(403, "Unknown or already used upload URL")
        if (hashlib.sha256(body).hexdigest(), len(body)) != expected:
            raise HubError(400, f"Uploaded content does not match oid/size {expected}")
        self.blobs[expected[0]] = body
        return 200, {}, b""

    def _commit_ndjson(self, repo: Repo, rev: str, body: bytes, user: str):
        branch = rev.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit payload must be its header")
        header, files = lines[0]["value"], dict(head.files)
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            path = value["path"]
            if key == "file":
                raw = value["content"]
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                if len(data) >= self.lfs_threshold:
                    raise HubError(400, f"{path} is larger than {self.lfs_threshold} bytes: it must go through LFS")
                files[path] = self._store(data)
            elif key == "lfsFile":
                if value["oid"] not in self.blobs:
                    raise HubError(400, f"LFS object {value['oid']} for {path} was not uploaded")
                oid, size = value["oid"], len(self.blobs[value["oid"]])
                files[path] = FileEntry(oid, size, True, git_blob_sha1(lfs_pointer(oid, size)))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit = self._new_commit(repo, branch, files, header.get("summary", ""), header.get("description", ""), user)
        return 200, {}, {"success": True, "commitOid": commit.oid, "hookOutput": "", "pullRequestUrl": None,
                         "commitUrl": f"{self._url(repo)}/commit/{commit.oid}"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub: every response carries Content-Length
    timeout = 60

    def setup(self):
        super().setup()
        with self.server.hub.lock:
            self.server.hub._connections.add(self.connection)

    def finish(self):
        with self.server.hub.lock:
            self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self):
        hub: HubServer = self.server.hub
        body = self._read_body()  # always drain the body so the kept-alive connection stays in sync
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]] or [""]
        try:
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if token and token not in hub.tokens:
                raise HubError(401, "Invalid credentials in Authorization header")
            with hub.lock:
                status, headers, payload = hub.handle(self.command, segs, parse_qs(url.query), body,
                                                      hub.tokens.get(token) if token else None)
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.body}
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {}), **e.headers}
        except (KeyError, ValueError, TypeError) as e:  # malformed request payloads
            status, headers, payload = 400, {"X-Error-Message": f"Bad request: {e!r}"}, {"error": repr(e)}
        except Exception:  # a bug in this server: answer (the client retries 5xx) and keep the traceback
            hub.errors.append(traceback.format_exc())
            status, headers, payload = 500, {"X-Error-Message": "test hub crashed, see HubServer.errors"}, {}
        with hub.lock:
            hub.requests.append((self.command, url.path, status))
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not isinstance(payload, bytes):
            headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if status == 200 and isinstance(payload, bytes) and match and int(match[1]) < len(data):
            start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            status, data = 206, data[start:end + 1]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():  # headers must be one-line latin-1
            self.send_header(key, " ".join(str(value).splitlines()).encode("ascii", "backslashreplace").decode())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch
