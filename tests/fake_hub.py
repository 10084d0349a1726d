"""A stand-in for the Hugging Face hub on a loopback port: the few endpoints huggingface_hub
2.4 uses to describe a model repo and download its files, so downloads are tested with the
real client code and nothing leaves the machine.

    GET  /api/models/{repo}[/revision/{rev}]   model_info / repo_info (siblings with sizes)
    GET  /api/models/{repo}/tree/{rev}         list_repo_tree (what snapshot_download caches)
    HEAD /{repo}/resolve/{rev}/{path}          file metadata: commit, etag, size
    GET  /{repo}/resolve/{rev}/{path}          the bytes (Range: bytes=N- resumes)

A gated repo answers its files with 401 and X-Error-Code: GatedRepo, as the hub does before
the user has accepted the licence. `delay_s` holds each file's body back that long, so a
download lasts long enough to be watched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: A DeepFloyd IF stage I repo's layout, stand-in contents (served gated in the tests).
IF_FILES = {"model_index.json": b'{"_class_name": "IFPipeline"}', "scheduler/scheduler_config.json": b"{}",
            "tokenizer/spiece.model": b"s" * 100, "text_encoder/config.json": b'{"d_model": 8}',
            "text_encoder/model.safetensors.index.fp16.json": b'{"weight_map": {}}',
            "text_encoder/model.fp16-00001-of-00002.safetensors": b"1" * 100,
            "text_encoder/model.fp16-00002-of-00002.safetensors": b"2" * 100, "unet/config.json": b'{"a": 1}',
            "unet/diffusion_pytorch_model.fp16.safetensors": b"f" * 100}


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    sha: str = field(default_factory=lambda: hashlib.sha1(str(time.time_ns()).encode()).hexdigest())

    def blob_id(self, path: str) -> str:
        return hashlib.sha1(self.files[path]).hexdigest()


class FakeHub:
    def __init__(self, delay_s: float = 0.0):
        self.repos: dict[str, FakeRepo] = {}
        self.delay_s = delay_s
        self.served: Counter[tuple[str, str]] = Counter()   # (repo, path) -> bodies sent
        self.bytes_sent = 0
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, files: dict[str, bytes], gated: bool = False) -> FakeRepo:
        self.repos[repo] = FakeRepo(dict(files), gated)
        return self.repos[repo]

    def add_folder(self, repo: str, folder: str | Path, extra: dict[str, bytes] | None = None) -> FakeRepo:
        """Serve every file under `folder` (e.g. a saved diffusers pipeline) as `repo`."""
        root = Path(folder)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add(repo, {**files, **(extra or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-hub").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:   # quiet
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self._repo("/".join(parts[2:4]))
            if repo is None:
                return
            if len(parts) > 5 and parts[4] == "tree":
                return self._json([{"type": "file", "path": p, "size": len(data), "oid": repo.blob_id(p)}
                                   for p, data in repo.files.items()])
            return self._json({"id": "/".join(parts[2:4]), "sha": repo.sha, "private": False,
                               "gated": "manual" if repo.gated else False,
                               "siblings": [{"rfilename": p, "size": len(data), "blobId": repo.blob_id(p)}
                                            for p, data in repo.files.items()]})
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), "/".join(parts[4:]), body)
        self._error(404, "EntryNotFound", "no such endpoint")

    def _repo(self, name: str) -> FakeRepo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {name} not found")
        return repo

    def _file(self, name: str, path: str, body: bool) -> None:
        repo = self._repo(name)
        if repo is None:
            return
        if repo.gated:
            return self._error(401, "GatedRepo", f"Access to model {name} is restricted. You must have access "
                                                 "to it and be authenticated to access it. Please log in.")
        if path not in repo.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        data, start = repo.files[path], 0
        ranged = self.headers.get("Range", "")
        if body and ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0] or 0)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("ETag", f'"{repo.blob_id(path)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if body:
            time.sleep(self.hub.delay_s)
            self.wfile.write(data[start:])
            self.hub.served[(name, path)] += 1
            self.hub.bytes_sent += len(data) - start

    def _json(self, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, code: int, error_code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error_code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def point_hub_at(monkeypatch, url: str, cache: Path) -> None:
    """This process's huggingface_hub talks to `url` and caches in `cache` (it reads these
    settings at import, so its constants are patched along with the environment)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def hub_env(url: str, home: Path) -> dict[str, str]:
    """The environment of a process (a server) whose huggingface_hub talks to `url`, with its
    own HF_HOME (cache and no token) under `home`."""
    return {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}
