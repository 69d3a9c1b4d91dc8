"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the real huggingface_hub client.

It answers HEAD and GET on /{repo}/resolve/{revision}/{file} the way the Hub does for an LFS file:
X-Repo-Commit, ETag (the sha256 for LFS files), Content-Length, Accept-Ranges, and 206 responses to
Range requests. Knobs make it misbehave: drop the connection halfway through a body, fail with a status,
advertise a different ETag. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # read when huggingface_hub is imported

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    etags: dict[tuple[str, str], str] = field(default_factory=dict)  # override the sha256 ETag
    drop_after: int | None = None  # the next GET sends this many body bytes, then closes the connection
    fail_status: int | None = None  # every GET answers with this status (e.g. 500) while set
    requests: list[Request] = field(default_factory=list)
    bytes_sent: int = 0

    def add(self, repo: str, name: str, data: bytes, etag: str | None = None) -> str:
        self.files[(repo, name)] = data
        if etag is not None:
            self.etags[(repo, name)] = etag
        return hashlib.sha256(data).hexdigest()

    # ------------------------------------------------------------ server
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _lookup(self):
                m = re.match(r"^/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if not m:
                    return None, None
                key = (m.group(1), m.group(3))
                return key, hub.files.get(key)

            def _headers(self, key, data, status=200, start=0):
                etag = hub.etags.get(key) or hashlib.sha256(data).hexdigest()
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(Request("HEAD", self.path, self.headers.get("Range")))
                key, data = self._lookup()
                if data is None:
                    return self._missing()
                self._headers(key, data)

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(Request("GET", self.path, rng))
                key, data = self._lookup()
                if data is None:
                    return self._missing()
                if hub.fail_status:
                    self.send_response(hub.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-", rng or "")
                if m:
                    start = int(m.group(1))
                self._headers(key, data, 206 if m else 200, start)
                body = data[start:]
                if hub.drop_after is not None:
                    cut, hub.drop_after = hub.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    hub.bytes_sent += min(cut, len(body))
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)
                hub.bytes_sent += len(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
