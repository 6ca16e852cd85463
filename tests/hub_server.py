"""A local stand-in for the Hugging Face Hub: the subset of its HTTP API that ``create_repo``, ``upload_folder``,
``hf_hub_download`` and ``snapshot_download`` use, so the real ``huggingface_hub`` client runs end to end against
``HF_ENDPOINT=http://127.0.0.1:<port>``.

Repositories live in memory: every commit is a full snapshot ``{path: bytes}`` with a sha. Files are uploaded as
regular (base64) blobs: the preupload answer never asks for LFS or Xet. ``fail`` makes one endpoint answer with
an error status (e.g. ``{"commit": 500}``) to test failing uploads; ``token`` makes every call need that bearer
token (401 otherwise); ``requests`` logs every call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse


# The licence ids the checks below accept (a subset of the Hub's list).
HUB_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0",
                "openrail", "other"}


@dataclass
class Repo:
    private: bool
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), newest last

    @property
    def head(self) -> tuple[str, dict[str, bytes]]:
        return self.commits[-1] if self.commits else ("0" * 40, {})


class FakeHub:
    """Start with ``with FakeHub() as hub:``; ``hub.url`` is the endpoint."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.fail: dict[str, int] = {}
        self.token = token
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].head[1])


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        # -- plumbing -----------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
                  head: bool = False) -> None:
            data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
            self.send_response(status)
            if isinstance(body, dict):
                self.send_header("Content-Type", "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": message}, {"X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorised(self) -> bool:
            if hub.token is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Invalid credentials in Authorization header")
            return False

        def _failing(self, endpoint: str) -> bool:
            status = hub.fail.get(endpoint)
            if status:
                self._error(status, f"injected failure of {endpoint}")
                return True
            return False

        # -- routes -------------------------------------------------------------------------------------
        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            hub.requests.append(f"POST {path}")
            body = self._body()
            if not self._authorised():
                return
            if path == "/api/repos/create":
                if self._failing("create"):
                    return
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else \
                    payload["name"]
                if repo_id in hub.repos:
                    return self._error(409, "You already created this model repo")
                private = payload.get("visibility") == "private" or bool(payload.get("private"))
                hub.repos[repo_id] = Repo(private=private)
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body)["content"])
            match = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
            if match:
                repo_id, action, _ = match.groups()
                repo = hub.repos.get(unquote(repo_id))
                if repo is None:
                    return self._error(404, "Repository not found")
                if self._failing(action):
                    return
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                return self._commit(unquote(repo_id), repo, body)
            self._error(404, f"no route for POST {path}")

        def _validate_yaml(self, content: str) -> None:
            """The README's metadata must parse, and its licence be a Hub licence id (or "other" + a name)."""
            import yaml

            if not content.startswith("---\n"):
                return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
            try:
                meta = yaml.safe_load(content.split("---\n")[1]) or {}
            except yaml.YAMLError as err:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            licence = meta.get("license")
            if licence is not None and licence not in HUB_LICENSES:
                return self._send(400, {"errors": [{"message": f'"license" must be one of the Hub\'s ids, got '
                                                               f"{licence!r}"}]})
            if licence == "other" and not meta.get("license_name"):
                return self._send(400, {"errors": [{"message": '"license_name" is required for license: other'}]})
            self._send(200, {"errors": [], "warnings": []})

        def _commit(self, repo_id: str, repo: Repo, body: bytes) -> None:
            files = dict(repo.head[1])
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(item["value"]["path"], None)
                elif item["key"] not in ("header",):
                    return self._error(400, f"unsupported commit operation {item['key']}")
            sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items()))
                               .encode()).hexdigest()
            repo.commits.append((sha, files))
            self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

        def do_GET(self) -> None:  # noqa: N802
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(head=True)

        def _get(self, head: bool) -> None:
            path = urlparse(self.path).path
            hub.requests.append(f"{'HEAD' if head else 'GET'} {path}")
            if not self._authorised():
                return
            info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if info:
                repo = hub.repos.get(unquote(info.group(1)))
                if repo is None or not repo.commits:
                    return self._error(404, "Repository not found")
                sha, files = repo.head
                return self._send(200, {"id": unquote(info.group(1)), "modelId": unquote(info.group(1)), "sha": sha,
                                        "private": repo.private,
                                        "siblings": [{"rfilename": name, "size": len(data)}
                                                     for name, data in sorted(files.items())]}, head=head)
            tree = re.fullmatch(r"/api/models/(.+)/tree/([^/]+)(?:/.*)?", path)
            if tree:
                repo = hub.repos.get(unquote(tree.group(1)))
                if repo is None or not repo.commits:
                    return self._error(404, "Repository not found")
                entries = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                           for name, data in sorted(repo.head[1].items())]
                return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head=head)
            resolve = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path)
            if resolve:
                repo_id, _, filename = (unquote(g) for g in resolve.groups())
                repo = hub.repos.get(repo_id)
                if repo is None or not repo.commits:
                    return self._error(404, "Repository not found")
                sha, files = repo.head
                if filename not in files:
                    return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                          "X-Repo-Commit": sha}, head=head)
                data = files[filename]
                etag = hashlib.sha1(data).hexdigest()
                return self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"',
                                              "Content-Type": "application/octet-stream"}, head=head)
            self._error(404, f"no route for GET {path}")

    return Handler
