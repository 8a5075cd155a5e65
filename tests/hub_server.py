"""A small stand-in for the Hugging Face Hub, for offline tests.

It answers, on 127.0.0.1 only, the HTTP calls that ``huggingface_hub`` 2.x makes for
``create_repo``, ``repo_info``/``model_info``, ``list_repo_files``/``list_repo_tree``,
``upload_folder``/``upload_file``/``create_commit`` (preupload, README YAML validation,
the NDJSON commit, regular files and the LFS batch + PUT path) and ``hf_hub_download``
(HEAD/GET ``/{repo}/resolve/{revision}/{path}`` with ``X-Repo-Commit``, ``ETag``,
``Content-Length``, and the ``X-Error-Code`` headers of missing repos/files/revisions).
Xet is never offered: files are either "regular" (base64 in the commit) or LFS (uploaded
by a plain PUT), so ``HF_HUB_DISABLE_XET`` must be set on the client (see :func:`redirect_hub`).

Bounded: request bodies and total stored bytes are capped, idle connections time out,
and the server stops by itself after ``lifetime_s`` if nobody stops it.

Usage::

    with StandInHub() as hub:
        redirect_hub(monkeypatch, hub.url, cache_dir)
        ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["StandInHub", "redirect_hub", "git_blob_sha1"]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's ETag/oid."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _File:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: list[tuple[str, dict[str, _File]]] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def head(self) -> tuple[str, dict[str, _File]]:
        return self.commits[-1]

    def snapshot(self, revision: str) -> tuple[str, dict[str, _File]] | None:
        if revision == "main":
            return self.head
        for oid, files in self.commits:
            if oid == revision:
                return oid, files
        return None


class _HubError(Exception):
    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.body = body or {}


class StandInHub:
    """The stand-in server. ``url`` is ``http://127.0.0.1:<port>`` once started.

    Args:
        lfs_suffixes: files whose names end so are stored as LFS, as the Hub does for
            weights (``.safetensors``); the client then uses the LFS batch endpoint.
        max_body_bytes: largest accepted request body.
        max_total_bytes: cap on everything stored (files + LFS objects).
        lifetime_s: the server shuts itself down after this long.
        idle_timeout_s: an idle keep-alive connection is closed after this long.
    """

    def __init__(
        self,
        *,
        lfs_suffixes: tuple[str, ...] = (".safetensors",),
        max_body_bytes: int = 64 << 20,
        max_total_bytes: int = 256 << 20,
        lifetime_s: float = 600.0,
        idle_timeout_s: float = 5.0,
    ):
        self.lfs_suffixes = lfs_suffixes
        self.max_body_bytes = max_body_bytes
        self.max_total_bytes = max_total_bytes
        self.lifetime_s = lifetime_s
        self.idle_timeout_s = idle_timeout_s
        self.repos: dict[str, _Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request, in order."""
        self.unhandled: list[tuple[str, str]] = []
        """Requests no route matched (answered 404)."""
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "the stand-in hub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        Handler.timeout = self.idle_timeout_s
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if self._timer is not None:
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> StandInHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state helpers (for tests)
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path → content of a repo at a revision."""
        with self._lock:
            snapshot = self.repos[repo_id].snapshot(revision)
            assert snapshot is not None
            return {path: f.data for path, f in snapshot[1].items()}

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> str:
        """Create a repo directly (no HTTP) holding ``files``; returns the commit id."""
        with self._lock:
            repo = _Repo(repo_id, private)
            self.repos[repo_id] = repo
            return self._commit(repo, {p: _File(d, self._is_lfs(p)) for p, d in (files or {}).items()})

    def commit_files(
        self, repo_id: str, add: dict[str, bytes] | None = None, delete_prefixes: tuple[str, ...] = ()
    ) -> str:
        """Commit directly (no HTTP): add/overwrite ``add``, drop paths under ``delete_prefixes``."""
        with self._lock:
            repo = self.repos[repo_id]
            files = (
                {p: f for p, f in repo.head[1].items() if not p.startswith(delete_prefixes)}
                if delete_prefixes
                else dict(repo.head[1])
            )
            files.update({p: _File(d, self._is_lfs(p)) for p, d in (add or {}).items()})
            return self._commit(repo, files)

    def _is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def _stored_bytes(self) -> int:
        total = sum(len(d) for d in self.lfs_objects.values())
        for repo in self.repos.values():
            total += sum(len(f.data) for f in repo.head[1].values() if not f.lfs)
        return total

    def _commit(self, repo: _Repo, files: dict[str, _File]) -> str:
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits.append((oid, files))
        return oid

    # ------------------------------------------------------------------ routes
    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        with self._lock:
            self.requests.append((method, path))
        try:
            if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if parts[:2] == ["api", "validate-yaml"] and method == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._model_api(method, parts[2] + "/" + parts[3], parts[4:], query, headers, body)
            if len(parts) >= 2 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(parts[0] + "/" + parts[1][: -len(".git")], json.loads(body or b"{}"))
            if parts[:1] == ["lfs-upload"] and len(parts) == 2 and method == "PUT":
                return self._lfs_put(parts[1], body)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), headers, method)
        except _HubError as error:
            return self._error(error)
        except (ValueError, KeyError, TypeError) as error:
            return self._error(_HubError(400, None, f"bad request: {error}"))
        except Exception as error:  # a bug of the stand-in: answer, and let the test see it
            with self._lock:
                self.unhandled.append((method, f"{path} -> {type(error).__name__}: {error}"))
            return self._error(_HubError(500, None, f"stand-in hub error: {error}"))
        with self._lock:
            self.unhandled.append((method, path))
        return self._error(_HubError(404, None, f"stand-in hub: no route for {method} {path}"))

    @staticmethod
    def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()

    def _error(self, error: _HubError) -> tuple[int, dict[str, str], bytes]:
        headers = dict(error.headers)
        if error.code:
            headers["X-Error-Code"] = error.code
        headers["X-Error-Message"] = error.message
        return self._json(error.status, {"error": error.message, **error.body}, headers)

    def _repo(self, repo_id: str, headers: Any) -> _Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        if repo.private and not headers.get("authorization"):
            raise _HubError(401, "RepoNotFound", "Invalid username or password.")
        return repo

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        name, org = payload["name"], payload.get("organization")
        repo_id = f"{org}/{name}" if org else f"user/{name}"
        if payload.get("type", "model") != "model":
            raise _HubError(400, None, "the stand-in hub hosts model repos only")
        with self._lock:
            if repo_id in self.repos:
                raise _HubError(409, None, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
            self.add_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return self._json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        content = str(payload.get("content", ""))
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                raise _HubError(400, None, "unterminated YAML front matter")
            try:
                data = yaml.safe_load(content[3:end])
            except yaml.YAMLError as error:
                raise _HubError(400, None, f"invalid YAML: {error}") from error
            if data is not None and not isinstance(data, dict):
                raise _HubError(400, None, "YAML front matter must be a mapping")
        return self._json(200, {"errors": [], "warnings": []})

    def _model_api(
        self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            repo = self._repo(repo_id, headers)
            if method == "GET" and (not rest or rest[0] == "revision"):
                revision = rest[1] if len(rest) > 1 else "main"
                snapshot = repo.snapshot(revision)
                if snapshot is None:
                    raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                oid, files = snapshot
                return self._json(
                    200,
                    {
                        "_id": repo_id,
                        "id": repo_id,
                        "modelId": repo_id,
                        "author": repo_id.split("/")[0],
                        "sha": oid,
                        "private": repo.private,
                        "disabled": False,
                        "gated": False,
                        "tags": [],
                        "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                        "siblings": [{"rfilename": p} for p in sorted(files)],
                    },
                )
            if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]), query)
            if method == "POST" and rest[:1] == ["preupload"]:
                return self._preupload(repo, json.loads(body or b"{}"))
            if method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
                return self._commit_api(repo, rest[1], body)
        raise _HubError(404, None, f"stand-in hub: no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _tree(
        self, repo: _Repo, revision: str, prefix: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, str], bytes]:
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = snapshot[1]
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        base = prefix.strip("/")
        under = {p: f for p, f in files.items() if not base or p.startswith(base + "/")}
        if base and not under:
            raise _HubError(404, "EntryNotFound", f"{base} does not exist on {revision}")
        entries: dict[str, dict[str, Any]] = {}
        for path, f in sorted(under.items()):
            relative = path[len(base) + 1 :] if base else path
            segments = relative.split("/")
            depth = len(segments) if recursive else 1
            for i in range(1, min(depth, len(segments) - 1) + 1):
                folder = "/".join(([base] if base else []) + segments[:i])
                entries.setdefault(
                    folder,
                    {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder},
                )
            if recursive or len(segments) == 1:
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": git_blob_sha1(f.data),
                    "size": len(f.data),
                    "path": path,
                }
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                entries[path] = entry
        return self._json(200, list(entries.values()))

    def _preupload(self, repo: _Repo, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        files = repo.head[1]
        answer = []
        for item in payload["files"]:
            path = item["path"]
            lfs = self._is_lfs(path) and int(item.get("size", 0)) > 0
            current = files.get(path)
            oid = None
            if current is not None:
                oid = current.sha256 if lfs else git_blob_sha1(current.data)
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._json(200, {"files": answer, "commitOid": repo.head[0]})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if repo_id not in self.repos:
                raise _HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
            if payload.get("operation") != "upload":
                raise _HubError(400, None, "the stand-in hub accepts LFS uploads only")
            objects = []
            for obj in payload["objects"]:
                oid, size = obj["oid"], int(obj["size"])
                if oid in self.lfs_objects:
                    objects.append({"oid": oid, "size": size})  # already stored: no actions
                else:
                    objects.append(
                        {
                            "oid": oid,
                            "size": size,
                            "authenticated": True,
                            "actions": {"upload": {"href": f"{self.url}/lfs-upload/{oid}", "header": {}}},
                        }
                    )
        return self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(400, None, "LFS object content does not match its sha256")
        with self._lock:
            if self._stored_bytes() + len(body) > self.max_total_bytes:
                raise _HubError(413, None, "stand-in hub storage cap reached")
            self.lfs_objects[oid] = body
        return 200, {"Content-Type": "text/plain"}, b""

    def _commit_api(self, repo: _Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if revision != "main":
            raise _HubError(404, "RevisionNotFound", f"the stand-in hub commits to main only, not {revision}")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, None, "a commit payload starts with a header line")
        parent = lines[0]["value"].get("parentCommit")
        if parent is not None and parent != repo.head[0]:
            raise _HubError(412, None, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.head[1])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if ".." in path.split("/") or path.startswith("/"):
                raise _HubError(400, None, f"invalid path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, None, "regular files must be base64")
                files[path] = _File(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.lfs_objects.get(value["oid"])
                if data is None:
                    raise _HubError(422, None, f"LFS object {value['oid']} of {path} was never uploaded")
                files[path] = _File(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
            elif key == "deletedFolder":
                for name in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                    del files[name]
            else:
                raise _HubError(400, None, f"unknown commit operation {key!r}")
        if self._stored_bytes() > self.max_total_bytes:
            raise _HubError(413, None, "stand-in hub storage cap reached")
        oid = self._commit(repo, files)
        return self._json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )

    def _resolve(
        self, repo_id: str, revision: str, path: str, headers: Any, method: str
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            repo = self._repo(repo_id, headers)
            snapshot = repo.snapshot(revision)
            if snapshot is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            oid, files = snapshot
            f = files.get(path)
            if f is None:
                raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": oid})
        out = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_sha1(f.data)}"' if not f.lfs else f'"{f.sha256}"',
            "Accept-Ranges": "none",
        }
        if f.lfs:
            out["X-Linked-Etag"] = f'"{f.sha256}"'
            out["X-Linked-Size"] = str(len(f.data))
        return 200, out, f.data


class _Handler(BaseHTTPRequestHandler):
    hub: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _read_body(self) -> bytes:
        limit = self.hub.max_body_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    raise _HubError(413, None, "request body too large for the stand-in hub")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise _HubError(413, None, "request body too large for the stand-in hub")
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body() if method in ("POST", "PUT") else b""
        except _HubError as error:
            status, headers, payload = self.hub._error(error)
            self.close_connection = True
        else:
            status, headers, payload = self.hub.handle(method, split.path, parse_qs(split.query), self.headers, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")


def redirect_hub(monkeypatch: Any, url: str | None, cache_dir: str | Path, *, offline: bool = False) -> None:
    """Point ``huggingface_hub`` (already imported or not) at ``url`` for this test.

    ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, into
    ``huggingface_hub.constants.ENDPOINT`` and the download URL template, and its module-level
    functions (``create_repo``, ``upload_folder``...) are methods of a default ``HfApi``
    built then. So the environment is set (for subprocesses and late imports) and the
    imported values are patched: the constants, the default ``HfApi``'s endpoint, the
    cache folder, offline mode, and Xet (never used, so uploads go through the plain
    commit/LFS endpoints and downloads through ``/resolve``). A dummy token is set so that
    no real token is ever sent to the stand-in.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    cache_dir = str(cache_dir)
    env = {
        "HF_HUB_CACHE": cache_dir,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_TOKEN": "hf_stand_in_dummy_token",
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    if url is not None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_api.api, "endpoint", url)
