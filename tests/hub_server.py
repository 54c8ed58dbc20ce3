"""A Hub-compatible HTTP server on loopback, for tests: enough of the Hugging Face Hub API for huggingface_hub,
datasets and transformers to create repos, commit, list, and download (with ranges) models and datasets.

Text files (cards, configs, code) go inline in the commit ("regular"); everything else goes through the LFS
batch API (basic transfer: one PUT per object, sha256 checked), as on the real Hub. `fail_commits` makes the next
N commits fail with a 500, to test what a failed push leaves behind.
"""

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    commits: dict = field(default_factory=dict)  # sha -> {"files": {path: bytes}, "message": str}
    branches: dict = field(default_factory=dict)  # name -> sha

    def __post_init__(self):
        self.branches["main"] = self._store({}, "initial commit", None)

    def _store(self, files: dict, message: str, parent: str | None) -> str:
        digest = hashlib.sha1(json.dumps([parent, message, sorted((p, _git_oid(c)) for p, c in files.items()), time.time_ns()]).encode())
        sha = digest.hexdigest()
        self.commits[sha] = {"files": files, "message": message}
        return sha

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubState:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.fail_commits = 0
        self.commit_count = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base_url: str

    def log_message(self, *args):  # keep test output clean
        pass

    # ------------------------------------------------------------------------------------------ replies

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(headers.get("_length", len(body))))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None, head: bool = False):
        self._send(status, json.dumps(payload).encode(), headers, head)

    def _error(self, status: int, code: str, message: str, head: bool = False):
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # ------------------------------------------------------------------------------------------ helpers

    def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
        return repo

    def _revision(self, repo: Repo, revision: str, head: bool = False):
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None, None
        return sha, repo.commits[sha]["files"]

    @staticmethod
    def _entry(path: str, content: bytes) -> dict:
        return {"type": "file", "oid": _git_oid(content), "size": len(content), "path": path}

    def _info(self, repo: Repo, sha: str, files: dict) -> dict:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        info = {
            "id": repo.repo_id, "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "author": repo.repo_id.split("/")[0],
            "sha": sha, "lastModified": now, "createdAt": now, "private": repo.private, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    # ------------------------------------------------------------------------------------------ routing

    API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(revision|tree|paths-info|preupload|commit|branch|refs)(?:/([^/]+))?(?:/(.*))?)?$")
    LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
    TEXT_SUFFIXES = (".md", ".json", ".txt", ".py", ".yaml", ".yml", ".gitattributes", ".csv")
    RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str):
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        with self.state.lock:
            if path == "/api/whoami-v2":
                return self._json(200, {"type": "user", "name": "mednet-tester", "orgs": [],
                                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(json.loads(self._body())["content"])
            if path == "/api/repos/create" and method == "POST":
                return self._create(json.loads(self._body() or b"{}"))
            if path == "/api/repos/delete" and method == "DELETE":
                payload = json.loads(self._body() or b"{}")
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                self.state.repos.pop((payload.get("type") or "model", repo_id), None)
                return self._json(200, {})
            match = self.LFS_BATCH.match(path)
            if match and method == "POST":
                return self._lfs_batch(json.loads(self._body()))
            if path.startswith("/lfs-upload/") and method == "PUT":
                return self._lfs_put(path.rsplit("/", 1)[1])
            match = self.API.match(path)
            if match:
                repo_type, repo_id, action, revision, rest = match.groups()
                return self._api(method, repo_type[:-1], unquote(repo_id), action, revision or "main", unquote(rest or ""), query)
            match = self.RESOLVE.match(path)
            if match and method in ("GET", "HEAD"):
                repo_type, repo_id, revision, file_path = match.groups()
                return self._resolve(method, (repo_type or "models")[:-1], unquote(repo_id), revision, unquote(file_path))
            self._error(404, "NotFound", f"{method} {path} is not served by this test Hub")

    def _validate_yaml(self, content: str):
        """The Hub's README check, at the YAML level: the front matter must parse to a mapping."""
        import yaml

        match = re.match(r"^---\n(.*?)\n---", content, flags=re.DOTALL)
        if not match:
            return self._json(200, {"warnings": [{"message": "empty or missing YAML metadata"}], "errors": []})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []})
        return self._json(200, {"errors": [], "warnings": []})

    def _create(self, payload: dict):
        repo_type = payload.get("type") or "model"
        name = payload["name"]
        repo_id = f"{payload['organization']}/{name}" if payload.get("organization") else name
        if "/" not in repo_id:
            repo_id = f"mednet-tester/{repo_id}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.base_url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            return self._json(409, {"error": "You already created this repo", "url": url})
        self.state.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private=bool(payload.get("private")))
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _api(self, method, repo_type, repo_id, action, revision, rest, query):
        head = method == "HEAD"
        repo = self._repo(repo_type, repo_id, head)
        if repo is None:
            return
        if action in (None, "revision"):
            sha, files = self._revision(repo, revision if action else "main", head)
            if sha:
                self._json(200, self._info(repo, sha, files), head=head)
        elif action == "refs":
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()]
            self._json(200, {"branches": branches, "tags": [], "converts": []})
        elif action == "branch":
            name = unquote(revision)
            if name in repo.branches:
                return self._error(409, "BranchExists", f"Branch {name} already exists")
            body = json.loads(self._body() or b"{}")
            repo.branches[name] = repo.resolve(body.get("startingPoint") or "main")
            self._json(200, {})
        elif action == "tree":
            sha, files = self._revision(repo, revision)
            folder = rest.strip("/")
            if sha and folder and not any(p.startswith(f"{folder}/") for p in files):
                self._error(404, "EntryNotFound", f"{folder} does not exist at {revision}")
            elif sha:
                self._json(200, self._tree(files, folder, "recursive" in query and query["recursive"][0] in ("1", "true", "True")))
        elif action == "paths-info":
            sha, files = self._revision(repo, revision)
            if sha:
                raw = self._body()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    paths = json.loads(raw).get("paths", [])
                else:
                    paths = parse_qs(raw.decode()).get("paths", [])
                self._json(200, [e for p in paths for e in self._paths_info(files, p)])
        elif action == "preupload":
            body = json.loads(self._body())
            mode = lambda p: "regular" if p.endswith(self.TEXT_SUFFIXES) else "lfs"  # noqa: E731
            self._json(200, {"files": [{"path": f["path"], "uploadMode": mode(f["path"]), "shouldIgnore": False, "oid": None} for f in body["files"]]})
        elif action == "commit":
            self._commit(repo, revision)

    def _lfs_batch(self, payload: dict):
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:  # already stored objects need no upload
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str):
        content = self._body()
        if hashlib.sha256(content).hexdigest() != oid:
            return self._error(400, "BadRequest", f"LFS object {oid}: content does not match its sha256")
        self.state.lfs[oid] = content
        self._send(200)

    def _tree(self, files: dict, folder: str, recursive: bool) -> list:
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        entries, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, files[path]))
        entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(dirs)]
        return entries

    def _paths_info(self, files: dict, path: str) -> list:
        path = path.strip("/")
        if path in files:
            return [self._entry(path, files[path])]
        if any(p.startswith(f"{path}/") for p in files) or path == "":
            return [{"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}]
        return []

    def _commit(self, repo: Repo, revision: str):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        branch = unquote(revision)
        if branch not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        self.state.commit_count += 1
        if self.state.fail_commits > 0:
            self.state.fail_commits -= 1
            return self._error(500, "InternalError", "test Hub: commit rejected on purpose (injected failure)")
        files = dict(repo.commits[repo.branches[branch]]["files"])
        header = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(400, "BadRequest", f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:
                return self._error(400, "BadRequest", f"test Hub does not take {key!r} operations")
        sha = repo._store(files, header.get("summary", ""), repo.branches[branch])
        repo.branches[branch] = sha
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(200, {"commitUrl": f"{self.base_url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def _resolve(self, method, repo_type, repo_id, revision, file_path):
        head = method == "HEAD"
        repo = self._repo(repo_type, repo_id, head)
        if repo is None:
            return
        sha, files = self._revision(repo, revision, head)
        if sha is None:
            return
        if file_path not in files:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist at {revision}", head)
        content = files[file_path]
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{_git_oid(content)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and content:
            start = int(match.group(1) or 0)
            end = min(int(match.group(2)) if match.group(2) else len(content) - 1, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return self._send(206, content[start : end + 1], headers, head)
        self._send(200, content, headers, head)


class HubServer:
    """`with HubServer() as hub:` serves on 127.0.0.1 at `hub.url` until the block ends."""

    def __init__(self):
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        handler.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def env(self, hf_home) -> dict:
        """Environment for a client process that talks to this server and nothing else."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "hf_test_dummy_token",
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "10",
        }
