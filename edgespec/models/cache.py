"""The local model cache: where models live, their metadata files, checksums, verification and removal."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgespec.errors import EdgespecError, UsageError

if TYPE_CHECKING:
    from edgespec.models.registry import ModelEntry

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


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

