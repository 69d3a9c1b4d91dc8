"""Pulling registry models with a progress bar, after asking the user."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from edgespec.errors import EdgespecError
from edgespec.registry import ModelEntry, ensure_model


def _size(entry: ModelEntry) -> str:
    return f"{entry.size / 1e9:.2f} GB" if entry.size else "unknown size"


def confirm_and_pull(missing: tuple[ModelEntry, ...], *, yes: bool, source: str, console: Console) -> None:
    """Pull `missing` models; asks first on a terminal, needs --yes otherwise."""
    if not missing:
        return
    listing = ", ".join(f"{e.name} ({_size(e)})" for e in missing)
    if not yes:
        if not sys.stdin.isatty():
            raise EdgespecError(f"not downloaded yet: {listing}", "pass --yes to download, or run `edgespec models pull NAME`")
        import typer

        if not typer.confirm(f"Download {listing}?", default=True, err=True):
            raise EdgespecError("download declined", "pass a local model with --target")
    for entry in missing:
        pull(entry, source=source, console=console)


def pull(entry: ModelEntry, *, source: str, console: Console):
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"pulling {entry.name}", total=entry.size)
        path = ensure_model(entry, source=source, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"[green]pulled[/] {entry.name} -> {path}")
    return path
