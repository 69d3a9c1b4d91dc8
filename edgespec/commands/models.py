"""`edgespec models ...`: the registry and the model cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from edgespec.commands.options import SourceOpt, err

app = typer.Typer(help="The model registry: list and pull curated models and pairs.", no_args_is_help=True)


@app.command("list")
def models_list() -> None:
    """Registered models (with whether they are downloaded) and pairs."""
    from rich.table import Table

    from edgespec import registry

    reg = registry.load_registry()
    table = Table(title=f"models (cache: {registry.cache_dir() / 'models'})")
    for col in ("name", "size", "arch", "downloaded", "sources"):
        table.add_column(col)
    for e in reg.models.values():
        sources = ", ".join(s for s, ok in (("hub", e.repo), ("pypi", e.pypi)) if ok)
        size = f"{e.size / 1e6:.0f} MB" if e.size else "?"
        table.add_row(e.name, size, e.arch or "?", "yes" if registry.model_path(e).exists() else "no", sources)
    Console().print(table)
    pairs = Table(title="pairs")
    for col in ("pair", "target", "draft", "k"):
        pairs.add_column(col)
    for p in reg.pairs.values():
        name = p.name + (" (default)" if p.name == reg.default_pair else "")
        pairs.add_row(name, p.target, p.draft, str(p.k))
    Console().print(pairs)


@app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="A model or pair name from `edgespec models list`.", show_default=False)],
    source: SourceOpt = "auto",
) -> None:
    """Download a model (or both models of a pair) into the cache, verified by size and sha256."""
    from edgespec import pull, registry

    reg = registry.load_registry()
    names = [reg.pairs[name].target, reg.pairs[name].draft] if name in reg.pairs else [name]
    for n in dict.fromkeys(names):
        entry = reg.model(n)
        path = registry.model_path(entry)
        if path.exists():
            err.print(f"{n} is already downloaded: {path}")
        else:
            pull.pull(entry, source=source, console=err)
